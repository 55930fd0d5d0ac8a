"""Recovery after kill -9 of Snakemake: the job it started stops (inference_optim_llm/watchdog.py), a second job
for the same target refuses to start while the first lives (inference_optim_llm/targetlock.py), and the
documented recovery (`snakemake --unlock`, then `snakemake --rerun-incomplete`) measures each result once.

The fast tests use real processes: a program named `snakemake` (what the watchdog looks for) that starts a
job running the real `stages.job()`. The slow ones kill -9 the real workflow's Snakemake process alone (not
its group) in the middle of a static cell (llama-tiny) and of a serving cell (a real `transformers serve`).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_downloads, workflow_config

# A job as a workflow script runs it: the real stages.job() around a body that would measure for minutes.
JOB = textwrap.dedent("""\
    import os, sys, time
    from types import SimpleNamespace
    from inference_optim_llm.stages import job
    tmp = sys.argv[1]
    with job(SimpleNamespace(log=[f"{tmp}/job.log"], output=[f"{tmp}/out/result.json"])):
        open(f"{tmp}/job.pid", "w").write(str(os.getpid()))
        print("measuring")
        time.sleep(600)
        open(f"{tmp}/out/result.json", "w").write("{}")
    """)
# A parent that starts its argv and waits for it.
PARENT = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def _wait(condition, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} after {timeout} s")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _fake_snakemake(tmp: Path) -> Path:
    """An executable named `snakemake` that runs its arguments (the watchdog tells Snakemake by its name)."""
    exe = tmp / "bin" / "snakemake"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n{PARENT}\n")
    exe.chmod(0o755)
    return exe


def _start_job(tmp: Path, *launchers: str) -> tuple[subprocess.Popen, int]:
    (tmp / "job.py").write_text(JOB)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*launchers, sys.executable, str(tmp / "job.py"), str(tmp)], env=env,
                            start_new_session=True)
    _wait(lambda: "measuring" in _read(tmp / "job.log"), 60, "the job never started")
    return proc, int((tmp / "job.pid").read_text())


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # whatever a failed test left
    except ProcessLookupError:
        pass


def test_a_job_stops_cleanly_when_its_snakemake_is_killed(tmp_path):
    """Snakemake killed with -9 and not yet reaped (a zombie of its parent): the job sends itself SIGTERM,
    cleans up like on any SIGTERM, writes no result and leaves no lock."""
    snakemake = _fake_snakemake(tmp_path)
    proc, job_pid = _start_job(tmp_path, sys.executable, str(snakemake))
    try:
        log = _read(tmp_path / "job.log")
        assert f"this job stops if a process of the workflow that started it ends: {proc.pid} (snakemake)" in log
        os.kill(proc.pid, signal.SIGKILL)                    # Snakemake alone, not its group
        _wait(lambda: not _alive(job_pid), 10, "the job still runs after its Snakemake was killed")
        log = _read(tmp_path / "job.log")
        assert f"watchdog: {proc.pid} (snakemake)" in log and "ended" in log
        assert "stopped by SIGTERM: temporary files removed" in log and "Traceback" not in log
        assert not (tmp_path / "out" / "result.json").exists()
        assert not list((tmp_path / "out").iterdir())         # its lock removed too
    finally:
        _kill_group(proc)
        proc.wait()


def test_nothing_above_the_top_most_snakemake_is_watched(tmp_path):
    """A process above Snakemake (a terminal, nohup, a login shell) may end: the job goes on. The job's
    parent chain here: pytest -> plain python (not watched) -> snakemake (watched) -> job."""
    snakemake = _fake_snakemake(tmp_path)
    proc, job_pid = _start_job(tmp_path, sys.executable, "-c", PARENT, sys.executable, str(snakemake))
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        snakemake_pid = int(children[0])
        log = _read(tmp_path / "job.log")
        assert f"ends: {snakemake_pid} (snakemake)" in log and str(proc.pid) not in log.split("ends:")[1]
        os.kill(proc.pid, signal.SIGKILL)
        time.sleep(3)
        assert _alive(job_pid), _read(tmp_path / "job.log")
        os.kill(snakemake_pid, signal.SIGKILL)
        _wait(lambda: not _alive(job_pid), 10, "the job still runs after its Snakemake was killed")
        assert "stopped by SIGTERM" in _read(tmp_path / "job.log")
    finally:
        _kill_group(proc)
        proc.wait()


def test_a_job_without_snakemake_above_it_watches_nothing(tmp_path):
    proc, job_pid = _start_job(tmp_path, sys.executable, "-c", PARENT)
    try:
        log = _read(tmp_path / "job.log")
        assert "watchdog: no Snakemake process among this job's ancestors: nothing watched" in log
    finally:
        _kill_group(proc)
        proc.wait()


def test_snakemake_is_told_by_its_command_line():
    from inference_optim_llm.watchdog import is_snakemake

    for argv in (["snakemake", "--cores", "1"], ["/venv/bin/snakemake"], ["python3", "-m", "snakemake", "-n"],
                 ["/usr/bin/python3.11", "-u", "-X", "dev", "-m", "snakemake"],
                 ["python", "/venv/bin/snakemake", "-j1"]):
        assert is_snakemake(argv), argv
    for argv in ([], ["bash", "-c", "python -m snakemake --cores 1"], ["python", "run.py", "snakemake"],
                 ["python", "-m", "pytest", "snakemake"], ["vim", "snakemake"], ["nohup", "snakemake"]):
        assert not is_snakemake(argv), argv


def test_a_reused_pid_counts_as_gone():
    """A pid names another process once its own ended: the start time tells them apart."""
    from inference_optim_llm.watchdog import Process, _stat, alive

    start = _stat(os.getpid())[2]
    assert alive(Process(os.getpid(), start, "me"))
    assert not alive(Process(os.getpid(), start + 1, "me"))


def test_a_second_job_for_a_locked_target_refuses_to_start(tmp_path):
    """Two processes, one target: the second fails with one line naming the target and the holder's pid;
    once the holder is killed with -9, the lock is free (the kernel dropped it) and the next job runs."""
    holder, holder_pid = _start_job(tmp_path, sys.executable, "-c", PARENT)
    try:
        lock = tmp_path / "out" / ".result.json.iol-lock"
        assert lock.read_text().startswith(f"pid {holder_pid} on ")
        second = tmp_path / "second"
        second.mkdir()
        code = textwrap.dedent(f"""\
            from types import SimpleNamespace
            from inference_optim_llm.stages import job
            with job(SimpleNamespace(log=["{second}/job.log"], output=["{tmp_path}/out/result.json"])):
                print("measuring")
            """)
        run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=120)
        log = (second / "job.log").read_text()
        assert run.returncode == 2, log
        assert log.splitlines() == [f"error: {tmp_path}/out/result.json: another job is making this target "
                                    f"(pid {holder_pid} on {os.uname().nodename}, lock {lock}): not started twice; "
                                    "wait for it to end, or stop it, then run again"]
        os.kill(holder_pid, signal.SIGKILL)
        _wait(lambda: not _alive(holder_pid), 10, "the holder still runs")
        assert lock.exists()                   # the empty file of a killed holder stays, unlocked
        run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and (second / "job.log").read_text().endswith("measuring\n")
        assert not lock.exists()
    finally:
        _kill_group(holder)
        holder.wait()


# -- the real workflow: kill -9 of Snakemake alone, then the documented recovery --------------------------

def _workdir(tmp: Path, config: dict, gguf: Path) -> Path:
    (tmp / "config").mkdir(parents=True)
    (tmp / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "data").symlink_to(REPO / "data")
    copy_downloads(gguf, tmp)
    return tmp


def _snakemake_argv(wd: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "--cores", "1", *args]


def _recover(wd: Path, *targets: str) -> None:
    """The documented recovery after kill -9 of Snakemake (README, docs/reliability.md)."""
    for args in (["--unlock"], ["--rerun-incomplete", *targets]):
        proc = subprocess.run(_snakemake_argv(wd, *args), capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def _kill_snakemake_mid_job(wd: Path, log_glob: str, measuring: str, *targets: str) -> tuple[Path, int]:
    """Start the workflow, wait until a job's log (log_glob) shows `measuring`, kill -9 the Snakemake process
    alone. Returns that job's log and pid (from its target lock)."""
    out = open(wd / "snakemake.out", "w")
    proc = subprocess.Popen(_snakemake_argv(wd, *targets), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def started():
            return next((p for p in (wd / "results/logs").glob(log_glob) if measuring in p.read_text()), None)
        _wait(lambda: proc.poll() is not None or started(), 600, "no job started measuring")
        log = started()
        assert log and proc.poll() is None, _read(wd / "snakemake.out")[-3000:]
        locks = list((wd / "results").rglob(".*.iol-lock"))
        assert len(locks) == 1, locks
        job_pid = int(locks[0].read_text().split()[1])
        os.kill(proc.pid, signal.SIGKILL)                  # Snakemake alone: its job is not signalled
        proc.wait()
        _wait(lambda: not _alive(job_pid), 10, f"job {job_pid} still runs after its Snakemake was killed")
        return log, job_pid
    finally:
        _kill_group(proc)


def _logged_batches(log: Path) -> list[tuple[int, int, str]]:
    """(repetition, batch, e2e seconds as logged) of every timed batch a job's log shows."""
    line = r"\] rep (\d+)(?:/\d+| \(more: stopping rule\)) batch (\d+)/\d+: ([0-9.]+) s"
    return [(int(m[1]), int(m[2]), m[3]) for m in re.finditer(line, log.read_text())]


# Each cell measures for 15 s however fast the machine (the stopping rule's min_measure_s): the kill lands
# early in the cell, and without the watchdog the job would outlive the 10 s the test gives it to stop.
MEASURE_S = 15


@pytest.mark.slow
def test_kill_9_of_snakemake_mid_static_cell_then_the_documented_recovery(tmp_path, smollm2_gguf):
    config = workflow_config("tiny")
    config["benchmark"].update(max_new_tokens=64, repetitions=3, min_measure_s=MEASURE_S, max_repetitions=10000)
    wd = _workdir(tmp_path, config, smollm2_gguf)
    runs = wd / "results/runs/tiny/baseline/p8"

    log, job_pid = _kill_snakemake_mid_job(wd, "runs/tiny/baseline/p8/*.log", "rep 2/3 ")
    text = log.read_text()
    assert "ended, so nothing waits for this job's result: stopping it (SIGTERM)" in text
    assert "stopped by SIGTERM: temporary files removed" in text and "Traceback" not in text
    killed = runs / log.name.replace(".log", ".json")
    assert not killed.exists() and not list(runs.glob(".*"))   # no temporary, and its lock removed
    time.sleep(3)
    assert not killed.exists()                              # nothing published late either

    _recover(wd)
    for bs in ("bs1", "bs2"):
        result = json.loads((runs / f"{bs}.json").read_text())
        assert result["status"] == "ok"
        # One measurement: the published batches are those one job logged, each repetition once.
        logged = _logged_batches(wd / f"results/logs/runs/tiny/baseline/p8/{bs}.log")
        assert logged == [(b["repetition"] + 1, b["batch"] + 1, f"{b['e2e_s']:.2f}") for b in result["batches"]]
        per_repetition = result["settings"]["padding"]["batches_per_repetition"]
        assert len(logged) == result["stopping"]["repetitions"] * per_repetition
        assert result["stopping"]["timed_s"] >= MEASURE_S
    assert not list((wd / "results").rglob(".*.iol-lock"))
    assert not _alive(job_pid)


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_kill_9_of_snakemake_mid_serving_cell_stops_the_job_and_its_server(tmp_path, smollm2_gguf):
    """The job started a real `transformers serve` in its own process group: after kill -9 of Snakemake
    alone, the job and every process of the server's group are gone within seconds, nothing is published,
    and the documented recovery measures the load point once."""
    pytest.importorskip("fastapi", reason="the serving extra: pip install -e '.[serving]'")
    config = workflow_config("serving")
    config["serving"]["matrix"][0]["loads"] = ["c1"]
    config["serving"]["min_duration_s"] = 45   # outlasts the 30 s the job and its server get to stop
    wd = _workdir(tmp_path, config, smollm2_gguf)
    target = "results/serving/smollm2-135m/transformers/tok16/c1.json"

    out = open(wd / "snakemake.out", "w")
    proc = subprocess.Popen(_snakemake_argv(wd, target), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    log = wd / "results/logs/serving/smollm2-135m/transformers/tok16/c1.log"
    try:
        _wait(lambda: proc.poll() is not None or "warm-up: " in _read(log), 900, "the load point never started")
        assert proc.poll() is None, _read(wd / "snakemake.out")[-3000:]
        job_pid = int((wd / "results/serving/smollm2-135m/transformers/tok16/.c1.json.iol-lock").read_text().split()[1])
        children = Path(f"/proc/{job_pid}/task/{job_pid}/children").read_text().split()
        servers = [int(c) for c in children if "transformers" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(servers) == 1 and _group(servers[0]), children
        os.kill(proc.pid, signal.SIGKILL)                  # Snakemake alone
        proc.wait()
        _wait(lambda: not _alive(job_pid) and not _group(servers[0]), 30,
              f"job {job_pid} or its server's group {_group(servers[0])} still runs after Snakemake was killed")
    finally:
        _kill_group(proc)
    text = _read(log)
    assert "ended, so nothing waits for this job's result: stopping it (SIGTERM)" in text
    assert "stopped by SIGTERM" in text and "Traceback" not in text
    assert not (wd / target).exists()

    _recover(wd, target)
    result = json.loads((wd / target).read_text())
    assert result["status"] == "ok"
    loads = re.findall(r"load c1: (\d+) requests in", _read(log))
    assert loads == [str(len(result["requests"]))]      # one measurement, the one published
    assert not list((wd / "results").rglob(".*.iol-lock"))
