"""The hardware limit: measured memory bandwidth, and the bytes a decode step must move.

At small batch, decoding is bound by memory: every step reads all weights once plus the KV cache of
every sequence. bytes per step / step time = achieved bandwidth; over the measured bandwidth of the
device = how far an engine is from the limit.
"""
from __future__ import annotations

import time

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def measure(device: str, size_mb: int = 1024, repeats: int = 20) -> dict:
    """Large copy within device memory, counting bytes read plus bytes written. Median of repeats."""
    import torch

    n = size_mb * 2**20 // 4
    src = torch.randn(n, device=device)   # random data, never zeros
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 3):
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            dt = a.elapsed_time(b) / 1000
        else:
            t = time.perf_counter()
            dst.copy_(src)
            dt = time.perf_counter() - t
        if i >= 3:
            times.append(dt)
    assert torch.equal(dst, src), "copy check failed"
    times.sort()
    med = times[len(times) // 2]
    return {"device": device, "bytes_moved": 2 * n * 4, "median_s": med,
            "bandwidth_gb_s": 2 * n * 4 / med / 1e9, "repeats": repeats, "size_mb": size_mb}


def weight_bytes(model: dict, dtype: str) -> int | None:
    """Bytes of weights read per decode step, from a llama-family config: every layer's matrices and
    norms, the final norm and the LM head. The input embedding reads only one row per sequence."""
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size")
    if model.get("model_type") != "llama" or any(model.get(k) is None for k in needed):
        return None
    H, L, nh, nkv, I, V = (model[k] for k in needed)
    hd = H // nh
    per_layer = H * nh * hd + 2 * H * nkv * hd + nh * hd * H + 3 * H * I + 2 * H
    return (L * per_layer + H + V * H) * DTYPE_BYTES[dtype]


def kv_bytes_per_token(model: dict, dtype: str) -> int | None:
    try:
        hd = model["hidden_size"] // model["num_attention_heads"]
        return 2 * model["num_hidden_layers"] * model["num_key_value_heads"] * hd * DTYPE_BYTES[dtype]
    except (KeyError, TypeError):
        return None


def decode_bandwidth(model: dict, dtype: str, batch_size: int, prompt_tokens_mean: float,
                     max_new_tokens: int, tpot_s: float | None, calibration: dict | None,
                     gpu_name: str | None) -> dict:
    """Achieved decode bandwidth and its fraction of the measured one. Figures that cannot be
    computed are None, with the reason."""
    w = weight_bytes(model, dtype)
    kv = kv_bytes_per_token(model, dtype)
    out = {"weight_bytes": w, "kv_bytes_per_step": None, "bytes_per_step": None, "achieved_gb_s": None,
           "measured_gb_s": None, "fraction_of_measured": None, "reason": None}
    if w is None or kv is None:
        out["reason"] = "byte model only for llama-family configs"
        return out
    context = prompt_tokens_mean + max_new_tokens / 2        # mean context length over the decode steps
    out["kv_bytes_per_step"] = int(kv * context * batch_size)
    out["bytes_per_step"] = w + out["kv_bytes_per_step"]
    if max_new_tokens < 2:
        out["reason"] = "no decode step: max_new_tokens is 1, only the prefill ran"
        return out
    if not tpot_s:
        out["reason"] = "no per-token time (timing off)"
        return out
    out["achieved_gb_s"] = out["bytes_per_step"] / tpot_s / 1e9
    if gpu_name is None:
        out["reason"] = "not a GPU run: the limit is measured for GPU memory only"
    elif calibration is None:
        out["reason"] = "no bandwidth calibration for this run"
    elif calibration.get("gpu_name") != gpu_name:
        out["reason"] = f"calibration is for {calibration.get('gpu_name')}, not {gpu_name}"
    else:
        out["measured_gb_s"] = calibration["bandwidth_gb_s"]
        out["fraction_of_measured"] = out["achieved_gb_s"] / out["measured_gb_s"]
    return out
