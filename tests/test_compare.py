"""compare: two result sets, each cell's change with its interval, and what differs between the runs
(result files made by tests/test_report.py's make_result; the statistics are real)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inference_optim_llm.compare import CompareError, compare
from test_report import make_result


def _run(root, results, **provenance):
    for r in results:
        r["provenance"].update(provenance)
        t = r["target"]
        p = root / t["model"] / t["engine"] / t["prompt_set"] / f"bs{t['batch_size']}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r))
    return root


def _batches(r, values):
    r["batches"] = [{**r["batches"][0], "repetition": k, "output_tokens_per_s": v} for k, v in enumerate(values)]
    return r


def test_a_real_change_is_significant_and_no_change_is_not(tmp_path):
    a = _run(tmp_path / "a", [_batches(make_result("compiled", 1, 100.0), [99, 100, 101, 100, 99.5, 100.5]),
                              _batches(make_result("baseline", 1, 50.0), [49, 50, 51, 50, 49.5, 50.5])])
    b = _run(tmp_path / "b", [_batches(make_result("compiled", 1, 120.0), [119, 120, 121, 120, 119.5, 120.5]),
                              _batches(make_result("baseline", 1, 50.0), [49.2, 50.1, 50.8, 50, 49.6, 50.4])])
    text = compare(a, b)
    compiled = next(line for line in text.splitlines() if "/ compiled /" in line)
    baseline = next(line for line in text.splitlines() if "/ baseline /" in line)
    assert "+20.0 %" in compiled and "**yes**" in compiled
    assert "| no |" in baseline
    assert "1 significantly better in B, 0 significantly worse" in text
    assert "Same GPU model, driver" in text


def test_runs_on_other_gpus_are_refused_and_other_differences_warned(tmp_path):
    a = _run(tmp_path / "a", [make_result("compiled", 1, 100.0)])
    b = _run(tmp_path / "b", [make_result("compiled", 1, 100.0)], gpu_name="NVIDIA H200")
    with pytest.raises(CompareError, match="different gpu_name"):
        compare(a, b)
    assert "**Warning" in compare(a, b, force=True)
    c = _run(tmp_path / "c", [make_result("compiled", 1, 100.0)], driver="999.1")
    text = compare(a, c)
    assert "**Warning: the runs differ" in text and "- driver:" in text and "999.1" in text


def test_compare_cli_writes_the_markdown(tmp_path):
    a = _run(tmp_path / "a", [make_result("compiled", 1, 100.0)])
    proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "compare", str(a), str(tmp_path / "none"),
                           "--output", str(tmp_path / "c.md")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'none'}: no such directory\n"
    proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "compare", str(a), str(a),
                           "--output", str(tmp_path / "c.md")], capture_output=True, text=True)
    assert proc.returncode == 0 and (tmp_path / "c.md").read_text().startswith("# Comparison")
