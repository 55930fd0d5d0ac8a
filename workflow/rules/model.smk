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
        local_roots=config["local_model_roots"],
        network_timeout_s=config["network_timeout_s"],
        download_dir=config["download_dir"],
    script:
        "../scripts/download_model.py"
