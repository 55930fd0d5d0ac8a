"""trtllm / trtllm_torch: TensorRT-LLM 1.2.1 through its LLM API.

- trtllm: the TensorRT engine backend, `from tensorrt_llm._tensorrt_engine import LLM`, loading the
  engine that trtllm_build.build_engine() wrote to settings.artifact_dir.
- trtllm_torch: the default PyTorch backend, `from tensorrt_llm import LLM`, loading the HF directory.

Both submit the static batch of B prompts together (max_batch_size=B, so the in-flight batcher holds
exactly this batch) and time tokens as trtllm-bench does: each streamed yield of `generate_async(...,
streaming=True)` is stamped with time.perf_counter() relative to submission.

Upstream files each call follows (NVIDIA/TensorRT-LLM, read in its source):
- tensorrt_llm/_tensorrt_engine/__init__.py: `LLM` = `llmapi.llm._TrtLLM`.
- tensorrt_llm/llmapi/llm.py: `LLM(model, tokenizer=None, ..., dtype="auto", **kwargs)` (kwargs are
  LlmArgs fields); `generate_async(inputs, sampling_params=None, ..., streaming=False, ...)` returns a
  RequestOutput, an async iterator when streaming; `generate(inputs, sampling_params=None,
  use_tqdm=True, ...)` takes a list of token-id lists; `_TrtLLM._build_model` passes max_batch_size /
  max_num_tokens / max_seq_len to the C++ ExecutorConfig and `kv_cache_config` to it; `shutdown()`.
- tensorrt_llm/llmapi/llm_args.py: BaseLlmArgs fields max_batch_size, max_num_tokens, max_seq_len,
  kv_cache_config; KvCacheConfig(free_gpu_memory_fraction=..., enable_block_reuse=...).
- tensorrt_llm/sampling_params.py: SamplingParams fields max_tokens, ignore_eos, top_k, detokenize,
  exclude_input_from_output (True by default: token_ids exclude the prompt); top_k=1 is greedy
  (`_greedy_decoding` / `params_imply_greedy_decoding`).
- tensorrt_llm/executor/result.py: `CompletionOutput.token_ids` grows in place per streamed response
  and `__anext__` yields the same object, so each yield is snapshotted (see trtllm_build.parse_stream_output).
- tensorrt_llm/bench/benchmark/utils/asynchronous.py: the streaming timing loop this mirrors.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from inference_optim_llm.engines.base import BatchOutput, Engine, EngineUnavailable
from inference_optim_llm.trtllm_build import (check_engine_fits, import_trtllm, parse_stream_output,
                                              read_build_settings, kv_cache_kwargs, static_batch_num_tokens,
                                              trtllm_dtype, unavailable_reason)


class _LlmApiEngine(Engine):
    """Shared load/generate over a TensorRT-LLM `LLM`; subclasses say how the LLM is made."""

    def _create_llm(self, kv_cache_config: Any) -> Any:
        raise NotImplementedError

    def load(self) -> None:
        s = self.settings
        built_without = unavailable_reason(s.artifact_dir)
        if built_without:
            raise EngineUnavailable(f"the engine build could not run: {built_without}")
        import_trtllm()  # EngineUnavailable if tensorrt_llm or the GPU is missing
        if not s.device.startswith("cuda"):
            raise EngineUnavailable(f"TensorRT-LLM runs on CUDA only; device is {s.device!r}")
        from tensorrt_llm.llmapi import KvCacheConfig, SamplingParams

        self._sampling_params_cls = SamplingParams
        self.llm = self._create_llm(KvCacheConfig(**kv_cache_kwargs(s.options)))
        # One loop for the engine's life: a result gets an asyncio queue bound to the loop running when
        # generate_async is called (executor/result.py GenerationResultBase, executor/utils.py
        # has_event_loop), so every batch runs on the same loop.
        self._loop = asyncio.new_event_loop()

    def _sampling_params(self, max_new_tokens: int) -> Any:
        # Greedy: top_k=1 (sampling_params.py). Exactly max_new_tokens: max_tokens + ignore_eos
        # (the worker sends end_id=-1). Prompt excluded from token_ids: exclude_input_from_output,
        # True by default, set explicitly. No detokenization inside the timed loop.
        return self._sampling_params_cls(max_tokens=max_new_tokens, ignore_eos=True, top_k=1,
                                         exclude_input_from_output=True, detokenize=False)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> BatchOutput:
        if len(prompts) > self.settings.max_batch_size:
            raise ValueError(f"{len(prompts)} prompts exceed max_batch_size {self.settings.max_batch_size}")
        sp = self._sampling_params(max_new_tokens)
        if not self.settings.record_token_times:
            t0 = time.perf_counter()
            outs = self.llm.generate(prompts, sampling_params=sp, use_tqdm=False)
            e2e = time.perf_counter() - t0
            return BatchOutput(tokens=[list(o.outputs[0].token_ids) for o in outs],
                               token_times_s=[[] for _ in prompts], e2e_s=e2e)
        snapshots, e2e = self._loop.run_until_complete(self._stream_batch(prompts, sp))
        parsed = [parse_stream_output(s) for s in snapshots]
        return BatchOutput(tokens=[p[0] for p in parsed], token_times_s=[p[1] for p in parsed], e2e_s=e2e)

    async def _stream_batch(self, prompts: list[list[int]], sp: Any) -> tuple[list[list], float]:
        """Submit all prompts, then consume every stream concurrently. Tokens are host data when
        yielded, so the last yield is the end of the batch (no extra device sync needed)."""
        t0 = time.perf_counter()
        streams = [self.llm.generate_async(p, sampling_params=sp, streaming=True) for p in prompts]

        async def consume(stream) -> list[tuple[float, list[int]]]:
            snaps = []
            async for out in stream:  # the same RequestOutput, updated in place: copy token_ids now
                snaps.append((time.perf_counter() - t0, list(out.outputs[0].token_ids)))
            return snaps

        snapshots = await asyncio.gather(*(consume(s) for s in streams))
        return list(snapshots), time.perf_counter() - t0

    def memory_stats(self) -> dict[str, float | None]:
        # TensorRT-LLM allocates weights, activations and its KV pool outside torch's caching allocator
        # (and partly in its executor worker process), so torch's peak would be meaningless.
        return {"torch_peak_allocated_mb": None}

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.shutdown()
            self.llm = None
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.close()
            self._loop = None


class TrtllmEngine(_LlmApiEngine):
    """TensorRT engine backend, running the prebuilt engine in settings.artifact_dir."""

    def _create_llm(self, kv_cache_config: Any) -> Any:
        s = self.settings
        if s.artifact_dir is None:
            raise ValueError("trtllm needs settings.artifact_dir: the output of trtllm_build.build_engine()")
        built = read_build_settings(s.artifact_dir)
        check_engine_fits(built, dtype=trtllm_dtype(s.dtype), max_batch_size=s.max_batch_size,
                          max_input_len=s.max_input_len, max_new_tokens=s.max_new_tokens)
        from tensorrt_llm._tensorrt_engine import LLM

        # Runtime limits equal to the build's (llm_args.py: runtime values may not exceed the engine's;
        # max_num_tokens would otherwise default to 8192). dtype is baked into the engine.
        return LLM(model=str(s.artifact_dir), tokenizer=str(s.model_dir), max_batch_size=s.max_batch_size,
                   max_num_tokens=built["max_num_tokens"], max_seq_len=built["max_seq_len"],
                   kv_cache_config=kv_cache_config, trust_remote_code=s.trust_remote_code)


class TrtllmTorchEngine(_LlmApiEngine):
    """Default PyTorch backend of TensorRT-LLM, loading the HF directory directly (no engine build)."""

    def _create_llm(self, kv_cache_config: Any) -> Any:
        s = self.settings
        from tensorrt_llm import LLM

        return LLM(model=str(s.model_dir), dtype=trtllm_dtype(s.dtype), max_batch_size=s.max_batch_size,
                   max_num_tokens=static_batch_num_tokens(s.max_batch_size, s.max_input_len),
                   max_seq_len=s.max_input_len + s.max_new_tokens, kv_cache_config=kv_cache_config,
                   trust_remote_code=s.trust_remote_code)
