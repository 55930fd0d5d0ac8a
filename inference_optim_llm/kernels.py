"""The compiled engine's own Triton kernels for the decode step (option `kernels: triton`; issue 15).

A kernel profile of the step on an H200 (docs/results/nvidia-h200-kernels.md) showed where torch's kernels lose
time at batch 1: each matrix product is a kernel of its own beside an RMS norm, a SiLU(gate) * up and a residual
add; attention is a cuDNN flash kernel tiled for 64 queries running one; all for a few microseconds of bytes.
Two kernels replace them:

- `gemv`: one decode-step product at batch 1 with its neighbours,

      y = W @ prologue(x) (+ residual)      prologue: rms_norm(x) * norm_weight, or silu(x[:K]) * x[K:], or x

  W (N, K) in the model's dtype, or e4m3 with a float32 scale per output row (weight-only fp8). Each program
  reads BLOCK_N rows of W once, BLOCK_K columns at a time; the vector is re-read by every program from the
  cache. The norm's 1/rms is a scalar, so it multiplies the sums at the end: W @ (x * w / rms) = (W @ (x * w))
  / rms, and the sum of squares is gathered in the same pass.
- `decode_attention`: one query position per sequence against the KV cache, reading only the columns written
  so far (up to the query's own, left padding masked by `valid`). The columns are split into chunks of 64, one
  program per (sequence, KV head, chunk) with the KV head's query heads as the rows of one tensor-core product;
  a second kernel combines the chunks' softmax sums (flash-decoding).

Each has a `reference` in torch ops: what runs where Triton does not, and what the tests compare the kernels with
(on a CPU through Triton's interpreter, TRITON_INTERPRET=1; on the GPU in benchmarks/gemv_floor.py). Results
agree to rounding, not bit for bit: sums run in another order, and the norm's scalar is applied after the sum.
"""
import os
from typing import Optional

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:   # the CPU build of torch comes without Triton: the references are used instead
    triton = None

CHUNK = 64   # cache columns per decode-attention program


def available(device: str) -> bool:
    """Whether the kernels can run here: Triton is installed, and the device is a GPU (or the interpreter runs)."""
    return triton is not None and (device.startswith("cuda") or os.environ.get("TRITON_INTERPRET") == "1")


def reference(x, w, norm=None, eps: float = 1e-6, glu: bool = False, residual=None, scale=None):
    """What `gemv` computes, in torch ops (the compiled engine's own sequence, one rounding per op)."""
    if norm is not None:
        xf = x.float()
        x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * norm
    if glu:
        g, u = x.chunk(2, dim=-1)
        x = F.silu(g) * u
    if scale is not None:   # weight-only fp8: the products in float32, then each row's scale
        y = (F.linear(x.float(), w.float()) * scale.reshape(-1)).to(x.dtype)
    else:
        y = F.linear(x, w)
    return y if residual is None else residual + y


def attention_reference(q, k_cache, v_cache, valid, cache_pos):
    """What `decode_attention` computes: q (B, n_kv, group, hd), one query per sequence at cache column
    cache_pos[0], against the columns <= it that `valid` (B, L) marks. Returns (B, n_kv, group, hd)."""
    col = torch.arange(k_cache.shape[2], device=q.device)
    mask = (valid & (col <= cache_pos.reshape(1, 1)))[:, None, None, :]
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)


if triton is not None:
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, norm_ptr, res_ptr, scale_ptr, N, K, eps,
                     NORM: tl.constexpr, GLU: tl.constexpr, RES: tl.constexpr, SCALE: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        dt = y_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)   # 32-bit offsets: W has < 2**31 elements
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        sq = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            xk = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if NORM:   # x * norm now, / rms at the end
                sq += xk * xk
                xk = xk * tl.load(norm_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if GLU:    # x holds gate then up, K each
                uk = tl.load(x_ptr + K + cols, mask=col_ok, other=0.0).to(tl.float32)
                xk = ((xk * tl.sigmoid(xk)).to(dt).to(tl.float32) * uk).to(dt).to(tl.float32)
            wk = tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=row_ok[:, None] & col_ok[None, :],
                         other=0.0).to(tl.float32)
            acc += wk * xk[None, :]
        y = tl.sum(acc, axis=1)
        if NORM:
            y = y * tl.rsqrt(tl.sum(sq, axis=0) / K + eps)
        if SCALE:
            y = y * tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
        if RES:
            y = y.to(dt).to(tl.float32) + tl.load(res_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(dt), mask=row_ok)

    # Tuned once per shape and process, on the first call (before a CUDA graph captures it).
    _gemv_tuned = triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=warps)
                 for n, k in ((2, 1024), (4, 512), (4, 1024), (8, 256), (8, 512), (8, 1024), (16, 256), (16, 512))
                 for warps in (4, 8)],
        key=["N", "K", "NORM", "GLU", "RES", "SCALE"])(_gemv_kernel)

    @triton.jit
    def _attention_chunk_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, pos_ptr, acc_ptr, ml_ptr, L, sm_scale,
                                GROUP: tl.constexpr, ROWS: tl.constexpr, HD: tl.constexpr, CHUNK: tl.constexpr,
                                PRECISION: tl.constexpr):
        b, h, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        n_kv, n_chunks = tl.num_programs(1), tl.num_programs(2)
        g, d = tl.arange(0, ROWS), tl.arange(0, HD)
        cols = c * CHUNK + tl.arange(0, CHUNK)
        pos = tl.load(pos_ptr)
        ok = (cols <= pos) & (tl.load(valid_ptr + b * L + cols, mask=cols <= pos, other=0) != 0)
        head = (b * n_kv + h).to(tl.int64)   # offsets in 64 bits: a long cache passes 2**31 elements
        q = tl.load(q_ptr + (head * GROUP + g[:, None]) * HD + d[None, :], mask=g[:, None] < GROUP, other=0.0)
        kv = head * L * HD + cols[:, None] * HD + d[None, :]
        k = tl.load(k_ptr + kv, mask=ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        m = tl.max(s, axis=1)
        p = tl.exp(s - tl.where(m == float("-inf"), 0.0, m)[:, None])   # a chunk with no column: p = 0
        v = tl.load(v_ptr + kv, mask=ok[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        part = (head * n_chunks + c) * ROWS + g
        tl.store(acc_ptr + part[:, None] * HD + d[None, :], acc)
        tl.store(ml_ptr + part * 2, m)
        tl.store(ml_ptr + part * 2 + 1, tl.sum(p, axis=1))

    @triton.jit
    def _attention_combine_kernel(acc_ptr, ml_ptr, pos_ptr, o_ptr, n_chunks, GROUP: tl.constexpr,
                                  ROWS: tl.constexpr, HD: tl.constexpr, CHUNK: tl.constexpr):
        head = tl.program_id(0).to(tl.int64)
        g, d = tl.arange(0, ROWS), tl.arange(0, HD)
        filled = tl.load(pos_ptr) // CHUNK + 1        # the chunks up to the query's column; the rest hold nothing
        top = tl.full((ROWS,), float("-inf"), tl.float32)
        for c in range(0, filled):
            top = tl.maximum(top, tl.load(ml_ptr + ((head * n_chunks + c) * ROWS + g) * 2))
        num = tl.zeros((ROWS, HD), tl.float32)         # top is finite: the query's own column is valid
        den = tl.zeros((ROWS,), tl.float32)
        for c in range(0, filled):
            part = (head * n_chunks + c) * ROWS + g
            wgt = tl.exp(tl.load(ml_ptr + part * 2) - top)
            num += tl.load(acc_ptr + part[:, None] * HD + d[None, :]) * wgt[:, None]
            den += tl.load(ml_ptr + part * 2 + 1) * wgt
        tl.store(o_ptr + (head * GROUP + g[:, None]) * HD + d[None, :], (num / den[:, None]).to(o_ptr.dtype.element_ty),
                 mask=g[:, None] < GROUP)


def attention_fits(group: int, head_dim: int) -> bool:
    """The decode-attention kernel's shapes: a power-of-two head size of 16 to 256, at most 64 query heads a KV
    head (their rows are padded to a power of two, at least 16, for the tensor-core product)."""
    return 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0 and group <= 64


def _launch_gemv(x, w, norm, residual, scale, eps: float, glu: bool):
    N, K = w.shape
    if N * K >= 2 ** 31:
        raise ValueError(f"gemv: a weight of {N} x {K} has 2**31 elements or more (the kernel's offsets are 32-bit; "
                         "the compiled engine uses torch's product for it)")
    y = torch.empty(N, dtype=x.dtype, device=x.device)
    dummy = x   # pointers of the inputs a flag turns off (never read)
    args = (x, w, y, dummy if norm is None else norm, dummy if residual is None else residual,
            dummy if scale is None else scale, N, K, eps)
    flags = dict(NORM=norm is not None, GLU=glu, RES=residual is not None, SCALE=scale is not None)
    if os.environ.get("TRITON_INTERPRET") == "1":   # the CPU check: one fixed configuration, nothing timed
        _gemv_kernel[(triton.cdiv(N, 32),)](*args, **flags, BLOCK_N=32, BLOCK_K=128)
    else:
        _gemv_tuned[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](*args, **flags)
    return y


def _launch_attention(q, k_cache, v_cache, valid, cache_pos):
    B, n_kv, group, hd = q.shape
    L = k_cache.shape[2]
    n_chunks = triton.cdiv(L, CHUNK)
    rows = max(16, triton.next_power_of_2(group))
    acc = torch.empty(B, n_kv, n_chunks, rows, hd, dtype=torch.float32, device=q.device)
    ml = torch.empty(B, n_kv, n_chunks, rows, 2, dtype=torch.float32, device=q.device)
    o = torch.empty_like(q)
    _attention_chunk_kernel[(B, n_kv, n_chunks)](q, k_cache, v_cache, valid.view(torch.uint8), cache_pos, acc, ml,
                                                 L, hd ** -0.5, GROUP=group, ROWS=rows, HD=hd, CHUNK=CHUNK,
                                                 PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    _attention_combine_kernel[(B * n_kv,)](acc, ml, cache_pos, o, n_chunks, GROUP=group, ROWS=rows, HD=hd,
                                           CHUNK=CHUNK)
    return o


# As custom ops, the kernels are opaque to torch.compile: one call each in the compiled step's graph.
@torch.library.custom_op("iol::gemv", mutates_args=())
def _gemv_op(x: torch.Tensor, w: torch.Tensor, norm: Optional[torch.Tensor], residual: Optional[torch.Tensor],
             scale: Optional[torch.Tensor], eps: float, glu: bool) -> torch.Tensor:
    c = lambda t: None if t is None else t.contiguous()   # noqa: E731  (the kernel indexes them densely)
    return _launch_gemv(x.contiguous(), w.contiguous(), c(norm), c(residual), c(scale), eps, glu)


@_gemv_op.register_fake
def _(x, w, norm, residual, scale, eps, glu):
    return x.new_empty(w.shape[0])


@torch.library.custom_op("iol::decode_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, valid: torch.Tensor,
                  cache_pos: torch.Tensor) -> torch.Tensor:
    return _launch_attention(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(), valid.contiguous(),
                             cache_pos)


@_attention_op.register_fake
def _(q, k_cache, v_cache, valid, cache_pos):
    return q.new_empty(q.shape)   # contiguous, as the kernel writes it


def gemv(x, w, norm=None, eps: float = 1e-6, glu: bool = False, residual=None, scale=None):
    """`reference(...)` for one input row (x of shape (..., K) with one row), as one kernel. The result has
    x's leading shape and w's output width."""
    lead = x.shape[:-1]
    y = _gemv_op(x.reshape(-1), w, norm,
                 None if residual is None else residual.reshape(-1),
                 None if scale is None else scale.reshape(-1), float(eps), glu)
    return y.reshape(*lead, w.shape[0])


def decode_attention(q, k_cache, v_cache, valid, cache_pos):
    """`attention_reference(...)` as two kernels; the caches (B, n_kv, L, hd) contiguous, as the engine keeps them."""
    return _attention_op(q, k_cache, v_cache, valid, cache_pos)
