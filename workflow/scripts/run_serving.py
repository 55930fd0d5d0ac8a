# rule run_serving: one model x server x prompt set x load point (inference_optim_llm.runner.run_serving).
from inference_optim_llm.spec import ServeSpec
from inference_optim_llm.stages import job, run_serving

with job(snakemake):
    run_serving(ServeSpec(**snakemake.params.spec), snakemake.output.result, snakemake.output.records,
                snakemake.log.server)
