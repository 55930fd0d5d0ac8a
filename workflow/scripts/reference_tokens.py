# rule reference_tokens: baseline's greedy tokens at batch 1, what token agreement compares with.
from inference_optim_llm.spec import BenchSpec
from inference_optim_llm.stages import job, reference_tokens

with job(snakemake):
    reference_tokens(BenchSpec(**snakemake.params.spec), snakemake.output[0])
