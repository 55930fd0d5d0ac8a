"""Every local link in README.md and the tracked docs/**/*.md points to a file or directory git tracks.

A page that links a file which was never committed (or was lost to an ignore pattern) promises evidence
the repository does not hold; this test names each such link by file:line and target.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent

# [text](target) and [text](target "title"); an image ![alt](target) matches too. The target ends at
# whitespace or the closing parenthesis; <target> with angle brackets is accepted.
LINK = re.compile(r"\[(?:[^\]\\]|\\.)*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
EXTERNAL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, any other scheme


def tracked_files() -> set[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    return {f for f in out.split("\0") if f}


def tracked_dirs(files: set[str]) -> set[str]:
    dirs = set()
    for f in files:
        for parent in PurePosixPath(f).parents:
            dirs.add(str(parent))
    return dirs


def pages(files: set[str]) -> list[str]:
    return sorted(f for f in files if f == "README.md" or (f.startswith("docs/") and f.endswith(".md")))


def links(text: str):
    """(line number, target) of every markdown link outside fenced code blocks and inline code."""
    in_fence = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for m in LINK.finditer(line):
            yield n, m.group(1).strip("<>")


def resolve(page: str, target: str) -> str | None:
    """The repository path a local link points to, or None for links this test does not check."""
    if not target or target.startswith("#") or EXTERNAL.match(target):
        return None
    path = unquote(target.split("#", 1)[0].split("?", 1)[0])
    if path.startswith("/"):
        joined = PurePosixPath(path.lstrip("/"))
    else:
        joined = PurePosixPath(page).parent / path
    parts: list[str] = []
    for part in joined.parts:
        if part == "..":
            if not parts:
                return "<outside the repository>"
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return "/".join(parts) or "."


def broken_links(files: set[str], root: Path = REPO) -> list[str]:
    known = files | tracked_dirs(files)
    broken = []
    for page in pages(files):
        text = (root / page).read_text(encoding="utf-8")
        for n, target in links(text):
            path = resolve(page, target)
            if path is not None and path not in known:
                broken.append(f"{page}:{n}: {target} (not tracked by git)")
    return broken


def test_resolve_skips_external_and_anchor_links():
    assert resolve("README.md", "https://example.org/x") is None
    assert resolve("README.md", "http://example.org/x") is None
    assert resolve("README.md", "mailto:someone@example.org") is None
    assert resolve("README.md", "#reliability") is None
    assert resolve("README.md", "docs/gpu-checks.md#telemetry") == "docs/gpu-checks.md"
    assert resolve("docs/reliability.md", "../README.md") == "README.md"
    assert resolve("docs/reliability.md", "measurements/") == "docs/measurements"
    assert resolve("docs/a/b.md", "../../../x") == "<outside the repository>"


def test_links_finds_markdown_links_outside_code():
    text = ("see [a](docs/a.md) and [b](docs/b.md#x \"title\") and ![img](<p q.png>)\n"
            "`[not](a link)`\n"
            "```\n[in](a fence)\n```\n"
            "[c](https://example.org)\n")
    assert list(links(text)) == [(1, "docs/a.md"), (1, "docs/b.md#x"), (1, "p q.png"), (6, "https://example.org")]


def test_broken_links_are_reported_with_file_line_and_target(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "README.md").write_text("# t\n\n[ok](docs/x.md) [dir](docs/sub/) [lost](docs/results/lost.md#a)\n")
    (tmp_path / "docs" / "x.md").write_text("[up](../README.md) [web](https://example.org) [gone](y.md)\n")
    (tmp_path / "docs" / "sub" / "z.md").write_text("[top](../../README.md)\n")
    files = {"README.md", "docs/x.md", "docs/sub/z.md"}
    assert broken_links(files, root=tmp_path) == [
        "README.md:3: docs/results/lost.md#a (not tracked by git)",
        "docs/x.md:1: y.md (not tracked by git)",
    ]


def test_every_local_link_in_readme_and_docs_points_to_a_tracked_file():
    files = tracked_files()
    assert "README.md" in files
    broken = broken_links(files)
    assert not broken, "links to paths git does not track:\n" + "\n".join(broken)
