"""Engine registry: name -> class path. A new engine is one module and one line here."""
from __future__ import annotations

import importlib

from inference_optim_llm.engines.base import BatchOutput, Engine, EngineSettings, EngineUnavailable

ENGINES = {
    "baseline": "inference_optim_llm.engines.baseline:BaselineEngine",
    "compiled": "inference_optim_llm.engines.compiled:CompiledEngine",
    "trtllm": "inference_optim_llm.engines.trtllm:TrtllmEngine",
    "trtllm-torch": "inference_optim_llm.engines.trtllm:TrtllmTorchEngine",
}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} (available: {', '.join(ENGINES)})")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["ENGINES", "BatchOutput", "Engine", "EngineSettings", "EngineUnavailable", "engine_class"]
