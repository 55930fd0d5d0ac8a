"""Where a compiled decode step's time goes, kernel by kernel, on the GPU machine.

    python benchmarks/profile_step.py --model-dir resources/models/llama-8b \
        --artifact resources/engines/llama-8b/compiled --calibration results/calibration/bandwidth.json \
        --out profile-8b.json

Loads the compiled engine with the pipeline's build artifact (so nothing compiles anew), runs one batch
the way a benchmark job does, then replays K decode steps under torch.profiler and sums the kernels of
the trace by kind: matrix products (cuBLAS), attention, inductor's fused kernels, copies. Reports per
step: the number of kernels, GPU busy time, wall time, and the matrix products' own bandwidth (weight
bytes over their time), which separates "the GEMVs are slow" from "too many small kernels".
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from inference_optim_llm import bandwidth
from inference_optim_llm.engines.compiled import CompiledEngine
from inference_optim_llm.models import model_facts
from inference_optim_llm.prompts import random_token_ids
from inference_optim_llm.spec import shape_settings

KINDS = (  # first match wins; names as CUPTI reports them
    ("attention", ("fmha", "attention", "flash", "efficient")),
    ("matmul", ("gemv", "gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("inductor (fused)", ("triton",)),
    ("copy/fill", ("memcpy", "memset", "copy", "fill")),
)


def kind(name: str) -> str:
    low = name.lower()
    for k, keys in KINDS:
        if any(key in low for key in keys):
            return k
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--artifact", help="build_engine's artifact directory (its inductor cache)")
    ap.add_argument("--calibration", help="calibrate's bandwidth.json (else measured here)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--steps", type=int, default=50, help="decode steps profiled")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a compiled engine option (engine_options.compiled), e.g. kernels=torch, prefill=eager")
    ap.add_argument("--weights", default="default", choices=["default", "fp8"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpu-smoke", action="store_true", help="check this script on a CPU (no kernels)")
    a = ap.parse_args()
    dev, dtype = ("cpu", "float32") if a.cpu_smoke else ("cuda", "bfloat16")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else None

    model_dir, B, P, N = Path(a.model_dir), a.batch, a.prompt_len, a.new_tokens
    options = dict(o.split("=", 1) for o in a.option)
    s = shape_settings(model_dir, "compiled", B, P, N, dev, dtype, options, artifact_dir=a.artifact,
                       weights=a.weights)
    e = CompiledEngine(s)
    t = time.perf_counter()
    e.load()
    prompts = random_token_ids(P, B, model_facts(model_dir)["vocab_size"], seed=0)
    e.generate(prompts, N)                                   # compiles (or loads) and captures the graph
    first_s = time.perf_counter() - t
    tpots, ttfts = [], []
    for _ in range(5):
        out = e.generate(prompts, N)
        times = out.token_times_s[0]
        tpots.append((times[-1] - times[0]) / (N - 1))
        ttfts.append(times[0])                             # from generate()'s start: padding, prefill, first token
    tpot, ttft = statistics.median(tpots), statistics.median(ttfts)

    # K decode steps, called exactly as generate() calls them (same shapes and strides: no recompile).
    net = e.net
    buf = torch.zeros(B, N, dtype=torch.long, device=dev)
    pos = torch.full((B, 1), P, dtype=torch.long, device=dev)
    K = min(a.steps, N - 1)

    def steps():
        for t in range(1, K + 1):
            buf[:, t] = e.step(buf[:, t - 1:t], pos + (t - 1), net.kv_index[P + t - 1:P + t], net.valid)

    with torch.no_grad():
        steps()
        sync()
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA if dev == "cuda" else ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            steps()
            sync()
            wall = (time.perf_counter() - t0) / K
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    kernels = [ev for ev in events if ev.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in ev]
    by_name, by_kind = defaultdict(lambda: [0, 0.0]), defaultdict(lambda: [0, 0.0])
    for ev in kernels:
        for table, key in ((by_name, ev["name"]), (by_kind, kind(ev["name"]))):
            table[key][0] += 1
            table[key][1] += ev["dur"]
    busy_us = sum(v[1] for v in by_kind.values()) / K

    facts = model_facts(model_dir)
    weight_bytes = bandwidth.weight_bytes(facts, dtype, a.weights)
    calib = json.loads(Path(a.calibration).read_text()) if a.calibration else bandwidth.measure(dev, 256)
    calib.setdefault("gpu_name", gpu)
    bw = bandwidth.decode_bandwidth(facts, dtype, B, P, N, tpot, calib, gpu, weights=a.weights)
    mm_us = by_kind.get("matmul", [0, 0.0])[1] / K
    result = {
        "gpu": gpu, "torch": torch.__version__,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_dir": str(model_dir), "batch": B, "prompt_len": P, "new_tokens": N, "steps_profiled": K,
        "compile_cache_loaded": e.cache_loaded, "first_batch_s": first_s,
        "options": options, "weights": a.weights,
        "tpot_ms": tpot * 1e3, "tokens_per_s": B / tpot, "tpot_ms_runs": [t * 1e3 for t in tpots],
        "ttft_ms": ttft * 1e3, "ttft_in_decode_steps": ttft / tpot, "ttft_ms_runs": [t * 1e3 for t in ttfts],
        "fraction_of_measured": bw["fraction_of_measured"],
        "measured_gb_s": calib["bandwidth_gb_s"], "achieved_gb_s": bw["achieved_gb_s"],
        "profiled_step_wall_us": wall * 1e6, "gpu_busy_us_per_step": busy_us,
        "kernels_per_step": len(kernels) / K,
        "weight_bytes": weight_bytes,
        "matmul_gb_s": weight_bytes / (mm_us * 1e-6) / 1e9 if mm_us else None,
        "by_kind": {k: {"kernels_per_step": n / K, "us_per_step": us / K, "mean_us": us / n}
                    for k, (n, us) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])},
        "top_kernels": [{"name": name[:160], "kind": kind(name), "calls_per_step": n / K, "us_per_step": us / K,
                         "mean_us": us / n}
                        for name, (n, us) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:25]],
    }
    e.close()
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "top_kernels"}, indent=1))
    for row in result["top_kernels"]:
        print(f"{row['us_per_step']:9.1f} us/step {row['calls_per_step']:6.1f} calls {row['mean_us']:7.2f} us  "
              f"{row['kind']:16s} {row['name'][:100]}")


if __name__ == "__main__":
    main()
