"""TensorRT-LLM engines: the pure logic everywhere, a real build and run only where TensorRT-LLM and a
CUDA GPU exist (set IOL_TRTLLM_TEST_MODEL to a small HF model directory there)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from inference_optim_llm.engines.base import EngineSettings, EngineUnavailable
from inference_optim_llm.engines.trtllm import TrtllmEngine, TrtllmTorchEngine
from inference_optim_llm.trtllm_build import (build_engine, build_settings, check_engine_fits,
                                              compute_capability, installed_version, parse_stream_output,
                                              read_build_settings, kv_cache_kwargs, trtllm_dtype)

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 49152,
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-6}
GOOD = dict(dtype="bfloat16", max_batch_size=4, max_input_len=100, max_seq_len=164,
            trtllm_version="1.2.1", compute_capability="9.0")


def settings(**kw) -> EngineSettings:
    base = dict(model_dir=Path("/nonexistent/model"), device="cuda", dtype="bfloat16", max_batch_size=2,
                max_input_len=16, max_new_tokens=8)
    return EngineSettings(**{**base, **kw})


# --- build_settings -----------------------------------------------------------------------------

def test_build_settings_maps_everything_that_changes_the_engine():
    s = build_settings(CONFIG, **GOOD)
    assert json.loads(json.dumps(s)) == s
    assert s["backend"] == "tensorrt"
    assert (s["dtype"], s["max_batch_size"], s["max_input_len"], s["max_seq_len"]) == ("bfloat16", 4, 100, 164)
    assert s["max_num_tokens"] == 4 * 100  # the whole static batch's prefill fits one iteration
    assert (s["trtllm_version"], s["compute_capability"]) == ("1.2.1", "9.0")
    assert s["model"]["num_hidden_layers"] == 2 and "rms_norm_eps" not in s["model"]
    assert len(s["model_config_sha256"]) == 64


def test_build_settings_hash_follows_config_content_not_key_order():
    reordered = dict(reversed(list(CONFIG.items())))
    assert build_settings(reordered, **GOOD) == build_settings(CONFIG, **GOOD)
    changed = {**CONFIG, "rms_norm_eps": 1e-5}
    assert build_settings(changed, **GOOD)["model_config_sha256"] != build_settings(CONFIG, **GOOD)["model_config_sha256"]


def test_build_settings_allows_unknown_version_and_gpu():
    s = build_settings(CONFIG, **{**GOOD, "trtllm_version": None, "compute_capability": None})
    assert s["trtllm_version"] is None and s["compute_capability"] is None


@pytest.mark.parametrize("field,value", [
    ("max_batch_size", 0), ("max_batch_size", -1), ("max_batch_size", 2.0), ("max_batch_size", True),
    ("max_input_len", 0), ("max_input_len", "100"), ("max_seq_len", 0),
    ("max_seq_len", 100),  # must exceed max_input_len
    ("dtype", "int8"), ("dtype", "fp16"),
    ("trtllm_version", ""), ("compute_capability", 90),
])
def test_build_settings_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        build_settings(CONFIG, **{**GOOD, field: value})


def test_build_settings_rejects_non_dict_config():
    with pytest.raises(ValueError, match="model_config"):
        build_settings(["not", "a", "dict"], **GOOD)


def test_dtype_mapping():
    assert [trtllm_dtype(d) for d in ("bfloat16", "float16", "float32")] == ["bfloat16", "float16", "float32"]
    with pytest.raises(ValueError, match="dtype"):
        trtllm_dtype("float8")


# --- engine fit and runtime options --------------------------------------------------------------

def test_check_engine_fits():
    built = build_settings(CONFIG, **GOOD)
    check_engine_fits(built, dtype="bfloat16", max_batch_size=4, max_input_len=100, max_new_tokens=64)
    check_engine_fits(built, dtype="bfloat16", max_batch_size=1, max_input_len=10, max_new_tokens=8)
    for field, kw in [("dtype", dict(dtype="float16")), ("max_batch_size", dict(max_batch_size=8)),
                      ("max_input_len", dict(max_input_len=101)), ("max_seq_len", dict(max_new_tokens=65))]:
        args = {**dict(dtype="bfloat16", max_batch_size=4, max_input_len=100, max_new_tokens=64), **kw}
        with pytest.raises(ValueError, match=field):
            check_engine_fits(built, **args)


def test_kv_cache_kwargs_defaults_follow_trtllm_bench():
    assert kv_cache_kwargs({}) == {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": False}
    assert kv_cache_kwargs({"kv_cache_free_gpu_mem_fraction": 0.5, "enable_block_reuse": True}) == \
        {"free_gpu_memory_fraction": 0.5, "enable_block_reuse": True}


@pytest.mark.parametrize("options,match", [
    ({"kv_cache_fraction": 0.5}, "unknown"), ({"kv_cache_free_gpu_mem_fraction": 0}, "fraction"),
    ({"kv_cache_free_gpu_mem_fraction": 1.5}, "fraction"), ({"kv_cache_free_gpu_mem_fraction": "0.9"}, "fraction"),
    ({"enable_block_reuse": "no"}, "enable_block_reuse"),
])
def test_kv_cache_kwargs_rejects_bad_values(options, match):
    with pytest.raises(ValueError, match=match):
        kv_cache_kwargs(options)


# --- stream snapshots -----------------------------------------------------------------------------

def test_parse_stream_one_token_per_chunk():
    tokens, times = parse_stream_output([(0.10, [5]), (0.12, [5, 6]), (0.14, [5, 6, 7])])
    assert tokens == [5, 6, 7] and times == [0.10, 0.12, 0.14]


def test_parse_stream_chunk_with_several_tokens_gives_each_the_chunk_time():
    tokens, times = parse_stream_output([(0.1, [5, 6]), (0.3, [5, 6, 7, 8, 9])])
    assert tokens == [5, 6, 7, 8, 9] and times == [0.1, 0.1, 0.3, 0.3, 0.3]


def test_parse_stream_skips_chunks_without_new_tokens():
    tokens, times = parse_stream_output([(0.1, []), (0.2, [5]), (0.3, [5]), (0.4, [5, 6])])
    assert tokens == [5, 6] and times == [0.2, 0.4]
    assert parse_stream_output([]) == ([], [])


def test_parse_stream_rejects_delta_style_snapshots():
    with pytest.raises(ValueError, match="cumulative"):
        parse_stream_output([(0.1, [5]), (0.2, [6])])


def test_parse_stream_rejects_time_going_back():
    with pytest.raises(ValueError, match="backwards"):
        parse_stream_output([(0.2, [5]), (0.1, [5, 6])])


# --- environment probes and unavailability ----------------------------------------------------------

def test_probes_report_what_is_installed():
    import importlib.util

    import torch
    assert (installed_version() is None) == (importlib.util.find_spec("tensorrt_llm") is None)
    if torch.cuda.is_available():
        assert compute_capability() == "%d.%d" % torch.cuda.get_device_capability(0)
    else:
        assert compute_capability() is None


@pytest.fixture
def no_trtllm(monkeypatch):
    """Make `import tensorrt_llm` fail, as on every machine of this project."""
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)


@pytest.mark.parametrize("cls", [TrtllmEngine, TrtllmTorchEngine])
def test_load_raises_engine_unavailable_without_trtllm(no_trtllm, cls, tmp_path):
    engine = cls(settings(artifact_dir=tmp_path))
    with pytest.raises(EngineUnavailable, match="tensorrt_llm is not importable"):
        engine.load()
    assert engine.memory_stats() == {"torch_peak_allocated_mb": None}
    engine.close()  # safe after a failed load


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None, reason="tensorrt_llm is installed here")
def test_load_raises_engine_unavailable_here_without_monkeypatching():
    with pytest.raises(EngineUnavailable, match="tensorrt_llm"):
        TrtllmTorchEngine(settings()).load()


def test_build_engine_raises_engine_unavailable_and_leaves_no_output(no_trtllm, tmp_path):
    out = tmp_path / "engine"
    with pytest.raises(EngineUnavailable, match="tensorrt_llm is not importable"):
        build_engine(tmp_path / "model", out, build_settings(CONFIG, **GOOD))
    assert list(tmp_path.iterdir()) == []


def test_read_build_settings_requires_a_finished_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="build_settings.json"):
        read_build_settings(tmp_path)


# --- integration: real TensorRT-LLM on a GPU -----------------------------------------------------------

def _trtllm_gpu_missing() -> str | None:
    if importlib.util.find_spec("tensorrt_llm") is None:
        return "tensorrt_llm is not installed"
    try:
        import tensorrt_llm  # noqa: F401
    except Exception as e:
        return f"tensorrt_llm does not import ({type(e).__name__}: {e})"
    import torch
    return None if torch.cuda.is_available() else "torch.cuda.is_available() is False"


_MISSING = _trtllm_gpu_missing()
_MODEL = os.environ.get("IOL_TRTLLM_TEST_MODEL")
requires_trtllm_gpu = pytest.mark.skipif(_MISSING is not None,
                                         reason=f"needs TensorRT-LLM and a CUDA GPU: {_MISSING}")
requires_model = pytest.mark.skipif(not _MODEL, reason="set IOL_TRTLLM_TEST_MODEL to a small HF model directory")

B, N = 2, 8
PROMPTS = [list(range(100, 112)), list(range(200, 205))]  # different lengths, ids inside any real vocab
I = max(map(len, PROMPTS))


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    model_dir = Path(_MODEL)
    s = build_settings(json.loads((model_dir / "config.json").read_text()), dtype="float16",
                       max_batch_size=B, max_input_len=I, max_seq_len=I + N,
                       trtllm_version=installed_version(), compute_capability=compute_capability())
    out = tmp_path_factory.mktemp("trtllm") / "engine"
    build_engine(model_dir, out, s)
    assert read_build_settings(out) == s
    return out


def _run(cls, record: bool, artifact_dir: Path | None = None):
    engine = cls(settings(model_dir=Path(_MODEL), dtype="float16", max_batch_size=B, max_input_len=I,
                          max_new_tokens=N, record_token_times=record, artifact_dir=artifact_dir))
    engine.load()
    try:
        return engine.generate(PROMPTS, N)
    finally:
        engine.close()


def _check(out, record: bool):
    assert [len(t) for t in out.tokens] == [N] * B
    assert out.e2e_s > 0
    if record:
        for times in out.token_times_s:
            assert len(times) == N and times == sorted(times) and 0 < times[0] <= out.e2e_s
    else:
        assert out.token_times_s == [[]] * B


@requires_model
@requires_trtllm_gpu
@pytest.mark.parametrize("record", [True, False])
def test_trtllm_engine_generates_exactly_n_tokens(engine_dir, record):
    _check(_run(TrtllmEngine, record, engine_dir), record)


@requires_model
@requires_trtllm_gpu
@pytest.mark.parametrize("record", [True, False])
def test_trtllm_torch_engine_generates_exactly_n_tokens(record):
    _check(_run(TrtllmTorchEngine, record), record)
