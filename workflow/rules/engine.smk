rule build_engine:
    input:
        model=model_dir,
        prompts=build_prompt_inputs,
    output:
        directory("resources/engines/{model}/{engine}"),
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/build_engine/{model}/{engine}.log",
    params:
        engine="{engine}",
        spec=build_spec,
    # With --cache (and $SNAKEMAKE_OUTPUT_CACHE), a build is reused across workflows; its key hashes the
    # params, which name everything that changes the artifact (spec: shapes, dtype, versions, GPU).
    cache: True
    threads: BENCH["threads"]
    resources:
        gpu=1,
    shell:
        "python -m inference_optim_llm build-engine {params.engine} --spec {params.spec:q} "
        "--output {output:q} --workers {threads} > {log} 2>&1"
