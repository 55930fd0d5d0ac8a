"""Prompt sets: a text file (one prompt per line) or random token ids of an exact length."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PromptError(ValueError):
    """A prompt set that cannot be used; the message names the file or key."""


@dataclass
class PromptSet:
    name: str
    texts: list[str]             # what the JSONL records show as `prompt`
    token_ids: list[list[int]]   # what the engines receive


def read_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise PromptError(f"prompt file {path} is not UTF-8 text ({e})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise PromptError(f"prompt file {path} holds no prompts (one prompt per non-empty line)")
    return prompts


def random_token_ids(length: int, count: int, vocab_size: int, seed: int,
                     exclude: set[int] = frozenset()) -> list[list[int]]:
    """`count` prompts of exactly `length` random ids, as serving benchmarks draw them. Seeded."""
    import random

    if length <= 0 or count <= 0:
        raise PromptError(f"synthetic prompts need tokens > 0 and count > 0 (got {length}, {count})")
    rng = random.Random(seed)
    allowed = [i for i in range(vocab_size) if i not in exclude]
    return [[rng.choice(allowed) for _ in range(length)] for _ in range(count)]


def load_prompt_set(name: str, spec: dict, tokenizer, seed: int) -> PromptSet:
    """spec is the config's `prompt_sets.<name>`: {file: path[, limit: N]} or {tokens: N, count: C}."""
    if "file" in spec:
        texts = read_prompt_file(spec["file"])[: spec.get("limit")]
        ids = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        return PromptSet(name, texts, ids)
    exclude = set(tokenizer.all_special_ids)
    ids = random_token_ids(int(spec["tokens"]), int(spec.get("count", 8)), len(tokenizer), seed, exclude)
    return PromptSet(name, [f"<{len(i)} random token ids>" for i in ids], ids)


def batches(n_prompts: int, batch_size: int) -> list[list[int]]:
    """Indices of the prompts in each static batch. Every batch is full: the last one wraps around
    to the first prompts, so a batch-16 target on 10 prompts still measures batches of 16."""
    if batch_size <= 0:
        raise PromptError(f"batch size must be positive (got {batch_size})")
    n_batches = max(1, -(-n_prompts // batch_size))
    return [[(b * batch_size + i) % n_prompts for i in range(batch_size)] for b in range(n_batches)]
