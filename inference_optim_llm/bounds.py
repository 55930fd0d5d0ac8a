"""One place for the bounds of every user-supplied value: the configuration schema. The CLI and the
benchmark spec check their values against the same definitions, so a flag and a config key accept
exactly the same values, and an error names the flag or key."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import jsonschema
import yaml

CONFIG_SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"


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


def check(key: str, value, name: str | None = None):
    """Validate one value against the schema's definition of `key`; ValueError names `name` (or key)."""
    schema = {"$defs": config_schema()["$defs"], **definition(key)}
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        raise ValueError(f"{name or key}: {e.message}") from None
    return value
