"""The benchmark scenario: warm up, run timed repetitions of static batches, collect telemetry,
check every request's token count, and return one result (plain data, inference_optim_llm/schemas/result.schema.json)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from inference_optim_llm import bandwidth, bounds, metrics, provenance
from inference_optim_llm.engines import ENGINES, EngineSettings, EngineUnavailable, check_options, engine_class
from inference_optim_llm.hostfacts import check_device, is_out_of_memory, log, resolve_device, resolve_dtype
from inference_optim_llm.intermediates import check_reference, read_calibration, read_reference
from inference_optim_llm.models import check_name, load_tokenizer, model_facts
from inference_optim_llm.prompts import PromptSet, batches, load_prompt_set
from inference_optim_llm.telemetry import NvmlSampler, unavailable

SCHEMA_VERSION = 1


@dataclass
class BenchSpec:
    """One benchmark target. Built by Snakemake (common.smk) or by the CLI's `run` flags."""
    model: str
    model_dir: str
    engine: str
    prompt_set: str
    prompt_spec: dict                 # {"file": path} or {"tokens": N, "count": C}
    batch_size: int
    max_new_tokens: int
    repetitions: int = 3
    warmup: int = 1
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    telemetry_interval_s: float = 0.05
    strict: bool = False              # unavailable engine / OOM: error instead of a recorded status
    refuse_busy_gpu: bool = False
    record_token_times: bool = True
    engine_options: dict = field(default_factory=dict)
    artifact_dir: str | None = None
    reference: str | None = None      # reference tokens file, for token agreement
    calibration: str | None = None    # measured bandwidth file (calibrate), for the limit
    trust_remote_code: bool = False   # the config's models.<name>.trust_remote_code, for this run

    def __post_init__(self):
        """The same bounds as the configuration schema (bounds.py), so the CLI's `run` and `bench` accept
        what a config accepts and nothing else."""
        check_name(self.model)
        check_name(self.prompt_set, "prompt set name")
        if self.engine not in ENGINES:
            raise ValueError(f"engine: unknown engine {self.engine!r} (available: {', '.join(ENGINES)})")
        bounds.check("$defs.batch_size", self.batch_size, "batch_size")
        for key in ("max_new_tokens", "repetitions", "warmup", "seed", "telemetry_interval_s", "dtype"):
            bounds.check(f"benchmark.{key}", getattr(self, key), key)
        check_device(self.device)
        if "file" in self.prompt_spec:
            bounds.check("$defs.prompt_limit", self.prompt_spec.get("limit", 1), "prompt limit")
        else:
            bounds.check("$defs.prompt_tokens", self.prompt_spec.get("tokens"), "prompt tokens")
            bounds.check("$defs.prompt_count", self.prompt_spec.get("count", 1), "prompt count")
        check_options(self.engine, self.engine_options)
        if not isinstance(self.trust_remote_code, bool):
            raise ValueError(f"trust_remote_code: {self.trust_remote_code!r} is not a boolean")

    @classmethod
    def from_json(cls, text: str) -> "BenchSpec":
        data = json.loads(text)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown benchmark spec keys: {', '.join(sorted(unknown))}")
        return cls(**data)


def engine_settings(spec: BenchSpec, device: str, dtype: str, max_input_len: int,
                    record_token_times: bool | None = None) -> EngineSettings:
    """The one place a target's spec becomes an engine's settings (benchmark, reference and build jobs)."""
    return EngineSettings(
        model_dir=Path(spec.model_dir), device=device, dtype=dtype, max_batch_size=spec.batch_size,
        max_input_len=max_input_len, max_new_tokens=spec.max_new_tokens, seed=spec.seed,
        record_token_times=spec.record_token_times if record_token_times is None else record_token_times,
        options=spec.engine_options, artifact_dir=Path(spec.artifact_dir) if spec.artifact_dir else None,
        trust_remote_code=spec.trust_remote_code)


def check_context(ps: PromptSet, max_new_tokens: int, model_dir: str) -> None:
    limit = model_facts(Path(model_dir)).get("max_position_embeddings")
    longest = ps.longest
    if limit and longest + max_new_tokens > limit:
        raise ValueError(f"prompt set {ps.name!r}: longest prompt ({longest} tokens) + max_new_tokens "
                         f"({max_new_tokens}) exceeds the model's context ({limit} tokens)")


def prepare(spec: BenchSpec) -> tuple[str, str, PromptSet]:
    """Device, dtype, the tokenized prompt set checked against the model's context, and the
    intermediates this target reads: the cheap checks that fail before any model is loaded."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    tokenizer = load_tokenizer(Path(spec.model_dir), spec.trust_remote_code)
    ps = load_prompt_set(spec.prompt_set, spec.prompt_spec, tokenizer, spec.seed)
    if ps.notes:
        log(f"prompt file {spec.prompt_spec['file']}: {describe_notes(ps.notes)}")
    check_context(ps, spec.max_new_tokens, spec.model_dir)
    if spec.calibration:
        read_calibration(spec.calibration)
    if spec.reference:
        read_reference(spec.reference, spec.max_new_tokens, len(ps.token_ids))
    return device, dtype, ps


def describe_notes(notes: dict) -> str:
    """What reading a prompt file dropped or changed, in words (nothing hidden)."""
    said = {k: v for k, v in notes.items() if k not in ("lines", "prompts") and v}
    return (f"{notes['prompts']} prompts from {notes['lines']} lines"
            + (", " + ", ".join(f"{k} {v}" for k, v in said.items()) if said else ", nothing dropped or changed"))


def base_result(spec: BenchSpec, device: str, dtype: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "ok",
        "reason": None,
        "target": {"model": spec.model, "engine": spec.engine, "prompt_set": spec.prompt_set,
                   "batch_size": spec.batch_size},
        "settings": {"max_new_tokens": spec.max_new_tokens, "repetitions": spec.repetitions,
                     "warmup": spec.warmup, "seed": spec.seed, "device": device, "dtype": dtype,
                     "telemetry_interval_s": spec.telemetry_interval_s,
                     "record_token_times": spec.record_token_times, "engine_options": spec.engine_options},
        "model": model_facts(Path(spec.model_dir)),
        "provenance": provenance.collect(vars(spec)),
    }


def run(spec: BenchSpec) -> tuple[dict, list[dict]]:
    """Returns (result, per-request JSONL records). Raises on bad input or a wrong token count;
    an unavailable engine or an out-of-memory error becomes a status unless spec.strict."""
    import torch

    device, dtype, ps = prepare(spec)
    result = base_result(spec, device, dtype)
    result["settings"]["prompt_tokens_mean"] = sum(map(len, ps.token_ids)) / len(ps.token_ids)
    result["settings"]["prompts"] = len(ps.token_ids)
    if ps.notes is not None:
        result["settings"]["prompt_file"] = ps.notes
    result["settings"]["padding"] = padding(len(ps.token_ids), spec.batch_size)

    settings = engine_settings(spec, device, dtype, ps.longest)
    torch.manual_seed(spec.seed)
    engine = engine_class(spec.engine)(settings)
    try:
        t = time.perf_counter()
        engine.load()
        result["load_s"] = time.perf_counter() - t
        log(f"{spec.engine} loaded in {result['load_s']:.1f} s on {device} ({dtype})")
        measured = _measure(engine, spec, ps)
    except EngineUnavailable as e:
        if spec.strict:
            raise
        return _not_run(result, "unavailable", str(e)), []
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e) or spec.strict:
            raise
        return _not_run(result, "oom", str(e).strip().splitlines()[0][:500]), []
    finally:
        try:
            engine.close()
        except Exception as e:  # never hide the original error behind a failed clean-up
            log(f"engine close failed: {e}")
    result.update(measured["result"])
    calib = read_calibration(spec.calibration) if spec.calibration else None
    result["bandwidth"] = bandwidth.decode_bandwidth(
        result["model"], dtype, spec.batch_size, result["settings"]["prompt_tokens_mean"], spec.max_new_tokens,
        result["metrics"]["tpot_s"]["median"], calib, result["provenance"]["gpu_name"])
    # With one new token there is no decode step: nothing compiled ran, no decode figure exists.
    result["decode_steps_per_request"] = spec.max_new_tokens - 1
    if getattr(engine, "cache_loaded", None) is not None and spec.max_new_tokens > 1:
        result["compile_cache_loaded"] = engine.cache_loaded
    if spec.reference:
        ref = read_reference(spec.reference, spec.max_new_tokens, len(ps.token_ids))
        result["agreement"] = {"reference_engine": ref["engine"], "reference_batch_size": ref["batch_size"],
                               **metrics.token_agreement(measured["first_outputs"], ref["tokens"])}
    return result, measured["records"]


class GpuBusyError(ValueError):
    """Other processes use the GPU and the configuration refuses to measure then."""


def check_busy(busy: dict | None, refuse: bool) -> None:
    """busy: NvmlSampler.busy_state() read before measuring (None without NVML). It is recorded in every
    result (telemetry.gpu_busy_at_start); with refuse_busy_gpu the run stops instead."""
    if refuse and busy and busy["busy"]:
        others = ", ".join(f"pid {p['pid']} ({p['memory_mb'] or 0:.0f} MiB)" for p in busy["other_processes"])
        raise GpuBusyError(f"the GPU is busy ({others}; {busy['utilization_pct']}% utilisation): "
                           "benchmark.refuse_busy_gpu is true, so nothing was measured")


def _not_run(result: dict, status: str, reason: str) -> dict:
    log(f"status {status}: {reason}")
    result.update(status=status, reason=reason, metrics=None, requests=[], batches=[], bandwidth=None,
                  telemetry=unavailable(f"not measured: {status}").as_dict())
    return result


def padding(n_prompts: int, batch_size: int) -> dict:
    """Static batches are always full: when the batch size does not divide the prompt set, the last
    batch is filled with the first prompts again. Those padding requests run (the batch's throughput
    counts them, as the hardware did the work) but are left out of the per-request statistics, so no
    prompt weighs twice in TTFT, TPOT or latency."""
    plan = batches(n_prompts, batch_size)
    padded = sum(len(b) for b in plan) - n_prompts
    return {"batches_per_repetition": len(plan), "padding_requests_per_repetition": padded,
            "padding_prompt_indices": plan[-1][len(plan[-1]) - padded:] if padded else []}


def _measure(engine, spec: BenchSpec, ps: PromptSet) -> dict:
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


def reference_tokens(spec: BenchSpec) -> dict:
    """Greedy tokens of the baseline engine at batch 1 for every prompt of the set: what other engines'
    outputs are compared with."""
    device, dtype, ps = prepare(spec)
    settings = engine_settings(spec, device, dtype, ps.longest, record_token_times=False)
    engine = engine_class("baseline")(settings)
    engine.load()
    tokens = []
    for k, ids in enumerate(ps.token_ids):
        out = engine.generate([ids], spec.max_new_tokens)
        metrics.check_token_counts(out.tokens, spec.max_new_tokens)
        tokens.append(out.tokens[0])
        log(f"reference {k + 1}/{len(ps.token_ids)}")
    engine.close()
    ref = {"engine": "baseline", "batch_size": 1, "device": device, "dtype": dtype,
           "max_new_tokens": spec.max_new_tokens, "tokens": tokens}
    return check_reference(ref, "reference", spec.max_new_tokens, len(ps.token_ids))  # checked as it will be read
