"""The workflow end to end, through Snakemake, on the CPU, with the real embedded model.

One small matrix runs for real in a temporary directory (module fixture); the tests then check the
report against the result files, token agreement, the partial rebuild, the unavailable engine, and
dry runs of the GPU matrix.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_downloads, workflow_config

SMALL = workflow_config("pipeline")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_workdir(tmp: Path, config: dict, gguf: Path) -> Path:
    (tmp / "config").mkdir(parents=True)
    (tmp / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "data").symlink_to(REPO / "data")
    copy_downloads(gguf, tmp)
    return tmp


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    block = dry_run_output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_gguf) -> Path:
    wd = make_workdir(tmp_path_factory.mktemp("e2e"), SMALL, smollm2_gguf)
    snakemake(wd)
    return wd


def results(wd: Path) -> dict[tuple, dict]:
    out = {}
    for p in sorted((wd / "results" / "runs").rglob("*.json")):
        r = json.loads(p.read_text())
        t = r["target"]
        out[(t["engine"], t["prompt_set"], t["batch_size"])] = r
    return out


@pytest.mark.slow
def test_every_target_has_a_valid_result_with_exact_token_counts(run):
    from inference_optim_llm.report import load_result

    rs = results(run)
    assert len(rs) == 9
    for p in (run / "results" / "runs").rglob("*.json"):
        load_result(p)     # validates against inference_optim_llm/schemas/result.schema.json
    for key, r in rs.items():
        if key[0] == "trtllm":
            continue
        assert r["status"] == "ok", key
        assert r["token_check"] == {"requested": 6, "generated_min": 6, "generated_max": 6, "all_exact": True}
        assert all(q["output_tokens"] == 6 for q in r["requests"])
        assert r["provenance"]["git_commit"] and r["provenance"]["config_hash"]
        assert re.fullmatch(r"[0-9a-f]{16}", r["provenance"]["source_hash"])
        # No GPU here: telemetry is null with a reason, never zero.
        assert r["telemetry"]["power_mean_w"] is None and "NVML" in r["telemetry"]["null_reasons"]["power_mean_w"]
        records = [json.loads(line) for line in
                   (run / "results" / "runs" / "smollm2-135m" / key[0] / key[1] / f"bs{key[2]}.jsonl").open()]
        assert len(records) == len(r["requests"])
        assert {"prompt", "latency", "tokens", "memory_mb", "power_w", "tps"} <= set(records[0])


@pytest.mark.slow
def test_report_figures_come_from_the_result_files(run):
    rs = results(run)
    rows = {(r["engine"], r["prompt_set"], int(r["batch_size"])): r
            for r in csv.DictReader((run / "results" / "summary.csv").open())}
    md = (run / "results" / "benchmark_results.md").read_text()
    for key, r in rs.items():
        if r["status"] != "ok":
            continue
        tps = r["metrics"]["output_tokens_per_s"]["median"]
        assert float(rows[key]["output_tokens_per_s"]) == pytest.approx(tps)
        ttft_ms = r["metrics"]["ttft_s"]["median"] * 1e3
        pm = r"( ± [0-9.]+)?"   # the half-width of the median's 95 % interval, where there is one
        # engine | batch | gpus | weights | output tok/s | TTFT
        assert re.search(rf"\| {key[0]}\s*\| {key[2]}\s*\| 1\s*\| float32\s*\| {tps:.1f}{pm}\s*\| {ttft_ms:.1f}{pm}\s*\|",
                         md), key
    base, comp = rs[("baseline", "short", 1)], rs[("compiled", "short", 1)]
    speedup = comp["metrics"]["output_tokens_per_s"]["median"] / base["metrics"]["output_tokens_per_s"]["median"]
    assert float(rows[("compiled", "short", 1)]["speedup_vs_baseline"]) == pytest.approx(speedup)
    assert "best batch size" in md
    assert (run / "results" / "plots" / "smollm2-135m__short.png").stat().st_size > 1000


@pytest.mark.slow
def test_compiled_tokens_agree_with_baseline_on_cpu_fp32(run):
    rs = results(run)
    for key, r in rs.items():
        if key[0] in ("baseline", "compiled"):
            assert r["agreement"]["reference_engine"] == "baseline"
            assert r["agreement"]["exact_match_rate"] == 1.0, (key, r["agreement"])
            assert r["agreement"]["first_divergence"] is None


@pytest.mark.slow
def test_unavailable_engine_is_recorded_with_its_reason_never_numbers(run):
    r = results(run)[("trtllm", "short", 1)]
    assert r["status"] == "unavailable"
    assert "tensorrt_llm" in r["reason"]
    assert r["metrics"] is None and r["requests"] == []
    md = (run / "results" / "benchmark_results.md").read_text()
    assert re.search(r"\| trtllm\s*\|\s*1\s*\|\s*1\s*\| float32\s*\| UNAVAILABLE", md)   # engine, batch, gpus, weights
    assert "`trtllm` on `smollm2-135m` / `short` / batch 1 was not run: unavailable" in md


@pytest.mark.slow
def test_compile_cache_makes_warmup_shorter(run, tmp_path):
    """The build_engine artifact: a compiled job's warm-up with it against one without, each process
    starting from an empty inductor cache, so only the artifact differs."""
    assert results(run)[("compiled", "tok8", 2)]["compile_cache_loaded"] is True
    spec = {"model": "smollm2-135m", "model_dir": str(run / "resources/models/smollm2-135m"),
            "engine": "compiled", "prompt_set": "tok8", "prompt_spec": {"tokens": 8, "count": 2},
            "batch_size": 2, "max_new_tokens": 6, "repetitions": 1, "warmup": 1, "device": "cpu",
            "dtype": "float32"}
    warmup = {}
    for name, artifact in (("with", str(run / "resources/engines/smollm2-135m/compiled")), ("without", None)):
        out = tmp_path / f"{name}.json"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}")}
        proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "run-benchmark", "--spec",
                               json.dumps({**spec, "artifact_dir": artifact}), "--output", str(out)],
                              capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        r = json.loads(out.read_text())
        assert r["compile_cache_loaded"] is (artifact is not None)
        warmup[name] = r["warmup_s"][0]
    assert warmup["with"] < 0.5 * warmup["without"], warmup


@pytest.mark.slow
def test_partial_rebuild_reruns_one_target_and_the_report(run):
    target = run / "results" / "runs" / "smollm2-135m" / "baseline" / "tok8" / "bs2.json"
    others = {p: p.stat().st_mtime_ns for p in (run / "results" / "runs").rglob("*.json") if p != target}
    target.unlink()
    assert job_counts(output(snakemake(run, "-n"))) == {"run_benchmark": 1, "aggregate": 1, "all": 1, "total": 3}
    snakemake(run)
    assert target.is_file()
    assert {p: p.stat().st_mtime_ns for p in others} == others
    forced = output(snakemake(run, "-n", "--forcerun", str(target.relative_to(run))))
    assert job_counts(forced) == {"run_benchmark": 1, "aggregate": 1, "all": 1, "total": 3}


@pytest.mark.slow
def test_named_engine_target_runs_only_that_engine(run):
    counts = job_counts(output(snakemake(run, "-n", "baseline")))
    assert counts == {"aggregate_engine": 1, "baseline": 1, "total": 2}
    out = output(snakemake(run, "-n", "--forceall", "baseline"))
    assert "engine=compiled" not in out and "engine=trtllm" not in out


@pytest.mark.slow
def test_dry_run_of_the_gpu_matrix_without_a_gpu(tmp_path):
    """config/gpu.yaml (every engine, synthetic 1B/8B shapes) plans on a machine without a GPU; each
    engine that needs a build builds once per model and settings."""
    proc = snakemake(REPO, "-n", "--configfile", str(REPO / "config" / "gpu.yaml"), "--forceall")
    counts = job_counts(output(proc))
    # + 2 synthetic shapes x 2 engines x batch 1, 16, + compiled's fp8 weights on them
    assert counts["run_benchmark"] == 4 * 3 * 3 + 2 * 2 * 2 + 2 * 2
    assert counts["build_engine"] == 4          # compiled x 3 models, trtllm x 1 model
    assert counts["reference_tokens"] == 3 + 2
    assert counts["calibrate"] == 1 and counts["aggregate"] == 1
    builds = re.findall(r"rule build_engine:.*?wildcards: (model=\S+, engine=\S+)", output(proc), re.S)
    assert len(builds) == len(set(builds)) == 4


@pytest.mark.slow
def test_engines_key_runs_only_the_engines_it_names(tmp_path):
    """--config engines=[...] narrows the matrix (how the GPU machine without TensorRT-LLM runs it);
    a name the matrix lacks is an error naming the key."""
    gpu = ["-n", "--configfile", str(REPO / "config" / "gpu.yaml"), "--forceall"]
    proc = snakemake(REPO, *gpu, "-p", "--config", "engines=[baseline,compiled]")
    counts = job_counts(output(proc))
    # the compiled build's cache key names the torch it was generated with (specs travel as params)
    assert re.match(r"\d", _plan("gpu.yaml", engines=["baseline", "compiled"])
                    .build_spec("llama-1b", "compiled")["torch_version"])
    assert counts["run_benchmark"] == 2 * 3 * 3 + 2 * 2 * 2 + 2 * 2
    assert counts["build_engine"] == 3          # compiled x 3 models, no TensorRT-LLM build
    assert "engine=trtllm" not in output(proc)
    proc = snakemake(REPO, "-n", "--config", "engines=[trtllm]", check=False)
    assert proc.returncode != 0
    assert "config engines: 'trtllm' is not an engine of the matrix (its engines: baseline, compiled)" in output(proc)
    # an engine filtered out of the matrix, asked for by name, still builds for the matrix's shapes
    proc = snakemake(REPO, "-n", "--forceall", "compiled", "--config", "engines=[baseline]")
    assert job_counts(output(proc))["build_engine"] == 1
    assert _plan("config.yaml", engines=["baseline"]).build_spec("smollm2-135m", "compiled")["batch_sizes"] == [1, 4]


def _plan(configfile, **override):
    """The plan of a shipped config, its defaults filled as the Snakefile fills them."""
    import yaml
    from snakemake.utils import validate

    from inference_optim_llm.bounds import CONFIG_SCHEMA
    from inference_optim_llm.plan import Plan
    config = {**yaml.safe_load((REPO / "config" / configfile).read_text()), **override}
    validate(config, str(CONFIG_SCHEMA))
    return Plan(config)


@pytest.mark.slow
def test_lint_is_clean():
    for extra in ([], ["--configfile", str(REPO / "config" / "gpu.yaml")]):
        proc = snakemake(REPO, "--lint", *extra)
        assert "Congratulations" in proc.stdout + proc.stderr


def test_cli_help_for_every_subcommand():
    from inference_optim_llm.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", name, "--help"],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0 and "usage:" in proc.stdout, name
    for module in ("inference_optim_llm", "inference_optim_llm.cli"):
        assert subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_seed_cli_form_writes_the_seed_records(tmp_path, smollm2_dir):
    out = tmp_path / "reports" / "x.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "inference_optim_llm.cli", "run", "baseline", "--prompts-file",
         str(REPO / "data" / "prompts_medium.txt"), "--max-new-tokens", "4", "--batch-size", "4", "--save-json",
         str(out), "--model-dir", str(smollm2_dir), "--repetitions", "1", "--warmup", "0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in out.open()]
    assert len(records) == 16 and all(r["tokens"] == 4 for r in records)
    assert "output_tokens_per_s" in proc.stdout


@pytest.mark.slow
def test_snakemake_html_report_holds_the_report_plots_and_results(run):
    """`snakemake --report report.html`: one self-contained HTML file of what the rules mark with report()."""
    snakemake(run, "--report", str(run / "report.html"))
    html = (run / "report.html").read_text(errors="replace")
    assert len(html) > 10_000
    for name in ("benchmark_results.md", "summary.csv", "bs1.json"):
        assert name in html, name
