"""Scenario: static batches through an in-process engine. Warm up, run timed repetitions of full static
batches over the prompt set, sample telemetry during the timed phase, check every request's token count.
(The serving scenario, an out-of-process server under load, will sit beside this one.)"""
from __future__ import annotations

import time

from inference_optim_llm import metrics
from inference_optim_llm.hostfacts import log
from inference_optim_llm.prompts import PromptSet, batches
from inference_optim_llm.telemetry import NvmlSampler


class GpuBusyError(ValueError):
    """Other processes use the GPU and the configuration refuses to measure then."""


def check_busy(busy: dict | None, refuse: bool) -> None:
    """busy: NvmlSampler.busy_state() read before measuring (None without NVML). It is recorded in every
    result (telemetry.gpu_busy_at_start); with refuse_busy_gpu the run stops instead."""
    if refuse and busy and busy["busy"]:
        others = ", ".join(f"pid {p['pid']} ({p['memory_mb'] or 0:.0f} MiB)" for p in busy["other_processes"])
        raise GpuBusyError(f"the GPU is busy ({others}; {busy['utilization_pct']}% utilisation): "
                           "benchmark.refuse_busy_gpu is true, so nothing was measured")


def padding(n_prompts: int, batch_size: int) -> dict:
    """Static batches are always full: when the batch size does not divide the prompt set, the last
    batch is filled with the first prompts again. Those padding requests run (the batch's throughput
    counts them, as the hardware did the work) but are left out of the per-request statistics, so no
    prompt weighs twice in TTFT, TPOT or latency."""
    plan = batches(n_prompts, batch_size)
    padded = sum(len(b) for b in plan) - n_prompts
    return {"batches_per_repetition": len(plan), "padding_requests_per_repetition": padded,
            "padding_prompt_indices": plan[-1][len(plan[-1]) - padded:] if padded else []}


def measure(engine, spec, ps: PromptSet) -> dict:
    """Warm up, then `repetitions` timed passes over the prompt set in full static batches, under the
    telemetry sampler; every request's token count checked. Returns the measured part of the result."""
    plan = batches(len(ps.token_ids), spec.batch_size)
    N = spec.max_new_tokens
    warmup_s = []
    for w in range(spec.warmup):
        idx = plan[w % len(plan)]
        t = time.perf_counter()
        out = engine.generate([ps.token_ids[i] for i in idx], N)
        metrics.check_token_counts(out.tokens, N)
        warmup_s.append(time.perf_counter() - t)
        log(f"warm-up batch {w + 1}/{spec.warmup}: {warmup_s[-1]:.2f} s")

    requests, batch_rows, records = [], [], []
    first_outputs: dict[int, list[int]] = {}
    engine.reset_peak_memory()
    with NvmlSampler(interval_s=spec.telemetry_interval_s) as sampler:
        check_busy(sampler.busy_at_start, spec.refuse_busy_gpu)
        for rep in range(spec.repetitions):
            for b, idx in enumerate(plan):
                out = engine.generate([ps.token_ids[i] for i in idx], N)
                metrics.check_token_counts(out.tokens, N)
                batch_rows.append({"repetition": rep, "batch": b, "e2e_s": out.e2e_s,
                                   "output_tokens": N * len(idx),
                                   "output_tokens_per_s": N * len(idx) / out.e2e_s,
                                   "requests_per_s": len(idx) / out.e2e_s})
                for j, i in enumerate(idx):
                    first_outputs.setdefault(i, out.tokens[j])
                    rt = metrics.request_timing(out.token_times_s[j], len(out.tokens[j]), out.e2e_s)
                    requests.append({"repetition": rep, "batch": b, "prompt_index": i,
                                     "prompt_tokens": len(ps.token_ids[i]), **vars(rt),
                                     "tps": rt.tps, "padding": b * spec.batch_size + j >= len(ps.token_ids)})
                log(f"rep {rep + 1}/{spec.repetitions} batch {b + 1}/{len(plan)}: {out.e2e_s:.2f} s, "
                    f"{N * len(idx) / out.e2e_s:.1f} output tokens/s")
    tel = sampler.report.as_dict()
    total_tokens = sum(r["output_tokens"] for r in batch_rows)
    tel["energy_per_token_j"] = tel["energy_j"] / total_tokens if tel["energy_j"] is not None else None
    if tel["energy_per_token_j"] is None:
        tel["null_reasons"]["energy_per_token_j"] = tel["null_reasons"].get("energy_j", "no energy figure")
    tel.update(engine.memory_stats())
    if tel.get("torch_peak_allocated_mb") is None:
        tel["null_reasons"]["torch_peak_allocated_mb"] = (
            "not a CUDA run" if not engine.settings.device.startswith("cuda")
            else f"{spec.engine} allocates outside torch's allocator")
    for r in requests:
        records.append({"prompt": ps.texts[r["prompt_index"]], "latency": r["e2e_s"], "tokens": r["output_tokens"],
                        "memory_mb": tel["gpu_memory_peak_mb"], "power_w": tel["power_mean_w"], "tps": r["tps"],
                        "ttft": r["ttft_s"], "engine": spec.engine, "batch_size": spec.batch_size,
                        "padding": r["padding"]})
    counted = [r for r in requests if not r["padding"]]   # each prompt once per repetition
    result = {
        "warmup_s": warmup_s,
        "token_check": {"requested": N, "generated_min": min(r["output_tokens"] for r in requests),
                        "generated_max": max(r["output_tokens"] for r in requests),
                        "all_exact": all(r["output_tokens"] == N for r in requests)},
        "metrics": metrics.aggregate(counted, batch_rows),
        "telemetry": tel,
        "requests": requests,
        "batches": batch_rows,
    }
    return {"result": result, "records": records, "first_outputs": [first_outputs[i] for i in sorted(first_outputs)]}


