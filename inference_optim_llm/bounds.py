"""One place for the bounds of every user-supplied value: the configuration schema. The CLI and the
benchmark spec check their values against the same definitions, so a flag and a config key accept
exactly the same values, and an error names the flag or key.

Checks are strict about integers: JSON Schema's `integer` accepts 2.0 (JSON has one number type), but a
batch size of 2.0 becomes the file name bs2.0.json and a job nothing asks for. Where the schema says
integer, only an int is accepted (never a float, never a bool)."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import jsonschema
import yaml

CONFIG_SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"


def _is_integer(checker, instance) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))


@cache
def config_schema() -> dict:
    return yaml.safe_load(CONFIG_SCHEMA.read_text())


def definition(key: str) -> dict:
    """'benchmark.max_new_tokens' -> that property's schema; '$defs.batch_size' -> a shared definition."""
    schema = config_schema()
    if key.startswith("$defs."):
        return schema["$defs"][key.split(".", 1)[1]]
    node = schema
    for part in key.split("."):
        node = node["properties"][part]
    return node


def strict_validate(value, schema: dict) -> None:
    """jsonschema.validate with integers that are ints; raises jsonschema.ValidationError."""
    error = jsonschema.exceptions.best_match(StrictValidator(schema).iter_errors(value))
    if error is not None:
        raise error


def message(error: jsonschema.ValidationError) -> str:
    if error.validator == "type" and isinstance(error.instance, float) and "integer" in str(error.validator_value):
        return f"{error.instance!r} is not an integer"
    return error.message


def key_path(parts) -> str:
    """('matrix', 0, 'batch_sizes', 1) -> 'matrix[0].batch_sizes[1]'."""
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else f".{p}"
    return text.lstrip(".")


def check(key: str, value, name: str | None = None):
    """Validate one value against the schema's definition of `key`; ValueError names `name` (or key)."""
    schema = {"$defs": config_schema()["$defs"], **definition(key)}
    try:
        strict_validate(value, schema)
    except jsonschema.ValidationError as e:
        where = key_path([name or key, *e.absolute_path])
        raise ValueError(f"{where}: {message(e)}") from None
    return value


def check_config(config: dict) -> None:
    """The whole configuration against the schema, strictly (after Snakemake's validate(), which fills the
    defaults): ValueError `config benchmark.batch_sizes[0]: 2.0 is not an integer`."""
    errors = sorted(StrictValidator(config_schema()).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        e = errors[0]
        raise ValueError(f"config {key_path(e.absolute_path) or '(top level)'}: {message(e)}")
