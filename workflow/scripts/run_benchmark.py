# rule run_benchmark: one target of the matrix measured (inference_optim_llm.runner), its result and records.
from inference_optim_llm.spec import BenchSpec
from inference_optim_llm.stages import job, run_benchmark

with job(snakemake):
    run_benchmark(BenchSpec(**snakemake.params.spec), snakemake.output.result, snakemake.output.records)
