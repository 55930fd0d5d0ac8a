"""Command line: what the Snakemake rules call, and what people use without Snakemake.

    python -m inference_optim_llm run baseline --prompts-file data/prompts_medium.txt \
        --max-new-tokens 200 --batch-size 4 --save-json reports/x.jsonl
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from inference_optim_llm import bounds, stages

DEFAULT_SOURCE = "embedded:smollm2-135m-instruct"


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def cmd_download_model(a) -> int:
    from inference_optim_llm import models
    bounds.check("network_timeout_s", a.network_timeout_s, "--network-timeout-s")
    models.download_model(a.name, a.source, Path(a.out), download_dir=Path(a.download_dir),
                       local_roots=[Path(r) for r in a.local_root] or None, network_timeout_s=a.network_timeout_s)
    print(f"model {a.name} ready in {a.out}", file=sys.stderr)
    return 0


def cmd_bench(a) -> int:
    from inference_optim_llm.spec import BenchSpec
    stages.run_benchmark(BenchSpec.from_json(a.spec), a.output, a.records)
    return 0


def cmd_run_serving(a) -> int:
    from inference_optim_llm.spec import ServeSpec
    stages.run_serving(ServeSpec.from_json(a.spec), a.output, a.records, a.server_log)
    return 0


def cmd_serving_model(a) -> int:
    stages.serving_model(a.model_dir, a.out, a.trust_remote_code, a.device, a.dtype)
    return 0


def cmd_compare(a) -> int:
    from inference_optim_llm.compare import compare
    from inference_optim_llm.io import write_atomic
    if a.output:
        stages.check_outputs((a.output, "--output"))
    text = compare(Path(a.run_a), Path(a.run_b), a.force)
    if a.output:
        write_atomic(a.output, text)
    print(text)
    return 0


def cmd_reference(a) -> int:
    from inference_optim_llm.spec import BenchSpec
    stages.reference_tokens(BenchSpec.from_json(a.spec), a.output)
    return 0


def cmd_calibrate(a) -> int:
    stages.calibrate(a.device, a.output, a.size_mb)
    return 0


def cmd_build_engine(a) -> int:
    from inference_optim_llm.build import build
    if not 1 <= a.workers <= 1024:
        raise ValueError(f"--workers: {a.workers} is outside 1 to 1024")
    build(a.engine, json.loads(a.spec), Path(a.out), a.workers)
    return 0


def cmd_run(a) -> int:
    """The seed's form: one engine on one prompt file, without Snakemake."""
    from inference_optim_llm import models
    from inference_optim_llm.engines import ENGINES
    from inference_optim_llm.prompts import read_prompt_file
    from inference_optim_llm.report import console_summary
    from inference_optim_llm.hostfacts import resolve_device
    from inference_optim_llm.spec import BenchSpec

    # Every value checked before any work: the same bounds as the config keys, errors name the flag.
    if a.engine not in ENGINES:
        raise ValueError(f"engine {a.engine!r}: unknown (available: {', '.join(ENGINES)})")
    bounds.check("$defs.batch_size", a.batch_size, "--batch-size")
    if not 1 <= a.gpus <= 64:
        raise ValueError(f"--gpus: {a.gpus} is not between 1 and 64")
    for key in ("max_new_tokens", "repetitions", "warmup", "seed", "dtype"):
        bounds.check(f"benchmark.{key}", getattr(a, key), "--" + key.replace("_", "-"))
    models.check_name(a.model_name, "--model-name")
    models.parse_source(a.model_source)
    read_prompt_file(a.prompts_file)
    resolve_device(a.device)
    stages.check_outputs((a.save_json, "--save-json"), (a.save_result, "--save-result"))

    if a.model_dir:   # the user's directory: used as it is, never written to
        model_dir = Path(a.model_dir)
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"--model-dir {model_dir}: no config.json there (not a Hugging Face model "
                             "directory); leave --model-dir out to fetch --model-source")
    else:
        model_dir = Path("resources/models") / a.model_name
        manifest = model_dir / "manifest.json"
        if (model_dir / "config.json").is_file() and manifest.is_file():
            had = json.loads(manifest.read_text()).get("source")
            if had != a.model_source:
                raise ValueError(f"--model-name {a.model_name}: {model_dir} holds {had}, not {a.model_source}; "
                                 "choose another --model-name")
        else:   # refuses to replace a directory it did not make
            models.download_model(a.model_name, a.model_source, model_dir, download_dir=Path("resources/downloads"))
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(a.prompts_file).stem).lstrip("._-")
    spec = BenchSpec(model=a.model_name, model_dir=str(model_dir), engine=a.engine,
                     prompt_set=stem[:64] or "prompts", prompt_spec={"file": a.prompts_file},
                     batch_size=a.batch_size, gpus=a.gpus, weights=a.weights, max_new_tokens=a.max_new_tokens, repetitions=a.repetitions,
                     warmup=a.warmup, seed=a.seed, device=a.device, dtype=a.dtype, strict=a.strict,
                     trust_remote_code=a.trust_remote_code)
    result = stages.run_benchmark(spec, a.save_result, a.save_json, flags=("--save-result", "--save-json"))
    print(console_summary(result))
    return 0 if result["status"] == "ok" else 1


def cmd_aggregate(a) -> int:
    from inference_optim_llm.report import aggregate
    aggregate([Path(p) for p in a.results], out_md=Path(a.out_md), out_csv=Path(a.out_csv),
              plots_dir=Path(a.plots_dir), calibration=[Path(p) for p in a.calibration], title=a.title)
    return 0


def cmd_validate(a) -> int:
    """Every file checked, each bad one named on its own line: exit 2 if any is bad."""
    from inference_optim_llm.result_file import ResultFileError, load_result
    status = 0
    for p in a.files:
        try:
            load_result(Path(p))
            print(f"{p}: valid")
        except ResultFileError as e:
            status = _fail(str(e))
    return status


def build_parser() -> argparse.ArgumentParser:
    from inference_optim_llm.engines import ENGINES, built_engines

    p = argparse.ArgumentParser(prog="python -m inference_optim_llm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="benchmark one engine on one prompt file (no Snakemake needed)")
    r.add_argument("engine", help=f"one of the registered engines: {', '.join(ENGINES)}")
    r.add_argument("--prompts-file", required=True, help="text file, one prompt per line")
    r.add_argument("--max-new-tokens", type=int, default=200, help="tokens generated per request, exactly")
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--gpus", type=int, default=1, help="tensor-parallel degree: processes, one GPU each (compiled)")
    r.add_argument("--weights", default="default", choices=["default", "fp8"],
                   help="weight storage: default (the dtype) or fp8 (e4m3, one scale per output channel; compiled)")
    r.add_argument("--save-json", help="per-request records, JSON lines (the seed's format)")
    r.add_argument("--save-result", help="the full result, JSON (inference_optim_llm/schemas/result.schema.json)")
    r.add_argument("--model-name", default="smollm2-135m")
    r.add_argument("--model-source", default=DEFAULT_SOURCE,
                   help="embedded:smollm2-135m-instruct, hf:<repo>[@rev], local:<dir>, synthetic:<preset>")
    r.add_argument("--model-dir", help="an already materialised model directory (skips fetching)")
    r.add_argument("--repetitions", type=int, default=3)
    r.add_argument("--warmup", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    r.add_argument("--strict", action="store_true", help="fail instead of recording unavailable/oom")
    r.add_argument("--trust-remote-code", action="store_true",
                   help="run code shipped with the model (only for models you trust)")
    r.set_defaults(fn=cmd_run)

    f = sub.add_parser("download-model", aliases=["fetch-model"],
                       help="make a model source a Hugging Face directory (rule download_model)")
    f.add_argument("--name", required=True)
    f.add_argument("--source", required=True)
    f.add_argument("--output", "--out", dest="out", required=True, help="the model directory to create")
    f.add_argument("--download-dir", default="resources/downloads")
    f.add_argument("--local-root", action="append", default=[], help="allowed root for local: sources")
    f.add_argument("--network-timeout-s", type=float, default=60,
                   help="seconds to wait for a server's answer (connect and each read) before failing")
    f.set_defaults(fn=cmd_download_model)

    b = sub.add_parser("run-benchmark", aliases=["bench"],
                       help="run one benchmark target from a JSON spec (rule run_benchmark)")
    b.add_argument("--spec", required=True, help="JSON object, fields of spec.BenchSpec")
    b.add_argument("--output", required=True, help="result JSON")
    b.add_argument("--records", help="per-request JSONL records")
    b.set_defaults(fn=cmd_bench)

    sv = sub.add_parser("run-serving", help="one serving target from a JSON spec: start the server, drive one "
                        "load point, stop it (rule run_serving)")
    sv.add_argument("--spec", required=True, help="JSON object, fields of spec.ServeSpec")
    sv.add_argument("--output", required=True, help="result JSON")
    sv.add_argument("--records", help="per-request JSONL records")
    sv.add_argument("--server-log", required=True, help="where the server's own output goes")
    sv.set_defaults(fn=cmd_run_serving)

    sm = sub.add_parser("serving-model", help="a copy of a model directory without EOS, for servers that cannot "
                        "ignore it (rule serving_model)")
    sm.add_argument("model_dir")
    sm.add_argument("--output", "--out", dest="out", required=True)
    sm.add_argument("--trust-remote-code", action="store_true")
    sm.add_argument("--device", default="auto", help="where a synthetic model's weights are drawn")
    sm.add_argument("--dtype", default="auto", help="the dtype a synthetic model's weights are saved in")
    sm.set_defaults(fn=cmd_serving_model)

    ref = sub.add_parser("reference-tokens", aliases=["reference"],
                         help="baseline greedy tokens at batch 1, for token agreement (rule reference_tokens)")
    ref.add_argument("--spec", required=True)
    ref.add_argument("--output", required=True)
    ref.set_defaults(fn=cmd_reference)

    c = sub.add_parser("calibrate", help="measure the device's memory bandwidth (large device copy)")
    c.add_argument("--output", required=True)
    c.add_argument("--device", default="auto")
    c.add_argument("--size-mb", type=int, default=2048)
    c.set_defaults(fn=cmd_calibrate)

    be = sub.add_parser("build-engine", help="build an engine's cached artifact (compile cache, TensorRT engine)")
    be.add_argument("engine", help=f"an engine with a build step: {', '.join(built_engines())}")
    be.add_argument("--spec", required=True, help="JSON: model_dir, batch_sizes, prompt_sets, max_new_tokens, ...")
    be.add_argument("--output", "--out", dest="out", required=True, help="artifact directory")
    be.add_argument("--workers", type=int, default=1, help="compiled: shapes compiled side by side")
    be.set_defaults(fn=cmd_build_engine)

    g = sub.add_parser("aggregate", help="summary CSV, markdown report and plots from result files")
    g.add_argument("results", nargs="+", help="result JSON files")
    g.add_argument("--out-md", required=True)
    g.add_argument("--out-csv", required=True)
    g.add_argument("--plots-dir", required=True)
    g.add_argument("--calibration", action="append", default=[], help="bandwidth calibration JSON")
    g.add_argument("--title", default="Inference-Optim-LLM benchmark results")
    g.set_defaults(fn=cmd_aggregate)

    cp = sub.add_parser("compare", help="compare two result sets: each cell's change with its 95 percent interval, "
                        "and what differs between the runs")
    cp.add_argument("run_a", help="directory of the first run's result files (a results/ or docs/results/<card>/)")
    cp.add_argument("run_b", help="directory of the second run's result files")
    cp.add_argument("--output", help="write the Markdown comparison here too")
    cp.add_argument("--force", action="store_true", help="compare runs on different GPU models anyway")
    cp.set_defaults(fn=cmd_compare)

    v = sub.add_parser("validate-result", help="check result files against their schema (inference_optim_llm/schemas/)")
    v.add_argument("files", nargs="+")
    v.set_defaults(fn=cmd_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stages.install_signal_handlers()
    try:
        return args.fn(args)
    except stages.FAILURES as e:
        return _fail(str(e))
    except stages.Terminated as e:
        print(f"stopped by {e}: temporary files removed, nothing half-written left", file=sys.stderr)
        return 128 + signal.Signals[str(e)].value


if __name__ == "__main__":
    sys.exit(main())
