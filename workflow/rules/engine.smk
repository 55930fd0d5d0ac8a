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
        spec=build_spec,
    # With --cache (and $SNAKEMAKE_OUTPUT_CACHE), a build is reused across workflows; its key hashes the
    # params, which name everything that changes the artifact (spec: shapes, dtype, versions, GPU).
    cache: True
    threads: BENCH["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/build_engine.py"
