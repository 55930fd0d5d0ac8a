"""fp8 weights for the compiled engine (matrix `weights: fp8`): e4m3 with one scale per output channel.

- A weight (out, in) is stored as e4m3 values and a float32 scale per output row (its largest magnitude over
  e4m3's largest, 448): half the bytes of bf16, which is what a memory-bound decode step reads.
- A product quantizes its input per row (per token) the same way and multiplies with `torch._scaled_mm`
  (cuBLASLt's fp8 GEMM on Hopper; also on the CPU, which is what CI runs), both scales applied in it, the
  output in the model's dtype.
- The embedding stays in the model's dtype (a step reads one row of it); norms too.
"""
from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max   # 448


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight (out, in), float32 scale (1, out)): w ~ q * scale, row by row."""
    wf = w.float()
    scale = wf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (wf / scale).to(E4M3).contiguous(), scale.t().contiguous()


def linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ (q * scale).T with x quantized per row: the fp8 counterpart of F.linear(x, w)."""
    x2 = x.reshape(-1, x.shape[-1])
    xs = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    xq = (x2.float() / xs).to(E4M3)
    y = torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=scale, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], q.shape[0])


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.t()
