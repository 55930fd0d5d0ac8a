"""A result: assembled from what a scenario measured, checked against inference_optim_llm/schemas/result.schema.json,
then written. The one place a result's fields are named; the scenarios measure, this module records."""
from __future__ import annotations

from pathlib import Path

import jsonschema

from inference_optim_llm import bandwidth, interference, metrics, provenance
from inference_optim_llm.engines import ENGINES
from inference_optim_llm.hostfacts import log
from inference_optim_llm.io import write_json, write_jsonl
from inference_optim_llm.models import model_facts
from inference_optim_llm.spec import INTERFERENCE_KEYS, TRUST_KEYS
from inference_optim_llm.stats import summarize
from inference_optim_llm.telemetry import unavailable

SCHEMA_VERSION = 1


def base(spec, device: str, dtype: str) -> dict:
    """What every result of a target holds, measured or not: the target, its settings, the model, provenance."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "ok",
        "reason": None,
        "target": {"model": spec.model, "engine": spec.engine, "prompt_set": spec.prompt_set,
                   "batch_size": spec.batch_size, "gpus": spec.gpus, "weights": spec.weights},
        "settings": {"max_new_tokens": spec.max_new_tokens, "repetitions": spec.repetitions,
                     "warmup": spec.warmup, "seed": spec.seed, "device": device, "dtype": dtype,
                     "telemetry_interval_s": spec.telemetry_interval_s,
                     "record_token_times": spec.record_token_times, "engine_options": spec.engine_options,
                     **{k: getattr(spec, k) for k in TRUST_KEYS}},
        "model": model_facts(Path(spec.model_dir)),
        "provenance": provenance.collect(vars(spec)),
    }


def not_run(result: dict, status: str, reason: str) -> dict:
    """An engine that could not run here (`unavailable`) or ran out of memory (`oom`): the reason, no figure."""
    log(f"status {status}: {reason}")
    result.update(status=status, reason=reason, metrics=None, requests=[], batches=[], bandwidth=None,
                  telemetry=unavailable(f"not measured: {status}").as_dict())
    return result


def telemetry(m, engine: str, device: str, gpus: int = 1) -> dict:
    """NVML's figures over the timed phase, energy per output token, and the engine's own memory figure;
    every figure that is None has its reason."""
    tel = telemetry_of(m.telemetry, sum(b.output_tokens for b in m.batches), gpus)
    tel.update(m.memory)
    if tel.get("torch_peak_allocated_mb") is None:
        tel["null_reasons"]["torch_peak_allocated_mb"] = (
            "not a CUDA run" if not device.startswith("cuda") else f"{engine} allocates outside torch's allocator")
    return tel


def static_batches(result: dict, m, texts: list[str]) -> tuple[dict, list[dict]]:
    """Fill `result` from a static_batches.Measurement. Returns (result, the per-request JSONL records)."""
    N = m.requested_tokens
    requests = [{"repetition": r.repetition, "batch": r.batch, "prompt_index": r.prompt_index,
                 "prompt_tokens": r.prompt_tokens, **vars(r.timing), "padding": r.padding} for r in m.requests]
    batch_rows = [{"repetition": b.repetition, "batch": b.batch, "e2e_s": b.e2e_s, "output_tokens": b.output_tokens,
                   "output_tokens_per_s": b.output_tokens / b.e2e_s, "requests_per_s": b.requests / b.e2e_s}
                  for b in m.batches]
    target = result["target"]
    tel = telemetry(m, target["engine"], result["settings"]["device"], target.get("gpus", 1))
    counted = [r for r in requests if not r["padding"]]   # each prompt once per repetition
    generated = [r["output_tokens"] for r in requests]
    result.update({
        "warmup_s": m.warmup_s,
        "token_check": {"requested": N, "generated_min": min(generated), "generated_max": max(generated),
                        "all_exact": all(n == N for n in generated)},
        "metrics": metrics.aggregate(counted, batch_rows),
        "telemetry": tel,
        "requests": requests,
        "batches": batch_rows,
        # With one new token there is no decode step: nothing compiled ran, no decode figure exists.
        "decode_steps_per_request": N - 1,
        "stopping": m.stopping,
    })
    result["verdict"] = cell_verdict(result, m.cpu, result["metrics"]["output_tokens_per_s"])
    records = [{"prompt": texts[r["prompt_index"]], "latency": r["e2e_s"], "tokens": r["output_tokens"],
                "memory_mb": tel["gpu_memory_peak_mb"], "power_w": tel["power_mean_w"], "tps": r["tps"],
                "ttft": r["ttft_s"], "engine": target["engine"], "batch_size": target["batch_size"],
                "padding": r["padding"]} for r in requests]
    return result, records


def add_bandwidth(result: dict, calibration: dict | None) -> None:
    s = result["settings"]
    result["bandwidth"] = bandwidth.decode_bandwidth(
        result["model"], s["dtype"], result["target"]["batch_size"], s["prompt_tokens_mean"], s["max_new_tokens"],
        result["metrics"]["tpot_s"]["median"], calibration, result["provenance"]["gpu_name"],
        result["target"].get("gpus", 1), result["target"].get("weights", "default"))


def add_agreement(result: dict, first_outputs: list[list[int]], reference: dict) -> None:
    result["agreement"] = {"reference_engine": reference["engine"], "reference_batch_size": reference["batch_size"],
                           **metrics.token_agreement(first_outputs, reference["tokens"])}


def add_engine_fields(result: dict, engine: str, fields: dict) -> None:
    """An engine's own result fields (Engine.result_fields()), each declared in its registry entry under
    `result_fields` with a JSON schema; an undeclared or malformed one is an error, never written."""
    declared = ENGINES[engine].get("result_fields", {})
    for key, value in fields.items():
        if key not in declared:
            raise ValueError(f"engine {engine!r} returned result field {key!r}, which its registry entry does "
                             f"not declare (declared: {', '.join(declared) or 'none'})")
        if key in result:
            raise ValueError(f"engine {engine!r}: result field {key!r} would replace a field of every result")
        try:
            jsonschema.validate(value, declared[key])
        except jsonschema.ValidationError as e:
            raise ValueError(f"engine {engine!r} result field {key!r}: {e.message}") from None
        result[key] = value


def write(result: dict, records: list[dict], output: str | None, records_out: str | None) -> None:
    """The result is checked against its schema before it is written. One that does not match is kept
    beside the output as NAME.invalid.json (never lost, never satisfying the target) and the job fails;
    so is an interfered cell when benchmark.on_interference is fail (NAME.interfered.json).
    The JSONL first: the JSON result is what satisfies a target, so it is written last."""
    from inference_optim_llm.report import ResultFileError, check_result
    verdict = result.get("verdict") or {}
    if verdict.get("status") == "interfered" and result["settings"].get("on_interference") == "fail":
        kept = Path(output or "result.json").with_suffix(".interfered.json")
        write_json(kept, result)
        raise interference.InterferenceError(f"interfered ({'; '.join(verdict['reasons'])}) and "
                                             f"benchmark.on_interference is fail: kept as {kept}, not as the result")
    if records_out:
        write_jsonl(records_out, records)
    try:
        check_result(result, "the measured result")
    except ResultFileError as e:
        kept = Path(output or "result.json").with_suffix(".invalid.json")
        write_json(kept, result)
        raise ResultFileError(f"{e}; kept as {kept}") from None
    if output:
        write_json(output, result)


# -- serving ---------------------------------------------------------------------------------------------

def serving_base(spec, device: str, dtype: str, entry) -> dict:
    """A serving result's fixed part: the target (model x server x prompt set x load), its settings, the
    server as configured, the model, provenance."""
    from inference_optim_llm.servers import redact_argv
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": "serving",
        "status": "ok",
        "reason": None,
        "target": {"model": spec.model, "server": spec.server, "prompt_set": spec.prompt_set, "load": spec.load},
        "settings": {"max_new_tokens": spec.max_new_tokens, "requests": spec.requests,
                     "min_duration_s": spec.min_duration_s, "ci_target_rel": spec.ci_target_rel,
                     "max_requests": spec.max_requests, "max_duration_s": spec.max_duration_s,
                     "warmup_requests": spec.warmup_requests,
                     "burstiness": spec.burstiness, "request_timeout_s": spec.request_timeout_s, "slo": spec.slo,
                     "seed": spec.seed, "device": device, "dtype": dtype,
                     "telemetry_interval_s": spec.telemetry_interval_s, **{k: getattr(spec, k) for k in INTERFERENCE_KEYS}},
        # the command as configured, secret-bearing flags' values hidden; the API key only by its variable
        "server": {"command": redact_argv(entry.command) if entry.command else None, "base_url": entry.base_url,
                   "api_key": f"from env {entry.api_key_env}" if entry.api_key_env else None,
                   "length_control": entry.length_control, "stream_unit": entry.stream_unit,
                   "started_by_job": not entry.external},
        "model": model_facts(Path(spec.model_dir)),
        "provenance": provenance.collect(vars(spec)),
    }


def serving_not_run(result: dict, status: str, reason: str) -> dict:
    log(f"status {status}: {reason}")
    result.update(status=status, reason=reason, metrics=None, requests=[],
                  telemetry=unavailable(f"not measured: {status}").as_dict())
    return result


def meets_slo(r: dict, slo: dict) -> bool:
    """A request counts towards goodput when it meets every objective given (a missing figure fails it)."""
    return all(r.get(key) is not None and r[key] <= bound for key, bound in slo.items())


def serving(result: dict, m, texts: list[str], prompt_tokens: list[int], slo: dict,
            stream_unit: str = "token") -> tuple[dict, list[dict]]:
    """Fill `result` from a scenarios.serving.ServingMeasurement; returns (result, JSONL records).

    Per request: TTFT = first token event - send; E2E = last token event - send; TPOT = (E2E - TTFT) / (N - 1);
    ITL = every gap between consecutive token events, pooled over the requests (stream_unit token; a server
    that streams several tokens to an event has chunk gaps instead, and no ITL). Throughput: all measured
    output tokens (requests) over the measured window, first send to last token. docs/serving.md."""
    N = m.requested_tokens
    t0 = min(r.sent_s for r in m.responses)
    requests, itl = [], []
    for r in m.responses:
        times = r.token_times_s
        itl.extend(b - a for a, b in zip(times, times[1:]))
        # TPOT needs a later event than the first: none when N is 1, or a chunked stream sent one event
        requests.append({"prompt_index": r.prompt_index, "prompt_tokens": prompt_tokens[r.prompt_index],
                         "sent_s": r.sent_s - t0, "ttft_s": times[0], "e2e_s": times[-1],
                         "tpot_s": (times[-1] - times[0]) / (N - 1) if N > 1 and len(times) > 1 else None,
                         "output_tokens": r.completion_tokens, "streamed_tokens": r.streamed_tokens,
                         "server_prompt_tokens": r.prompt_tokens, "finish_reason": r.finish_reason})
    for row in requests:
        row["meets_slo"] = meets_slo(row, slo)
    good = sum(row["meets_slo"] for row in requests)
    duration = m.duration_s
    tel = telemetry_of(m.telemetry, N * len(requests))

    def col(key):
        return [row[key] for row in requests if row[key] is not None]

    result.update({
        "load": {"concurrency": m.load.concurrency, "request_rate": m.load.rate,
                 "send_lag_max_s": m.send_lag_max_s,
                 # a server with prefix caching answers a repeated prompt faster: said, and in the report
                 "repeated_prompts": len(requests) - len({row["prompt_index"] for row in requests})},
        "token_check": {"requested": N, "generated_min": min(col("output_tokens")),
                        "generated_max": max(col("output_tokens")),
                        "all_exact": all(row["output_tokens"] == N for row in requests),
                        "checked_against": "usage and streamed events" if stream_unit == "token" else
                        "usage (events 1 to N: the server streams chunks)"},
        "metrics": {
            "ttft_s": summarize(col("ttft_s")), "tpot_s": summarize(col("tpot_s")),
            "itl_s": summarize(itl if stream_unit == "token" else []),
            "chunk_gap_s": summarize(itl) if stream_unit == "chunk" else None,
            "events_per_request": summarize(col("streamed_tokens")),
            "itl_null_reason": None if stream_unit == "token" else
            "the server streams several tokens to an event (stream_unit chunk): gaps between events are not "
            "per-token latencies (see chunk_gap_s)",
            "e2e_s": summarize(col("e2e_s")),
            "duration_s": duration, "requests": len(requests),
            "requests_per_s": len(requests) / duration,
            "output_tokens_per_s": N * len(requests) / duration,
            # Little's law: the mean number of requests in flight over the window.
            "mean_in_flight": sum(col("e2e_s")) / duration,
            "goodput": {"slo": slo, "requests_meeting_slo": good, "fraction": good / len(requests),
                        "requests_per_s": good / duration},
        },
        "warmup_requests_sent": len(m.warmup),
        "stopping": m.stopping,
        "telemetry": tel,
        "requests": requests,
    })
    result["verdict"] = cell_verdict(result, m.cpu, result["metrics"]["tpot_s"])
    records = [{"prompt": texts[row["prompt_index"]], "latency": row["e2e_s"], "tokens": row["output_tokens"],
                "memory_mb": tel["gpu_memory_peak_mb"], "power_w": tel["power_mean_w"],
                "tps": row["output_tokens"] / row["e2e_s"], "ttft": row["ttft_s"],
                "server": result["target"]["server"], "load": result["target"]["load"]} for row in requests]
    return result, records


# Whole-device figures that NVML read on the first GPU only: with more GPUs they would understate the cell.
DEVICE_TOTALS = ("gpu_memory_peak_mb", "gpu_memory_start_mb", "power_mean_w", "power_max_w", "energy_j",
                 "idle_power_w")


def telemetry_of(report, output_tokens: int, gpus: int = 1) -> dict:
    """The sampler's report, and energy per output token: in all, and above the GPU's idle power (the
    energy the GPU would have drawn anyway over the same span, idle_power_w x duration_s, taken off).
    The sampler reads one GPU: a cell on several has its power, energy and memory null, with the reason."""
    tel = report.as_dict()
    why = tel["null_reasons"]
    if gpus > 1:
        for key in DEVICE_TOTALS:
            if tel.get(key) is not None:
                tel[key] = None
                why[key] = (f"read on the first of the cell's {gpus} GPUs only (telemetry of several GPUs is "
                            "not built yet): a figure for one GPU would understate the cell")
    tel["energy_per_token_j"] = tel["energy_j"] / output_tokens if tel["energy_j"] is not None else None
    if tel["energy_per_token_j"] is None:
        why["energy_per_token_j"] = why.get("energy_j", "no energy figure")
    idle, duration = tel.get("idle_power_w"), tel.get("duration_s")
    if tel["energy_j"] is not None and idle is not None and duration:
        tel["energy_above_idle_j"] = tel["energy_j"] - idle * duration
        tel["energy_above_idle_per_token_j"] = tel["energy_above_idle_j"] / output_tokens
    else:
        tel["energy_above_idle_j"] = tel["energy_above_idle_per_token_j"] = None
        why["energy_above_idle_j"] = why["energy_above_idle_per_token_j"] = (
            why.get("energy_j") or why.get("idle_power_w") or "no timed span")
    return tel


def cell_verdict(result: dict, cpu: dict | None, headline: dict) -> dict:
    """interference.verdict from what the result holds: other processes' CPU use, other GPU processes at
    the start, throttle reasons seen, and the spread of the headline median (static: output tok/s over
    batches; serving: TPOT over requests)."""
    s, tel = result["settings"], result["telemetry"]
    ci = (headline or {}).get("ci95")
    return interference.verdict(cpu, tel.get("gpu_busy_at_start"), tel.get("throttle_reasons"),
                                ci["half_width_rel"] if ci else None, s["interference_cpu_cores"],
                                s["noisy_half_width_rel"], (tel.get("sm_clock_mean_mhz"), tel.get("sm_clock_max_mhz")))
