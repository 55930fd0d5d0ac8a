# rules aggregate, aggregate_engine and aggregate_serving: summary CSV, markdown report and plots from the result files.
from pathlib import Path

from inference_optim_llm.report import aggregate
from inference_optim_llm.stages import job, paths

with job(snakemake):
    aggregate(paths(snakemake.input.results), out_md=Path(snakemake.output.md),
              out_csv=Path(snakemake.output.csv), plots_dir=Path(snakemake.output.plots),
              calibration=paths(snakemake.input.get("calibration", [])), title=snakemake.params.title)
