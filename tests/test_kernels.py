"""kernels.py's Triton kernels (compiled engine, option kernels: triton), checked on the CPU through Triton's
interpreter (TRITON_INTERPRET=1, which must be set before Triton is imported: each check runs this file in a
subprocess). The interpreter truncates where a GPU rounds to nearest when it casts to bfloat16, and its bfloat16
tl.dot is wrong (Triton 3.9): bf16 is checked loosely for gemv and not at all for attention here; on the GPU
benchmarks/kernel_check.py checks both in bf16. The GPU timing is in docs/results, not here."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")   # installed by the test extra (pyproject.toml), so CI runs these


def _run(check: str) -> None:
    proc = subprocess.run([sys.executable, __file__, check], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checked" in proc.stdout


def test_the_kernel_computes_its_torch_reference():
    """Every prologue/epilogue combination, weight-only fp8, widths that are not multiples of the block: fp32
    to rounding, bf16 within two of its steps (the kernel's sum runs in another order than the CPU's)."""
    _run("kernel")


def test_decode_attention_computes_its_torch_reference():
    """Rotary, cache write and attention against torch's ops (SDPA with the mask spelled out): group sizes 1 to
    16 (3: padded rows), left padding longer than a chunk, the query in the first chunk or the last, batches of 1
    to 3, caches read in one pass and split over programs (combined). Only the query's column is written, and
    columns it must not read (NaN there) change nothing. fp32 (see the module's note)."""
    _run("attention")


def test_the_gpu_check_script_runs_on_a_cpu():
    """benchmarks/kernel_check.py (the bf16 check run on the GPU machine) with the tiny shapes through the
    interpreter: its calls still fit the kernels' signatures, and its fp32 errors are rounding."""
    import json
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "benchmarks/kernel_check.py", "--cpu-smoke", "--presets", "llama-tiny"],
                          capture_output=True, text=True, timeout=600, cwd=repo, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert len(r["checks"]) == 14 and r["worst_rel_error"] < 1e-4


def test_argmax_in_two_reductions_is_torchs_argmax():
    """Pure logic: the first index of the maximum, ties across and within chunks, a vocabulary not a multiple of
    the chunk, one of at most a chunk."""
    import torch

    from inference_optim_llm.engines.compiled import argmax
    torch.manual_seed(0)
    for V in (100, 1024, 5000, 128256):
        x = torch.randn(3, V)
        assert torch.equal(argmax(x), x.argmax(-1))
        x = torch.zeros(2, V)
        x[0, V // 2:] = 1.0            # ties: the first wins
        x[1, [V - 1, 7]] = 2.0
        assert argmax(x).tolist() == [V // 2, 7] == x.argmax(-1).tolist()


def test_the_defaults_follow_the_device_and_options_override_them():
    """Pure logic: one CUDA GPU gets the Triton kernels and a compiled prefill, several GPUs torch's kernels, the
    CPU torch's ops and an eager prefill; an engine option wins over either."""
    from types import SimpleNamespace

    from inference_optim_llm.engines.compiled import option_defaults, resolved_options
    assert option_defaults("cpu") == {"kernels": "torch", "prefill": "eager"}
    assert option_defaults("cuda") == {"kernels": "triton", "prefill": "compiled"}   # Triton is installed here
    assert option_defaults("cuda", gpus=2) == {"kernels": "torch", "prefill": "compiled"}   # not measured there
    assert resolved_options(SimpleNamespace(device="cuda", gpus=1, options={"kernels": "torch"})) == ("torch", "compiled")
    assert resolved_options(SimpleNamespace(device="cpu", gpus=1, options={"prefill": "compiled"})) == ("torch", "compiled")


def test_triton_kernels_on_a_cpu_are_unavailable_by_name(tmp_path):
    """Asked for where they cannot run (a CPU, no interpreter), the kernels make the cell unavailable, named."""
    import json

    from inference_optim_llm.engines import EngineUnavailable
    from inference_optim_llm.engines.compiled import CompiledEngine
    from inference_optim_llm.spec import shape_settings
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    s = shape_settings(model, "compiled", 1, 4, 4, "cpu", "float32", {"kernels": "triton"})
    env = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with pytest.raises(EngineUnavailable, match="option kernels: triton needs Triton and a GPU; device cpu"):
            CompiledEngine(s).load()
        s.gpus = 2   # each rank would tune its own kernels: not with several GPUs
        with pytest.raises(EngineUnavailable, match="option kernels: triton runs on one GPU; gpus is 2"):
            CompiledEngine(s).load()
    finally:
        if env is not None:
            os.environ["TRITON_INTERPRET"] = env


def test_rope_types_that_follow_the_longest_position_get_no_table():
    """A rope type whose frequencies depend on the positions seen ("dynamic", "longrope") runs transformers' module
    each time and the decode step keeps torch's attention; the others read a table computed once, equal to the
    module's own output."""
    import torch
    from transformers import LlamaConfig

    from inference_optim_llm.engines.compiled import FusedLlama
    shapes = {"embed_tokens": (50, 64), "lm_head": (50, 64), "q_proj": (64, 64), "k_proj": (32, 64),
              "v_proj": (32, 64), "o_proj": (64, 64), "gate_proj": (96, 64), "up_proj": (96, 64), "down_proj": (64, 96)}

    def get(name):
        return torch.randn(next((v for k, v in shapes.items() if k in name), (64,)))

    for rope, table in (({"rope_type": "default"}, True), ({"rope_type": "dynamic", "factor": 2.0}, False),
                        ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 16}, True)):
        cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=50, tie_word_embeddings=False,
                          rope_parameters={"rope_theta": 10000.0, **rope})
        net = FusedLlama(cfg, get, 1, 64, "cpu")
        assert (net.rope_table is not None) == table, rope
        if table:
            positions = torch.tensor([[0, 5, 63]])
            x = torch.zeros(1, 3, 64)
            for got, want in zip(net.rotary_at(x, positions), net.rotary(x, positions)):
                assert torch.equal(got, want), rope


def test_the_fused_step_gives_the_torch_ops_tokens():
    """FusedLlama with kernels: triton against itself with torch's ops, fp32: a prefill and decode steps give the
    same hidden states (to rounding) and tokens; the step does use the kernel (counted)."""
    _run("fused")


def check_kernel() -> None:
    import torch

    from inference_optim_llm import fp8, kernels
    torch.manual_seed(0)
    combos = [{}, {"norm": True}, {"residual": True}, {"glu": True}, {"norm": True, "glu": True},
              {"glu": True, "residual": True}, {"norm": True, "residual": True},
              {"norm": True, "glu": True, "residual": True}]
    for dtype in (torch.float32, torch.bfloat16):
        for N, K in ((40, 96), (7, 130), (65, 300)):
            for c in combos:
                w = (torch.randn(2 * N if c.get("glu") else N, K) * 0.05).to(dtype)   # glu: gates, then ups
                x = torch.randn(1, 1, K, dtype=dtype)
                kw = {"norm": (1 + 0.1 * torch.randn(K)).to(dtype) if c.get("norm") else None,
                      "residual": torch.randn(1, 1, N, dtype=dtype) if c.get("residual") else None,
                      "glu": bool(c.get("glu")), "eps": 1e-5}
                got, want = kernels.gemv(x, w, **kw), kernels.reference(x, w, **kw)
                assert got.shape == want.shape == (1, 1, N) and got.dtype == dtype
                # bf16 (8 bits of mantissa): a few steps (the interpreter truncates; the norm's scale comes last)
                step = 1e-5 if dtype == torch.float32 else 4 * 2 ** -7
                # relative to the terms summed: a residual can cancel most of the product
                size = kernels.reference(x, w, **{**kw, "residual": None}).float().abs()
                size = size + (0 if kw["residual"] is None else kw["residual"].float().abs())
                tol = step * size.clamp(min=1)
                assert ((got.float() - want.float()).abs() <= tol).all(), (dtype, N, K, c)
        q, scale = fp8.quantize_rows(torch.randn(48, 64))   # weight-only fp8, with each prologue/epilogue
        for c in combos:
            x = torch.randn(1, 64, dtype=dtype)
            kw = {"norm": (1 + 0.1 * torch.randn(64)).to(dtype) if c.get("norm") else None,
                  "residual": torch.randn(1, 24 if c.get("glu") else 48, dtype=dtype) if c.get("residual") else None,
                  "glu": bool(c.get("glu"))}
            got, want = kernels.gemv(x, q, scale=scale, **kw), kernels.reference(x, q, scale=scale, **kw)
            assert got.shape == want.shape
            assert (got.float() - want.float()).abs().max() <= 0.02 * want.float().abs().max(), (dtype, c)
    # the ops as torch.compile sees them (schemas, fake implementations' shapes and strides)
    x, w, norm = torch.randn(64), torch.randn(40, 64), torch.randn(64)
    for glu in (False, True):
        torch.library.opcheck(kernels._gemv_op, (x, w, norm, torch.randn(20 if glu else 40), None, 1e-5, glu),
                              test_utils=("test_schema", "test_faketensor"))
    print("checked")


def check_attention() -> None:
    import torch

    from inference_optim_llm import kernels
    torch.manual_seed(0)
    cases = ((1, 2, 4, 64, 192, 70, 0), (3, 2, 3, 32, 128, 127, 5), (2, 1, 16, 64, 256, 10, 3),
             (2, 2, 4, 64, 320, 200, 70), (1, 4, 1, 16, 64, 0, 0), (2, 2, 3, 32, 150, 149, 66),
             (2, 2, 2, 32, 700, 650, 130), (1, 1, 4, 16, 1100, 520, 0),   # these two: split, combined
             (2, 2, 4, 32, 128, 3, 10))   # a padding query (an empty prompt): it sees its own column only
    for B, n_kv, group, hd, L, pos, pad in cases:   # pad: sequence 0's left padding
        qkv = torch.randn(B, 1, (group + 2) * n_kv * hd)
        angle = torch.rand(L, hd // 2).repeat(1, 2) * 6        # rotary tables by position
        cos, sin = angle.cos(), angle.sin()
        at = torch.randint(0, L, (B, 1))                        # each sequence's position
        k, v = torch.randn(B, n_kv, L, hd), torch.randn(B, n_kv, L, hd)
        valid = torch.ones(B, L, dtype=torch.bool)
        valid[0, :pad] = False
        p = torch.tensor([pos])
        k_want, v_want = k.clone(), v.clone()
        want = kernels.attention_reference(qkv, cos, sin, at, k_want, v_want, valid, p)
        # columns after the query, the query's own (written before it is read) and padding: NaN changes nothing
        for t in (k, v):
            t[:, :, pos:] = float("nan")
            t[0, :, :pad] = float("nan")
        k_nan, v_nan = k.clone(), v.clone()
        for chunks in (None, 1, 3):   # the default policy, one chunk a program, three
            k, v = k_nan.clone(), v_nan.clone()
            got = kernels._launch_attention(qkv, cos, sin, at, k, v, valid, p, chunks)
            assert got.shape == want.shape and torch.allclose(got, want, atol=2e-6, rtol=1e-5), (B, group, L, pos, pad)
            # the new column is written (to rounding: the rotary's sum), nothing else is touched
            assert torch.allclose(k[:, :, pos], k_want[:, :, pos], atol=1e-6) and torch.equal(v[:, :, pos], v_want[:, :, pos])
            for t, before in ((k, k_nan), (v, v_nan)):
                other = torch.ones(L, dtype=torch.bool)
                other[pos] = False
                assert torch.equal(t[:, :, other].isnan(), before[:, :, other].isnan())
                assert torch.equal(t[:, :, other].nan_to_num(), before[:, :, other].nan_to_num())
        assert torch.equal(kernels.decode_attention(qkv, cos, sin, at, k_nan.clone(), v_nan.clone(), valid, p),
                           kernels._launch_attention(qkv, cos, sin, at, k_nan.clone(), v_nan.clone(), valid, p))
    qkv = torch.randn(2, 2, 4 * 3 * 32)[:, :1]    # (B, 1, W), not contiguous
    angle = torch.rand(64, 32)
    torch.library.opcheck(kernels._attention_op, (qkv, angle.cos(), angle.sin(), torch.tensor([[3], [40]]),
                                                  torch.randn(2, 4, 64, 32),
                                                  torch.randn(2, 4, 64, 32), torch.ones(2, 64, dtype=torch.bool),
                                                  torch.tensor([9])),
                          test_utils=("test_schema", "test_faketensor"))
    print("checked")


def check_fused() -> None:
    import torch
    from transformers import LlamaConfig

    from inference_optim_llm import kernels
    from inference_optim_llm.engines.compiled import FusedLlama
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False, rms_norm_eps=1e-5)
    ws = {}

    def get(name):   # large enough weights that the tokens vary (at a small scale one token repeats)
        if name not in ws:
            shape = {"embed_tokens": (300, 128), "lm_head": (300, 128), "q_proj": (128, 128), "k_proj": (64, 128),
                     "v_proj": (64, 128), "o_proj": (128, 128), "gate_proj": (256, 128), "up_proj": (256, 128),
                     "down_proj": (128, 256)}
            key = next((k for k in shape if k in name), None)
            ws[name] = torch.randn(shape[key]) * 0.3 if key else 1 + 0.1 * torch.randn(128)
        return ws[name]

    calls = []
    for name in ("_launch_gemv", "_launch_attention"):   # count the kernels' calls
        launch = getattr(kernels, name)
        setattr(kernels, name, lambda *a, name=name, launch=launch: calls.append(name) or launch(*a))
    runs = {}
    for kernel in ("torch", "triton"):
        net = FusedLlama(cfg, get, 1, 64, "cpu", kernel_set=kernel)
        prompt = torch.tensor([[5, 17, 99, 3, 250, 42]])
        P = prompt.shape[1]
        with torch.no_grad():
            toks = [net(prompt, net.kv_index[None, :P], net.kv_index[:P], net.valid)]
            hidden = []
            for t in range(P, P + 12):
                tok = toks[-1].reshape(1, 1)
                hidden.append(net.hidden(tok, net.kv_index[None, t:t + 1], net.kv_index[t:t + 1], net.valid))
                toks.append(net.mm(hidden[-1][:, -1], net.lm_head, norm=net.final_norm).argmax(-1))
        runs[kernel] = (torch.cat(toks).tolist(), torch.cat(hidden))
    assert runs["torch"][0] == runs["triton"][0], runs
    assert len(set(runs["torch"][0])) > 4, runs["torch"][0]   # varied tokens: the comparison is not trivial
    a, b = runs["torch"][1], runs["triton"][1]    # hidden states up to ~200: to float32 rounding of the largest
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5
    # per decode step: 4 products a layer and the head, attention a layer (the prefill: torch's ops, but its head)
    assert calls.count("_launch_gemv") == 12 * (4 * 2 + 1) + 1, calls
    assert calls.count("_launch_attention") == 12 * 2, calls
    print("checked")


if __name__ == "__main__":
    {"kernel": check_kernel, "attention": check_attention, "fused": check_fused}[sys.argv[1]]()
