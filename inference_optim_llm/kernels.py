"""The compiled engine's own Triton kernels for the decode step (option `kernels: triton`; issue 15).

A kernel profile of the step on an H200 (docs/results/nvidia-h200-kernels.md) showed where torch's kernels lose
time at batch 1: each matrix product is a kernel of its own beside an RMS norm, a SiLU(gate) * up and a residual
add; attention is a cuDNN flash kernel tiled for 64 queries running one; all for a few microseconds of bytes.
Two kernels replace them:

- `gemv`: one decode-step product at batch 1 with its neighbours,

      y = epilogue(W @ prologue(x))    prologue: rms_norm(x) * norm_weight, or x
                                       epilogue: silu(gate) * up (W's rows: the gates, then the ups), + residual

  W (N, K) in the model's dtype, or e4m3 with a float32 scale per output row (weight-only fp8). Each program
  reads BLOCK_N rows of W once (with glu, BLOCK_N gate rows and their up rows), BLOCK_K columns at a time; the
  vector is re-read by every program from the cache. The norm's 1/rms is a scalar, so it multiplies the sums at
  the end: W @ (x * w / rms) = (W @ (x * w)) / rms, and the sum of squares is gathered in the same pass.
  SiLU * up sits after the gate/up product, not before the down product: there each of the down product's
  programs would redo it over the whole vector (44 us a step on the 1B shapes, H200; on the 8B shapes the
  two-row gate/up loses about as much: docs/results/nvidia-h200-kernels.md).
- `decode_attention`: a decode step's attention from the q/k/v projection's output: the rotary embedding on the
  query and the new key (cos and sin read from tables by position), the new key and value written to the KV
  cache at the query's column, and the query against the columns written so far (up to its own, left padding
  masked by `valid`); one kernel where torch takes four (rotary, two cache writes, attention). One program per
  (sequence, KV head) runs through the cache in chunks of 64 with an online softmax, the KV head's query heads as
  the rows of one tensor-core product. A cache of more than SINGLE_PASS chunks is split over several programs per
  head, and a second kernel combines their softmax sums (flash-decoding).

Each has a `reference` in torch ops: what runs where Triton does not, and what the tests compare the kernels with
(on a CPU through Triton's interpreter, TRITON_INTERPRET=1; on the GPU in benchmarks/gemv_floor.py). Results
agree to rounding, not bit for bit: sums run in another order, the norm's scalar is applied after the sum, and
the rotary embedding rounds once (as torch.compile's fused kernel does; eager torch rounds each product).
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

CHUNK = 64          # cache columns per step of a decode-attention program's loop
SINGLE_PASS = 8     # up to this many chunks in the cache, one program per KV head reads them all (no combine)
SPLIT = 4           # beyond it, each program reads SPLIT chunks and a second kernel combines the programs


def available(device: str) -> bool:
    """Whether the kernels can run here: Triton is installed, and the device is a GPU (or the interpreter runs)."""
    return triton is not None and (device.startswith("cuda") or os.environ.get("TRITON_INTERPRET") == "1")


def reference(x, w, norm=None, eps: float = 1e-6, glu: bool = False, residual=None, scale=None):
    """What `gemv` computes, in torch ops (the compiled engine's own sequence, one rounding per op)."""
    if norm is not None:
        xf = x.float()
        x = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * norm
    if scale is not None:   # weight-only fp8: the products in float32, then each row's scale
        y = (F.linear(x.float(), w.float()) * scale.reshape(-1)).to(x.dtype)
    else:
        y = F.linear(x, w)
    if glu:
        gate, up = y.chunk(2, dim=-1)
        y = F.silu(gate) * up
    return y if residual is None else residual + y


def attention_reference(qkv, cos, sin, positions, k_cache, v_cache, valid, cache_pos):
    """What `decode_attention` computes, in torch ops. qkv (B, 1, (n_heads + 2 n_kv) hd): one position per
    sequence (positions: (B, 1)), at cache column cache_pos[0]; cos, sin (P, hd): the rotary embedding's tables
    by position; caches (B, n_kv, L, hd), written at that column. The query attends to the columns <= it that
    `valid` (B, L) marks, and its own. Returns (B, 1, n_heads hd): the heads side by side, as the output projection
    takes them."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, n_kv, L, hd = k_cache.shape
    n_heads = qkv.shape[-1] // hd - 2 * n_kv
    q, k, v = qkv.reshape(B, -1, hd).split([n_heads, n_kv, n_kv], dim=1)     # (B, heads, hd)
    q, k = apply_rotary_pos_emb(q, k, cos[positions.reshape(B)], sin[positions.reshape(B)])   # cos (B, hd) -> (B, 1, hd)
    k_cache.index_copy_(2, cache_pos, k[:, :, None])
    v_cache.index_copy_(2, cache_pos, v[:, :, None])
    col, at = torch.arange(L, device=qkv.device), cache_pos.reshape(1, 1)
    mask = ((valid | (col == at)) & (col <= at))[:, None, None, :]
    o = F.scaled_dot_product_attention(q.reshape(B, n_kv, n_heads // n_kv, hd), k_cache, v_cache, attn_mask=mask)
    return o.reshape(B, 1, n_heads * hd)


if triton is not None:
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, norm_ptr, res_ptr, scale_ptr, N, K, eps,
                     NORM: tl.constexpr, GLU: tl.constexpr, RES: tl.constexpr, SCALE: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # N outputs; with GLU, W holds 2N rows (gate, then up) and output i is silu(gate_i) * up_i
        dt = y_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)   # 32-bit offsets: W has < 2**31 elements
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        acc_up = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        sq = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            ok = row_ok[:, None] & col_ok[None, :]
            xk = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            if NORM:   # x * norm now, / rms at the end
                sq += xk * xk
                xk = xk * tl.load(norm_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            acc += tl.load(w_ptr + rows[:, None] * K + cols[None, :], mask=ok, other=0.0).to(tl.float32) * xk[None, :]
            if GLU:    # the up row of each gate row, N rows further
                acc_up += tl.load(w_ptr + (rows[:, None] + N) * K + cols[None, :], mask=ok,
                                  other=0.0).to(tl.float32) * xk[None, :]
        y = tl.sum(acc, axis=1)
        if NORM:
            inv_rms = tl.rsqrt(tl.sum(sq, axis=0) / K + eps)
            y = y * inv_rms
        if SCALE:
            y = y * tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
        if GLU:    # rounded as eager torch rounds: the product, silu(gate), then silu(gate) * up
            up = tl.sum(acc_up, axis=1)
            if NORM:
                up = up * inv_rms
            if SCALE:
                up = up * tl.load(scale_ptr + N + rows, mask=row_ok, other=0.0)
            gate = y.to(dt).to(tl.float32)
            y = (gate * tl.sigmoid(gate)).to(dt).to(tl.float32) * up.to(dt).to(tl.float32)
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
    def _attention_kernel(qkv_ptr, cos_ptr, sin_ptr, positions_ptr, k_ptr, v_ptr, valid_ptr, pos_ptr, o_ptr,
                          acc_ptr, ml_ptr,
                          L, sm_scale, GROUP: tl.constexpr, ROWS: tl.constexpr, HD: tl.constexpr,
                          CHUNK: tl.constexpr, CHUNKS: tl.constexpr, COMBINE: tl.constexpr, PRECISION: tl.constexpr):
        b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        n_kv = tl.num_programs(1)
        dt = k_ptr.dtype.element_ty
        g, d = tl.arange(0, ROWS), tl.arange(0, HD)
        pos = tl.load(pos_ptr)
        # the rotary embedding: x * cos + rotate_half(x) * sin, rotate_half(x)[d] = -x[d + HD/2] or x[d - HD/2]
        half = (d + HD // 2) % HD
        sign = tl.where(d < HD // 2, -1.0, 1.0)
        at = tl.load(positions_ptr + b) * HD                 # this sequence's row of the rotary tables
        cos = tl.load(cos_ptr + at + d).to(tl.float32)
        sin = tl.load(sin_ptr + at + d).to(tl.float32) * sign
        row = qkv_ptr + b * (n_kv * (GROUP + 2) * HD)        # this sequence's q, k, v, heads side by side
        qh = (h * GROUP + g)[:, None] * HD
        qm = g[:, None] < GROUP                              # rows beyond the group: padding for tl.dot
        q = tl.load(row + qh + d[None, :], mask=qm, other=0.0).to(tl.float32) * cos[None, :] \
            + tl.load(row + qh + half[None, :], mask=qm, other=0.0).to(tl.float32) * sin[None, :]
        q = q.to(dt)
        kh = (n_kv * GROUP + h) * HD
        k_new = (tl.load(row + kh + d).to(tl.float32) * cos + tl.load(row + kh + half).to(tl.float32) * sin).to(dt)
        v_new = tl.load(row + kh + n_kv * HD + d)
        head = (b * n_kv + h).to(tl.int64)                   # offsets in 64 bits: a long cache passes 2**31 elements
        cache = head * L * HD
        last = pos // CHUNK                                  # the query's chunk: its program writes the new column
        first = s * CHUNKS
        if (first <= last) & (last < first + CHUNKS):
            tl.store(k_ptr + cache + pos * HD + d, k_new)
            tl.store(v_ptr + cache + pos * HD + d, v_new)
        m = tl.full((ROWS,), float("-inf"), tl.float32)
        den = tl.zeros((ROWS,), tl.float32)
        acc = tl.zeros((ROWS, HD), tl.float32)
        for c in range(first, tl.minimum(first + CHUNKS, last + 1)):
            cols = c * CHUNK + tl.arange(0, CHUNK)
            # the valid columns up to the query's, and the query's own (a padding query sees itself, as in torch's
            # path, so that its row is never empty)
            filled = tl.load(valid_ptr + b * L + cols, mask=cols <= pos, other=0) != 0
            ok = (cols <= pos) & (filled | (cols == pos))
            old = ok & (cols < pos)                          # read from the cache; the query's own column is new
            kv = cache + cols[:, None] * HD + d[None, :]
            new = (cols == pos)[:, None]
            k = tl.where(new, k_new[None, :], tl.load(k_ptr + kv, mask=old[:, None], other=0.0))
            sc = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale
            sc = tl.where(ok[None, :], sc, float("-inf"))
            top = tl.maximum(m, tl.max(sc, axis=1))
            top0 = tl.where(top == float("-inf"), 0.0, top)  # no valid column yet: everything stays 0
            p = tl.exp(sc - top0[:, None])
            alpha = tl.exp(m - top0)
            v = tl.where(new, v_new[None, :], tl.load(v_ptr + kv, mask=old[:, None], other=0.0))
            acc = acc * alpha[:, None] + tl.dot(p.to(dt), v, input_precision=PRECISION)
            den = den * alpha + tl.sum(p, axis=1)
            m = top
        if COMBINE:   # this program's share: the unnormalised sums, their maximum and denominator
            part = (head * tl.num_programs(2) + s) * ROWS + g
            tl.store(acc_ptr + part[:, None] * HD + d[None, :], acc)
            tl.store(ml_ptr + part * 2, m)
            tl.store(ml_ptr + part * 2 + 1, den)
        else:         # the query's own column is valid: den > 0
            tl.store(o_ptr + head * GROUP * HD + g[:, None] * HD + d[None, :], (acc / den[:, None]).to(dt), mask=qm)

    @triton.jit
    def _attention_combine_kernel(acc_ptr, ml_ptr, pos_ptr, o_ptr, n_parts, GROUP: tl.constexpr,
                                  ROWS: tl.constexpr, HD: tl.constexpr, CHUNK: tl.constexpr, CHUNKS: tl.constexpr):
        head = tl.program_id(0).to(tl.int64)
        g, d = tl.arange(0, ROWS), tl.arange(0, HD)
        filled = tl.load(pos_ptr) // CHUNK // CHUNKS + 1   # the programs up to the query's column; the rest read nothing
        top = tl.full((ROWS,), float("-inf"), tl.float32)
        for c in range(0, filled):
            top = tl.maximum(top, tl.load(ml_ptr + ((head * n_parts + c) * ROWS + g) * 2))
        num = tl.zeros((ROWS, HD), tl.float32)         # top is finite: the query's own column is valid
        den = tl.zeros((ROWS,), tl.float32)
        for c in range(0, filled):
            part = (head * n_parts + c) * ROWS + g
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
    N = N // 2 if glu else N   # outputs: with glu, W's rows are the gates, then the ups
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


def _launch_attention(qkv, cos, sin, positions, k_cache, v_cache, valid, cache_pos, chunks: Optional[int] = None):
    """`chunks`: cache chunks per program (default: all of them up to SINGLE_PASS, else SPLIT)."""
    B, n_kv, L, hd = k_cache.shape
    group = qkv.shape[-1] // hd // n_kv - 2
    n_chunks = triton.cdiv(L, CHUNK)
    chunks = chunks or (n_chunks if n_chunks <= SINGLE_PASS else SPLIT)
    parts = triton.cdiv(n_chunks, chunks)
    rows = max(16, triton.next_power_of_2(group))
    o = torch.empty(B, 1, n_kv * group * hd, dtype=qkv.dtype, device=qkv.device)
    acc = ml = o   # written only when parts > 1
    if parts > 1:
        acc = torch.empty(B, n_kv, parts, rows, hd, dtype=torch.float32, device=qkv.device)
        ml = torch.empty(B, n_kv, parts, rows, 2, dtype=torch.float32, device=qkv.device)
    _attention_kernel[(B, n_kv, parts)](qkv, cos, sin, positions, k_cache, v_cache, valid.view(torch.uint8),
                                        cache_pos, o, acc, ml, L, hd ** -0.5, GROUP=group, ROWS=rows, HD=hd,
                                        CHUNK=CHUNK, CHUNKS=chunks, COMBINE=parts > 1,
                                        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32")
    if parts > 1:
        _attention_combine_kernel[(B * n_kv,)](acc, ml, cache_pos, o, parts, GROUP=group, ROWS=rows, HD=hd,
                                               CHUNK=CHUNK, CHUNKS=chunks)
    return o


# As custom ops, the kernels are opaque to torch.compile: one call each in the compiled step's graph.
@torch.library.custom_op("iol::gemv", mutates_args=())
def _gemv_op(x: torch.Tensor, w: torch.Tensor, norm: Optional[torch.Tensor], residual: Optional[torch.Tensor],
             scale: Optional[torch.Tensor], eps: float, glu: bool) -> torch.Tensor:
    c = lambda t: None if t is None else t.contiguous()   # noqa: E731  (the kernel indexes them densely)
    return _launch_gemv(x.contiguous(), w.contiguous(), c(norm), c(residual), c(scale), eps, glu)


@_gemv_op.register_fake
def _(x, w, norm, residual, scale, eps, glu):
    return x.new_empty(w.shape[0] // 2 if glu else w.shape[0])


@torch.library.custom_op("iol::decode_attention", mutates_args=("k_cache", "v_cache"))
def _attention_op(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, valid: torch.Tensor,
                  cache_pos: torch.Tensor) -> torch.Tensor:
    # the caches are written in place: the engine keeps them contiguous (a copy would lose the write)
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "decode_attention writes contiguous caches"
    return _launch_attention(qkv.contiguous(), cos.contiguous(), sin.contiguous(), positions.contiguous(), k_cache,
                             v_cache, valid.contiguous(), cache_pos)


@_attention_op.register_fake
def _(qkv, cos, sin, positions, k_cache, v_cache, valid, cache_pos):
    B, n_kv, _, hd = k_cache.shape
    return qkv.new_empty(B, 1, qkv.shape[-1] - 2 * n_kv * hd)


def gemv(x, w, norm=None, eps: float = 1e-6, glu: bool = False, residual=None, scale=None):
    """`reference(...)` for one input row (x of shape (..., K) with one row), as one kernel. The result has
    x's leading shape and w's output width (half of it with glu)."""
    lead = x.shape[:-1]
    y = _gemv_op(x.reshape(-1), w, norm,
                 None if residual is None else residual.reshape(-1),
                 None if scale is None else scale.reshape(-1), float(eps), glu)
    return y.reshape(*lead, y.shape[-1])


def decode_attention(qkv, cos, sin, positions, k_cache, v_cache, valid, cache_pos):
    """`attention_reference(...)` as one kernel (two for a long cache); the caches (B, n_kv, L, hd) contiguous,
    as the engine keeps them, written in place."""
    return _attention_op(qkv, cos, sin, positions, k_cache, v_cache, valid, cache_pos)
