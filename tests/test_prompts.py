"""Prompt files, synthetic token-id prompts, static batches, and the shipped prompt sets."""
from __future__ import annotations

from pathlib import Path

import pytest

from inference_optim_llm.prompts import PromptError, batches, random_token_ids, read_prompt_file

DATA = Path(__file__).resolve().parent.parent / "data"


# -- read_prompt_file ---------------------------------------------------------------------------------

def test_read_prompt_file_missing_names_the_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(PromptError, match="does not exist") as e:
        read_prompt_file(path)
    assert str(path) in str(e.value)


def test_read_prompt_file_directory_is_not_a_file(tmp_path):
    with pytest.raises(PromptError):
        read_prompt_file(tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n   \n\t\n"])
def test_read_prompt_file_without_prompts_raises(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptError, match="holds no prompts") as e:
        read_prompt_file(path)
    assert str(path) in str(e.value)


def test_read_prompt_file_skips_blank_lines_and_strips(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("First prompt.\n\n   \n  Second prompt, indented.  \r\nThird — with ünïcode.\n\n",
                    encoding="utf-8")
    assert read_prompt_file(path) == ["First prompt.", "Second prompt, indented.", "Third — with ünïcode."]


def test_read_prompt_file_accepts_str_path(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("only one\n", encoding="utf-8")
    assert read_prompt_file(str(path)) == ["only one"]


def test_read_prompt_file_non_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Café crème\n".encode("latin-1") + b"\xff\xfe\n")
    with pytest.raises(PromptError, match="not UTF-8") as e:
        read_prompt_file(path)
    assert str(path) in str(e.value)


def test_prompt_error_is_a_value_error():
    assert issubclass(PromptError, ValueError)


# -- random_token_ids ---------------------------------------------------------------------------------

def test_random_token_ids_exact_length_and_count():
    ids = random_token_ids(length=37, count=5, vocab_size=1000, seed=0)
    assert len(ids) == 5
    assert all(len(p) == 37 for p in ids)
    assert all(isinstance(t, int) and 0 <= t < 1000 for p in ids for t in p)


def test_random_token_ids_seeded_reproducible():
    a = random_token_ids(64, 4, 50000, seed=123)
    b = random_token_ids(64, 4, 50000, seed=123)
    c = random_token_ids(64, 4, 50000, seed=124)
    assert a == b
    assert a != c


def test_random_token_ids_prompts_differ_within_a_set():
    ids = random_token_ids(32, 3, 50000, seed=0)
    assert ids[0] != ids[1] != ids[2]


def test_random_token_ids_never_draws_excluded_ids():
    exclude = {0, 1, 2, 7}
    ids = random_token_ids(200, 10, vocab_size=10, seed=3, exclude=exclude)
    drawn = {t for p in ids for t in p}
    assert not drawn & exclude
    assert drawn == {3, 4, 5, 6, 8, 9}   # 2000 draws from 6 allowed ids: every one appears


@pytest.mark.parametrize("length, count", [(0, 4), (8, 0), (-1, 4)])
def test_random_token_ids_rejects_non_positive(length, count):
    with pytest.raises(PromptError):
        random_token_ids(length, count, 100, seed=0)


# -- batches ------------------------------------------------------------------------------------------

def test_batches_divisible():
    assert batches(8, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batches_batch_size_one():
    assert batches(3, 1) == [[0], [1], [2]]


def test_batches_not_divisible_wraps_last_batch():
    assert batches(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]


def test_batches_fewer_prompts_than_batch_size_wraps():
    assert batches(3, 8) == [[0, 1, 2, 0, 1, 2, 0, 1]]


def test_batches_are_always_full_and_cover_every_prompt():
    for n, bs in [(10, 16), (16, 16), (17, 16), (5, 3), (1, 4)]:
        plan = batches(n, bs)
        assert all(len(b) == bs for b in plan)
        assert set(i for b in plan for i in b) == set(range(n))
        assert len(plan) == -(-n // bs)


@pytest.mark.parametrize("bs", [0, -2])
def test_batches_non_positive_batch_size_raises(bs):
    with pytest.raises(PromptError, match="batch size"):
        batches(10, bs)


# -- shipped prompt sets ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["prompts.txt", "prompts_medium.txt", "prompts_long.txt"])
def test_shipped_prompt_files_exist_and_hold_prompts(name):
    path = DATA / name
    assert path.is_file(), path
    prompts = read_prompt_file(path)
    assert prompts
    assert all(p.strip() for p in prompts)


def test_short_prompts_are_short():
    prompts = read_prompt_file(DATA / "prompts.txt")
    assert all(len(p.split()) < 15 for p in prompts)


def test_medium_prompts_are_15_to_20_words():
    prompts = read_prompt_file(DATA / "prompts_medium.txt")
    lengths = [len(p.split()) for p in prompts]
    assert all(15 <= n <= 20 for n in lengths), lengths


def test_long_prompts_are_longer_than_medium():
    long_ = read_prompt_file(DATA / "prompts_long.txt")
    medium = read_prompt_file(DATA / "prompts_medium.txt")
    assert min(len(p.split()) for p in long_) > max(len(p.split()) for p in medium)
