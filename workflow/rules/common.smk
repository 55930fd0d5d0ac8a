# Helpers: the matrix, wildcard vocabularies, input functions, per-target specs. No rules here.
import json
import re
import shlex
from functools import cache
from itertools import product
from pathlib import Path

from inference_optim_llm.engines import ENGINES, build_key, built_engines, check_options, runtime_options
from inference_optim_llm.intermediates import IntermediateError, check_existing
from inference_optim_llm.models import ModelSourceError, check_prompt_lengths, check_source
from inference_optim_llm.prompts import PromptError, read_prompt_file

BENCH = config["benchmark"]
ENGINE_NAMES = list(ENGINES)
# The image every rule runs in under --use-singularity (pinned; a local .sif path works too).
CONTAINER = config["container"]


def _check_config():
    """What the JSON schema cannot say: cross-references, files and model sources. Errors name the key."""
    for i, block in enumerate(config["matrix"]):
        for key, known in (("models", config["models"]), ("prompt_sets", config["prompt_sets"])):
            for name in block[key]:
                if name not in known:
                    raise ValueError(
                        f"config matrix[{i}].{key}: {name!r} is not defined under {key}: "
                        f"(defined: {', '.join(known)})"
                    )
    registered = ", ".join(ENGINES)
    for i, block in enumerate(config["matrix"]):
        for name in block["engines"]:
            if name not in ENGINES:
                raise ValueError(f"config matrix[{i}].engines: {name!r} is not a registered engine ({registered})")
    for name in list(config.get("engines") or []) + list(config["engine_options"]):
        if name not in ENGINES:
            raise ValueError(f"config engines / engine_options: {name!r} is not a registered engine ({registered})")
    in_matrix = sorted({e for block in config["matrix"] for e in block["engines"]})
    for name in config.get("engines") or []:
        if name not in in_matrix:
            raise ValueError(
                f"config engines: {name!r} is not an engine of the matrix (its engines: {', '.join(in_matrix)})"
            )
    used_sets = {p for block in config["matrix"] for p in block["prompt_sets"]}
    for name, spec in config["prompt_sets"].items():
        if "file" in spec and name in used_sets:
            try:
                read_prompt_file(spec["file"])
            except PromptError as e:
                raise ValueError(f"config prompt_sets.{name}.file: {e}") from None
    for name, spec in config["models"].items():
        try:
            check_source(name, spec["source"], local_roots())
        except ModelSourceError as e:
            raise ValueError(f"config {e}") from None
    for engine, options in config["engine_options"].items():
        check_options(engine, options, "config engine_options")
    check_prompt_lengths(config, cells(), local_roots())
    try:  # existing intermediates: a corrupt one stops the run here, before any result is deleted
        check_existing(
            ["results/calibration/bandwidth.json"] if BENCH["calibrate"] else [],
            sorted({reference_path(m, p) for m, _, p, _ in cells()}) if BENCH["token_agreement"] else [],
            [f"resources/models/{m}" for m in sorted({c[0] for c in cells()})],
            sorted({f"resources/engines/{m}/{e}" for m, e, _, _ in cells() if e in BUILT_ENGINES}),
            all_results(),
        )
    except IntermediateError as e:
        raise ValueError(f"intermediate file {e}") from None


def local_roots():
    return [Path(r) for r in config["local_model_roots"]]


def cells():
    """Every (model, engine, prompt_set, batch_size) of the matrix, once, in config order; only the
    engines that the optional `engines` key names."""
    only = config.get("engines")
    seen = {}
    for block in config["matrix"]:
        for cell in product(
            block["models"], block["engines"], block["prompt_sets"], block["batch_sizes"]
        ):
            if only is None or cell[1] in only:
                seen.setdefault(cell, None)
    return list(seen)


def result_path(model, engine, prompt_set, batch):
    return f"results/runs/{model}/{engine}/{prompt_set}/bs{batch}.json"


def all_results():
    return [result_path(*c) for c in cells()]


def engine_cells(engine):
    """One engine's cells; an engine absent from the (selected) matrix gets the matrix's cells, so that
    `snakemake trtllm` on any config shows what that engine does (or why it cannot run)."""
    mine = [c for c in cells() if c[1] == engine]
    return mine or sorted({(m, engine, p, b) for m, _, p, b in cells()})


def engine_result_paths(engine):
    return [result_path(*c) for c in engine_cells(engine)]


def engine_results(wildcards):
    return engine_result_paths(wildcards.engine)


def _alternatives(values):
    return "|".join(sorted(re.escape(str(v)) for v in values))


def model_dir(wildcards):
    return f"resources/models/{wildcards.model}"


def model_source(wildcards):
    return config["models"][wildcards.model]["source"]


def fetch_flags(wildcards):
    """Extra download-model flags, each value quoted for the shell. (Whether a model's code is trusted is
    not the fetch's business: each job that loads the model passes its config's trust_remote_code.)"""
    flags = [f"--local-root {shlex.quote(r)}" for r in config["local_model_roots"]]
    flags.append(f"--network-timeout-s {config['network_timeout_s']}")
    return " ".join(flags)


def prompt_inputs(wildcards):
    spec = config["prompt_sets"][wildcards.prompt_set]
    return [spec["file"]] if "file" in spec else []


def reference_path(model, prompt_set):
    return f"results/reference/{model}/{prompt_set}.json"


def reference_input(wildcards):
    if not BENCH["token_agreement"]:
        return []
    return reference_path(wildcards.model, wildcards.prompt_set)


BUILT_ENGINES = built_engines()  # their benchmark jobs need a build_engine artifact


def artifact_dir(wildcards):
    if wildcards.engine not in BUILT_ENGINES:
        return []
    return f"resources/engines/{wildcards.model}/{wildcards.engine}"


def calibration_input(wildcards):
    return "results/calibration/bandwidth.json" if BENCH["calibrate"] else []


def calibration_flag(wildcards):
    return f"--calibration {shlex.quote(calibration_input(wildcards))}" if BENCH["calibrate"] else ""


def build_spec(wildcards):
    """What changes the artifact: the model, the shapes the matrix uses with it, dtype, device, options."""
    mine = [c for c in engine_cells(wildcards.engine) if c[0] == wildcards.model]
    spec = {
        "model_dir": f"resources/models/{wildcards.model}",
        "batch_sizes": sorted({c[3] for c in mine}),
        "prompt_sets": {p: config["prompt_sets"][p] for p in sorted({c[2] for c in mine})},
        "max_new_tokens": BENCH["max_new_tokens"],
        "seed": BENCH["seed"],
        "device": BENCH["device"],
        "dtype": BENCH["dtype"],
        "engine_options": engine_options(wildcards.engine),
        "strict": BENCH["strict"],
        "trust_remote_code": trust_remote_code(wildcards.model),
    }
    # Host facts the artifact depends on (versions, GPU): part of the between-workflow cache key.
    spec.update(host_build_key(wildcards.engine))
    return json.dumps(spec, sort_keys=True)


@cache  # host facts for the build keys: read once per workflow, not once per job
def host_build_key(engine):
    return build_key(engine, config["engine_options"].get(engine, {}))


def build_prompt_inputs(wildcards):
    mine = {c[2] for c in engine_cells(wildcards.engine) if c[0] == wildcards.model}
    return [config["prompt_sets"][p]["file"] for p in sorted(mine) if "file" in config["prompt_sets"][p]]


def _spec(wildcards, engine, batch_size, reference, calibration=None, artifact=None):
    spec = {
        "model": wildcards.model,
        "model_dir": f"resources/models/{wildcards.model}",
        "engine": engine,
        "prompt_set": wildcards.prompt_set,
        "prompt_spec": config["prompt_sets"][wildcards.prompt_set],
        "batch_size": batch_size,
        "max_new_tokens": BENCH["max_new_tokens"],
        "repetitions": BENCH["repetitions"],
        "warmup": BENCH["warmup"],
        "seed": BENCH["seed"],
        "device": BENCH["device"],
        "dtype": BENCH["dtype"],
        "telemetry_interval_s": BENCH["telemetry_interval_s"],
        "strict": BENCH["strict"],
        "refuse_busy_gpu": BENCH["refuse_busy_gpu"],
        "engine_options": engine_options(engine),
        "reference": reference,
        "calibration": calibration,
        "artifact_dir": artifact,
        "trust_remote_code": trust_remote_code(wildcards.model),
    }
    return json.dumps(spec, sort_keys=True)


def trust_remote_code(model):
    return bool(config["models"][model].get("trust_remote_code", False))


def engine_options(engine):
    return runtime_options(engine, config["engine_options"].get(engine, {}))


def bench_spec(wildcards):
    return _spec(
        wildcards,
        wildcards.engine,
        int(wildcards.batch),
        reference_input(wildcards) or None,
        calibration_input(wildcards) or None,
        artifact_dir(wildcards) or None,
    )


def reference_spec(wildcards):
    return _spec(wildcards, "baseline", 1, None)


_check_config()
