"""kernels.py's Triton kernels against their torch references on the GPU, in bfloat16 at the synthetic shapes'
sizes (the CPU tests run Triton's interpreter, whose bfloat16 casts and products differ from a GPU's).

    python benchmarks/kernel_check.py > kernel_check.json

gemv: every prologue/epilogue the compiled step uses, and weight-only fp8, for each matrix of a layer and the
LM head: the largest error relative to the reference's largest magnitude (bf16 has 8 bits: ~0.004 a rounding).
decode_attention (rotary, cache write, attention): batch 1 and 16, left padding, the query early and late in the
cache: the same measure, over the output and the written column. (The kernels' times are in profile_step.py's
profiles: timed alone outside a CUDA graph, a few-microsecond kernel measures the launch, not itself.)
Exits 1 if any error exceeds 0.02.
"""
import json
import sys

import torch

from inference_optim_llm import fp8, kernels
from inference_optim_llm.models import SYNTHETIC_PRESETS

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from gemv_floor import matrices  # noqa: E402


def rel(got, want) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["llama-3.2-1b", "llama-3.1-8b"])
    ap.add_argument("--cpu-smoke", action="store_true", help="check this script on a CPU (TRITON_INTERPRET=1, fp32)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    dev, dt = ("cpu", torch.float32) if a.cpu_smoke else ("cuda", torch.bfloat16)
    rows = []
    for preset in a.presets:
        shape = SYNTHETIC_PRESETS[preset]
        h = shape["hidden_size"]
        (qkv, _), (_, q_width), (gu, _), (_, inner) = matrices(shape)[:4]
        head = (shape["vocab_size"], h)
        norm = 1 + 0.1 * torch.randn(h, device=dev, dtype=dt)
        res = torch.randn(h, device=dev, dtype=dt)
        cases = {  # name: (weight shape, input width, gemv's keyword arguments)
            "qkv, norm": ((qkv, h), h, {"norm": norm}),
            "o, residual": ((h, q_width), q_width, {"residual": res}),
            "gate/up, norm + glu": ((gu, h), h, {"norm": norm, "glu": True}),
            "down, residual": ((h, inner), inner, {"residual": res}),
            "lm head, norm": (head, h, {"norm": norm}),
        }
        for name, (wshape, width, kw) in cases.items():
            w = torch.randn(*wshape, device=dev, dtype=dt) * 0.02
            x = torch.randn(1, width, device=dev, dtype=dt)
            rows.append({"kernel": "gemv", "shape": preset, "case": name, "weights": str(dt).split(".")[1],
                         "rel_error": rel(kernels.gemv(x, w, **kw), kernels.reference(x, w, **kw))})
            q, scale = fp8.quantize_rows(w)
            rows.append({"kernel": "gemv", "shape": preset, "case": name, "weights": "fp8",
                         "rel_error": rel(kernels.gemv(x, q, scale=scale, **kw), kernels.reference(x, q, scale=scale, **kw))})
        n_kv, hd = shape["num_key_value_heads"], shape.get("head_dim") or h // shape["num_attention_heads"]
        group = shape["num_attention_heads"] // n_kv
        for B, L, pos, pad in ((1, 320, 64, 0), (1, 320, 263, 0), (16, 320, 200, 40), (16, 4096, 4000, 100)):
            qkv = torch.randn(B, 1, (group + 2) * n_kv * hd, device=dev, dtype=dt)
            angle = torch.rand(L, hd // 2, device=dev).repeat(1, 2) * 6     # rotary tables by position
            cos, sin = angle.cos().to(dt), angle.sin().to(dt)
            at = torch.randint(0, L, (B, 1), device=dev)
            k, v = (torch.randn(B, n_kv, L, hd, device=dev, dtype=dt) for _ in range(2))
            valid = torch.ones(B, L, dtype=torch.bool, device=dev)
            valid[0, :pad] = False
            p = torch.tensor([pos], device=dev)
            kr, vr = k.clone(), v.clone()
            want = kernels.attention_reference(qkv, cos, sin, at, kr, vr, valid, p)
            case = f"batch {B}, cache {L}, query at {pos}, padding {pad}"
            rows.append({"kernel": "decode_attention", "shape": preset, "case": case,
                         "rel_error": max(rel(kernels.decode_attention(qkv, cos, sin, at, k, v, valid, p), want),
                                          rel(k[:, :, pos], kr[:, :, pos]), rel(v[:, :, pos], vr[:, :, pos]))})
    worst = max(r["rel_error"] for r in rows)
    print(json.dumps({"gpu": None if a.cpu_smoke else torch.cuda.get_device_name(), "torch": torch.__version__, "worst_rel_error": worst,
                      "checks": rows}, indent=1))
    return 0 if worst <= 0.02 else 1


if __name__ == "__main__":
    raise SystemExit(main())
