"""The compiled engine's eager forward does not depend on the memory layout of SDPA's output: CUDA's fp32
attention kernels return a transposed layout (the CPU's is contiguous), and a `view` of it fails there. Pure
logic on the CPU: SDPA is wrapped to return the same values in CUDA's layout."""
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from inference_optim_llm.engines import compiled
from inference_optim_llm.engines.compiled import FusedLlama


def _net():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=200, tie_word_embeddings=False, rms_norm_eps=1e-5)
    ws = {}

    def get(name):
        shape = {"embed_tokens": (200, 64), "lm_head": (200, 64), "q_proj": (64, 64), "k_proj": (32, 64),
                 "v_proj": (32, 64), "o_proj": (64, 64), "gate_proj": (128, 64), "up_proj": (128, 64),
                 "down_proj": (64, 128)}
        key = next((k for k in shape if k in name), None)
        return ws.setdefault(name, torch.randn(shape[key]) * 0.3 if key else 1 + 0.1 * torch.randn(64))
    return FusedLlama(cfg, get, 1, 32, "cpu", kernel_set="torch")


def _prefill(net):
    prompt = torch.tensor([[5, 17, 99, 3, 150, 42]])
    P = prompt.shape[1]
    with torch.no_grad():
        return net(prompt, net.kv_index[None, :P], net.kv_index[:P], net.valid)


def test_the_eager_prefill_takes_sdpas_transposed_layout(monkeypatch):
    want = _prefill(_net())
    sdpa = F.scaled_dot_product_attention

    def transposed(*args, **kwargs):   # same values, laid out (B, T, H, D) in memory as CUDA's fp32 kernels do
        o = sdpa(*args, **kwargs)
        return o.transpose(1, 2).contiguous().transpose(1, 2)

    monkeypatch.setattr(compiled.F, "scaled_dot_product_attention", transposed)
    assert torch.equal(_prefill(_net()), want)
