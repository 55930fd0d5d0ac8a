# rule calibrate: the device's memory bandwidth (inference_optim_llm.bandwidth).
from inference_optim_llm.stages import calibrate, job

with job(snakemake):
    calibrate(snakemake.params.device, snakemake.output[0])
