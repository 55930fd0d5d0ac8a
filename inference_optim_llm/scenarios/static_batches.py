"""Scenario: static batches through an in-process engine. Warm up, run timed repetitions of full static
batches over the prompt set until enough was measured (stopping()), sample telemetry and other processes'
CPU use during the timed phase, check every request's token count.
(The serving scenario, an out-of-process server under load, will sit beside this one.)"""
from __future__ import annotations

import time
from dataclasses import dataclass

from inference_optim_llm import metrics
from inference_optim_llm.hostfacts import log
from inference_optim_llm.interference import CpuWatch
from inference_optim_llm.metrics import RequestTiming
from inference_optim_llm.prompts import PromptSet, batches
from inference_optim_llm.telemetry import NvmlSampler, TelemetryReport, idle_power


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


@dataclass
class Request:
    """One request of one timed repetition."""
    repetition: int
    batch: int
    prompt_index: int
    prompt_tokens: int
    timing: RequestTiming
    padding: bool            # fills the last batch; left out of the per-request statistics


@dataclass
class Batch:
    """One static batch of one timed repetition: all its requests, submitted together."""
    repetition: int
    batch: int
    e2e_s: float
    requests: int
    output_tokens: int


@dataclass
class Measurement:
    """What the static-batch scenario measured (results.py turns it into a result)."""
    requested_tokens: int
    warmup_s: list[float]
    requests: list[Request]
    batches: list[Batch]
    telemetry: TelemetryReport
    memory: dict                         # the engine's memory_stats()
    first_outputs: list[list[int]]       # each prompt's tokens from its first timed run, in prompt order
    stopping: dict                       # why the timed repetitions stopped (stopping())
    cpu: dict                            # interference.CpuWatch over the timed phase


def measure(engine, spec, ps: PromptSet) -> Measurement:
    """Warm up, then `repetitions` timed passes over the prompt set in full static batches, under the
    telemetry sampler; every request's token count checked before anything else is done with it."""
    plan = batches(len(ps.token_ids), spec.batch_size)
    N = spec.max_new_tokens
    idle = idle_power(spec.idle_power_s, spec.telemetry_interval_s)   # before any work: see idle_power()
    warmup_s = []
    for w in range(spec.warmup):
        idx = plan[w % len(plan)]
        t = time.perf_counter()
        out = engine.generate([ps.token_ids[i] for i in idx], N)
        metrics.check_token_counts(out.tokens, N)
        warmup_s.append(time.perf_counter() - t)
        log(f"warm-up batch {w + 1}/{spec.warmup}: {warmup_s[-1]:.2f} s")

    requests, batch_rows = [], []
    first_outputs: dict[int, list[int]] = {}
    engine.reset_peak_memory()
    with NvmlSampler(interval_s=spec.telemetry_interval_s, idle=idle, own_pids=engine.own_pids()) as sampler, CpuWatch() as cpu:
        check_busy(sampler.busy_at_start, spec.refuse_busy_gpu)
        t0 = time.perf_counter()
        rep = 0
        while True:
            for b, idx in enumerate(plan):
                out = engine.generate([ps.token_ids[i] for i in idx], N)
                metrics.check_token_counts(out.tokens, N)
                batch_rows.append(Batch(rep, b, out.e2e_s, len(idx), N * len(idx)))
                for j, i in enumerate(idx):
                    first_outputs.setdefault(i, out.tokens[j])
                    timing = metrics.request_timing(out.token_times_s[j], len(out.tokens[j]), out.e2e_s)
                    requests.append(Request(rep, b, i, len(ps.token_ids[i]), timing,
                                            padding=b * spec.batch_size + j >= len(ps.token_ids)))
                of = f"{rep + 1}/{spec.repetitions}" if rep < spec.repetitions else f"{rep + 1} (more: stopping rule)"
                log(f"rep {of} batch {b + 1}/{len(plan)}: {out.e2e_s:.2f} s, "
                    f"{N * len(idx) / out.e2e_s:.1f} output tokens/s")
            rep += 1
            stop = stopping(rep, time.perf_counter() - t0, [b.output_tokens / b.e2e_s for b in batch_rows], spec)
            if stop:
                log(f"stopped after {rep} repetitions: {stop['reason']}")
                break
    return Measurement(N, warmup_s, requests, batch_rows, sampler.report, engine.memory_stats(),
                       [first_outputs[i] for i in sorted(first_outputs)], stop, cpu.result)


def stopping(reps: int, timed_s: float, throughputs: list[float], spec) -> dict | None:
    """After each repetition: None to go on, else why the cell stops (pure logic). At least `repetitions`;
    then more while the timed work is under min_measure_s or the median output tok/s's 95 % interval is
    wider than ci_target_rel (when one is set), up to max_repetitions and max_measure_s."""
    from inference_optim_llm.stats import median_ci

    if reps < spec.repetitions:   # between repetitions the GPU idles: no bootstrap while it cannot stop
        return None
    ci = median_ci(throughputs) if spec.ci_target_rel > 0 else None
    hw = ci["half_width_rel"] if ci else None
    state = {"repetitions": reps, "timed_s": timed_s, "half_width_rel": hw, "target": spec.ci_target_rel or None}
    enough_time = timed_s >= spec.min_measure_s
    precise = spec.ci_target_rel <= 0 or (hw is not None and hw <= spec.ci_target_rel)
    if enough_time and precise:
        return {"reason": "repetitions done" if spec.ci_target_rel <= 0 and spec.min_measure_s <= 0
                else "target met", **state}
    if reps >= max(spec.max_repetitions, spec.repetitions):
        return {"reason": "repetition cap (max_repetitions)", **state}
    if timed_s >= spec.max_measure_s:
        return {"reason": "time cap (max_measure_s)", **state}
    return None
