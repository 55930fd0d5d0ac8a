# rule download_model: a model source made a Hugging Face directory (inference_optim_llm.models).
from pathlib import Path

from inference_optim_llm.models import download_model
from inference_optim_llm.stages import job

with job(snakemake):
    p = snakemake.params
    download_model(snakemake.wildcards.model, p.source, Path(snakemake.output[0]), download_dir=Path(p.download_dir),
                   local_roots=[Path(r) for r in p.local_roots], network_timeout_s=p.network_timeout_s)
