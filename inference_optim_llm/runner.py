"""A benchmark job: prepare the target (device, dtype, prompts, the intermediates it reads), load its engine,
hand it to the scenario that measures, and have results.py assemble the result. Also the reference tokens."""
from __future__ import annotations

import time
from pathlib import Path

from inference_optim_llm import metrics, results
from inference_optim_llm.engines import EngineUnavailable, check_gpus, check_weights, engine_class
from inference_optim_llm.hostfacts import is_out_of_memory, log, resolve_device, resolve_dtype
from inference_optim_llm.intermediates import check_reference, read_calibration, read_reference
from inference_optim_llm.models import load_tokenizer, model_facts
from inference_optim_llm.prompts import PromptSet, load_prompt_set
from inference_optim_llm.scenarios import static_batches
from inference_optim_llm.spec import BenchSpec, engine_settings


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


def run(spec: BenchSpec) -> tuple[dict, list[dict]]:
    """Returns (result, per-request JSONL records). Raises on bad input or a wrong token count;
    an unavailable engine or an out-of-memory error becomes a status unless spec.strict."""
    import torch

    device, dtype, ps = prepare(spec)
    result = results.base(spec, device, dtype)
    result["settings"]["prompt_tokens_mean"] = sum(map(len, ps.token_ids)) / len(ps.token_ids)
    result["settings"]["prompts"] = len(ps.token_ids)
    if ps.notes is not None:
        result["settings"]["prompt_file"] = ps.notes
    result["settings"]["padding"] = static_batches.padding(len(ps.token_ids), spec.batch_size)

    torch.manual_seed(spec.seed)
    engine = engine_class(spec.engine)(engine_settings(spec, device, dtype, ps.longest))
    try:
        check_gpus(spec.engine, spec.gpus)
        check_weights(spec.engine, spec.weights)
        t = time.perf_counter()
        engine.load()
        result["load_s"] = time.perf_counter() - t
        log(f"{spec.engine} loaded in {result['load_s']:.1f} s on {device} ({dtype})")
        measured = static_batches.measure(engine, spec, ps)
        engine_fields = engine.result_fields()
    except EngineUnavailable as e:
        if spec.strict:
            raise
        return results.not_run(result, "unavailable", str(e)), []
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_out_of_memory(e) or spec.strict:
            raise
        return results.not_run(result, "oom", str(e).strip().splitlines()[0][:500]), []
    finally:
        try:
            engine.close()
        except Exception as e:  # never hide the original error behind a failed clean-up
            log(f"engine close failed: {e}")
    result, records = results.static_batches(result, measured, ps.texts)
    results.add_bandwidth(result, read_calibration(spec.calibration) if spec.calibration else None)
    results.add_engine_fields(result, spec.engine, engine_fields)
    if spec.reference:
        ref = read_reference(spec.reference, spec.max_new_tokens, len(ps.token_ids))
        results.add_agreement(result, measured.first_outputs, ref)
    return result, records


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


def run_serving(spec, server_log: str | Path) -> tuple[dict, list[dict]]:
    """A serving target: start the server (unless it runs elsewhere), drive one load point, stop it.
    Returns (result, JSONL records). A server whose program is missing is recorded `unavailable`."""
    from inference_optim_llm.client import client_floor, payload
    from inference_optim_llm.prompts import serving_prompts
    from inference_optim_llm.scenarios import serving
    from inference_optim_llm.servers import (HIDDEN, Server, ServerEntry, ServerUnavailable, Unauthorized, api_key,
                                             auth_error, free_port, redact_argv, render)

    entry = ServerEntry.from_config(spec.server, spec.server_entry)
    key = api_key(entry)   # read here, in the job: only the variable's name travels in the spec
    headers = {"Authorization": f"Bearer {key}"} if key else None
    load = serving.Load.parse(spec.load)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    tokenizer = load_tokenizer(Path(spec.model_dir), spec.trust_remote_code)
    ps = load_prompt_set(spec.prompt_set, spec.prompt_spec, tokenizer, spec.seed)
    check_context(ps, spec.max_new_tokens, spec.model_dir)
    texts, prompt_tokens = serving_prompts(ps, tokenizer, spec.seed)
    result = results.serving_base(spec, device, dtype, entry)
    result["settings"]["prompts"] = len(texts)
    result["settings"]["prompt_tokens_mean"] = sum(prompt_tokens) / len(prompt_tokens)
    result["client_floor"] = client_floor(tokens=spec.max_new_tokens)
    log(f"client floor: TTFT {result['client_floor']['ttft_s']}, ITL {result['client_floor']['itl_s']} s")

    host = "127.0.0.1"
    values = {"model_dir": str(Path(spec.model_dir).absolute()), "model": spec.model, "host": host,
              "device": device, "dtype": dtype}
    request_model = render(entry.request_model, **values)

    def measure(base_url: str, sample_gpu: str | None, pids=frozenset()):
        url = base_url.rstrip("/") + "/v1/completions"
        bodies = [payload(request_model, t, spec.max_new_tokens, entry.length_control) for t in texts]
        return serving.measure(url, lambda i: bodies[i], prompt_tokens, spec, load, sample_gpu, pids, headers)

    try:
        if entry.external:
            result["server"]["log"] = None
            measured = measure(entry.base_url, f"the server runs elsewhere ({entry.base_url}): its GPU is not "
                                               "this host's")
        else:
            port = free_port(host)
            argv = [render(a, port=port, api_key=key or "", **values) for a in entry.command]
            shown = [render(a, port=port, api_key=HIDDEN, **values) for a in entry.command]
            result["server"].update(argv=redact_argv(shown, [key]), log=str(server_log))
            server = Server(argv, Path(server_log), f"http://{host}:{port}", entry.health_path,
                            entry.start_timeout_s, entry.env, requires=entry.requires, secrets=[key] if key else [],
                            headers=headers)
            with server as base_url:
                measured = measure(base_url, None, server.pids())
    except Unauthorized as e:
        raise auth_error(entry, e.status) from None
    except ServerUnavailable as e:
        if spec.strict:
            raise
        return results.serving_not_run(result, "unavailable", str(e)), []
    return results.serving(result, measured, texts, prompt_tokens, spec.slo, entry.stream_unit)
