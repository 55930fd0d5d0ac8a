"""YAML as the user wrote it: a key written twice in one mapping is an error naming both lines.

PyYAML (and Snakemake's loader) keep the last of two equal keys silently, so a second `benchmark:` block
would drop the `dtype` or `calibrate` of the first and the run would measure a configuration other than
the one written. Every YAML file a user writes is read through `load` (the workflow re-reads the config
files Snakemake loaded, nested mappings included)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml


class DuplicateKeyError(ValueError):
    """A mapping with a repeated key; the message names the file, the key and both lines."""


class StrictLoader(yaml.SafeLoader):
    source = "YAML"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":   # `<<:` merges: later keys override on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue   # SafeLoader itself refuses an unhashable key, with its own message
                line = key_node.start_mark.line + 1
                if key in first:
                    raise DuplicateKeyError(f"{self.source}: duplicate key {key!r} at line {line} "
                                            f"(first at line {first[key]})")
                first[key] = line
        return super().construct_mapping(node, deep)


def loads(text: str, source: str = "YAML"):
    loader = StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load(path: str | Path):
    """The file's data, read strictly; errors (unreadable, not YAML, a repeated key) name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:   # Snakemake reads a config file as JSON first; a JSON file may indent with tabs, which YAML refuses
        return json.loads(text, object_pairs_hook=lambda pairs: json_object(path, pairs))
    except DuplicateKeyError as e:
        raise DuplicateKeyError(str(e)) from None
    except json.JSONDecodeError:
        pass
    try:
        return loads(text, str(path))
    except DuplicateKeyError as e:   # raised anew here: the message, without PyYAML's frames
        raise DuplicateKeyError(str(e)) from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def json_object(path, pairs) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"{path}: duplicate key {key!r}")
        out[key] = value
    return out


def check_files(paths) -> None:
    """Read each file strictly: what Snakemake's own loader (which keeps the last of two equal keys) read."""
    for path in paths:
        load(path)
