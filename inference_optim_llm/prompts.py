"""Prompt sets: a text file (one prompt per line) or random token ids of an exact length."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

from inference_optim_llm.io import input_problem


class PromptError(ValueError):
    """A prompt set that cannot be used; the message names the file or key."""


@dataclass
class PromptSet:
    name: str
    texts: list[str]             # what the JSONL records show as `prompt`
    token_ids: list[list[int]]   # what the engines receive
    notes: dict | None = None    # file sets: read_prompt_file_with_notes' counts + limit_applied

    @property
    def longest(self) -> int:
        """The longest prompt, in tokens: what the context check, the KV cache and the builds size for."""
        return max(map(len, self.token_ids))


# Characters str.splitlines() would break on besides "\n": kept inside a prompt, only counted.
_LINE_BREAKS = frozenset("\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
# Format characters (zero-width space/joiners, BOM, word joiner), spaces, separators, controls.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zs", "Zl", "Zp", "Cc"})


def _invisible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in _INVISIBLE_CATEGORIES


def read_prompt_file_with_notes(path: str | Path) -> tuple[list[str], dict]:
    """The file's prompts and counts of what was dropped or changed, for the caller to log/record.

    Lines are split on "\\n" only (not str.splitlines(), whose universal newlines would cut one
    prompt in two at U+2028, NEL, form feed, a lone CR, ...); a "\\r\\n" ending counts as "\\n".
    A leading BOM is removed. Lines of only whitespace (str.isspace, NBSP included) count as blank;
    lines of only invisible characters with at least one non-whitespace one (a zero-width space)
    count as invisible: those are the ones that used to become invisible prompts. Both are dropped;
    kept lines lose leading and trailing invisible characters."""
    path = Path(path)
    problem = input_problem(path, "file")
    if problem:
        raise PromptError(f"prompt file {path} {problem}")
    try:
        text = path.read_bytes().decode("utf-8")   # bytes: read_text would translate lone CRs
    except OSError as e:
        raise PromptError(f"prompt file {path} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise PromptError(f"prompt file {path} is not UTF-8 text ({e})") from None
    notes = dict.fromkeys(["lines", "prompts", "bom_removed", "crlf_line_endings", "dropped_blank",
                           "dropped_invisible", "stripped", "inner_separators"], 0)
    if text.startswith("\ufeff"):
        text, notes["bom_removed"] = text[1:], 1
    notes["crlf_line_endings"] = text.count("\r\n")
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":          # text after the last "\n": empty when the file ends in a newline
        lines.pop()
    notes["lines"] = len(lines)
    prompts = []
    for line in lines:
        if not line.strip():
            notes["dropped_blank"] += 1
        elif all(map(_invisible, line)):
            notes["dropped_invisible"] += 1
        else:
            start = next(i for i, ch in enumerate(line) if not _invisible(ch))
            end = len(line) - next(i for i, ch in enumerate(reversed(line)) if not _invisible(ch))
            prompt = line[start:end]
            notes["stripped"] += prompt != line
            notes["inner_separators"] += any(ch in _LINE_BREAKS for ch in prompt)
            prompts.append(prompt)
    if not prompts:
        raise PromptError(f"prompt file {path} holds no prompts (one prompt per non-empty line)")
    notes["prompts"] = len(prompts)
    return prompts, notes


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of read_prompt_file_with_notes, for callers that only check or use the texts."""
    return read_prompt_file_with_notes(path)[0]


def random_token_ids(length: int, count: int, vocab_size: int, seed: int,
                     exclude: set[int] = frozenset()) -> list[list[int]]:
    """`count` prompts of exactly `length` random ids, as serving benchmarks draw them. Seeded."""
    import random

    if length <= 0 or count <= 0:
        raise PromptError(f"synthetic prompts need tokens > 0 and count > 0 (got {length}, {count})")
    rng = random.Random(seed)
    allowed = [i for i in range(vocab_size) if i not in exclude]
    return [[rng.choice(allowed) for _ in range(length)] for _ in range(count)]


def default_count() -> int:
    """The schema's default number of random prompts (one default, wherever a set leaves it out)."""
    from inference_optim_llm.bounds import definition
    return definition("$defs.prompt_count")["default"]


def load_prompt_set(name: str, spec: dict, tokenizer, seed: int) -> PromptSet:
    """spec is the config's `prompt_sets.<name>`: {file: path[, limit: N]} or {tokens: N, count: C}."""
    if "file" in spec:
        texts, notes = read_prompt_file_with_notes(spec["file"])
        kept = texts[: spec.get("limit")]
        ids = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in kept]
        return PromptSet(name, kept, ids, {**notes, "limit_applied": len(texts) - len(kept)})
    exclude = set(tokenizer.all_special_ids)
    ids = random_token_ids(int(spec["tokens"]), int(spec.get("count", default_count())), len(tokenizer), seed, exclude)
    return PromptSet(name, [f"<{len(i)} random token ids>" for i in ids], ids)


def batches(n_prompts: int, batch_size: int) -> list[list[int]]:
    """Indices of the prompts in each static batch. Every batch is full: the last one wraps around
    to the first prompts, so a batch-16 target on 10 prompts still measures batches of 16."""
    if batch_size <= 0:
        raise PromptError(f"batch size must be positive (got {batch_size})")
    n_batches = max(1, -(-n_prompts // batch_size))
    return [[(b * batch_size + i) % n_prompts for i in range(batch_size)] for b in range(n_batches)]


def exact_length_text(tokenizer, ids: list[int], seed: int, tries: int = 20) -> str:
    """A text the tokenizer turns into exactly len(ids) tokens (special tokens it adds included), made from
    the random ids: what a server receives, since an OpenAI-compatible request carries text. Decoding and
    encoding again merges or splits some tokens, so the ids are trimmed or topped up until the count holds."""
    import random

    n, rng = len(ids), random.Random(seed)
    specials = set(tokenizer.all_special_ids)
    allowed = [i for i in range(len(tokenizer)) if i not in specials]
    for _ in range(tries):
        text = tokenizer.decode(ids)
        full = tokenizer(text)["input_ids"]
        if len(full) == n:
            return text
        body = tokenizer(text, add_special_tokens=False)["input_ids"]
        want = max(1, n - (len(full) - len(body)))
        ids = body[:want] + [rng.choice(allowed) for _ in range(want - len(body))]
    raise PromptError(f"could not make a text of exactly {n} tokens in {tries} tries (the tokenizer merges the "
                      "random ids differently each time)")


def serving_prompts(ps: PromptSet, tokenizer, seed: int) -> tuple[list[str], list[int]]:
    """The prompt set as texts for a server, with each text's length in the model's tokens. A random-token
    set becomes texts of exactly its length; a file set is sent as written."""
    if ps.notes is not None:   # a file set: its texts, tokenized as load_prompt_set did
        return ps.texts, [len(i) for i in ps.token_ids]
    texts = [exact_length_text(tokenizer, ids, seed + k) for k, ids in enumerate(ps.token_ids)]
    return texts, [len(i) for i in ps.token_ids]
