rule aggregate:
    input:
        all_results(),
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
    shell:
        "python -m inference_optim_llm aggregate {input:q} --out-md {output.md:q} "
        "--out-csv {output.csv:q} --plots-dir {output.plots:q} > {log} 2>&1"


rule aggregate_engine:
    input:
        engine_results,
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
    shell:
        "python -m inference_optim_llm aggregate {input:q} --out-md {output.md:q} "
        "--out-csv {output.csv:q} --plots-dir {output.plots:q} --title 'Inference-Optim-LLM: {wildcards.engine}' "
        "> {log} 2>&1"
