# rule build_engine: an engine's cached artifact (inference_optim_llm.build), from the plan's build spec.
from pathlib import Path

from inference_optim_llm.build import build
from inference_optim_llm.stages import job

if __name__ == "__main__":   # the compiled build spawns worker processes, which import this file again
    with job(snakemake):
        build(snakemake.wildcards.engine, snakemake.params.spec, Path(snakemake.output[0]), snakemake.threads)
