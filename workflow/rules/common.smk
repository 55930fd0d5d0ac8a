# Glue between Snakemake and the package's plan of the matrix (inference_optim_llm/plan.py): wildcard
# vocabularies and input functions. Specs are built and checked in the package. No rules here.
import json
import re
import shlex

from inference_optim_llm.engines import ENGINES
from inference_optim_llm.plan import Plan

PLAN = Plan(config)
BENCH = config["benchmark"]
ENGINE_NAMES = list(ENGINES)
# The image every rule runs in under --use-singularity (pinned; a local .sif path works too).
CONTAINER = config["container"]


def _alternatives(values):
    return "|".join(sorted(re.escape(str(v)) for v in values))


def all_results():
    return PLAN.all_results()


def engine_result_paths(engine):
    return PLAN.engine_result_paths(engine)


def engine_results(wildcards):
    return PLAN.engine_result_paths(wildcards.engine)


def model_dir(wildcards):
    return f"resources/models/{wildcards.model}"


def model_source(wildcards):
    return config["models"][wildcards.model]["source"]


def fetch_flags(wildcards):
    """Extra download-model flags, each value quoted for the shell. (Whether a model's code is trusted is
    not the download's business: each job that loads the model gets its config's trust_remote_code.)"""
    flags = [f"--local-root {shlex.quote(r)}" for r in config["local_model_roots"]]
    flags.append(f"--network-timeout-s {config['network_timeout_s']}")
    return " ".join(flags)


def prompt_inputs(wildcards):
    return PLAN.prompt_files([wildcards.prompt_set])


def reference_input(wildcards):
    return PLAN.reference_input(wildcards.model, wildcards.prompt_set) or []


def artifact_dir(wildcards):
    return PLAN.artifact_input(wildcards.model, wildcards.engine) or []


def calibration_input(wildcards):
    return PLAN.calibration_input() or []


def calibration_flag(wildcards):
    return f"--calibration {shlex.quote(PLAN.calibration_input())}" if BENCH["calibrate"] else ""


def build_prompt_inputs(wildcards):
    return PLAN.build_prompt_files(wildcards.model, wildcards.engine)


# Specs travel to the job as one shell-quoted JSON argument; they are built and checked by the plan.
def build_spec(wildcards):
    return json.dumps(PLAN.build_spec(wildcards.model, wildcards.engine), sort_keys=True)


def bench_spec(wildcards):
    spec = PLAN.bench_spec(wildcards.model, wildcards.engine, wildcards.prompt_set, int(wildcards.batch))
    return json.dumps(spec, sort_keys=True)


def reference_spec(wildcards):
    return json.dumps(PLAN.reference_spec(wildcards.model, wildcards.prompt_set), sort_keys=True)


PLAN.check()
