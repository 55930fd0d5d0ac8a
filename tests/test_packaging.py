"""The installed package works outside the checkout: the result schema and the templates ship in the wheel.

The project is built and installed non-editable (pip, offline, no build isolation, setuptools from the
running environment) into a fresh directory, from a copy of the working tree (tracked and untracked,
not ignored, files), so neither the current environment nor the checkout is touched. The installed
copy then runs from a directory outside the checkout with PYTHONPATH pointing at it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_report import make_result

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def working_tree_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return sorted({f for f in out.split("\0") if f and (REPO / f).is_file()})


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The directory the project was installed into (non-editable)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to copy the working tree from")
    base = tmp_path_factory.mktemp("packaging")
    src, site = base / "src", base / "site"
    for f in working_tree_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--no-cache-dir", "--target", str(site), str(src)],
                          capture_output=True, text=True, cwd=base, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A working directory outside the checkout."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    assert REPO not in d.resolve().parents
    return d


def test_installed_package_holds_the_schemas_and_templates(installed):
    pkg = installed / "inference_optim_llm"
    assert (pkg / "schemas" / "result.schema.json").is_file()
    assert (pkg / "schemas" / "config.schema.yaml").is_file()
    templates = sorted(p.name for p in (pkg / "templates").glob("*.j2"))
    assert templates == sorted(p.name for p in (REPO / "inference_optim_llm" / "templates").glob("*.j2"))
    assert "benchmark_results.md.j2" in templates
    # the shipped result schema is the checkout's, byte for byte
    assert (pkg / "schemas" / "result.schema.json").read_bytes() == \
        (REPO / "inference_optim_llm" / "schemas" / "result.schema.json").read_bytes()


def test_installed_copy_is_what_runs_outside_the_checkout(installed, outside):
    proc = run_installed(installed, outside, "-c", "import inference_optim_llm, sys; print(inference_optim_llm.__file__)")
    assert proc.returncode == 0, proc.stderr
    where = Path(proc.stdout.strip()).resolve()
    assert installed.resolve() in where.parents
    assert REPO not in where.parents


def test_validate_result_and_aggregate_work_from_the_installed_package(installed, outside):
    result = outside / "bs1.json"
    result.write_text(json.dumps(make_result("baseline", 1, 100.0)))
    proc = run_installed(installed, outside, "-m", "inference_optim_llm", "validate-result", str(result))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    out_md, out_csv, plots = outside / "report.md", outside / "summary.csv", outside / "plots"
    proc = run_installed(installed, outside, "-m", "inference_optim_llm", "aggregate", str(result), "--out-md",
                         str(out_md), "--out-csv", str(out_csv), "--plots-dir", str(plots))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out_md.is_file() and "baseline" in out_md.read_text()
    assert out_csv.is_file() and "baseline" in out_csv.read_text()

    # a foreign file is rejected by the shipped schema, named in the message
    foreign = outside / "foreign.json"
    foreign.write_text(json.dumps({"model": "x"}))
    proc = run_installed(installed, outside, "-m", "inference_optim_llm", "validate-result", str(foreign))
    assert proc.returncode != 0
    assert "result.schema.json" in proc.stderr and "Traceback" not in proc.stderr
