"""runner.run with a fake engine: a unit test of the measuring logic (token checks, padding, what is
counted, the result's validity) in milliseconds. The engine and tokenizer below are fakes, named so;
real engines are measured end to end in tests/test_pipeline.py."""
from __future__ import annotations

import json

import pytest

from inference_optim_llm import runner
from inference_optim_llm.spec import BenchSpec
from inference_optim_llm.engines.base import BatchOutput, Engine
from inference_optim_llm.metrics import TokenCountError
from inference_optim_llm.report import load_result


class FakeTokenizer:
    """Fake: what prepare() reads from a tokenizer for random-token prompt sets."""
    all_special_ids = [0, 1, 2]

    def __len__(self):
        return 100


class FakeEngine(Engine):
    """Fake: returns `short` fewer tokens than asked when told to; token i of every request at i ms."""
    short = 0
    calls: list[list[list[int]]] = []

    def load(self):
        pass

    def generate(self, prompts, max_new_tokens):
        FakeEngine.calls.append(prompts)
        n = max_new_tokens - self.short
        return BatchOutput(tokens=[[7] * n for _ in prompts], token_times_s=[[0.001 * (k + 1) for k in range(n)]
                                                                          for _ in prompts], e2e_s=0.001 * n)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 64}))
    monkeypatch.setattr(runner, "load_tokenizer", lambda *a: FakeTokenizer())
    monkeypatch.setattr(runner, "engine_class", lambda name: FakeEngine)
    FakeEngine.short, FakeEngine.calls = 0, []
    return BenchSpec(model="m", model_dir=str(tmp_path), engine="baseline", prompt_set="p",
                            prompt_spec={"tokens": 4, "count": 3}, batch_size=2, max_new_tokens=5,
                            repetitions=2, warmup=1, device="cpu", dtype="float32")


def test_run_counts_each_prompt_once_and_writes_a_valid_result(fake, tmp_path):
    result, records = runner.run(fake)
    assert result["status"] == "ok" and result["token_check"]["all_exact"]
    assert len(FakeEngine.calls) == 1 + 2 * 2                       # warm-up + 2 repetitions x 2 full batches
    assert all(len(b) == 2 for b in FakeEngine.calls)
    assert result["settings"]["padding"]["padding_requests_per_repetition"] == 1
    assert result["metrics"]["ttft_s"]["n"] == 6                     # 3 prompts x 2 repetitions
    assert result["metrics"]["ttft_s"]["median"] == pytest.approx(0.001)
    assert result["metrics"]["tpot_s"]["median"] == pytest.approx(0.001)
    assert len(records) == 8 and sum(r["padding"] for r in records) == 2
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    load_result(path)                                                # valid against the result schema


def test_a_wrong_token_count_fails_the_run(fake):
    FakeEngine.short = 1
    with pytest.raises(TokenCountError, match="did not generate exactly 5 tokens"):
        runner.run(fake)


def test_prompt_longer_than_the_context_fails_before_loading(fake):
    fake.prompt_spec = {"tokens": 60, "count": 1}
    with pytest.raises(ValueError, match=r"longest prompt \(60 tokens\) \+ max_new_tokens \(5\) exceeds"):
        runner.run(fake)
    assert FakeEngine.calls == []


def test_an_engine_result_field_must_be_declared_in_its_registry_entry(fake, monkeypatch):
    """Engine.result_fields() adds fields to the result only as its registry entry declares them."""
    from inference_optim_llm.engines import ENGINES

    monkeypatch.setattr(FakeEngine, "result_fields", lambda self: {"cache_hits": 3}, raising=False)
    with pytest.raises(ValueError, match="returned result field 'cache_hits', which its registry entry does not"):
        runner.run(fake)
    monkeypatch.setitem(ENGINES["baseline"], "result_fields", {"cache_hits": {"type": "integer"}})
    result, _ = runner.run(fake)
    assert result["cache_hits"] == 3
    monkeypatch.setattr(FakeEngine, "result_fields", lambda self: {"cache_hits": "many"}, raising=False)
    with pytest.raises(ValueError, match="result field 'cache_hits': 'many' is not of type 'integer'"):
        runner.run(fake)
    monkeypatch.setattr(FakeEngine, "result_fields", lambda self: {"status": "ok"}, raising=False)
    monkeypatch.setitem(ENGINES["baseline"], "result_fields", {"status": {"type": "string"}})
    with pytest.raises(ValueError, match="would replace a field of every result"):
        runner.run(fake)
