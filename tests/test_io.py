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


# -- a full disk: the error names the destination, nothing half-written is left ----------------------------

@pytest.fixture
def full_disk(tmp_path):
    """A real file system with no space left: a 64 KiB tmpfs (mounting needs root), `results/` made and
    `results/kept.json` written, then filled up. Every write gets ENOSPC from the kernel."""
    import subprocess
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mnt / "results").mkdir()
        (mnt / "results" / "kept.json").write_text('{"measured": 1}\n')
        with open(mnt / "filler", "wb", buffering=0) as f:
            with pytest.raises(OSError, match="No space left on device"):
                while True:
                    f.write(b"\0" * 4096)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_names_the_file_and_keeps_what_was_there(full_disk):
    from inference_optim_llm.io import WriteError
    results = full_disk / "results"
    for target in (results / "x.json", results / "kept.json"):
        with pytest.raises(WriteError, match=f"^cannot write {target}: No space left on device$"):
            write_json(target, {"tokens": list(range(10000))})
    assert names(results) == ["kept.json"]                   # no temporary, no empty x.json
    assert (results / "kept.json").read_text() == '{"measured": 1}\n'


def test_a_full_disk_while_a_directory_is_built_names_it(full_disk):
    from inference_optim_llm.io import WriteError, building_dir
    dest = full_disk / "results" / "model"
    with pytest.raises(WriteError, match=f"^cannot write {dest}: No space left on device$"):
        with building_dir(dest) as tmp:
            (tmp / "weights.bin").write_bytes(b"\0" * 100_000)   # the kernel's error names no file
    # the tool's own writes inside it also say which file
    with pytest.raises(WriteError, match=f"^cannot write {dest} \\(manifest.json\\): No space left on device$"):
        with building_dir(dest) as tmp:
            write_json(tmp / "manifest.json", {"files": list(range(10000))})
    assert names(full_disk / "results") == ["kept.json"]


def test_a_library_error_on_a_full_disk_names_the_destination(full_disk):
    """safetensors (as save_pretrained uses it) raises its own SafetensorError, not an OSError."""
    import torch
    from safetensors.torch import save_file
    from inference_optim_llm.io import WriteError, building_dir
    dest = full_disk / "results" / "model"
    with pytest.raises(WriteError, match=f"^cannot write {dest}: No space left on device \\(SafetensorError: "):
        with building_dir(dest) as tmp:
            save_file({"w": torch.zeros(100_000)}, tmp / "model.safetensors")
    assert names(full_disk / "results") == ["kept.json"]


def test_a_figure_on_a_full_disk_names_the_file_and_leaves_none(full_disk):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from inference_optim_llm.io import WriteError
    from inference_optim_llm.report import save_figure
    fig = plt.figure()
    plt.plot(range(1000))
    target = full_disk / "results" / "plot.png"
    with pytest.raises(WriteError, match=f"^cannot write {target}: No space left on device$"):
        save_figure(fig, target)
    assert names(full_disk / "results") == ["kept.json"]    # matplotlib alone leaves an empty plot.png
