# Glue between Snakemake and the package's plan of the matrix (inference_optim_llm/plan.py): wildcard
# vocabularies and input functions. Specs are built and checked in the package. No rules here.
import re

from inference_optim_llm.engines import ENGINES
from inference_optim_llm.plan import Plan, gpus_of, weights_of

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


def prompt_inputs(wildcards):
    return PLAN.prompt_files([wildcards.prompt_set])


def reference_input(wildcards):
    return PLAN.reference_input(wildcards.model, wildcards.prompt_set) or []


def artifact_dir(wildcards):
    return PLAN.artifact_input(wildcards.model, wildcards.engine) or []


def calibration_input(wildcards):
    return PLAN.calibration_input() or []


def engine_report_title(wildcards):
    return f"Inference-Optim-LLM: {wildcards.engine}"


def build_prompt_inputs(wildcards):
    return PLAN.build_prompt_files(wildcards.model, wildcards.engine)


# Specs are built and checked by the plan; the scripts receive them as plain data (params), never
# through a shell line.
def build_spec(wildcards):
    return PLAN.build_spec(wildcards.model, wildcards.engine)


def bench_spec(wildcards):
    return PLAN.bench_spec(wildcards.model, wildcards.engine, wildcards.prompt_set, int(wildcards.batch),
                           gpus_of(wildcards.tp), weights_of(wildcards.wq))


def gpus_wanted(wildcards):
    return gpus_of(wildcards.tp)


def reference_gpus_wanted(wildcards):
    return PLAN.reference_gpus(wildcards.model)


def serve_spec(wildcards):
    return PLAN.serve_spec(wildcards.model, wildcards.server, wildcards.prompt_set, wildcards.load)


def serving_model_input(wildcards):
    return PLAN.serving_model_input(wildcards.model, wildcards.server)


def trust_remote_code(wildcards):
    return PLAN.trust_remote_code(wildcards.model)


def serving_results():
    return PLAN.serving_results()


def reference_spec(wildcards):
    return PLAN.reference_spec(wildcards.model, wildcards.prompt_set)


PLAN.check()
