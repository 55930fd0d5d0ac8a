"""Engine registry: the one list of engines. The config schema's check, the workflow's wildcards,
per-engine targets and build steps, and the CLI all read it. Importing it imports no engine (no torch).

An entry says, for one engine:
  cls        "module:Class", the Engine subclass (engines/base.py) that loads and generates
  options    JSON-schema properties of config engine_options.<name>; any other key is an error
  build      "module:function" (spec, out_dir, workers) -> info dict, if the engine's benchmark jobs need
             a build_engine artifact (a compile cache, a TensorRT engine) built first
  build_key  "module:function" (options) -> dict: host facts the artifact depends on (versions, GPU),
             part of the build's between-workflow cache key
  build_only_options   option keys used by the build only, not passed to the benchmark jobs
  result_fields        JSON-schema properties of the engine's own result fields (Engine.result_fields())
  tensor_parallel      true if the engine runs with `gpus` above 1 (EngineSettings.gpus); others record
                       such cells unavailable
  weights              the weight storages besides default it runs (["fp8"]: fp8.py); others record
                       such cells unavailable

An engine's name (its key) is also its Snakemake target (`snakemake trtllm_torch`): lower case, digits, `_`.

Engines outside this package register through the entry-point group `inference_optim_llm.engines`:
`name = "package.module:ENTRY"`, where ENTRY is a dict like the ones below. Nothing else changes.
"""
from __future__ import annotations

import importlib
import re

import jsonschema

from inference_optim_llm.bounds import strict_validate
from inference_optim_llm.engines.base import BatchOutput, Engine, EngineSettings, EngineUnavailable

_KV_OPTIONS = {
    "kv_cache_free_gpu_mem_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "enable_block_reuse": {"type": "boolean"},
}

# The share of a tensor-parallel batch spent in collectives (tp.Ranks.collective_fields), gpus > 1 only.
_COLLECTIVES = {"collectives": {
    "type": "object", "required": ["share"],
    "properties": {"share": {"type": ["number", "null"], "minimum": 0, "maximum": 1}, "reason": {"type": "string"}}}}

ENGINES: dict[str, dict] = {
    "baseline": {"cls": "inference_optim_llm.engines.baseline:BaselineEngine", "options": {}, "tensor_parallel": True,
                 "result_fields": _COLLECTIVES},
    "compiled": {
        "cls": "inference_optim_llm.engines.compiled:CompiledEngine",
        "options": {
            "mode": {"enum": ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]},
            "coordinate_descent_tuning": {"type": "boolean"},
            "cache_len": {"type": "integer", "minimum": 2, "maximum": 1048576},
            "prefill": {"enum": ["eager", "compiled"]},
            "kernels": {"enum": ["torch", "triton"]},
        },
        "build": "inference_optim_llm.build:build_compiled",
        "build_key": "inference_optim_llm.build:compiled_build_key",
        "result_fields": {"compile_cache_loaded": {"type": "boolean"}, "kernels": {"enum": ["torch", "triton"]},
                          "prefill": {"enum": ["eager", "compiled"]}, **_COLLECTIVES},
        "tensor_parallel": True,
        "weights": ["fp8"],
    },
    "trtllm": {
        "cls": "inference_optim_llm.engines.trtllm:TrtllmEngine",
        "options": {
            **_KV_OPTIONS,
            "version": {"type": "string", "pattern": "^[0-9A-Za-z.+-]{1,32}$"},
            "compute_capability": {"type": "string", "pattern": "^[0-9]{1,2}\\.[0-9]{1,2}$"},
        },
        "build": "inference_optim_llm.trtllm_build:build_for_spec",
        "build_key": "inference_optim_llm.trtllm_build:build_key",
        "build_only_options": ["version", "compute_capability"],
    },
    "trtllm_torch": {"cls": "inference_optim_llm.engines.trtllm:TrtllmTorchEngine", "options": _KV_OPTIONS},
}


NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
RESERVED = {"all", "serving"}   # workflow targets of their own
ENTRY_KEYS = {"cls", "options", "build", "build_key", "build_only_options", "result_fields", "tensor_parallel",
              "weights"}


def _register_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="inference_optim_llm.engines"):
        if ep.name in ENGINES:
            raise ValueError(f"engine plug-in {ep.value}: the name {ep.name!r} is taken")
        if not NAME.match(ep.name) or ep.name in RESERVED:
            raise ValueError(f"engine plug-in {ep.value}: the name {ep.name!r} is not lower case letters, "
                             f"digits and '_' (it names a Snakemake target), or is reserved "
                             f"({', '.join(sorted(RESERVED))})")
        entry = ep.load()
        if not isinstance(entry, dict) or "cls" not in entry or set(entry) - ENTRY_KEYS:
            raise ValueError(f"engine plug-in {ep.value}: expected a dict with 'cls' and only the keys "
                             f"{', '.join(sorted(ENTRY_KEYS))}")
        ENGINES[ep.name] = {"options": {}, **entry}


_register_plugins()


def _load(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (available: {', '.join(ENGINES)})")
    return _load(ENGINES[name]["cls"])


WEIGHTS = ("default", "fp8")   # the matrix's `weights`: default is the benchmark's dtype


def check_weights(name: str, weights: str) -> None:
    """EngineUnavailable for a weight storage (fp8) that the engine's registry entry does not list."""
    if weights != "default" and weights not in ENGINES[name].get("weights", []):
        with_it = ", ".join(n for n, e in ENGINES.items() if weights in e.get("weights", []))
        raise EngineUnavailable(f"engine {name!r} has no {weights} weights here; engines with them: {with_it}")


def check_gpus(name: str, gpus: int) -> None:
    """EngineUnavailable for gpus above 1 on an engine without tensor parallelism."""
    if gpus > 1 and not ENGINES[name].get("tensor_parallel"):
        with_tp = ", ".join(n for n, e in ENGINES.items() if e.get("tensor_parallel"))
        raise EngineUnavailable(f"engine {name!r} has no tensor-parallel support here (gpus {gpus}); "
                                f"engines with it: {with_tp}")


def built_engines() -> list[str]:
    """Engines whose benchmark jobs need a build_engine artifact."""
    return [name for name, entry in ENGINES.items() if entry.get("build")]


def build_function(name: str):
    if name not in ENGINES or not ENGINES[name].get("build"):
        raise ValueError(f"engine {name!r} has no build step (engines with one: {', '.join(built_engines())})")
    return _load(ENGINES[name]["build"])


def build_key(name: str, options: dict) -> dict:
    path = ENGINES[name].get("build_key")
    return _load(path)(options) if path else {}


def runtime_options(name: str, options: dict) -> dict:
    """The options a benchmark job receives (the build-only ones left out)."""
    build_only = set(ENGINES[name].get("build_only_options", []))
    return {k: v for k, v in options.items() if k not in build_only}


def check_options(name: str, options: dict, where: str = "engine_options") -> dict:
    """Raise ValueError naming the key (`engine_options.compiled.mdoe`) for an unknown or bad option."""
    if name not in ENGINES:
        raise ValueError(f"{where}: unknown engine {name!r} (available: {', '.join(ENGINES)})")
    known = ENGINES[name]["options"]
    if not isinstance(options, dict):
        raise ValueError(f"{where}.{name}: must be a mapping of option names to values")
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"{where}.{name}.{key}: unknown option for engine {name!r} "
                             f"(known: {', '.join(sorted(known)) or 'none'})")
        try:
            strict_validate(value, known[key])   # the config's rule: an integer option takes ints only
        except jsonschema.ValidationError as e:
            raise ValueError(f"{where}.{name}.{key}: {e.message}") from None
    return options


__all__ = ["ENGINES", "BatchOutput", "Engine", "EngineSettings", "EngineUnavailable", "build_function",
           "build_key", "built_engines", "check_gpus", "check_options", "engine_class", "runtime_options"]
