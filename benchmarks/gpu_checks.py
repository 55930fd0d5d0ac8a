"""GPU behaviour checks, run on the GPU machine; results go to docs/gpu-checks.md by hand-free copy.

    python benchmarks/gpu_checks.py --models-dir M --out OUT.json

1. NVML: telemetry over a busy GPU (power, energy counter, memory, clocks): values, not nulls.
2. Memory bandwidth (large device-to-device copy, bytes read + written).
3. Cost of per-token timing: throughput with timing on and off, alternated, per engine.
4. compiled against baseline on the synthetic shapes at batch 1 (64-token prompts, N new tokens),
   with the fraction of the measured bandwidth; the inductor option coordinate_descent_tuning on/off.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from inference_optim_llm import bandwidth, telemetry
from inference_optim_llm.engines import engine_class
from inference_optim_llm.models import model_facts
from inference_optim_llm.prompts import random_token_ids
from inference_optim_llm.spec import shape_settings


def nvml_check() -> dict:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with telemetry.NvmlSampler(interval_s=0.05) as s:
        t = time.perf_counter()
        while time.perf_counter() - t < 3:
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    return s.report.as_dict()


DEVICE, DTYPE = "cuda", "bfloat16"


def engine(name, model_dir, batch, prompt_len, n, **options):
    s = shape_settings(model_dir, name, batch, prompt_len, n, DEVICE, DTYPE, options)
    e = engine_class(name)(s)
    t = time.perf_counter()
    e.load()
    return e, time.perf_counter() - t


def run_once(e, prompts, n, timing: bool):
    e.settings.record_token_times = timing
    out = e.generate(prompts, n)
    assert all(len(t) == n for t in out.tokens)
    tpot = (out.token_times_s[0][-1] - out.token_times_s[0][0]) / (n - 1) if timing else None
    return len(prompts) * n / out.e2e_s, tpot, out


def timing_cost(e, prompts, n, rounds=6) -> dict:
    """Alternates the order (off-on, on-off, ...) so a drift in clocks favours neither."""
    on, off = [], []
    run_once(e, prompts, n, True)
    for r in range(rounds):
        for timing in ((False, True) if r % 2 == 0 else (True, False)):
            (on if timing else off).append(run_once(e, prompts, n, timing)[0])
    m_on, m_off = statistics.median(on), statistics.median(off)
    return {"tokens_per_s_timing_on": m_on, "tokens_per_s_timing_off": m_off,
            "difference_pct": 100 * (m_off - m_on) / m_off, "rounds": rounds, "on": on, "off": off}


def speed(name, model_dir, prompts, n, calib, reps=3, **options) -> dict:
    torch._dynamo.reset()   # each variant compiles anew (the same code object would reuse the last one)
    P = len(prompts[0])
    e, load_s = engine(name, model_dir, len(prompts), P, n, **options)
    t = time.perf_counter()
    _, _, first = run_once(e, prompts, n, True)
    first_s = time.perf_counter() - t
    runs = [run_once(e, prompts, n, True) for _ in range(reps)]
    tps = statistics.median(r[0] for r in runs)
    tpot = statistics.median(r[1] for r in runs)
    bw = bandwidth.decode_bandwidth(model_facts(Path(model_dir)), DTYPE, len(prompts), P, n, tpot, calib,
                                    calib["gpu_name"])
    res = {"engine": name, "options": options, "load_s": load_s, "first_batch_s": first_s,
           "tokens_per_s": tps, "tpot_ms": tpot * 1e3, "fraction_of_measured": bw["fraction_of_measured"],
           "achieved_gb_s": bw["achieved_gb_s"], "tokens": runs[0][2].tokens[0][:16]}
    e.close()
    print(json.dumps({k: v for k, v in res.items() if k != "tokens"}), flush=True)
    return res, e


def profile_decode(model_dir, prompts, n, path) -> str:
    """Kernel time table of one compiled batch (torch.profiler), to see where a decode step goes."""
    torch._dynamo.reset()
    e, _ = engine("compiled", model_dir, len(prompts), len(prompts[0]), n)
    run_once(e, prompts, n, True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_once(e, prompts, n, True)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60)
    Path(path).write_text(table)
    e.close()
    return table


def quick(a) -> None:
    """Second pass: compiled on both shapes, the 8B decode profile, baseline's timing cost again."""
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    calib = bandwidth.measure("cuda")
    calib["gpu_name"] = out["gpu"]
    out["bandwidth"] = calib
    prompts = random_token_ids(64, 1, 49152, seed=0)
    n = a.new_tokens
    out["speed"] = [speed("compiled", f"{a.models_dir}/{m}", prompts, n, calib)[0] for m in ("llama-1b", "llama-8b")]
    print(profile_decode(f"{a.models_dir}/llama-8b", prompts, n, Path(a.out).with_suffix(".profile.txt")), flush=True)
    out["timing_cost"] = {}
    for name, b in (("baseline", 1), ("compiled", 1)):
        ps = random_token_ids(64, b, 49152, seed=1)
        torch._dynamo.reset()
        e, _ = engine(name, f"{a.models_dir}/llama-1b", b, 64, n)
        out["timing_cost"][f"{name}_bs{b}"] = r = timing_cost(e, ps, n, rounds=4)
        e.close()
        print("timing", name, b, json.dumps({k: v for k, v in r.items()}), flush=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--skip-8b", action="store_true")
    ap.add_argument("--cpu-smoke", action="store_true", help="check this script on a CPU (tiny model)")
    ap.add_argument("--quick", action="store_true", help="compiled speed, 8B profile, timing cost only")
    a = ap.parse_args()
    if a.quick:
        return quick(a)
    global DEVICE, DTYPE
    if a.cpu_smoke:
        DEVICE, DTYPE = "cpu", "float32"
    out = {"gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else None, "torch": torch.__version__,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if DEVICE == "cuda":
        out["nvml"] = nvml_check()
        print("nvml", json.dumps(out["nvml"]), flush=True)
    calib = bandwidth.measure(DEVICE, size_mb=1024 if DEVICE == "cuda" else 64)
    calib["gpu_name"] = out["gpu"]
    out["bandwidth"] = calib
    print("bandwidth", calib["bandwidth_gb_s"], flush=True)
    n = a.new_tokens
    prompts = random_token_ids(64, 1, 49152, seed=0)
    m1 = f"{a.models_dir}/{'llama-tiny' if a.cpu_smoke else 'llama-1b'}"
    out["speed_1b"] = []
    r, _ = speed("compiled", m1, prompts, n, calib)
    out["speed_1b"].append(r)
    r, _ = speed("compiled", m1, prompts, n, calib, coordinate_descent_tuning=False)
    out["speed_1b"].append(r)
    r, _ = speed("baseline", m1, prompts, n, calib)
    out["speed_1b"].append(r)
    # Timing cost, batch 1 and 4, both engines.
    out["timing_cost"] = {}
    for name in ("compiled", "baseline"):
        for b in (1, 4):
            ps = random_token_ids(64, b, 49152, seed=1)
            e, _ = engine(name, m1, b, 64, n)
            out["timing_cost"][f"{name}_bs{b}"] = timing_cost(e, ps, n, rounds=5 if name == "compiled" else 3)
            e.close()
            print("timing", name, b, json.dumps({k: v for k, v in out["timing_cost"][f"{name}_bs{b}"].items()
                                                  if k not in ("on", "off")}), flush=True)
    if not a.skip_8b:
        m8 = f"{a.models_dir}/llama-8b"
        out["speed_8b"] = [speed("compiled", m8, prompts, n, calib)[0]]
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
