"""A result: assembled from what a scenario measured, checked against inference_optim_llm/schemas/result.schema.json,
then written. The one place a result's fields are named; the scenarios measure, this module records."""
from __future__ import annotations

from pathlib import Path

import jsonschema

from inference_optim_llm import bandwidth, metrics, provenance
from inference_optim_llm.engines import ENGINES
from inference_optim_llm.hostfacts import log
from inference_optim_llm.io import write_json, write_jsonl
from inference_optim_llm.models import model_facts
from inference_optim_llm.telemetry import unavailable

SCHEMA_VERSION = 1


def base(spec, device: str, dtype: str) -> dict:
    """What every result of a target holds, measured or not: the target, its settings, the model, provenance."""
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


def not_run(result: dict, status: str, reason: str) -> dict:
    """An engine that could not run here (`unavailable`) or ran out of memory (`oom`): the reason, no figure."""
    log(f"status {status}: {reason}")
    result.update(status=status, reason=reason, metrics=None, requests=[], batches=[], bandwidth=None,
                  telemetry=unavailable(f"not measured: {status}").as_dict())
    return result


def telemetry(m, engine: str, device: str) -> dict:
    """NVML's figures over the timed phase, energy per output token, and the engine's own memory figure;
    every figure that is None has its reason."""
    tel = m.telemetry.as_dict()
    total_tokens = sum(b.output_tokens for b in m.batches)
    tel["energy_per_token_j"] = tel["energy_j"] / total_tokens if tel["energy_j"] is not None else None
    if tel["energy_per_token_j"] is None:
        tel["null_reasons"]["energy_per_token_j"] = tel["null_reasons"].get("energy_j", "no energy figure")
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
    tel = telemetry(m, target["engine"], result["settings"]["device"])
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
    })
    records = [{"prompt": texts[r["prompt_index"]], "latency": r["e2e_s"], "tokens": r["output_tokens"],
                "memory_mb": tel["gpu_memory_peak_mb"], "power_w": tel["power_mean_w"], "tps": r["tps"],
                "ttft": r["ttft_s"], "engine": target["engine"], "batch_size": target["batch_size"],
                "padding": r["padding"]} for r in requests]
    return result, records


def add_bandwidth(result: dict, calibration: dict | None) -> None:
    s = result["settings"]
    result["bandwidth"] = bandwidth.decode_bandwidth(
        result["model"], s["dtype"], result["target"]["batch_size"], s["prompt_tokens_mean"], s["max_new_tokens"],
        result["metrics"]["tpot_s"]["median"], calibration, result["provenance"]["gpu_name"])


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
    beside the output as NAME.invalid.json (never lost, never satisfying the target) and the job fails.
    The JSONL first: the JSON result is what satisfies a target, so it is written last."""
    from inference_optim_llm.report import ResultFileError, check_result
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
