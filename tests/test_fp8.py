"""fp8 weights (issue 15's precision arm): e4m3 with one scale per output channel (fp8.py), for `compiled`; the
matrix's `weights` dimension names its result files; the byte model counts one byte a weight."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inference_optim_llm import fp8

REPO = Path(__file__).resolve().parent.parent


def test_rows_come_back_within_e4m3s_step():
    """Every weight is within half an e4m3 step of its row's scale (3 mantissa bits: 2^-4 relative to the
    value's power of two); a product with a quantized input stays within a few percent of F.linear."""
    torch.manual_seed(0)
    w = torch.randn(96, 64) * torch.logspace(-3, 0, 96)[:, None]   # rows of very different magnitudes
    q, scale = fp8.quantize_rows(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (1, 96)
    back = fp8.dequantize(q, scale)
    assert ((back - w).abs() <= w.abs() * 2 ** -4 + scale.t() * 2 ** -9).all()
    x = torch.randn(3, 5, 64)
    y, ref = fp8.linear(x, q, scale), F.linear(x, w)
    assert y.shape == ref.shape and ((y - ref).norm() / ref.norm()).item() < 0.06


def test_the_byte_model_counts_one_byte_a_weight():
    """Pure logic: fp8 weights are the bf16 bytes halved, plus a float32 scale per output row."""
    from inference_optim_llm.bandwidth import weight_bytes
    from inference_optim_llm.models import SYNTHETIC_PRESETS
    model = {"model_type": "llama", **SYNTHETIC_PRESETS["llama-3.1-8b"]}
    bf16, f8 = weight_bytes(model, "bfloat16"), weight_bytes(model, "bfloat16", "fp8")
    assert 0.5 < f8 / bf16 < 0.502


def _bench(tmp_path, spec):
    out = tmp_path / f"{spec['engine']}-{spec.get('weights', 'default')}.json"
    proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "bench", "--spec", json.dumps(spec),
                           "--output", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_compiled_runs_fp8_weights_and_other_engines_say_they_cannot(tmp_path, smollm2_dir):
    """The embedded model in fp32 on the CPU through `compiled` with fp8 weights: every request gets its
    tokens, the agreement with baseline's is reported, the byte model halves; baseline records unavailable."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("The capital of France is\nOnce upon a time\n")
    common = {"model": "smollm2", "model_dir": str(smollm2_dir), "prompt_set": "p", "prompt_spec": {"file": str(prompts)},
              "max_new_tokens": 8, "repetitions": 1, "warmup": 1, "device": "cpu", "dtype": "float32",
              "batch_size": 2, "weights": "fp8"}
    r = _bench(tmp_path, {**common, "engine": "compiled"})
    assert r["status"] == "ok" and r["target"]["weights"] == "fp8", r.get("reason")
    assert r["token_check"]["generated_min"] == r["token_check"]["generated_max"] == 8
    full = _bench(tmp_path, {**common, "engine": "compiled", "weights": "default"})
    assert r["bandwidth"]["weight_bytes"] < 0.3 * full["bandwidth"]["weight_bytes"]   # fp32 -> 1 byte
    b = _bench(tmp_path, {**common, "engine": "baseline"})
    assert b["status"] == "unavailable" and "no fp8 weights here; engines with them: compiled" in b["reason"]


def test_the_weights_dimension_names_files(tmp_path):
    """A dry run: bs2-fp8.json beside bs2.json; the build compiles default-weight shapes only."""
    from conftest import workflow_config
    cfg = workflow_config("tiny")
    cfg["matrix"] = [{**cfg["matrix"][0], "engines": ["compiled"], "weights": ["default", "fp8"]}]
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(tmp_path / "c.yaml"),
                           "-d", str(tmp_path / "w"), "-s", str(REPO / "Snakefile")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "bs2-fp8.json" in out and "bs2.json" in out


@pytest.mark.slow
def test_the_compiled_forward_scores_a_text_as_transformers_does(smollm2_dir):
    """benchmarks/perplexity.py's measure: the compiled engine's forward gives the shipped text the perplexity
    transformers gives it (fp32, the embedded model); fp8 weights cost a few percent of it, not more."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from perplexity import perplexity

    from inference_optim_llm.models import load_model, load_tokenizer
    text = (REPO / "data" / "perplexity.txt").read_text()
    ids = load_tokenizer(smollm2_dir)(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = load_model(smollm2_dir, "cpu", "float32")(ids, labels=ids).loss.item()
    ours = perplexity(smollm2_dir, text, "float32", "default", "cpu")
    assert ours["tokens"] == ids.shape[1] and ours["mean_nll"] == pytest.approx(ref, abs=1e-4)
    f8 = perplexity(smollm2_dir, text, "float32", "fp8", "cpu")
    assert 1.0 < f8["perplexity"] / ours["perplexity"] < 1.10
