"""The engine interface: how a model runs. One engine per module, registered in engines/__init__.py.

An engine takes a static batch of tokenized prompts and returns, for every request, the generated
token ids and the time each token became available. Timing lives in the engine because only the
engine knows when a token exists (a CUDA event in a decode loop, a streamed chunk in TensorRT-LLM),
but the statistics made from those times live in metrics.py, shared by all engines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (library missing, no GPU). The target records status 'unavailable'."""


@dataclass
class EngineSettings:
    model_dir: Path                 # plain Hugging Face directory (config, safetensors, tokenizer)
    device: str                     # "cpu" or "cuda"
    dtype: str                      # "float32", "bfloat16" or "float16"
    max_batch_size: int             # the static batch size of this target
    max_input_len: int              # longest prompt of the prompt set, in tokens
    max_new_tokens: int
    seed: int = 0
    record_token_times: bool = True  # False only to measure the cost of timing itself
    artifact_dir: Path | None = None  # output of build_engine (compile cache, TensorRT engine)
    trust_remote_code: bool = False   # from the config of this run (models.<name>.trust_remote_code)
    options: dict[str, Any] = field(default_factory=dict)  # engine-specific, from config engine_options
    gpus: int = 1                     # tensor-parallel degree: processes, one GPU each on CUDA (tp.py)
    weights: str = "default"          # weight storage: default (dtype) or fp8 (engines whose registry lists it)


@dataclass
class BatchOutput:
    """What one generate() call produced.

    tokens[i] are the ids generated for request i (never the prompt). token_times_s[i][k] is the time,
    in seconds after the batch was submitted, at which token k of request i was available on the host's
    timeline (CUDA events are converted after the batch ends). Empty lists when timing was off.
    """
    tokens: list[list[int]]
    token_times_s: list[list[float]]
    e2e_s: float                    # submit to last token of the batch, host clock, after a device sync


class Engine:
    """Base class. Subclasses implement load() and generate(); the registry entry names the engine."""

    def __init__(self, settings: EngineSettings):
        self.settings = settings

    def load(self) -> None:
        """Load weights and prepare (compile, build graphs). Not timed as part of any request."""
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> BatchOutput:
        """Greedy generation of exactly max_new_tokens per request, EOS ignored."""
        raise NotImplementedError

    def memory_stats(self) -> dict[str, float | None]:
        """Engine-side memory figures (torch's peak allocated, MiB); None where not known."""
        return {"torch_peak_allocated_mb": None}

    def reset_peak_memory(self) -> None:
        pass

    def own_pids(self) -> frozenset[int]:
        """Processes of this engine besides this one (tensor-parallel workers): not other work on the GPU."""
        return frozenset()

    def result_fields(self) -> dict:
        """The engine's own fields for its result (after measuring), each declared with a JSON schema under
        `result_fields` in its registry entry; results.add_engine_fields checks them."""
        return {}

    def close(self) -> None:
        pass


class TorchEngine(Engine):
    """Engines whose memory goes through torch's allocator: its peak figure, on CUDA."""

    def memory_stats(self) -> dict[str, float | None]:
        if not self.settings.device.startswith("cuda"):
            return {"torch_peak_allocated_mb": None}
        import torch
        return {"torch_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20}

    def reset_peak_memory(self) -> None:
        if self.settings.device.startswith("cuda"):
            import torch
            torch.cuda.reset_peak_memory_stats()
