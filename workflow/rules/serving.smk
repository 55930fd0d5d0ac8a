wildcard_constraints:
    server=_alternatives(config["servers"]) or "(?!)",
    load=r"c[1-9][0-9]*|r[0-9]+(\.[0-9]+)?",


rule serving_model:
    input:
        model_dir,
    output:
        directory("resources/served/{model}"),
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/serving_model/{model}.log",
    params:
        trust_remote_code=trust_remote_code,
        device=BENCH["device"],
        dtype=BENCH["dtype"],
    resources:
        gpu=1,
    script:
        "../scripts/serving_model.py"


rule run_serving:
    input:
        model=serving_model_input,
        prompts=prompt_inputs,
    output:
        result=report(
            "results/serving/{model}/{server}/{prompt_set}/{load}.json",
            category="Serving results",
            subcategory="{model} / {server}",
        ),
        records="results/serving/{model}/{server}/{prompt_set}/{load}.jsonl",
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        job="results/logs/serving/{model}/{server}/{prompt_set}/{load}.log",
        server="results/logs/serving/{model}/{server}/{prompt_set}/{load}.server.log",
    params:
        spec=serve_spec,
    threads: BENCH["threads"]
    resources:
        gpu=1,
    script:
        "../scripts/run_serving.py"
