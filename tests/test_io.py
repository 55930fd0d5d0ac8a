"""Atomic writes: a target either holds complete content or keeps its previous content."""
from __future__ import annotations

import json

import pytest

from inference_optim_llm.io import read_json, write_atomic, write_json, write_jsonl


def names(d):
    return sorted(p.name for p in d.iterdir())


def test_write_atomic_creates_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    write_atomic(target, "hello\n")
    assert target.read_text(encoding="utf-8") == "hello\n"
    assert names(tmp_path) == ["out.txt"]


def test_write_atomic_replaces_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old content that is longer than the new one\n")
    write_atomic(target, "new\n")
    assert target.read_text(encoding="utf-8") == "new\n"
    assert names(tmp_path) == ["out.txt"]


def test_write_atomic_creates_parent_dirs(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_atomic(str(target), "x")
    assert target.read_text() == "x"
    assert names(target.parent) == ["out.txt"]


def test_write_json_roundtrip(tmp_path):
    target = tmp_path / "r.json"
    data = {"status": "ok", "values": [1, 2.5, None], "ü": "ü"}
    write_json(target, data)
    assert read_json(target) == data
    assert target.read_text(encoding="utf-8").endswith("\n")


def test_write_jsonl_one_record_per_line(tmp_path):
    target = tmp_path / "r.jsonl"
    write_jsonl(target, [{"a": 1}, {"b": None}])
    lines = target.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"a": 1}, {"b": None}]


def test_write_json_non_serializable_keeps_previous_content(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"version": 1})
    before = target.read_bytes()
    with pytest.raises(TypeError):
        write_json(target, {"version": 2, "bad": object()})
    assert target.read_bytes() == before
    assert names(tmp_path) == ["result.json"]


def test_write_json_non_serializable_creates_nothing(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(TypeError):
        write_json(target, {"bad": {1, 2}})
    assert not target.exists()
    assert names(tmp_path) == []


def test_write_jsonl_failing_midway_keeps_previous_content(tmp_path):
    target = tmp_path / "records.jsonl"
    write_jsonl(target, [{"i": 0}])
    before = target.read_bytes()

    def records():
        yield {"i": 1}
        yield {"i": 2}
        raise RuntimeError("engine crashed after two records")

    with pytest.raises(RuntimeError):
        write_jsonl(target, records())
    assert target.read_bytes() == before
    assert names(tmp_path) == ["records.jsonl"]


def test_write_atomic_failing_inside_the_temp_file_write(tmp_path):
    # Text that cannot be encoded as UTF-8 (a lone surrogate) fails while the temporary file is being
    # written: the temp file must be removed and the previous content kept.
    target = tmp_path / "out.txt"
    write_atomic(target, "complete old content\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "x" * 100_000 + "\ud800" + "tail")
    assert target.read_text(encoding="utf-8") == "complete old content\n"
    assert names(tmp_path) == ["out.txt"]


def test_write_atomic_failing_on_a_new_file_leaves_nothing(tmp_path):
    target = tmp_path / "new.txt"
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "partial \udcff")
    assert names(tmp_path) == []
