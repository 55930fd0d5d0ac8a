"""Tensor parallelism (tp.py, the compiled engine at gpus > 1): the shards put back together are the
weights; on the CPU (gloo, 2 processes, fp32) every token at gpus 2 equals gpus 1; the matrix's gpus
dimension names result files and asks Snakemake for that many GPUs; engines without it record unavailable."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inference_optim_llm import tp

REPO = Path(__file__).resolve().parent.parent


def test_shards_put_back_together_are_the_layer():
    """Pure logic: rows of q, k, v, gate and up, columns of o and down, per rank, in rank order."""
    torch.manual_seed(0)
    n_heads, n_kv, hd, hidden, inter = 4, 2, 3, 12, 8
    w = dict(norm1=torch.randn(hidden), norm2=torch.randn(hidden),
             wqkv=torch.randn((n_heads + 2 * n_kv) * hd, hidden), wo=torch.randn(hidden, n_heads * hd),
             wgu=torch.randn(2 * inter, hidden), wd=torch.randn(hidden, inter))
    shards = [tp.shard_layer(w, n_heads, n_kv, hd, r, 2) for r in range(2)]
    nq, nkv = n_heads * hd // 2, n_kv * hd // 2
    q = torch.cat([s["wqkv"][:nq] for s in shards])
    k = torch.cat([s["wqkv"][nq:nq + nkv] for s in shards])
    v = torch.cat([s["wqkv"][nq + nkv:] for s in shards])
    assert torch.equal(torch.cat([q, k, v]), w["wqkv"])
    assert torch.equal(torch.cat([s["wo"] for s in shards], dim=1), w["wo"])
    gate = torch.cat([s["wgu"][:inter // 2] for s in shards])
    up = torch.cat([s["wgu"][inter // 2:] for s in shards])
    assert torch.equal(torch.cat([gate, up]), w["wgu"])
    assert torch.equal(torch.cat([s["wd"] for s in shards], dim=1), w["wd"])
    assert tp.shard_layer(w, n_heads, n_kv, hd, 0, 1) is w


def test_a_model_that_does_not_split_is_named():
    from types import SimpleNamespace
    cfg = SimpleNamespace(num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)   # SmolLM2-135M
    with pytest.raises(tp.TensorParallelError, match="num_attention_heads is 9, which does not split evenly over gpus 2"):
        tp.check_divisible(cfg, 2)
    tp.check_divisible(cfg, 3)


def _varied_model(out: Path, smollm2_tokenizer_dir: Path) -> Path:
    """llama-tiny's shapes with weights drawn wide (std 0.3), saved as a real model directory: random
    weights at the default scale give one token over and over, which would make parity trivially true."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from inference_optim_llm.models import SYNTHETIC_PRESETS
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SYNTHETIC_PRESETS["llama-tiny"]))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_tokenizer_dir).save_pretrained(out)
    return out


def _cli(*args):
    proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", *args], capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _reference(tmp_path: Path, model: Path, prompts: str, new_tokens: int) -> tuple[dict, Path]:
    """The spec fields common to a parity test's runs (fp32, CPU) and baseline's reference tokens at batch 1."""
    (tmp_path / "p.txt").write_text(prompts)
    common = {"model": "tiny", "model_dir": str(model), "prompt_set": "p",
              "prompt_spec": {"file": str(tmp_path / "p.txt")}, "max_new_tokens": new_tokens, "repetitions": 1,
              "warmup": 1, "device": "cpu", "dtype": "float32"}
    ref = tmp_path / "ref.json"
    _cli("reference-tokens", "--spec", json.dumps({**common, "engine": "baseline", "batch_size": 1}), "--output", str(ref))
    return common, ref


def _synthetic_varied(out: Path, smollm2_gguf: Path) -> Path:
    """A synthetic llama-tiny whose draws are wide (initializer_range 0.3, read by models.synthetic_draw)."""
    from inference_optim_llm.models import download_model
    download_model("tiny", "synthetic:llama-tiny", out, download_dir=smollm2_gguf.parent)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "initializer_range": 0.3}))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("source", ["files", "synthetic"])
def test_two_processes_give_every_token_of_one(tmp_path, smollm2_dir, smollm2_gguf, source):
    """The issue's CPU parity, fp32, gloo: the benchmark CLI runs `compiled` and `baseline` (transformers'
    tp_plan) at gpus 2 (2 processes) against the reference tokens of `baseline` in one process; every
    token of every prompt agrees. files: weights read from safetensors (each rank its slices); synthetic:
    weights drawn per tensor, each rank keeping its share, `compiled` at gpus 1 too."""
    if source == "files":
        model = _varied_model(tmp_path / "model", smollm2_dir)
    else:
        model = _synthetic_varied(tmp_path / "model", smollm2_gguf)
    common, ref = _reference(tmp_path, model, "The capital of France is\nOnce upon a time\nIn 1905, Einstein\n"
                             "A B C D E F G\n", 24)
    flat = [t for seq in json.loads(ref.read_text())["tokens"] for t in seq]
    assert len(set(flat)) > 20          # varied text, not one token repeated: parity is not trivially true
    cells = [("compiled", 2), ("baseline", 2)] + ([("compiled", 1)] if source == "synthetic" else [])
    for engine, gpus in cells:
        out = tmp_path / f"{engine}-{gpus}.json"
        _cli("bench", "--spec", json.dumps({**common, "engine": engine, "batch_size": 2, "gpus": gpus,
                                           "reference": str(ref)}), "--output", str(out))
        r = json.loads(out.read_text())
        assert r["status"] == "ok" and r["target"]["gpus"] == gpus, (engine, gpus, r.get("reason"))
        assert r["agreement"]["exact_match_rate"] == 1.0 and r["agreement"]["first_divergence"] is None, engine


def test_synthetic_weights_are_the_same_draw_whole_or_in_shares(tmp_path, smollm2_gguf):
    """Each weight is drawn by its name: the engines' reader and the transformers model hold the same
    tensors, the tied head is the embedding, norms are ones; another name draws another tensor."""
    from inference_optim_llm.models import load_model, synthetic_draw, weights
    model = _synthetic_varied(tmp_path / "m", smollm2_gguf)
    hf = load_model(model, "cpu", "float32")
    get = weights(model, "cpu", "float32")
    for name, p in hf.named_parameters():
        assert torch.equal(get(name), p), name
    assert torch.equal(get("lm_head.weight"), hf.model.embed_tokens.weight)
    assert torch.equal(get("model.norm.weight"), torch.ones(64))
    q = get("model.layers.0.self_attn.q_proj.weight")
    assert abs(q.std().item() - 0.3) < 0.03
    assert not torch.equal(q, synthetic_draw(model, "model.layers.1.self_attn.q_proj.weight", q.shape, "float32", "cpu"))


def test_the_gpus_dimension_names_files_and_asks_for_gpus(tmp_path):
    """A dry run: bs2-tp2.json beside bs2.json, Snakemake's gpu resource at 2, for both engines."""
    from conftest import workflow_config
    cfg = workflow_config("tiny")
    cfg["matrix"] = [{**cfg["matrix"][0], "engines": ["baseline", "compiled"], "gpus": [1, 2]}]
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(tmp_path / "c.yaml"),
                           "-d", str(tmp_path / "w"), "-s", str(REPO / "Snakefile"),
                           "--resources", "gpu=4"],   # a 4-GPU host (the default profile's limit is 1)
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "bs2-tp2.json" in out and "bs2.json" in out
    jobs = [j.split("resources:")[0] + j.split("resources:")[1].split("\n")[0]   # up to its resources line
            for j in out.split("rule run_benchmark:")[1:]]
    assert sorted("gpu=2" in j for j in jobs) == [False] * 4 + [True] * 4
    assert all(("gpu=2" in j) == ("-tp2.json" in j) for j in jobs)
    for engine in ("baseline", "compiled"):
        assert f"/{engine}/" in out


def test_an_engine_without_tensor_parallelism_is_unavailable_at_two_gpus():
    from inference_optim_llm.engines import EngineUnavailable, check_gpus
    check_gpus("trtllm", 1)
    check_gpus("compiled", 4)
    check_gpus("baseline", 2)
    with pytest.raises(EngineUnavailable, match="engine 'trtllm' has no tensor-parallel support here .gpus 2.; "
                                                "engines with it: baseline, compiled"):
        check_gpus("trtllm", 2)


def test_telemetry_of_one_gpu_is_not_reported_for_a_cell_on_two():
    """Pure logic: NVML read the first GPU; power, energy and memory of a 2-GPU cell are null, with why."""
    from inference_optim_llm.results import telemetry_of
    from inference_optim_llm.telemetry import Sample, summarize_samples
    rep = summarize_samples([Sample(t=0.0, power_w=300.0, memory_mb=1000.0), Sample(t=1.0, power_w=300.0,
                                                                                    memory_mb=1000.0)],
                            300.0, None, 1000.0, sm_clock_max_mhz=1980.0, idle_power_w=100.0)
    one, two = telemetry_of(rep, 100), telemetry_of(rep, 100, gpus=2)
    assert one["energy_per_token_j"] == 3.0 and one["power_mean_w"] == 300.0
    for key in ("energy_j", "power_mean_w", "gpu_memory_peak_mb", "idle_power_w", "energy_per_token_j",
                "energy_above_idle_j"):
        assert two[key] is None and "first of the cell's 2 GPUs" in two["null_reasons"][key], key


def test_the_limit_of_n_gpus_is_n_times_one():
    """Pure logic: the same bytes per step over the same TPOT is half the fraction on two GPUs."""
    from inference_optim_llm.bandwidth import decode_bandwidth
    from inference_optim_llm.models import SYNTHETIC_PRESETS
    model = {"model_type": "llama", **SYNTHETIC_PRESETS["llama-3.1-8b"]}
    cal = {"gpu_name": "NVIDIA H200", "bandwidth_gb_s": 4255.0}
    one = decode_bandwidth(model, "bfloat16", 1, 64, 200, 0.005, cal, "NVIDIA H200")
    two = decode_bandwidth(model, "bfloat16", 1, 64, 200, 0.005, cal, "NVIDIA H200", gpus=2)
    assert two["measured_gb_s"] == 2 * 4255.0 and two["achieved_gb_s"] == one["achieved_gb_s"]
    assert abs(two["fraction_of_measured"] - one["fraction_of_measured"] / 2) < 1e-12
    assert abs(two["fraction_of_datasheet"] - one["fraction_of_datasheet"] / 2) < 1e-12


def test_collective_share_is_nccl_time_over_the_span():
    """Pure logic, made-up kernel lists: two NCCL kernels of 10 us in a 100 us span are 20 %; none seen is
    null with the reason, never 0."""
    kernels = [("gemv", 0.0, 30.0), ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 30.0, 10.0),
               ("gemv", 40.0, 40.0), ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 90.0, 10.0)]
    got = tp.collective_share(kernels)
    assert got["share"] == 0.2 and got["collective_kernels"] == 2 and got["span_ms"] == 0.1
    assert tp.collective_share(kernels[:1])["share"] is None and "no NCCL kernel" in tp.collective_share(kernels[:1])["reason"]
    assert tp.collective_share([])["share"] is None


def test_a_model_run_only_on_two_gpus_has_its_reference_and_build_there():
    """config/gpu-x2.yaml (the 2-GPU run): the 70B model's reference runs on 2 GPUs (it fits on no single one),
    the 8B model's on 1; compiled's build compiles only 1-GPU shapes (none for 70B: a valid build)."""
    import yaml
    from snakemake.utils import validate

    from inference_optim_llm.bounds import CONFIG_SCHEMA
    from inference_optim_llm.plan import Plan
    config = yaml.safe_load((REPO / "config" / "gpu-x2.yaml").read_text())
    validate(config, str(CONFIG_SCHEMA))
    plan = Plan(config)
    assert plan.reference_spec("llama-70b", "tok64")["gpus"] == 2
    assert plan.reference_spec("llama-8b", "tok64")["gpus"] == 1
    assert plan.build_spec("llama-70b", "compiled")["batch_sizes"] == []
    assert plan.build_spec("llama-8b", "compiled")["batch_sizes"] == [1, 16]


@pytest.mark.slow
def test_a_compiled_prefill_gives_every_token_of_baseline(tmp_path, smollm2_dir):
    """compiled with option prefill: compiled (prompts padded on the left to 64, masked, the prefill run by the
    compiled forward), batch 2 of prompts of different lengths, fp32 on the CPU: every token equals baseline's
    at batch 1. (A padding row that saw no column gave NaN before the mask let it see itself.)"""
    model = _varied_model(tmp_path / "model", smollm2_dir)
    common, ref = _reference(tmp_path, model, "The capital of France is\nOnce upon a time there was\nIn 1905\n"
                             "A B C D E F G H I J K\n", 16)
    out = tmp_path / "compiled.json"
    _cli("bench", "--spec", json.dumps({**common, "engine": "compiled", "batch_size": 2, "reference": str(ref),
                                       "engine_options": {"prefill": "compiled"}}), "--output", str(out))
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["settings"]["engine_options"] == {"prefill": "compiled"}, r.get("reason")
    assert r["agreement"]["exact_match_rate"] == 1.0 and r["agreement"]["first_divergence"] is None
