"""The one door to a result: every reader (aggregate, compare, the page renderers, validate-result) and
the writer (results.write) check a result here, against its schema (inference_optim_llm/schemas/) and
for what a schema cannot say: JSON Schema's "number" accepts NaN and Infinity, which Python's json
module reads from the non-standard tokens `NaN`, `Infinity` and `-Infinity` (and from literals too
large for a float), so every number anywhere in a result must be finite.

A result that fails is refused with one line naming the file, the JSON path and what is wrong:
`results/runs/x/bs1.json: metrics.ttft_s.median is Infinity (a result's numbers must be finite)`.
"""
from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import jsonschema

from inference_optim_llm.strict_yaml import DuplicateKeyError, json_object

SCHEMAS = Path(__file__).parent / "schemas"
RESULT_SCHEMA = SCHEMAS / "result.schema.json"
SERVING_SCHEMA = SCHEMAS / "serving_result.schema.json"


class ResultFileError(ValueError):
    """A result file that is not a valid result; the message names the file."""


def json_path(parts) -> str:
    """The dotted path of a value in a result: `metrics.ttft_s.median`, `requests[3].ttft_s`."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _non_finite(data, path=()):
    """(path, value) of the first float that is NaN or infinite, or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (path, data)
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = _non_finite(value, (*path, key))
        if found:
            return found
    return None


def _token(v: float) -> str:
    return "NaN" if v != v else "Infinity" if v > 0 else "-Infinity"


@cache
def _validator(path: Path):
    return jsonschema.Draft202012Validator(json.loads(path.read_text()))


def _order(error):
    """Errors by path (indices as numbers): the first one named is the first in the file."""
    return [(0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path]


def check_result(data, where) -> dict:
    """Raise ResultFileError naming `where` unless `data` is a valid result (a serving result's schema, or
    a static batch result's) with every number finite. Returns data."""
    bad = _non_finite(data)
    if bad:
        raise ResultFileError(f"{where}: {json_path(bad[0])} is {_token(bad[1])} (a result's numbers must be "
                              "finite)")
    path = SERVING_SCHEMA if isinstance(data, dict) and data.get("scenario") == "serving" else RESULT_SCHEMA
    errors = sorted(_validator(path).iter_errors(data), key=_order)
    if errors:
        e = errors[0]
        raise ResultFileError(f"{where}: does not match inference_optim_llm/schemas/{path.name} at "
                              f"{json_path(e.absolute_path)}: {e.message}")
    return data


def read_json(path: Path):
    """A file's JSON, or ResultFileError naming the file (missing, unreadable, not UTF-8, truncated)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"),
                          object_pairs_hook=lambda pairs: json_object(path, pairs))
    except DuplicateKeyError as e:   # two values for one key: which one a reader took would be chance
        raise ResultFileError(str(e)) from None
    except FileNotFoundError:
        raise ResultFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultFileError(f"{path}: not a readable JSON result ({e})") from None
    except RecursionError:
        raise ResultFileError(f"{path}: not a readable JSON result (nested too deeply)") from None


def load_result(path: Path) -> dict:
    """The result in a file, checked: the only way a reader gets one."""
    return check_result(read_json(path), path)


def load_results(paths, foreign: list[Path] | None = None) -> list[tuple[Path, dict]]:
    """[(path, result)] for every file, each checked, and no two for one cell; otherwise one
    ResultFileError naming every file that cannot be used. With a `foreign` list, a readable JSON file
    that is plainly not a result (no schema_version: a calibration, reference tokens, a kernel profile)
    is added to it instead; a file that cannot be read at all might be a result, and is refused."""
    results, errors = [], []
    for p in map(Path, paths):
        try:
            data = read_json(p)
            if foreign is not None and not (isinstance(data, dict) and "schema_version" in data):
                foreign.append(p)
                continue
            results.append((p, check_result(data, p)))
        except ResultFileError as e:
            errors.append(str(e))
    if errors:
        raise ResultFileError("; ".join(errors) if len(errors) == 1 else
                              f"{len(errors)} result files cannot be used: " + "; ".join(errors))
    by_cell(results)
    return results


def cell(result: dict) -> tuple:
    """The cell a result measures: ('static', model, engine, prompt set, batch, gpus, weights) or
    ('serving', model, server, prompt set, load)."""
    t = result["target"]
    if result.get("scenario") == "serving":
        return ("serving", t["model"], t["server"], t["prompt_set"], t["load"])
    return ("static", t["model"], t["engine"], t["prompt_set"], t["batch_size"], t.get("gpus", 1),
            t.get("weights", "default"))


def cell_name(key: tuple) -> str:
    """model / engine / prompt set / batch (/ tpN above one GPU) (/ weights), or model / server / prompt set / load."""
    parts = [str(k) for k in key[1:5]] + ([f"tp{key[5]}"] if len(key) > 5 and key[5] > 1 else [])
    parts += [key[6]] if len(key) > 6 and key[6] != "default" else []
    return " / ".join(parts)


def by_cell(results: list[tuple[Path, dict]]) -> dict[tuple, tuple[Path, dict]]:
    """{cell: (path, result)}; two files for one cell are an error naming both (which one is the
    measurement would be a guess)."""
    cells = {}
    for path, r in results:
        key = cell(r)
        if key in cells:
            raise ResultFileError(f"{cells[key][0]} and {path} are both results of cell {cell_name(key)}: "
                                  "keep one of them")
        cells[key] = (path, r)
    return cells
