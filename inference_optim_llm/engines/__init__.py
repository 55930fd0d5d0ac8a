"""Engine registry: name -> class path and the options the engine takes. A new engine is one module
and one entry here. Importing this module imports no engine (no torch), so the workflow can read it."""
from __future__ import annotations

import importlib

import jsonschema

from inference_optim_llm.engines.base import BatchOutput, Engine, EngineSettings, EngineUnavailable

_KV_OPTIONS = {
    "kv_cache_free_gpu_mem_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "enable_block_reuse": {"type": "boolean"},
}

# options: JSON schema properties of config engine_options.<name>; any other key is an error.
# build: the engine needs a build_engine artifact before its benchmark jobs (build.py builds it).
ENGINES = {
    "baseline": {"cls": "inference_optim_llm.engines.baseline:BaselineEngine", "options": {}},
    "compiled": {"cls": "inference_optim_llm.engines.compiled:CompiledEngine", "build": True, "options": {
        "mode": {"enum": ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]},
        "coordinate_descent_tuning": {"type": "boolean"},
        "cache_len": {"type": "integer", "minimum": 2, "maximum": 1048576},
    }},
    "trtllm": {"cls": "inference_optim_llm.engines.trtllm:TrtllmEngine", "build": True, "options": {
        **_KV_OPTIONS,
        "version": {"type": "string", "pattern": "^[0-9A-Za-z.+-]{1,32}$"},             # build only
        "compute_capability": {"type": "string", "pattern": "^[0-9]{1,2}\\.[0-9]{1,2}$"},  # build only
    }},
    "trtllm-torch": {"cls": "inference_optim_llm.engines.trtllm:TrtllmTorchEngine", "options": _KV_OPTIONS},
}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (available: {', '.join(ENGINES)})")
    module, _, cls = ENGINES[name]["cls"].partition(":")
    return getattr(importlib.import_module(module), cls)


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
            jsonschema.validate(value, known[key])
        except jsonschema.ValidationError as e:
            raise ValueError(f"{where}.{name}.{key}: {e.message}") from None
    return options


__all__ = ["ENGINES", "BatchOutput", "Engine", "EngineSettings", "EngineUnavailable", "check_options",
           "engine_class"]
