"""The hardware limit: measured memory bandwidth, and the bytes a decode step must move.

At small batch, decoding is bound by memory: every step reads all weights once plus the KV cache of
every sequence. bytes per step / step time = achieved bandwidth; over the measured bandwidth of the
device = how far an engine is from the limit.
"""
from __future__ import annotations

import time

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def measure(device: str, size_mb: int = 2048, copies: int = 10, trials: int = 7) -> dict:
    """Sustained copy bandwidth within device memory, counting bytes read plus bytes written: `copies`
    back-to-back copies of a size_mb buffer between two events (so no launch gap or event overhead falls
    between copies, as in a long decode), per-copy time = the span / copies; median over `trials`.
    Why (docs/measurements/README.md): timing each copy alone, as before 2026-11-28, read 3 to 4 % under a
    back-to-back copy on an H200, as the gap around each single copy counted as copy time; this reads
    0.6 % under it."""
    import torch

    n = size_mb * 2**20 // 4
    src = torch.randn(n, device=device)   # random data, never zeros
    dst = torch.empty_like(src)
    cuda = device.startswith("cuda")
    for _ in range(3):                    # warm-up: allocation, clocks
        dst.copy_(src)
    times = []
    for _ in range(trials):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(copies):
                dst.copy_(src)
            b.record()
            b.synchronize()
            dt = a.elapsed_time(b) / 1000
        else:
            t = time.perf_counter()
            for _ in range(copies):
                dst.copy_(src)
            dt = time.perf_counter() - t
        times.append(dt / copies)
    assert torch.equal(dst, src), "copy check failed"
    times.sort()
    med = times[len(times) // 2]
    return {"device": device, "bytes_moved": 2 * n * 4, "median_s": med,
            "bandwidth_gb_s": 2 * n * 4 / med / 1e9, "repeats": trials, "copies_per_trial": copies,
            "size_mb": size_mb, "method": "back-to-back copies between two events, median over trials"}


# Datasheet memory bandwidth (GB/s, one direction) of common cards, by the name NVML reports. Sources:
# NVIDIA's product datasheets (H200: nvidia.com/en-us/data-center/h200, 4.8 TB/s; H100 SXM5 80GB:
# nvidia.com/en-us/data-center/h100, 3.35 TB/s; H100 PCIe: 2 TB/s; A100 80GB SXM: 2039 GB/s, A100 40GB:
# 1555 GB/s (nvidia.com/en-us/data-center/a100); L40S: 864 GB/s; L4: 300 GB/s; A10: 600 GB/s; GeForce RTX
# 4090: 1008 GB/s; RTX 4070: 504 GB/s (nvidia.com product pages)). A card not listed: None, with the reason.
DATASHEET_GB_S = {
    "NVIDIA H200": 4800, "NVIDIA H100 80GB HBM3": 3350, "NVIDIA H100 PCIe": 2000,
    "NVIDIA A100-SXM4-80GB": 2039, "NVIDIA A100-SXM4-40GB": 1555, "NVIDIA A100 80GB PCIe": 1935,
    "NVIDIA L40S": 864, "NVIDIA L4": 300, "NVIDIA A10": 600,
    "NVIDIA GeForce RTX 4090": 1008, "NVIDIA GeForce RTX 4070": 504,
}


def datasheet_bandwidth(gpu_name: str | None) -> tuple[float | None, str | None]:
    """(GB/s, None) for a listed card, else (None, why)."""
    if gpu_name is None:
        return None, "not a GPU run"
    if gpu_name in DATASHEET_GB_S:
        return float(DATASHEET_GB_S[gpu_name]), None
    return None, f"{gpu_name} is not in the datasheet table (bandwidth.DATASHEET_GB_S)"


def weight_bytes(model: dict, dtype: str, weights: str = "default") -> int | None:
    """Bytes of weights read per decode step, from a llama-family config: every layer's matrices and
    norms, the final norm and the LM head. The input embedding reads only one row per sequence.
    weights fp8: the matrices and the LM head one byte each, plus their float32 scales (one per output row)."""
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size")
    if model.get("model_type") != "llama" or any(model.get(k) is None for k in needed):
        return None
    H, L, nh, nkv, I, V = (model[k] for k in needed)
    hd = H // nh
    matrices = L * (H * nh * hd + 2 * H * nkv * hd + nh * hd * H + 3 * H * I) + V * H
    norms = L * 2 * H + H
    if weights == "fp8":
        rows = L * (nh * hd + 2 * nkv * hd + H + 2 * I + H) + V
        return matrices + 4 * rows + norms * DTYPE_BYTES[dtype]
    return (matrices + norms) * DTYPE_BYTES[dtype]


def kv_bytes_per_token(model: dict, dtype: str) -> int | None:
    try:
        hd = model["hidden_size"] // model["num_attention_heads"]
        return 2 * model["num_hidden_layers"] * model["num_key_value_heads"] * hd * DTYPE_BYTES[dtype]
    except (KeyError, TypeError):
        return None


def decode_bandwidth(model: dict, dtype: str, batch_size: int, prompt_tokens_mean: float,
                     max_new_tokens: int, tpot_s: float | None, calibration: dict | None,
                     gpu_name: str | None, gpus: int = 1, weights: str = "default") -> dict:
    """Achieved decode bandwidth and its fraction of the measured one. Figures that cannot be
    computed are None, with the reason. With `gpus` N (tensor parallel) the limit is N x one GPU's (the
    weights and the cache are split over N memories; the replicated embedding and LM head are counted once)."""
    w = weight_bytes(model, dtype, weights)
    kv = kv_bytes_per_token(model, dtype)
    out = {"weight_bytes": w, "kv_bytes_per_step": None, "bytes_per_step": None, "achieved_gb_s": None,
           "measured_gb_s": None, "fraction_of_measured": None, "reason": None,
           "datasheet_gb_s": None, "fraction_of_datasheet": None, "datasheet_reason": None}
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
    out["datasheet_gb_s"], out["datasheet_reason"] = datasheet_bandwidth(gpu_name)
    if out["datasheet_gb_s"]:   # the datasheet counts one direction: bytes read per step over it
        out["datasheet_gb_s"] *= gpus
        out["fraction_of_datasheet"] = out["achieved_gb_s"] / out["datasheet_gb_s"]
    if gpu_name is None:
        out["reason"] = "not a GPU run: the limit is measured for GPU memory only"
    elif calibration is None:
        out["reason"] = "no bandwidth calibration for this run"
    elif calibration.get("gpu_name") != gpu_name:
        out["reason"] = f"calibration is for {calibration.get('gpu_name')}, not {gpu_name}"
    else:
        out["measured_gb_s"] = calibration["bandwidth_gb_s"] * gpus
        out["fraction_of_measured"] = out["achieved_gb_s"] / out["measured_gb_s"]
    return out
