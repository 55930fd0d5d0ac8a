rule download_model:
    output:
        directory("resources/models/{model}"),
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/download_model/{model}.log",
    params:
        source=model_source,
        flags=fetch_flags,
        download_dir=config["download_dir"],
    shell:
        "python -m inference_optim_llm download-model --name {wildcards.model} --source {params.source:q} "
        "--output {output:q} --download-dir {params.download_dir:q} {params.flags} > {log} 2>&1"
