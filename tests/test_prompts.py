"""Prompt files, synthetic token-id prompts, static batches, and the shipped prompt sets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_optim_llm.prompts import (PromptError, PromptSet, batches, load_prompt_set, random_token_ids,
                                         read_prompt_file, read_prompt_file_with_notes)

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


def test_a_bad_prompt_file_is_one_line_from_the_cli(tmp_path, capsys):
    from inference_optim_llm.cli import main
    assert main(["run", "baseline", "--prompts-file", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err == f"error: prompt file {tmp_path / 'missing.txt'} does not exist\n"


# -- read_prompt_file_with_notes: lines split on "\n" only, what was dropped or changed counted -------

NOTE_KEYS = {"lines", "prompts", "bom_removed", "crlf_line_endings", "dropped_blank", "dropped_invisible",
             "stripped", "inner_separators"}


def _notes_file(tmp_path, data: bytes):
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    return read_prompt_file_with_notes(path)


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\r", "\x1c", "\x1d", "\x1e"],
                         ids=["U+2028", "U+2029", "NEL", "FF", "VT", "lone-CR", "FS", "GS", "RS"])
def test_line_break_characters_inside_a_line_stay_one_prompt(tmp_path, sep):
    prompts, notes = _notes_file(tmp_path, f"first{sep}half\nsecond\n".encode())
    assert prompts == [f"first{sep}half", "second"]
    assert notes["inner_separators"] == 1
    assert (notes["lines"], notes["prompts"], notes["stripped"]) == (2, 2, 0)


def test_crlf_file_gives_the_same_prompts_as_lf(tmp_path):
    lf, lf_notes = _notes_file(tmp_path, b"one\ntwo\n\nthree\n")
    crlf, crlf_notes = _notes_file(tmp_path, b"one\r\ntwo\r\n\r\nthree\r\n")
    assert crlf == lf == ["one", "two", "three"]
    assert crlf_notes["crlf_line_endings"] == 4 and lf_notes["crlf_line_endings"] == 0
    assert crlf_notes["stripped"] == 0 and crlf_notes["inner_separators"] == 0
    assert {k: v for k, v in crlf_notes.items() if k != "crlf_line_endings"} == \
           {k: v for k, v in lf_notes.items() if k != "crlf_line_endings"}


def test_leading_bom_removed_and_counted(tmp_path):
    prompts, notes = _notes_file(tmp_path, b"\xef\xbb\xbfHello\nWorld\n")
    assert prompts == ["Hello", "World"]
    assert notes["bom_removed"] == 1
    assert notes["stripped"] == 0   # the BOM is the file's, not the line's
    assert _notes_file(tmp_path, b"Hello\n")[1]["bom_removed"] == 0


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",
                                       " \u200b\t", "\u00a0\u200b", "\x00"])
def test_invisible_only_line_dropped_and_counted(tmp_path, invisible):
    prompts, notes = _notes_file(tmp_path, f"a\n{invisible}\nb\n".encode())
    assert prompts == ["a", "b"]
    assert notes["dropped_invisible"] == 1
    assert notes["dropped_blank"] == 0
    assert (notes["lines"], notes["prompts"]) == (3, 2)


def test_kept_lines_stripped_of_whitespace_and_invisibles_and_counted(tmp_path):
    prompts, notes = _notes_file(tmp_path, "  x  \n\u200by\u200b\n\u00a0z\nplain\n".encode())
    assert prompts == ["x", "y", "z", "plain"]
    assert notes["stripped"] == 3


def test_inner_invisibles_and_spaces_kept(tmp_path):
    prompts, notes = _notes_file(tmp_path, "a\u200db  c\n".encode())
    assert prompts == ["a\u200db  c"]
    assert notes["stripped"] == 0


def test_blank_lines_counted(tmp_path):
    prompts, notes = _notes_file(tmp_path, b"a\n\n   \n\t\nb")
    assert prompts == ["a", "b"]
    assert notes["dropped_blank"] == 3
    assert notes["lines"] == 5   # no final newline: the last line still counts once


def test_unicode_space_only_lines_are_blank_not_invisible(tmp_path):
    # str.isspace() spaces (NBSP, ideographic space, U+2028) were dropped before too: blank, not invisible.
    prompts, notes = _notes_file(tmp_path, "a\n\u00a0\n\u3000\u2028\nb\n".encode())
    assert prompts == ["a", "b"]
    assert (notes["dropped_blank"], notes["dropped_invisible"]) == (2, 0)


def test_notes_are_exact_json_integer_counts(tmp_path):
    prompts, notes = _notes_file(tmp_path, b"\xef\xbb\xbf a \r\n\r\n\xe2\x80\x8b\r\nb\xe2\x80\xa8c\n")
    assert prompts == ["a", "b\u2028c"]
    assert set(notes) == NOTE_KEYS
    assert all(type(v) is int for v in notes.values())
    assert json.loads(json.dumps(notes)) == {"lines": 4, "prompts": 2, "bom_removed": 1, "crlf_line_endings": 3,
                                             "dropped_blank": 1, "dropped_invisible": 1, "stripped": 1,
                                             "inner_separators": 1}


def test_file_of_only_invisible_lines_raises_naming_the_file(tmp_path):
    path = tmp_path / "invisible.txt"
    path.write_bytes("\u200b\n\ufeff\n\u2060\u00a0\n".encode())
    with pytest.raises(PromptError, match="holds no prompts") as e:
        read_prompt_file(path)
    assert str(path) in str(e.value)


def test_read_prompt_file_uses_the_new_rules(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffone\u2028line\r\n\u200b\n".encode())
    assert read_prompt_file(path) == ["one\u2028line"]


# -- load_prompt_set ----------------------------------------------------------------------------------

class _FakeTokenizer:
    all_special_ids = [0]

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [0] + [ord(c) for c in text]}

    def __len__(self):
        return 50


def test_load_prompt_set_records_notes_and_limit_applied(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"a\nb\n\nc\nd\n")
    ps = load_prompt_set("s", {"file": str(path), "limit": 3}, _FakeTokenizer(), seed=0)
    assert ps.texts == ["a", "b", "c"]
    assert ps.token_ids == [[0, 97], [0, 98], [0, 99]]
    assert set(ps.notes) == NOTE_KEYS | {"limit_applied"}
    assert ps.notes["limit_applied"] == 1
    assert ps.notes["prompts"] == 4 and ps.notes["dropped_blank"] == 1
    full = load_prompt_set("s", {"file": str(path)}, _FakeTokenizer(), seed=0)
    assert full.texts == ["a", "b", "c", "d"] and full.notes["limit_applied"] == 0


def test_load_prompt_set_tokens_has_no_notes():
    ps = load_prompt_set("syn", {"tokens": 4, "count": 2}, _FakeTokenizer(), seed=0)
    assert ps.notes is None
    assert all(len(ids) == 4 for ids in ps.token_ids)


def test_prompt_set_positional_fields_unchanged():
    ps = PromptSet("n", ["t"], [[1]])
    assert (ps.name, ps.texts, ps.token_ids, ps.notes) == ("n", ["t"], [[1]], None)


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
