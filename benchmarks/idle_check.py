"""Idle power on a real GPU, read as the pipeline reads it (telemetry.idle_power: the lowest NVML reading of a
window) against the mean of the same window, at rest and right after work. Why: the first H200 trust run
(2026-11-28) took idle power as the mean of a 1 s window right after the warm-up and read up to 340 W.

    python benchmarks/idle_check.py --out idle.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from inference_optim_llm.provenance import collect
from inference_optim_llm.telemetry import NvmlSampler, idle_power


def window(seconds: float) -> dict:
    """Every power reading over `seconds`, with their mean and the pipeline's figure (the lowest)."""
    s = NvmlSampler()
    s._open()
    readings = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        readings.append(s._nvml.nvmlDeviceGetPowerUsage(s._handle) / 1000.0)
        time.sleep(0.05)
    return {"mean_w": sum(readings) / len(readings), "lowest_w": min(readings), "readings": len(readings)}


def work(seconds: float) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.zeros(1, device="cuda")
    time.sleep(3)
    out = {"gpu": torch.cuda.get_device_name(0), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "provenance": {k: collect({}).get(k) for k in ("driver", "torch", "gpu_name")}}
    out["at_rest_2s"] = window(2.0)
    out["pipeline_at_rest_w"] = idle_power(2.0)[0]
    work(10.0)
    out["right_after_10s_of_matmuls_1s"] = window(1.0)          # the old method's window
    work(10.0)
    out["pipeline_right_after_work_2s_w"] = idle_power(2.0)[0]  # the new method, in the worst place
    time.sleep(5)
    out["after_5s_rest_2s"] = window(2.0)
    print(json.dumps(out, indent=1))
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
