wildcard_constraints:
    model=_alternatives(config["models"]),
    engine=_alternatives(ENGINE_NAMES),
    prompt_set=_alternatives(config["prompt_sets"]),
    batch=r"[1-9][0-9]*",
    tp=r"(-tp([2-9]|[1-9][0-9]+))?",
    wq=r"(-fp8)?",


rule calibrate:
    output:
        "results/calibration/bandwidth.json",
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/calibrate.log",
    params:
        device=BENCH["device"],
    resources:
        gpu=1,
    script:
        "../scripts/calibrate.py"


rule reference_tokens:
    input:
        model=model_dir,
        prompts=prompt_inputs,
    output:
        "results/reference/{model}/{prompt_set}.json",
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/reference/{model}/{prompt_set}.log",
    params:
        spec=reference_spec,
    threads: BENCH["threads"]
    resources:
        gpu=reference_gpus_wanted,
    script:
        "../scripts/reference_tokens.py"


rule run_benchmark:
    input:
        model=model_dir,
        prompts=prompt_inputs,
        reference=reference_input,
        artifact=artifact_dir,
        calibration=calibration_input,
    output:
        result=report(
            "results/runs/{model}/{engine}/{prompt_set}/bs{batch}{tp}{wq}.json",
            category="Results",
            subcategory="{model} / {engine}",
        ),
        records="results/runs/{model}/{engine}/{prompt_set}/bs{batch}{tp}{wq}.jsonl",
    conda:
        "../../envs/pipeline.yaml"
    container:
        CONTAINER
    log:
        "results/logs/runs/{model}/{engine}/{prompt_set}/bs{batch}{tp}{wq}.log",
    params:
        spec=bench_spec,
    threads: BENCH["threads"]
    resources:
        gpu=gpus_wanted,
    script:
        "../scripts/run_benchmark.py"
