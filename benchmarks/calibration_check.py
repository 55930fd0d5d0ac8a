"""Why `calibrate` read ~3 % under a back-to-back copy (issue 13): on the GPU, the old method (each 1 GiB
copy timed alone between two events, median of 20), the new one (bandwidth.measure: 10 back-to-back copies
of 2 GiB between two events, median of 7), and the reference (20 back-to-back copies of a 2 GiB bf16
buffer), side by side, each repeated. Prints JSON.

    python benchmarks/calibration_check.py > calibration-check.json
"""
from __future__ import annotations

import json
import statistics

import torch

from inference_optim_llm import bandwidth


def single_copies(size_mb=1024, repeats=20):
    n = size_mb * 2**20 // 4
    src, dst = torch.randn(n, device="cuda"), torch.empty(n, device="cuda")
    times = []
    for i in range(repeats + 3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b) / 1000)
    return 2 * n * 4 / statistics.median(times) / 1e9


def reference(size_mb=2048, copies=20):
    n = size_mb * 2**20 // 2
    src, dst = torch.randn(n, device="cuda", dtype=torch.bfloat16), torch.empty(n, device="cuda", dtype=torch.bfloat16)
    dst.copy_(src)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(copies):
        dst.copy_(src)
    b.record()
    b.synchronize()
    return 2 * n * 2 * copies / (a.elapsed_time(b) / 1000) / 1e9


out = {"gpu": torch.cuda.get_device_name(0), "rounds": []}
for _ in range(3):
    out["rounds"].append({"old_single_copies_gb_s": single_copies(),
                          "new_calibrate_gb_s": bandwidth.measure("cuda")["bandwidth_gb_s"],
                          "reference_back_to_back_bf16_gb_s": reference()})
print(json.dumps(out, indent=1))
