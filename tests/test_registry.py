"""The engine registry is the one list: an engine registered from outside the package (an entry point,
as a third-party plug-in would) gets its config checks, targets and build step in a dry run, with no
file of the project changed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from test_reliability import TINY, snakemake, workdir

PLUGIN = '''
ENTRY = {"cls": "throwaway_engine:Throwaway", "options": {"knob": {"type": "integer", "minimum": 1}},
         "build": "throwaway_engine:build"}
'''


def _install_plugin(site):
    site.mkdir()
    (site / "throwaway_engine.py").write_text(PLUGIN)
    dist = site / "throwaway_engine-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-engine\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[inference_optim_llm.engines]\nthrowaway = throwaway_engine:ENTRY\n")
    return {"PYTHONPATH": str(site)}


def _status():
    return subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_plugin_engine_gets_targets_options_and_a_build_with_no_project_file_changed(tmp_path):
    before = _status()
    env = _install_plugin(tmp_path / "site")
    config = json.loads(json.dumps(TINY))
    config["matrix"][0]["engines"] = ["baseline", "throwaway"]
    config["engine_options"] = {"throwaway": {"knob": 3}}
    wd = workdir(tmp_path / "wd", config)
    proc = snakemake(wd, "-n", "throwaway", env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    counts = dict(line.split()[:2] for line in proc.stdout.split("Job stats:")[1].splitlines()[3:]
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    assert counts["throwaway"] == "1" and counts["build_engine"] == "1" and counts["run_benchmark"] == "2"
    assert "results/runs/tiny/throwaway/p8/bs2.json" in proc.stdout
    assert "resources/engines/tiny/throwaway" in proc.stdout
    # its options are checked like any engine's
    config["engine_options"] = {"throwaway": {"knb": 3}}
    bad = snakemake(workdir(tmp_path / "wd", config), "-n", env=env)
    assert bad.returncode != 0 and "engine_options.throwaway.knb: unknown option" in bad.stdout + bad.stderr
    # without the plug-in the name is unknown, named with the registered ones
    gone = snakemake(workdir(tmp_path / "wd", {**config, "engine_options": {}}), "-n")
    assert "matrix[0].engines: 'throwaway' is not a registered engine (baseline, compiled" in gone.stdout + gone.stderr
    assert _status() == before


def test_registry_drives_the_cli_help():
    from inference_optim_llm.engines import ENGINES

    out = subprocess.run([sys.executable, "-m", "inference_optim_llm", "run", "--help"], capture_output=True,
                         text=True).stdout
    assert all(name in out for name in ENGINES)
