# Inference-Optim-LLM: set-up and targets only. The stages are in workflow/rules/, helpers in common.smk.
from snakemake.utils import min_version, validate

from inference_optim_llm.bounds import CONFIG_SCHEMA, check_config
from inference_optim_llm.strict_yaml import check_files

min_version("9.0")


configfile: "config/config.yaml"


# Snakemake's loader keeps the last of two equal keys: every config file it read (this one and any
# --configfile) is read again, refusing a repeated key with both its lines.
check_files(workflow.configfiles)
# The schema ships with the package (inference_optim_llm/schemas/): the CLI checks its flags against it too.
# validate() fills the defaults; check_config then refuses what jsonschema lets through (2.0 as an integer).
validate(config, str(CONFIG_SCHEMA))
check_config(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/engine.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/serving.smk"
include: "workflow/rules/report.smk"


# Targets name the result files as well as the report, so that deleting one result file re-runs that
# benchmark and then the report (Snakemake does not re-create a missing intermediate file otherwise).
rule all:
    default_target: True
    input:
        "results/benchmark_results.md",
        "results/summary.csv",
        all_results(),
        serving_results(),


# The serving matrix alone (`snakemake serving`): its results and its own report.
rule serving:
    input:
        "results/reports/serving/benchmark_results.md",
        serving_results(),


# One target per registered engine (`snakemake compiled`, `snakemake trtllm_torch`): its results and its
# own report.
for _engine in ENGINES:

    rule:
        name:
            _engine
        input:
            f"results/reports/{_engine}/benchmark_results.md",
            engine_result_paths(_engine),
