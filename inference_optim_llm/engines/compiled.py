"""compiled: the project's own decode loop over the transformers model, in the manner of gpt-fast.

- The weights are read one by one (models.weights: from the safetensors files, or drawn for a synthetic
  model); transformers supplies the config and the rotary embedding; the forward pass below is ours, short enough to read at once: q/k/v and gate/up projections fused into one matmul
  each, a static KV cache, greedy argmax on the device.
- The decode step is compiled with torch.compile; on CUDA with mode="reduce-overhead", so it is
  replayed as a CUDA graph. Tokens go into a preallocated buffer; only the first is copied to the host
  before the batch ends (TTFT, on the host's clock: timing.py), so there is no host sync per token.
- On CUDA (option kernels: triton, the default there) each batch-1 product is one Triton kernel with the RMS
  norm, SiLU * up or residual add beside it folded in, and a decode step's attention reads the cache only up to
  the query (kernels.py); elsewhere, and with kernels: torch, torch's ops.
- On the CPU the same step is compiled without graphs (what CI runs).
- Prefill runs the same forward over the padded prompts: compiled (prefill: compiled, the default on CUDA) at
  the prompt width rounded up to a multiple of 64, extra padding masked, or eagerly (the default on the CPU).
- With `gpus` N > 1 the layers are split over N processes (tensor parallel, tp.py): this process is rank 0
  and drives the benchmark; the workers follow it, batch by batch.

Supports llama-architecture models (LlamaForCausalLM: SmolLM2, Llama 2/3, the synthetic presets);
other architectures are recorded as unavailable for this engine, never run through another path.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from inference_optim_llm import fp8, kernels, tp
from inference_optim_llm.engines.base import BatchOutput, EngineUnavailable, TorchEngine
from inference_optim_llm.engines.baseline import pad_left
from inference_optim_llm.engines.timing import TokenClock
from inference_optim_llm.models import load_tokenizer, weights

SUPPORTED = {"llama"}
INDUCTOR_DIR = "inductor-cache"   # inside build_engine's artifact directory


PREFILL_BUCKET = 64   # option prefill: compiled pads prompts (on the left, masked) to a multiple of this


def prompt_width(width: int, prefill: str = "eager") -> int:
    """The width a batch's prompts are padded to: their own, or with a compiled prefill the next multiple of
    PREFILL_BUCKET, so that a few prefill shapes compile, not one per prompt length."""
    return -(-width // PREFILL_BUCKET) * PREFILL_BUCKET if prefill == "compiled" else width


def cache_len(max_input_len: int, max_new_tokens: int, prefill: str = "eager") -> int:
    """KV cache length: prompt + output, rounded up to 64 so nearby prompt sets share compiled code."""
    return -(-(prompt_width(max_input_len, prefill) + max_new_tokens) // 64) * 64


class FusedLlama(torch.nn.Module):
    """Llama forward over a model's weights, with a static KV cache. `get(name)` gives one whole weight by
    its transformers name (models.weights): each is cut to this rank's share as it arrives, so no process
    holds more than its share and one layer's weights."""

    def __init__(self, cfg, get, batch_size: int, max_len: int, device: str, rank: int = 0, world: int = 1,
                 weights: str = "default", kernel_set: str = "torch"):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.world = world             # the split was checked before any rank started (tp.Ranks.start_ranks)
        self.n_heads = cfg.num_attention_heads // world      # this rank's heads (all of them with one rank)
        self.n_kv = cfg.num_key_value_heads // world
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.triton = kernel_set == "triton"   # kernels.py's kernels in the decode step (the engine checked they run)
        self.embed = get("model.embed_tokens.weight")
        with torch.device(device):
            self.rotary = LlamaRotaryEmbedding(config=cfg)
        self.final_norm = get("model.norm.weight")
        self.lm_head = self.embed if cfg.tie_word_embeddings else get("lm_head.weight")
        dtype = self.embed.dtype
        self.layers = []
        for i in range(cfg.num_hidden_layers):
            def w(name):
                return get(f"model.layers.{i}.{name}.weight")
            self.layers.append(tp.shard_layer(dict(
                norm1=w("input_layernorm"),
                wqkv=torch.cat([w("self_attn.q_proj"), w("self_attn.k_proj"), w("self_attn.v_proj")]),
                wo=w("self_attn.o_proj"),
                norm2=w("post_attention_layernorm"),
                wgu=torch.cat([w("mlp.gate_proj"), w("mlp.up_proj")]),
                wd=w("mlp.down_proj"),
            ), cfg.num_attention_heads, cfg.num_key_value_heads, self.head_dim, rank, world))
        if weights == "fp8":   # each matrix (this rank's share) and the LM head: e4m3 and a scale per output row
            for layer in self.layers:
                for key in ("wqkv", "wo", "wgu", "wd"):
                    layer[key] = fp8.quantize_rows(layer[key])
            self.lm_head = fp8.quantize_rows(self.lm_head)
        shape = (batch_size, self.n_kv, max_len, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in self.layers]
        self.kv_index = torch.arange(max_len, device=device)
        # The rotary embedding's cos and sin for every cache column, computed once by transformers' own module
        # (the decode attention kernel reads its positions' rows; elsewhere a gather). Not for rope types whose
        # frequencies depend on the longest position seen ("dynamic", "longrope"): those run the module each time.
        self.rope_table = None
        rope_type = getattr(self.rotary, "rope_type", "default")
        if "dynamic" not in rope_type and rope_type != "longrope":   # transformers' own test (dynamic_rope_update)
            self.rope_table = tuple(t[0] for t in self.rotary(self.embed[:1], self.kv_index[None]))   # (L, hd) each
        # Which cache columns hold real tokens (left padding is False): filled per batch, read each step.
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        # Plain tensors held by the module would count as graph inputs, which CUDA graphs copy on every
        # replay: mark the weights and caches as static so each step reads them in place.
        held = [self.embed, self.final_norm, self.lm_head, self.kv_index, self.valid, *(self.rope_table or ())]
        held += [w for layer in self.layers for w in layer.values()]
        flat = [t for w in held for t in (w if isinstance(w, tuple) else (w,))]   # fp8: (values, scales)
        for t in flat + self.k_cache + self.v_cache:
            torch._dynamo.mark_static_address(t)

    def rms(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def rotary_at(self, x, positions):
        """cos, sin (B, T, head_dim) in x's dtype for the positions (B, T)."""
        if self.rope_table is None:
            return self.rotary(x, positions)
        return tuple(t[positions] for t in self.rope_table)

    def forward(self, tokens, positions, cache_pos, valid):
        """tokens, positions: (B, T); cache_pos: (T,) cache columns written; valid: (B, L) bool, the
        columns holding real tokens (left padding is False). Returns the last position's argmax (B,)."""
        x = self.hidden(tokens, positions, cache_pos, valid)
        return argmax(self.mm(x[:, -1], self.lm_head, norm=self.final_norm))

    def logits(self, tokens):
        """Every position's logits (float32) for one sequence from cache column 0, eager: perplexity
        (benchmarks/perplexity.py). Needs a model built for batch 1."""
        T = tokens.shape[1]
        self.valid.fill_(True)
        x = self.hidden(tokens, self.kv_index[None, :T], self.kv_index[:T], self.valid)
        return linear(self.rms(x, self.final_norm), self.lm_head).float()

    def hidden(self, tokens, positions, cache_pos, valid):
        """The layers over the tokens (their keys and values written to the cache): the last hidden states."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, T = tokens.shape
        x = F.embedding(tokens, self.embed)
        # A query at cache column c sees the valid columns <= c. The query heads that share a KV head
        # become extra query rows of that head (grouped-query attention without copying the cache).
        group = self.n_heads // self.n_kv
        nq, nkv, hd = self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.head_dim
        own_attention = (self.triton and T == 1 and self.rope_table is not None   # a decode step
                         and kernels.attention_fits(group, hd))
        if not own_attention:
            cos, sin = self.rotary_at(x, positions)
            # A padding column's query sees itself too, so that no row is fully masked (softmax over nothing
            # is NaN, and NaN keys and values would reach the cache); a real query never sees a padding column.
            col, row = self.kv_index[None, None, None, :], cache_pos[None, None, :, None]
            mask = (valid[:, None, None, :] | (col == row)) & (col <= row)
            if T > 1:
                mask = mask.repeat(1, 1, group, 1)
        for i, w in enumerate(self.layers):
            qkv = self.mm(x, w["wqkv"], norm=w["norm1"])
            if own_attention:   # rotary, the cache write and attention up to the query's column: one kernel
                o = kernels.decode_attention(qkv, *self.rope_table, positions, self.k_cache[i], self.v_cache[i],
                                             valid, cache_pos)
            else:
                q, k, v = qkv.split([nq, nkv, nkv], dim=-1)
                q = q.view(B, T, self.n_heads, hd).transpose(1, 2)
                k = k.view(B, T, self.n_kv, hd).transpose(1, 2)
                v = v.view(B, T, self.n_kv, hd).transpose(1, 2)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                self.k_cache[i].index_copy_(2, cache_pos, k)
                self.v_cache[i].index_copy_(2, cache_pos, v)
                o = F.scaled_dot_product_attention(q.reshape(B, self.n_kv, group * T, hd), self.k_cache[i],
                                                   self.v_cache[i], attn_mask=mask)
                # reshape, not view: SDPA's output layout depends on its backend (CUDA's fp32 kernels return
                # a transposed layout that no view can split)
                o = o.reshape(B, self.n_heads, T, hd).transpose(1, 2).reshape(B, T, nq)
            x = self.mm(o, w["wo"], residual=x)
            gu = self.mm(x, w["wgu"], norm=w["norm2"], glu=True)    # silu(gate) * up
            x = self.mm(gu, w["wd"], residual=x)
        return x

    def mm(self, x, w, norm=None, glu=False, residual=None):
        """linear(x, w) with its neighbours: the input RMS-normed by `norm`; with glu, the output's halves (gate
        and up) as silu(gate) * up; `residual` plus the output summed over the ranks. At batch 1 with option
        kernels: triton, one kernel (kernels.gemv); else torch's ops, as written below."""
        one_row = x.numel() == x.shape[-1]   # a shape: fixed when the step is compiled
        q, scale = w if isinstance(w, tuple) else (w, None)
        if self.triton and one_row and (residual is None or self.world == 1) and q.numel() < 2 ** 31:
            return kernels.gemv(x, q, norm=norm, eps=self.eps, glu=glu, residual=residual, scale=scale)
        if norm is not None:
            x = self.rms(x, norm)
        y = linear(x, w)
        if glu:
            g, u = y.chunk(2, dim=-1)
            y = F.silu(g) * u
        return y if residual is None else residual + tp.all_reduce(y, self.world)


def argmax(logits, chunk: int = 1024):
    """logits.argmax(-1), in two reductions: over chunks of the vocabulary, then over the chunks' maxima (one
    row of 128256 logits in one reduction is a single program's serial work: 30 us on an H200). The first
    index of the largest value wins, as in torch.argmax; padding of -inf never does."""
    V = logits.shape[-1]
    if V <= chunk:
        return logits.argmax(dim=-1)
    padded = F.pad(logits, (0, -V % chunk), value=float("-inf")).unflatten(-1, (-1, chunk))
    best, where = padded.max(dim=-1)                     # per chunk
    c = best.argmax(dim=-1, keepdim=True)                # the first chunk holding the maximum
    return (c * chunk + where.gather(-1, c)).squeeze(-1)


def linear(x, w):
    """F.linear, or its fp8 counterpart for a weight stored as (e4m3, scales) (fp8.py)."""
    return fp8.linear(x, *w) if isinstance(w, tuple) else F.linear(x, w)


def configure_inductor(device: str, options: dict) -> None:
    import torch._dynamo.config as dc
    import torch._inductor.config as ic
    dc.cache_size_limit = 64            # one compiled step per (batch, cache length) in one process
    ic.fx_graph_cache = True
    # coordinate_descent_tuning tunes generated kernels' launch parameters, as gpt-fast does.
    # Off by default: it did not make the decode step faster where it was tried (docs/measurements/README.md).
    ic.coordinate_descent_tuning = bool(options.get("coordinate_descent_tuning", False))


class CompiledEngine(tp.Ranks, TorchEngine):

    def result_fields(self) -> dict:
        """Whether the decode step's kernels came from the build's cache (only when a decode step ran)."""
        # The build compiles one process's shapes: a tensor-parallel step compiles in its own job.
        loaded = self.cache_loaded and self.settings.gpus == 1 and self.settings.weights == "default"
        own = {"compile_cache_loaded": loaded} if self.settings.max_new_tokens > 1 else {}
        kernel_set, prefill = resolved_options(self.settings)
        return {**own, "kernels": kernel_set, "prefill": prefill, **self.collective_fields()}

    def load(self) -> None:
        s = self.settings
        cfg_type = _model_type(s.model_dir)
        if cfg_type not in SUPPORTED:
            raise EngineUnavailable(f"the compiled engine supports {sorted(SUPPORTED)} models; "
                                    f"{s.model_dir} is {cfg_type!r}")
        if s.weights == "fp8":
            check_fp8(s)
        if s.options.get("kernels") == "triton" and s.gpus > 1:
            # each rank would tune its own kernels, and sums in another order can part the ranks' tokens
            raise EngineUnavailable(f"option kernels: triton runs on one GPU; gpus is {s.gpus}")
        if s.options.get("kernels") == "triton" and not kernels.available(s.device):
            raise EngineUnavailable(f"option kernels: triton needs Triton and a GPU; device {s.device}"
                                    + ("" if kernels.triton else ", and Triton is not installed"))
        self.start_ranks("inference_optim_llm.engines.compiled:CompiledEngine")
        self.load_share(self._load)

    def _load(self) -> None:
        s = self.settings
        self.cuda = s.device.startswith("cuda")
        self.private_cache = load_compile_cache(s.artifact_dir)
        self.cache_loaded = self.private_cache is not None
        configure_inductor(s.device, s.options)
        self.pad_id = load_tokenizer(s.model_dir, s.trust_remote_code).pad_token_id
        from transformers import AutoConfig
        cfg = AutoConfig.from_pretrained(s.model_dir, trust_remote_code=s.trust_remote_code)
        device = f"cuda:{torch.cuda.current_device()}" if self.cuda else s.device   # this rank's GPU
        get = weights(s.model_dir, device, s.dtype, s.trust_remote_code)
        self.kernel_set, self.prefill_mode = resolved_options(s)
        self.max_len = int(s.options.get("cache_len") or cache_len(s.max_input_len, s.max_new_tokens, self.prefill_mode))
        self.net = FusedLlama(cfg, get, s.max_batch_size, self.max_len, device, self.rank, s.gpus, s.weights,
                              self.kernel_set)
        mode = s.options.get("mode", "reduce-overhead" if self.cuda else "default")
        self.step = torch.compile(self.net, mode=mode, fullgraph=True, dynamic=False)
        # prefill "compiled": the same compiled forward at the bucketed prompt width (its own graph, and on
        # CUDA its own CUDA graph); "eager": the forward run eagerly.
        self.prefill = self.step if self.prefill_mode == "compiled" else self.net

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> BatchOutput:
        s = self.settings
        B = len(prompts)
        if B != s.max_batch_size:
            raise ValueError(f"compiled engine built for batch {s.max_batch_size}, got {B}")
        dev = s.device
        clock = TokenClock(dev, enabled=s.record_token_times)
        t0 = time.perf_counter()
        clock.start()
        ids, mask = pad_left(prompts, self.pad_id, dev)
        P = prompt_width(ids.shape[1], self.prefill_mode)
        if P + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({P}, padded) + max_new_tokens ({max_new_tokens}) exceeds cache {self.max_len}")
        mask = self.share_batch(ids, mask, max_new_tokens)
        out = self.run_batch(ids, mask, max_new_tokens, clock)
        tokens = out.tolist()                                  # the batch's host sync (with the first token's)
        self.batch_done()
        e2e = time.perf_counter() - t0
        times = clock.times_s()
        return BatchOutput(tokens=tokens, token_times_s=[times] * B, e2e_s=e2e)

    def run_batch(self, ids, mask, max_new_tokens: int, clock=None):
        """Prefill and decode one padded batch (every rank runs it in step); the tokens, on the device."""
        W = prompt_width(ids.shape[1], self.prefill_mode)
        if W > ids.shape[1]:   # more left padding, masked: the prefill runs at a width it was compiled for
            ids = F.pad(ids, (W - ids.shape[1], 0), value=self.pad_id)
            mask = F.pad(mask, (W - mask.shape[1], 0), value=0)
        B, P = ids.shape
        dev = ids.device
        valid = self.net.valid
        valid.fill_(True)
        valid[:, :P] = mask.bool()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = positions[:, -1:] + 1                       # (B, 1)
        out = torch.empty(B, max_new_tokens, dtype=torch.long, device=dev)
        with torch.no_grad():
            tok = self.prefill(ids, positions, self.net.kv_index[:P], valid)
            out[:, 0] = tok
            if clock:
                clock.stamp(out[:, 0])    # TTFT: the first tokens on the host (the batch's one sync before its end)
            for t in range(1, max_new_tokens):
                tok = self.step(out[:, t - 1:t], next_pos + (t - 1), self.net.kv_index[P + t - 1:P + t], valid)
                out[:, t] = tok
                if clock:
                    clock.stamp()
        return out

    def close(self) -> None:
        self.stop_ranks()
        for name in ("step", "net"):   # close() also runs after a failed load
            self.__dict__.pop(name, None)
        if getattr(self, "private_cache", None) is not None:
            import shutil
            shutil.rmtree(self.private_cache, ignore_errors=True)
            self.private_cache = None
        if self.settings.device.startswith("cuda"):
            torch.cuda.empty_cache()


def option_defaults(device: str, gpus: int = 1) -> dict:
    """On one CUDA GPU the kernels triton (where Triton is installed) and the prefill compiled, as measured faster
    on an H200 (docs/results/nvidia-h200-kernels.md); with several GPUs torch's kernels (the Triton ones have not
    been measured in a tensor-parallel step yet); on the CPU torch's ops and an eager prefill (compiling every
    prompt width there costs more than it saves)."""
    cuda = device.startswith("cuda")
    return {"kernels": "triton" if cuda and gpus == 1 and kernels.available(device) else "torch",
            "prefill": "compiled" if cuda else "eager"}


def resolved_options(s) -> tuple[str, str]:
    """(kernels, prefill): as given in the engine's options, else option_defaults."""
    options = {**option_defaults(s.device, s.gpus), **s.options}
    return options["kernels"], options["prefill"]


def check_fp8(s) -> None:
    """fp8 weights where _scaled_mm takes them: the output in bfloat16 on CUDA (row-wise scales), every matrix's
    sides multiples of 16. Else unavailable, named."""
    import json
    cfg = json.loads((Path(s.model_dir) / "config.json").read_text())
    if s.device.startswith("cuda") and s.dtype != "bfloat16":
        raise EngineUnavailable(f"fp8 weights run with dtype bfloat16 on CUDA (row-wise scaled products); dtype is {s.dtype}")
    if s.device.startswith("cuda") and torch.cuda.get_device_capability() < (8, 9):
        raise EngineUnavailable(f"fp8 products need compute capability 8.9 or above (Ada, Hopper); this GPU has "
                                f"{'.'.join(map(str, torch.cuda.get_device_capability()))}")
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    sides = {"hidden_size": cfg["hidden_size"], "vocab_size": cfg["vocab_size"],   # each rank's share below
             "intermediate_size / gpus": cfg["intermediate_size"] // s.gpus,
             "num_key_value_heads x head_dim / gpus": cfg["num_key_value_heads"] * hd // s.gpus}
    for key, size in sides.items():
        if size % 16:
            raise EngineUnavailable(f"fp8 weights need matrix sides that are multiples of 16; {key} is {size}")


def _model_type(model_dir: Path) -> str | None:
    import json
    return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")


def load_compile_cache(artifact_dir: Path | None) -> Path | None:
    """Use build_engine's inductor cache: copied to a private directory (the artifact stays read-only
    and shared between jobs), which inductor then reads and writes. Before anything compiles. Returns
    the private copy (removed by close(); one left by a killed job is swept by the next), or None."""
    src = Path(artifact_dir) / INDUCTOR_DIR if artifact_dir else None
    if src is None or not src.is_dir():
        return None
    import shutil
    import tempfile

    from inference_optim_llm.io import make_temp_dir
    private = make_temp_dir(Path(tempfile.gettempdir()) / "iol-inductor-cache")
    shutil.copytree(src, private, dirs_exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(private)
    return private
