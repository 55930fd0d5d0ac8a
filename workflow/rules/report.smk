rule aggregate:
    input:
        results=all_results(),
        calibration=calibration_input,
    output:
        md="results/benchmark_results.md",
        csv="results/summary.csv",
        plots=directory("results/plots"),
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/aggregate.log",
    params:
        calibration=calibration_flag,
    shell:
        "python -m inference_optim_llm aggregate {input.results:q} {params.calibration} "
        "--out-md {output.md:q} --out-csv {output.csv:q} --plots-dir {output.plots:q} > {log} 2>&1"


rule aggregate_engine:
    input:
        results=engine_results,
        calibration=calibration_input,
    output:
        md="results/reports/{engine}/benchmark_results.md",
        csv="results/reports/{engine}/summary.csv",
        plots=directory("results/reports/{engine}/plots"),
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/aggregate_{engine}.log",
    params:
        calibration=calibration_flag,
    shell:
        "python -m inference_optim_llm aggregate {input.results:q} {params.calibration} "
        "--out-md {output.md:q} --out-csv {output.csv:q} --plots-dir {output.plots:q} "
        "--title 'Inference-Optim-LLM: {wildcards.engine}' "
        "> {log} 2>&1"
