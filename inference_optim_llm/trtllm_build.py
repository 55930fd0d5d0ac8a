"""TensorRT-LLM engine builds and the pure logic around them (pinned to TensorRT-LLM 1.2.1).

Everything here except build_engine() runs without tensorrt_llm, so it is unit-tested on any machine.

Upstream files each call follows (NVIDIA/TensorRT-LLM, 1.x LLM API; read in its source):
- examples/llm-api/_tensorrt_engine/llm_inference_customize.py and quickstart_example.py:
  `BuildConfig()` with max_batch_size / max_num_tokens, `LLM(model=hf_dir, build_config=...)` from
  `tensorrt_llm._tensorrt_engine`, then `llm.save(engine_dir)`; imports from `tensorrt_llm.llmapi`.
- tensorrt_llm/_tensorrt_engine/__init__.py: `LLM` there is `tensorrt_llm.llmapi.llm._TrtLLM`.
- tensorrt_llm/llmapi/llm.py: `_TrtLLM.save(engine_dir: str)` copies the built engine directory
  (shutil.copytree, dirs_exist_ok=True); `BaseLLM.__init__(model, tokenizer=None, ..., dtype="auto",
  **kwargs)`; `shutdown()`.
- tensorrt_llm/builder.py: `BuildConfig` fields max_input_len, max_seq_len, max_batch_size,
  max_num_tokens (keyword construction; llm_args.py imports BuildConfig from here).
- tensorrt_llm/llmapi/llm_args.py: `TrtLlmArgs.build_config`; `validate_build_config_with_runtime_params`
  (runtime max_batch_size / max_num_tokens may not exceed the build's).
- tensorrt_llm/executor/result.py: `CompletionOutput.token_ids` is extended in place on every streamed
  response (`output.token_ids.extend(...)`, non-beam), so each yield carries all tokens so far.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference_optim_llm import hostfacts, io
from inference_optim_llm.engines.base import EngineUnavailable

DTYPES = ("bfloat16", "float16", "float32")  # TensorRT-LLM takes the same strings (builder.py precisions)
SETTINGS_FILE = "build_settings.json"
SETTINGS_SCHEMA = 1
# config.json keys that shape the network; the whole file is hashed as well.
_MODEL_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
               "max_position_embeddings", "tie_word_embeddings", "torch_dtype")


def trtllm_dtype(dtype: str) -> str:
    """settings.dtype -> the `dtype` string TensorRT-LLM's LLM(...) and builder accept."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value):
        raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
    return value


def static_batch_num_tokens(max_batch_size: int, max_input_len: int) -> int:
    """max_num_tokens that lets the whole static batch's prefill run in one iteration."""
    return max_batch_size * max_input_len


def build_settings(model_config: dict, *, dtype: str, max_batch_size: int, max_input_len: int,
                   max_seq_len: int, trtllm_version: str | None, compute_capability: str | None) -> dict:
    """Everything that changes a built engine, as a JSON-serialisable dict (the engine's cache key).

    model_config is the model's config.json. Raises ValueError naming the offending field.
    """
    if not isinstance(model_config, dict):
        raise ValueError(f"model_config must be a dict (config.json), got {type(model_config).__name__}")
    _positive_int("max_batch_size", max_batch_size)
    _positive_int("max_input_len", max_input_len)
    _positive_int("max_seq_len", max_seq_len)
    if max_seq_len <= max_input_len:
        raise ValueError(f"max_seq_len ({max_seq_len}) must be greater than max_input_len ({max_input_len})")
    canonical = json.dumps(model_config, sort_keys=True, separators=(",", ":"), default=str)
    return {
        "schema": SETTINGS_SCHEMA,
        "backend": "tensorrt",
        "trtllm_version": _optional_str("trtllm_version", trtllm_version),
        "compute_capability": _optional_str("compute_capability", compute_capability),
        "dtype": trtllm_dtype(dtype),
        "max_batch_size": max_batch_size,
        "max_input_len": max_input_len,
        "max_seq_len": max_seq_len,
        "max_num_tokens": static_batch_num_tokens(max_batch_size, max_input_len),
        "model": {k: model_config[k] for k in _MODEL_KEYS if k in model_config},
        "model_config_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
    }


def check_engine_fits(built: dict, *, dtype: str, max_batch_size: int, max_input_len: int,
                      max_new_tokens: int) -> None:
    """Raise ValueError if an engine built with `built` settings cannot serve this target."""
    if built.get("dtype") != dtype:
        raise ValueError(f"dtype: engine built for {built.get('dtype')!r}, target wants {dtype!r}")
    if built.get("max_batch_size", 0) < max_batch_size:
        raise ValueError(f"max_batch_size: engine built for {built.get('max_batch_size')}, "
                         f"target needs {max_batch_size}")
    if built.get("max_input_len", 0) < max_input_len:
        raise ValueError(f"max_input_len: engine built for {built.get('max_input_len')}, "
                         f"target needs {max_input_len}")
    if built.get("max_seq_len", 0) < max_input_len + max_new_tokens:
        raise ValueError(f"max_seq_len: engine built for {built.get('max_seq_len')}, target needs "
                         f"{max_input_len} + {max_new_tokens} = {max_input_len + max_new_tokens}")


def kv_cache_kwargs(options: dict) -> dict:
    """settings.options -> validated KvCacheConfig kwargs (llm_args.py KvCacheConfig field names).

    kv_cache_free_gpu_mem_fraction: share of free GPU memory for the KV pool, 0.9 by default as in
    trtllm-bench (bench/dataclasses/configuration.py: kv_cache_percent, alias
    kv_cache_free_gpu_mem_fraction). enable_block_reuse: False by default, so repeated prompts
    (warm-up, repetitions) never hit a prefix cache that the other engines do not have.
    """
    known = {"kv_cache_free_gpu_mem_fraction", "enable_block_reuse"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown TensorRT-LLM engine options {unknown} (known: {sorted(known)})")
    fraction = options.get("kv_cache_free_gpu_mem_fraction", 0.9)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"kv_cache_free_gpu_mem_fraction must be in (0, 1], got {fraction!r}")
    reuse = options.get("enable_block_reuse", False)
    if not isinstance(reuse, bool):
        raise ValueError(f"enable_block_reuse must be a bool, got {reuse!r}")
    return {"free_gpu_memory_fraction": float(fraction), "enable_block_reuse": reuse}


def parse_stream_output(snapshots: Sequence[tuple[float, Sequence[int]]]) -> tuple[list[int], list[float]]:
    """Streamed snapshots (seconds after submission, all token ids so far) -> (tokens, time of each token).

    Each streamed RequestOutput carries the cumulative `outputs[0].token_ids` (executor/result.py), and a
    chunk may add several tokens at once: each new token gets its chunk's time. Chunks that add nothing
    are skipped. Raises ValueError if a snapshot does not extend the previous one or time goes back.
    """
    tokens: list[int] = []
    times: list[float] = []
    last_t = float("-inf")
    for t, ids in snapshots:
        if t < last_t:
            raise ValueError(f"stream times go backwards ({t} after {last_t})")
        last_t = t
        ids = list(ids)
        if ids[:len(tokens)] != tokens:
            raise ValueError(f"stream snapshot of {len(ids)} tokens does not extend the previous "
                             f"{len(tokens)} (token_ids are expected to be cumulative)")
        times.extend([t] * (len(ids) - len(tokens)))
        tokens = ids
    return tokens, times


def installed_version() -> str | None:
    """The installed tensorrt_llm distribution's version, from package metadata (no import); None if absent."""
    return hostfacts.installed_version("tensorrt_llm", "tensorrt-llm")


def compute_capability() -> str | None:
    return hostfacts.compute_capability()


def build_key(options: dict) -> dict:
    """What a TensorRT engine build depends on beyond the spec: the TensorRT-LLM version and GPU it is
    built for (engine_options.trtllm.version / compute_capability, else this host's), and the
    TensorRT-LLM installed where the workflow starts (None if absent), so that a build recorded as
    unavailable is never reused once TensorRT-LLM is installed."""
    return {"trtllm_version": options.get("version", "1.2.1"),
            "compute_capability": options.get("compute_capability") or compute_capability(),
            "installed_trtllm": installed_version()}


def import_trtllm() -> Any:
    """Import tensorrt_llm and check for a CUDA GPU, or raise EngineUnavailable saying which is missing."""
    try:
        import tensorrt_llm
    except Exception as e:  # ImportError, or OSError/RuntimeError from its CUDA libraries
        raise EngineUnavailable(f"tensorrt_llm is not importable ({type(e).__name__}: {e}); "
                                "TensorRT-LLM 1.2.1 with a CUDA GPU is required") from e
    try:
        import torch
        cuda = torch.cuda.is_available()
    except Exception as e:
        raise EngineUnavailable(f"torch is not usable ({type(e).__name__}: {e})") from e
    if not cuda:
        raise EngineUnavailable("tensorrt_llm imports but torch.cuda.is_available() is False: no CUDA GPU")
    return tensorrt_llm


def read_build_settings(engine_dir: Path) -> dict:
    path = Path(engine_dir) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {engine_dir} is not a finished build_engine() output")
    return json.loads(path.read_text())


def build_engine(model_dir: Path, out_dir: Path, settings: dict) -> None:
    """Build a TensorRT engine for `settings` (from build_settings) from the HF checkpoint in model_dir.

    The build goes to a temporary directory next to out_dir, which is renamed to out_dir only once the
    engine and build_settings.json are written: an interrupted build never leaves a valid-looking out_dir.
    Raises EngineUnavailable if tensorrt_llm is not importable or there is no CUDA GPU.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    import_trtllm()
    for key, have in (("trtllm_version", installed_version()), ("compute_capability", compute_capability())):
        if settings.get(key) is not None and settings[key] != have:
            raise ValueError(f"settings[{key!r}] is {settings[key]!r} but this machine has {have!r}")
    from tensorrt_llm._tensorrt_engine import LLM
    from tensorrt_llm.llmapi import BuildConfig

    if out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir()):
        out_dir.rmdir()   # the empty directory build.build() made for it
    with io.building_dir(out_dir) as tmp:
        build_config = BuildConfig(max_batch_size=settings["max_batch_size"],
                                   max_input_len=settings["max_input_len"],
                                   max_seq_len=settings["max_seq_len"],
                                   max_num_tokens=settings["max_num_tokens"])
        llm = LLM(model=str(model_dir), build_config=build_config, dtype=trtllm_dtype(settings["dtype"]))
        try:
            llm.save(str(tmp))
        finally:
            llm.shutdown()
        io.write_atomic(tmp / SETTINGS_FILE, json.dumps(settings, indent=2, sort_keys=True) + "\n")


UNAVAILABLE_FILE = "UNAVAILABLE.json"


def build_for_spec(spec: dict, out_dir: Path, workers: int | None = None) -> dict:
    """build_engine's entry for the workflow: the engine for every shape the matrix uses with a model
    (largest batch, longest prompt). Where TensorRT-LLM cannot run, records why in UNAVAILABLE.json
    (unless spec['strict']), so the benchmark targets record status 'unavailable' with that reason."""
    from inference_optim_llm.models import load_tokenizer
    from inference_optim_llm.prompts import load_prompt_set

    model_dir = Path(spec["model_dir"])
    tok = load_tokenizer(model_dir, spec.get("trust_remote_code", False))
    from inference_optim_llm.runner import check_context

    sets = [load_prompt_set(n, p, tok, spec["seed"]) for n, p in spec["prompt_sets"].items()]
    for ps in sets:   # before any build work
        check_context(ps, spec["max_new_tokens"], model_dir)
    longest = max(ps.longest for ps in sets)
    dtype = hostfacts.resolve_dtype(spec["dtype"], "cuda")   # TensorRT-LLM runs on CUDA only
    settings = build_settings(json.loads((model_dir / "config.json").read_text()), dtype=dtype,
                              max_batch_size=max(spec["batch_sizes"]), max_input_len=longest,
                              max_seq_len=longest + spec["max_new_tokens"],
                              trtllm_version=spec.get("trtllm_version"),
                              compute_capability=spec.get("compute_capability"))
    try:
        build_engine(model_dir, Path(out_dir), settings)
    except EngineUnavailable as e:
        if spec.get("strict"):
            raise
        io.write_json(Path(out_dir) / UNAVAILABLE_FILE, {"reason": str(e)})
        return {"engine": "trtllm", "status": "unavailable", "reason": str(e), "settings": settings}
    return {"engine": "trtllm", "status": "built", "settings": settings}


def unavailable_reason(engine_dir: Path | None) -> str | None:
    """The reason recorded by a build that could not run, or None for a real engine."""
    if engine_dir is None:
        return None
    path = Path(engine_dir) / UNAVAILABLE_FILE
    return json.loads(path.read_text())["reason"] if path.is_file() else None
