"""benchmarks/gemv_floor.py (issue 15): the matrices a decode step reads, and the script on the CPU."""
import subprocess
import sys
from pathlib import Path

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
