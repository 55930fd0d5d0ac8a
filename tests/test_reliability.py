"""Bad input, faults and data safety (docs/reliability.md lists every case and what was observed).

Runs the real workflow in temporary directories with the `llama-tiny` synthetic model (real
architecture and tokenizer, a few MB) on the CPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_downloads, workflow_config

TINY = workflow_config("tiny")


def workdir(tmp: Path, config: dict, gguf: Path | None = None) -> Path:
    (tmp / "config").mkdir(parents=True, exist_ok=True)
    (tmp / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    if not (tmp / "data").exists():
        (tmp / "data").symlink_to(REPO / "data")
    if gguf:
        copy_downloads(gguf, tmp)
    return tmp


def snakemake(wd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
                           "--cores", "2", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def with_changes(**changes) -> dict:
    config = json.loads(json.dumps(TINY))
    for path, value in changes.items():
        node = config
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node[keys[-1]] = value
    return config


# -- bad input: a clear error naming the key or file, before any work --------------------------------

BAD_CONFIGS = {
    "unknown key": (with_changes(benchmark__max_new_token=8), "max_new_token"),
    "unknown engine": (with_changes(matrix__0__engines=["vllm"]), "vllm"),
    "wrong type": (with_changes(matrix__0__batch_sizes=["4"]), "'4' is not of type 'integer'"),
    "batch size 0": (with_changes(matrix__0__batch_sizes=[0]), "0 is less than the minimum of 1"),
    "max_new_tokens 0": (with_changes(benchmark__max_new_tokens=0), "max_new_tokens"),
    "undefined prompt set": (with_changes(matrix__0__prompt_sets=["nope"]),
                             "matrix[0].prompt_sets: 'nope' is not defined"),
    "missing prompt file": (with_changes(prompt_sets={"p8": {"file": "data/missing.txt"}}),
                            "prompt_sets.p8.file: prompt file data/missing.txt does not exist"),
    "model name escaping": (with_changes(models={"../evil": {"source": "synthetic:llama-tiny"}}), "../evil"),
    "missing local model": (with_changes(models={"tiny": {"source": "local:models/none"}}),
                            "local directory"),
    "local model outside roots": (with_changes(models={"tiny": {"source": "local:/etc"}}),
                                  "outside local_model_roots"),
    # issue 10.8: every numeric key bounded, lengths against the context before any download
    "huge batch": (with_changes(matrix__0__batch_sizes=[1000000000]), "1000000000 is greater than the maximum of 4096"),
    "huge prompt": (with_changes(prompt_sets={"p8": {"tokens": 1000000000}}),
                    "1000000000 is greater than the maximum of 131072"),
    "huge prompt set": (with_changes(prompt_sets={"p8": {"tokens": 100000, "count": 4000}}),
                        "config prompt_sets.p8: tokens x count = 400000000 exceeds"),
    "huge repetitions": (with_changes(benchmark__repetitions=10**9), "is greater than the maximum of 10000"),
    "tiny telemetry interval": (with_changes(benchmark__telemetry_interval_s=1e-9), "less than the minimum of 0.005"),
    "prompt longer than the context": (with_changes(prompt_sets={"p8": {"tokens": 2046, "count": 1}}),
                                       "config prompt_sets.p8.tokens: 2046 prompt tokens + benchmark.max_new_tokens 4 "
                                       "exceed the context of model tiny (2048 tokens)"),
    # issue 10.9: unknown engine options are errors for every engine
    "misspelled compiled option": (with_changes(engine_options={"compiled": {"mdoe": "default"}}),
                                   "config engine_options.compiled.mdoe: unknown option for engine 'compiled'"),
    "misspelled baseline option": (with_changes(engine_options={"baseline": {"x": 1}}),
                                   "config engine_options.baseline.x: unknown option"),
    "unknown synthetic preset": (with_changes(models={"tiny": {"source": "synthetic:gpt-9"}}),
                                 "unknown synthetic preset 'gpt-9'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_fails_at_parse_time_naming_the_key(tmp_path, case):
    config, expected = BAD_CONFIGS[case]
    t = time.perf_counter()
    proc = snakemake(workdir(tmp_path, config), "-n")
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]
    assert time.perf_counter() - t < 60
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_empty_prompt_file_is_named(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "empty.txt").write_text("\n  \n")
    config = with_changes(prompt_sets={"p8": {"file": "prompts/empty.txt"}})
    proc = snakemake(workdir(tmp_path, config), "-n")
    assert "prompt_sets.p8.file: prompt file prompts/empty.txt holds no prompts" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_prompt_file_longer_than_the_context_fails_before_compiling(tmp_path, smollm2_gguf):
    """A prompt file's length needs the tokenizer: the build job checks it before any compile work.
    llama-tiny's context is 2048 tokens: data/prompts_long.txt (hundreds of tokens) + 2040 new tokens does not fit."""
    config = with_changes(prompt_sets={"p8": {"file": "data/prompts_long.txt"}}, benchmark__max_new_tokens=2040)
    config["matrix"][0].update(engines=["compiled"], batch_sizes=[1])
    wd = workdir(tmp_path, config, smollm2_gguf)
    proc = snakemake(wd)
    assert proc.returncode != 0
    log = (wd / "results/logs/build_engine/tiny/compiled.log").read_text()
    assert "exceeds the model's context (2048 tokens)" in log and "Traceback" not in log
    assert "compiled batch" not in log   # nothing compiled
    assert not (wd / "resources/engines/tiny/compiled").exists()


# -- faults -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_out_of_memory_is_recorded_and_the_matrix_completes(tmp_path, smollm2_gguf):
    """A static KV cache that cannot be allocated (a real allocation failure: batch 4096 x cache 1048576
    positions of llama-tiny is ~550 GB a tensor on a 24 GB machine, within the config's bounds): the cell
    records status oom, the other cells and the report complete."""
    config = with_changes(engine_options={"compiled": {"cache_len": 1048576}})
    config["matrix"].append({"models": ["tiny"], "engines": ["compiled"], "prompt_sets": ["p8"],
                             "batch_sizes": [4096]})
    wd = workdir(tmp_path, config, smollm2_gguf)
    proc = snakemake(wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    oom = json.loads((wd / "results/runs/tiny/compiled/p8/bs4096.json").read_text())
    assert oom["status"] == "oom" and "allocate" in oom["reason"] and oom["metrics"] is None
    assert json.loads((wd / "results/runs/tiny/baseline/p8/bs2.json").read_text())["status"] == "ok"
    md = (wd / "results/benchmark_results.md").read_text()
    assert "OOM" in md and "was not run: oom" in md

    # strict: the same cell fails the run instead.
    config["benchmark"]["strict"] = True
    workdir(wd, config)
    proc = snakemake(wd, "--forcerun", "results/runs/tiny/compiled/p8/bs4096.json")
    assert proc.returncode != 0


def _wait_for(path: Path, text: str, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_interrupted_run_leaves_no_partial_result_and_resumes(tmp_path, smollm2_gguf, sig):
    short = with_changes(benchmark__max_new_tokens=64)
    wd = workdir(tmp_path, short, smollm2_gguf)
    first = wd / "results/runs/tiny/baseline/p8/bs1.json"
    second = wd / "results/runs/tiny/baseline/p8/bs2.json"
    assert snakemake(wd, str(first.relative_to(wd))).returncode == 0
    # The interrupted job has 1000 repetitions: it cannot finish before the signal lands, however loaded
    # the machine (a 6-repetition job once finished first under CPU load, issue 10.16). Only mtimes
    # trigger re-runs here, so the changed repetitions do not re-run the first target.
    workdir(wd, with_changes(benchmark__max_new_tokens=64, benchmark__repetitions=1000))
    before = first.stat().st_mtime_ns
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
                             "--cores", "1", "--rerun-triggers", "mtime"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for(wd / "results/logs/runs/tiny/baseline/p8/bs2.log", "rep 2/1000")
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    assert not second.exists()                       # nothing that satisfies the target
    assert not list(second.parent.glob(".bs2.json.iol-tmp.*"))  # no temporary left either (written atomically)
    assert first.stat().st_mtime_ns == before         # what was measured stays intact
    if sig == signal.SIGKILL:                         # a killed Snakemake leaves its lock behind
        assert snakemake(wd, "--unlock").returncode == 0
    workdir(wd, short)   # resume with the short job
    done = snakemake(wd, "--rerun-triggers", "mtime")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(second.read_text())["status"] == "ok"
    assert first.stat().st_mtime_ns == before


def test_corrupt_or_foreign_result_file_is_named_by_the_aggregation(tmp_path):
    good = tmp_path / "foreign.json"
    good.write_text(json.dumps({"model": "x", "tokens_per_s": 3}))
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"schema_version": 1, "status": ')
    for f, expected in ((good, "does not match inference_optim_llm/schemas/result.schema.json"), (bad, "not a readable JSON result")):
        proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "aggregate", str(f), "--out-md",
                               str(tmp_path / "r.md"), "--out-csv", str(tmp_path / "s.csv"), "--plots-dir",
                               str(tmp_path / "p")], capture_output=True, text=True)
        assert proc.returncode == 2
        assert str(f) in proc.stderr and expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.md").exists()


def test_busy_gpu_is_refused_only_when_configured():
    """Pure logic of the decision (the NVML reading itself is shown in docs/gpu-checks.md); the
    dictionaries below are fakes of NvmlSampler.busy_state()."""
    from inference_optim_llm.scenarios.static_batches import GpuBusyError, check_busy

    fake_busy = {"busy": True, "other_processes": [{"pid": 42, "memory_mb": 2048.0}], "memory_used_mb": 3000.0,
                 "utilization_pct": 97.0}
    fake_idle = {"busy": False, "other_processes": [], "memory_used_mb": 0.0, "utilization_pct": 0.0}
    check_busy(fake_busy, refuse=False)
    check_busy(fake_idle, refuse=True)
    check_busy(None, refuse=True)      # no NVML: nothing to decide on
    with pytest.raises(GpuBusyError, match="pid 42 .2048 MiB.*refuse_busy_gpu"):
        check_busy(fake_busy, refuse=True)


# -- security -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_values_never_reach_the_shell_unquoted_and_the_token_is_never_written(tmp_path, smollm2_gguf):
    weird = tmp_path / "prompts" / "a b;$(touch pwned);`touch pwned`'x\".txt"
    weird.parent.mkdir()
    weird.write_text("Hello there.\nWhat is a tide?\n")
    config = with_changes(prompt_sets={"p8": {"file": str(weird)}})
    config["matrix"][0]["batch_sizes"] = [1]
    wd = workdir(tmp_path / "wd", config, smollm2_gguf)
    secret = "hf_SECRET_token_1234567890"
    proc = snakemake(wd, env={"HF_TOKEN": secret})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.rglob("pwned"))
    result = json.loads((wd / "results/runs/tiny/baseline/p8/bs1.json").read_text())
    assert result["status"] == "ok"
    for f in list((wd / "results").rglob("*")) + list((wd / "resources/models").rglob("*")):
        if f.is_file() and f.stat().st_size < 50_000_000:
            assert secret.encode() not in f.read_bytes(), f
    assert secret not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_trust_remote_code_is_off_unless_a_model_opts_in(tmp_path, smollm2_gguf):
    from inference_optim_llm.models import download_model
    download_model("tiny", "synthetic:llama-tiny", tmp_path / "tiny", download_dir=smollm2_gguf.parent)
    assert "trust_remote_code" not in json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    config = with_changes(models={"tiny": {"source": "synthetic:llama-tiny", "trust_remote_code": "yes"}})
    proc = snakemake(workdir(tmp_path / "wd", config), "-n")
    assert proc.returncode != 0 and "'yes' is not of type 'boolean'" in proc.stdout + proc.stderr
