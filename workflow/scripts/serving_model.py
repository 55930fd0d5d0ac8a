# rule serving_model: the model as a server without an ignore_eos switch sees it (models.serving_copy).
from inference_optim_llm.stages import job, serving_model

with job(snakemake):
    serving_model(snakemake.input[0], snakemake.output[0], snakemake.params.trust_remote_code,
                  snakemake.params.device, snakemake.params.dtype)
