"""baseline: transformers `generate`, eager, dynamic KV cache. The reference every engine is compared to.
With `gpus` N > 1: transformers' own tensor parallelism (`from_pretrained(..., tp_plan="auto")`) over N
processes started as the compiled engine's are (tp.py). A synthetic model goes through the same plan, each
rank's shares drawn where transformers would read them from files (models.synthetic_model)."""
from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from inference_optim_llm import tp
from inference_optim_llm.engines.base import BatchOutput, TorchEngine
from inference_optim_llm.engines.timing import TokenClock
from inference_optim_llm.models import load_model, load_tokenizer


class _StampEachStep(LogitsProcessor):
    """Called once per generated token, after the forward pass that produced its logits: a timestamp
    there marks when the token exists (the first waits for the device, later ones are CUDA events on a GPU:
    timing.TokenClock)."""

    def __init__(self, clock: TokenClock):
        self.clock = clock

    def __call__(self, input_ids, scores):
        self.clock.stamp()
        return scores


def pad_left(prompts: list[list[int]], pad_id: int, device: str):
    """Left-pad a batch (decoder-only models generate from the right end)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


class BaselineEngine(tp.Ranks, TorchEngine):

    def load(self) -> None:
        s = self.settings
        self.start_ranks("inference_optim_llm.engines.baseline:BaselineEngine")
        self.load_share(lambda: setattr(self, "model", load_model(s.model_dir, s.device, s.dtype, s.trust_remote_code,
                                                                  tensor_parallel=s.gpus > 1)))
        self.pad_id = load_tokenizer(s.model_dir, s.trust_remote_code).pad_token_id

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> BatchOutput:
        clock = TokenClock(self.settings.device, enabled=self.settings.record_token_times)
        t0 = time.perf_counter()
        clock.start()
        ids, mask = pad_left(prompts, self.pad_id, self.settings.device)
        mask = self.share_batch(ids, mask, max_new_tokens)
        out = self.run_batch(ids, mask, max_new_tokens, clock)
        new = out[:, ids.shape[1]:].tolist()  # the host copy synchronizes the device
        self.batch_done()
        e2e = time.perf_counter() - t0
        times = clock.times_s()
        return BatchOutput(tokens=new, token_times_s=[times] * len(prompts), e2e_s=e2e)

    def run_batch(self, ids, mask, max_new_tokens: int, clock: TokenClock | None = None):
        """Every rank: greedy generation of one padded batch (prompt and new tokens, on the device)."""
        stamp = clock is not None and clock.enabled
        with torch.no_grad():
            return self.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=self.pad_id,
                logits_processor=LogitsProcessorList([_StampEachStep(clock)]) if stamp else None,
                top_k=None, top_p=None, temperature=None)

    def result_fields(self) -> dict:
        return self.collective_fields()

    def close(self) -> None:
        self.stop_ranks()
        self.__dict__.pop("model", None)   # close() also runs after a failed load
        if self.settings.device.startswith("cuda"):
            torch.cuda.empty_cache()
