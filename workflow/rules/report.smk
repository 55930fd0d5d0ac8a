rule aggregate:
    input:
        results=all_results() + serving_results(),
        calibration=calibration_input,
    output:
        # report(): `snakemake --report report.html` gives one self-contained HTML report of these
        md=report("results/benchmark_results.md", category="Report"),
        csv=report("results/summary.csv", category="Summary"),
        plots=report(directory("results/plots"), patterns=["{name}.png"], category="Plots"),
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/aggregate.log",
    params:
        title="Inference-Optim-LLM benchmark results",
    script:
        "../scripts/aggregate.py"


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
        title=engine_report_title,
    script:
        "../scripts/aggregate.py"


rule aggregate_serving:
    input:
        results=serving_results(),
    output:
        md="results/reports/serving/benchmark_results.md",
        csv="results/reports/serving/summary.csv",
        plots=directory("results/reports/serving/plots"),
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/aggregate_serving.log",
    params:
        title="Inference-Optim-LLM serving results",
    script:
        "../scripts/aggregate.py"
