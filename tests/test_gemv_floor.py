"""benchmarks/gemv_floor.py (issue 15): the matrices a decode step reads, and the script on the CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

REPO = Path(__file__).resolve().parent.parent


def test_the_floor_reads_every_step_matrix_once():
    """Pure logic: the 8B shapes' matrices, LM head included, embedding excluded, are 15.0 GB in bf16 (the
    figure of ../shared/notes/gpu.md); fused q/k/v and gate/up as the compiled engine holds them."""
    from gemv_floor import matrices

    from inference_optim_llm.models import SYNTHETIC_PRESETS
    m = matrices(SYNTHETIC_PRESETS["llama-3.1-8b"])
    assert len(m) == 4 * 32 + 1 and m[0] == (4096 + 2 * 1024, 4096) and m[-1] == (128256, 4096)
    assert abs(sum(o * i for o, i in m) * 2 / 1e9 - 15.0) < 0.05


def test_the_script_runs_on_the_cpu():
    import json
    proc = subprocess.run([sys.executable, "benchmarks/gemv_floor.py", "--preset", "llama-tiny", "--device", "cpu",
                           "--repeats", "3", "--tpot-ms", "2"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["matrices"] == 9 and r["floor_ms"] > 0 and r["step_share_of_floor"] == r["floor_ms"] / 2
    assert sorted(r["role_ms"]) == sorted(["qkv", "o", "gate/up", "down", "lm head"]) and min(r["role_ms"].values()) > 0


def test_the_kernel_variants_run_on_the_cpu():
    """The project's kernel with the step's prologues and epilogues, through Triton's interpreter (nothing timed;
    the plain kernel is checked in tests/test_kernels.py)."""
    import json
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "benchmarks/gemv_floor.py", "--preset", "llama-tiny", "--device", "cpu",
                           "--dtype", "float32", "--repeats", "1", "--kernel", "fused"], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["kernel"] == "fused" and r["floor_ms"] > 0 and len(r["role_ms"]) == 5
