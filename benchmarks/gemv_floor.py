"""The GEMV floor of a decode step (issue 15), measured the way the compiled engine's step reads its weights.

Every weight matrix of a model's shapes (the LM head included, the input embedding excluded: a step reads one
row of it), in the compiled engine's fused layout (q/k/v as one matrix, gate/up as one), is read once by a
chain of batch-B `F.linear` calls; on CUDA the chain is captured in one CUDA graph and its replay timed
between two events (median of `--repeats`). No engine built from torch's GEMV kernels can read the weights
faster than this, so `compiled`'s TPOT over this time says how close its step is to what its kernels allow;
against `calibrate`'s bandwidth it says what the kernels themselves reach. Weights are random (their values
do not change a GEMV's time).

    python benchmarks/gemv_floor.py --preset llama-3.1-8b [--batch 1] [--tpot-ms 4.97] > floor.json
    python benchmarks/gemv_floor.py --preset llama-tiny --device cpu   # checks the script, times nothing useful
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def matrices(shape: dict) -> list[tuple[int, int]]:
    """(out, in) of every matrix a decode step multiplies by, in the compiled engine's fused layout."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    hd = shape.get("head_dim") or h // shape["num_attention_heads"]
    q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
    per_layer = [(q + 2 * kv, h), (h, q), (2 * inter, h), (h, inter)]
    return per_layer * layers + [(shape["vocab_size"], h)]


ROLES = ("qkv", "o", "gate/up", "down", "lm head")   # matrices()'s order within a layer, then the head


def measure(shape: dict, batch: int, dtype: torch.dtype, device: str, repeats: int, kernel: str = "torch",
            weights: str = "default") -> dict:
    """kernel torch: F.linear (or fp8.linear, torch._scaled_mm); triton: kernels.gemv (batch 1), plain, with no
    prologue or epilogue; fused: kernels.gemv with what the compiled step folds into each product (the RMS norm
    before q/k/v, gate/up and the head, silu(gate) * up after gate/up, the residual after o and down).
    weights fp8: e4m3 and a scale per row (fp8.py). Each role's matrices (all layers' q/k/v, ...) are also timed
    alone: `role_ms`."""
    from inference_optim_llm import fp8, kernels
    ws = [torch.randn(o, i, dtype=dtype, device=device) * 0.02 for o, i in matrices(shape)]
    roles = [ROLES[i % 4] for i in range(len(ws) - 1)] + [ROLES[4]]
    # One input per input width (hidden, attention output, MLP inner): each product reads its weight once.
    inputs = {i: torch.randn(batch, i, dtype=dtype, device=device) for _, i in matrices(shape)}
    h = shape["hidden_size"]
    norm, res = 1 + 0.1 * torch.randn(h, dtype=dtype, device=device), torch.randn(batch, h, dtype=dtype, device=device)
    want = [F.linear(inputs[w.shape[1]], w) for w in ws[:4]] if kernel == "triton" else None
    if weights == "fp8":
        ws = [fp8.quantize_rows(w) for w in ws]
    if kernel in ("triton", "fused") and batch != 1:
        raise SystemExit(f"--kernel {kernel} multiplies one row: --batch 1")

    def product(w, role):
        x = inputs[(w[0] if isinstance(w, tuple) else w).shape[1]]
        q, scale = w if isinstance(w, tuple) else (w, None)
        if kernel == "triton":
            return kernels.gemv(x, q, scale=scale)
        if kernel == "fused":
            kw = {"qkv": {"norm": norm}, "gate/up": {"norm": norm, "glu": True}, "lm head": {"norm": norm},
                  "o": {"residual": res}, "down": {"residual": res}}[role]
            return kernels.gemv(x, q, scale=scale, **kw)
        return fp8.linear(x, *w) if isinstance(w, tuple) else F.linear(x, w)

    # The kernel's products against F.linear (one layer's four): their largest relative error.
    error = max(((product(w, "").float() - y.float()).norm() / y.float().norm()).item()
                for w, y in zip(ws, want)) if want else None

    def timed(chosen) -> tuple[float, list[float]]:
        """The products of `chosen` (indices), one after another: the median time of the chain and its spread."""
        def chain():
            return [product(ws[i], roles[i]) for i in chosen]

        times = []
        if device.startswith("cuda"):
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):      # warm-up off the capture stream, as CUDA graphs require
                for _ in range(3):
                    chain()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outs = chain()   # noqa: F841 (the graph's outputs stay alive with it)
            for _ in range(3):
                graph.replay()
            for _ in range(repeats):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                graph.replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1e3)
        else:
            chain()
            for _ in range(repeats):
                t = time.perf_counter()
                chain()
                times.append(time.perf_counter() - t)
        return statistics.median(times), [min(times), max(times)]

    floor_s, spread = timed(range(len(ws)))
    role_ms = {r: timed([i for i in range(len(ws)) if roles[i] == r])[0] * 1e3 for r in ROLES}
    weight_bytes = sum(t.numel() * t.element_size() for w in ws for t in (w if isinstance(w, tuple) else (w,)))
    return {"matrices": len(ws), "weight_bytes": weight_bytes, "floor_ms": floor_s * 1e3,
            "floor_gb_s": weight_bytes / floor_s / 1e9, "spread_ms": [t * 1e3 for t in spread],
            "role_ms": role_ms, "repeats": repeats, "cuda_graph": device.startswith("cuda"), "kernel": kernel,
            "weights": weights, "max_relative_error_vs_f_linear": error}


def main(argv=None) -> int:
    from inference_optim_llm.models import SYNTHETIC_PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(SYNTHETIC_PRESETS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--kernel", default="torch", choices=["torch", "triton", "fused"],
                    help="torch: F.linear (the floor of torch GEMVs); triton: kernels.gemv, batch 1; fused: "
                         "kernels.gemv with the step's norms, SiLU * up and residuals")
    ap.add_argument("--weights", default="default", choices=["default", "fp8"])
    ap.add_argument("--tpot-ms", type=float, help="compiled's TPOT of the same shape and batch: its share of the floor")
    a = ap.parse_args(argv)
    result = {"preset": a.preset, "batch": a.batch, "dtype": a.dtype, "device": a.device,
              "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
              "torch": torch.__version__, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **measure(SYNTHETIC_PRESETS[a.preset], a.batch, getattr(torch, a.dtype), a.device, a.repeats,
                         a.kernel, a.weights)}
    if a.tpot_ms:
        result["tpot_ms"] = a.tpot_ms
        result["step_share_of_floor"] = result["floor_ms"] / a.tpot_ms   # 1.0: the step is the floor
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
