"""The workflow's intermediate files, checked where they are written and where they are read.

A corrupt intermediate (truncated by a full disk, edited by hand) must never let a benchmark measure
and then fail, nor make Snakemake delete valid results to re-run jobs that cannot succeed: the
workflow checks the existing ones at parse time (common.smk), before any job runs, and each job checks
what it reads before it measures. Every error names the file and says how to rebuild it.
"""
from __future__ import annotations

import json
from pathlib import Path


class IntermediateError(ValueError):
    """A corrupt or foreign intermediate file; the message names it."""


def _load(path: Path, what: str, rebuild: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntermediateError(f"{path}: the {what} is missing ({rebuild})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntermediateError(f"{path}: the {what} is not readable JSON ({e}); {rebuild}") from None
    if not isinstance(data, dict):
        raise IntermediateError(f"{path}: the {what} is not a JSON object; {rebuild}")
    return data


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


CALIBRATION_FIX = "delete it and run again to measure anew (the benchmarks that used it re-run)"
REFERENCE_FIX = "delete it and run again to rebuild it (the benchmarks that used it re-run)"


def check_calibration(data: dict, path: Path | str = "calibration") -> dict:
    bw = data.get("bandwidth_gb_s")
    if not _number(bw) or bw <= 0 or not isinstance(data.get("device"), str):
        raise IntermediateError(f"{path}: not a bandwidth calibration (bandwidth_gb_s > 0 and device "
                                f"expected); {CALIBRATION_FIX}")
    return data


def read_calibration(path: Path | str) -> dict:
    return check_calibration(_load(Path(path), "bandwidth calibration", CALIBRATION_FIX), path)


def check_reference(data: dict, path: Path | str = "reference",
                    max_new_tokens: int | None = None, prompts: int | None = None) -> dict:
    tokens = data.get("tokens")
    n = data.get("max_new_tokens")
    ok = (isinstance(data.get("engine"), str) and isinstance(n, int) and n >= 1 and isinstance(tokens, list)
          and tokens and all(isinstance(t, list) and len(t) == n and all(isinstance(i, int) for i in t)
                             for t in tokens))
    if not ok:
        raise IntermediateError(f"{path}: not a reference token file (engine, max_new_tokens and one list "
                                f"of max_new_tokens ids per prompt expected); {REFERENCE_FIX}")
    if max_new_tokens is not None and n != max_new_tokens:
        raise IntermediateError(f"{path}: reference for max_new_tokens {n}, this run asks {max_new_tokens}; "
                                f"{REFERENCE_FIX}")
    if prompts is not None and len(tokens) != prompts:
        raise IntermediateError(f"{path}: reference for {len(tokens)} prompts, the prompt set has {prompts}; "
                                f"{REFERENCE_FIX}")
    return data


def read_reference(path: Path | str, max_new_tokens: int | None = None, prompts: int | None = None) -> dict:
    return check_reference(_load(Path(path), "reference token file", REFERENCE_FIX), path, max_new_tokens, prompts)


MODEL_FIX = "delete the directory and run again to fetch it anew"


def check_model_dir(path: Path | str) -> None:
    """A materialised model directory: config.json and manifest.json readable, and a plain model."""
    for name in ("config.json", "manifest.json"):
        _load(Path(path) / name, f"model directory's {name}", MODEL_FIX)
    check_plain_model(path)


def check_plain_model(path: Path | str) -> None:
    """A config.json that says gguf beside weights that are not GGUF (the embedded model's dequantized copy, as
    an older version of this tool wrote it) makes transformers treat plain weights as quantized (.float() is
    refused) and vLLM refuse to start (unknown quantization method): named here, before any job loads it."""
    config = _load(Path(path) / "config.json", "model directory's config.json", MODEL_FIX)
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("quant_method") == "gguf" and not any(Path(path).glob("*.gguf")):
        raise IntermediateError(f"{Path(path) / 'config.json'}: declares quantization_config gguf, but the "
                                f"directory holds no GGUF file (its weights are plain); {MODEL_FIX}")


def check_engine_artifact(path: Path | str) -> None:
    _load(Path(path) / "build_info.json", "engine build record", "delete the directory and run again to rebuild it")


def check_result_file(path: Path | str) -> None:
    """A result file that exists but is not a result (truncated, foreign) would satisfy its target and
    fail only the report: named here instead, so that it is measured anew."""
    data = _load(Path(path), "result file", "delete it and run again to measure it anew")
    if not isinstance(data.get("schema_version"), int) or not isinstance(data.get("target"), dict):
        raise IntermediateError(f"{path}: not a result file (no schema_version and target); "
                                "delete it and run again to measure it anew")


def check_existing(calibration: list[Path], references: list[Path], model_dirs: list[Path],
                   artifacts: list[Path], results: list[Path] = ()) -> None:
    """What the workflow checks at parse time: only files that exist (missing ones are simply built)."""
    for p in results:
        if Path(p).exists():
            check_result_file(p)
    for p in calibration:
        if Path(p).exists():
            read_calibration(p)
    for p in references:
        if Path(p).exists():
            read_reference(p)
    for p in model_dirs:
        if Path(p).is_dir():
            check_model_dir(p)
    for p in artifacts:
        if Path(p).is_dir():
            check_engine_artifact(p)
