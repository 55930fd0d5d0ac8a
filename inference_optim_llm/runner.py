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
from inference_optim_llm.prompts import PromptSet, load_prompt_set
from inference_optim_llm.scenarios import static_batches
from inference_optim_llm.telemetry import unavailable

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
    result["settings"]["padding"] = static_batches.padding(len(ps.token_ids), spec.batch_size)

    settings = engine_settings(spec, device, dtype, ps.longest)
    torch.manual_seed(spec.seed)
    engine = engine_class(spec.engine)(settings)
    try:
        t = time.perf_counter()
        engine.load()
        result["load_s"] = time.perf_counter() - t
        log(f"{spec.engine} loaded in {result['load_s']:.1f} s on {device} ({dtype})")
        measured = static_batches.measure(engine, spec, ps)
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


def _not_run(result: dict, status: str, reason: str) -> dict:
    log(f"status {status}: {reason}")
    result.update(status=status, reason=reason, metrics=None, requests=[], batches=[], bandwidth=None,
                  telemetry=unavailable(f"not measured: {status}").as_dict())
    return result


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
