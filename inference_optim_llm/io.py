"""Files the tool writes: atomic, with the umask's modes, never through a link, never over what it did not make.

- A file or directory is built under a temporary name beside its destination, then renamed: a target
  either holds complete content or does not exist.
- Temporary names carry the host and the process id (`.NAME.iol-tmp.HOST.PID.RAND`). A process killed
  with SIGKILL (or a node that died) cannot clean up; the next writer of the same destination removes
  the temporaries of processes that no longer run (same host), or that are older than a day (another
  host, on a shared file system).
- Modes follow the umask (0644 / 0755 under the usual 022), so colleagues on a shared cluster file
  system can read results.
- A directory is replaced only if it carries the tool's marker file (it made it); anything else at
  the destination is an error, never deleted.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

TMP_TAG = ".iol-tmp."
MARKER = ".inference-optim-llm"   # in every directory the tool publishes
STALE_OTHER_HOST_S = 24 * 3600


class OutputError(ValueError):
    """An output that cannot be written, or a destination the tool will not overwrite."""


class WriteError(OutputError):
    """A write the file system refused (full disk, quota, read-only, no permission). The message names the
    destination: the system's own error (ENOSPC) carries no file name."""

    def __init__(self, path: Path, reason: str, inner: str | None = None):
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot write {path}{f' ({inner})' if inner else ''}: {reason}")


# What a write inside a directory being built can hit from the file system (other errors are the builder's).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _disk_full(path: Path | None) -> bool:
    try:
        return path is not None and os.statvfs(path).f_bavail == 0
    except OSError:
        return False


def _discard(tmp: Path | None) -> None:
    if tmp is None:
        return
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


class Interrupted(BaseException):
    """A signal (SIGTERM, SIGINT, SIGHUP) stopped the process; its name is the message."""


# Signals received (stages.install_signal_handlers records them). Once one has arrived nothing is
# published, even if some library swallowed the exception the signal raised (a bare `except:`).
INTERRUPTED: list[str] = []


def _not_interrupted() -> None:
    if INTERRUPTED:
        raise Interrupted(INTERRUPTED[0])


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "host"


def temp_path(dest: Path) -> Path:
    dest = Path(dest)
    return dest.parent / f".{dest.name}{TMP_TAG}{_host()}.{os.getpid()}.{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: alive
        return True
    return True


def sweep_stale(dest: Path) -> list[Path]:
    """Remove temporaries of `dest` left by processes that are gone. Returns what was removed."""
    dest = Path(dest)
    prefix = f".{dest.name}{TMP_TAG}"
    removed = []
    try:
        entries = list(dest.parent.iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        if not p.name.startswith(prefix) or p.is_symlink():
            continue
        parts = p.name[len(prefix):].rsplit(".", 2)   # HOST, PID, RAND
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        host, pid = parts[0], int(parts[1])
        if host == _host():
            stale = not _alive(pid)
        else:
            stale = time.time() - p.lstat().st_mtime > STALE_OTHER_HOST_S
        if stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def writing_file(path: str | Path):
    """A temporary path beside `path` for a writer to fill (a library's save), renamed to `path` when the
    block ends: `path` holds complete content or is left as it was (a link at `path` is replaced, never
    written through). An OSError (or a library's own error while the disk is full) becomes a WriteError
    naming `path`; on any error or signal, the temporary is removed."""
    path = Path(path)
    tmp = None
    try:   # the temporary is named and created inside the try: a signal at any point leaves none behind
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(path)
        tmp = temp_path(path)
        yield tmp
        _not_interrupted()
        os.replace(tmp, path)
    except Exception as e:
        full = _disk_full(path.parent)   # before the temporary is removed: it may be what filled the disk
        _discard(tmp)
        if isinstance(e, OSError):
            raise WriteError(path, e.strerror or str(e)) from None
        if full:
            raise WriteError(path, f"No space left on device ({type(e).__name__}: {str(e)[:200]})") from None
        raise
    except BaseException:
        _discard(tmp)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write text to a temporary file beside `path`, fsync it, then rename over `path`."""
    with writing_file(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)  # the umask applies
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def make_temp_dir(dest: Path) -> Path:
    """A fresh directory beside `dest` (its stale predecessors swept), mode per the umask."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest)
    tmp = temp_path(dest)
    tmp.mkdir(mode=0o777)
    return tmp


def check_replaceable(dest: Path, what: str = "output") -> None:
    """Raise OutputError unless `dest` is absent or a directory this tool published."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not (dest / MARKER).is_file()):
        raise OutputError(f"{what} {dest} exists and was not created by inference-optim-llm: "
                          "refusing to replace it (move it away or choose another path)")


def follow_umask(root: Path) -> None:
    """Give every file and directory under root the umask's modes (executables keep their x bits): libraries
    write some files 0600 (safetensors' save does), which would keep other users of a shared results or
    resources tree from reading them. Links are left alone (their targets are not ours to change)."""
    mask = umask()
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        os.chmod(p, (0o777 if p.is_dir() or mode & 0o111 else 0o666) & ~mask)


def publish_dir(tmp: Path, dest: Path) -> None:
    """Rename a finished temporary directory to `dest`, replacing only a directory the tool made."""
    tmp, dest = Path(tmp), Path(dest)
    follow_umask(tmp)
    (tmp / MARKER).write_text(json.dumps({"tool": "inference-optim-llm", "pid": os.getpid(),
                                          "host": _host(), "time": time.time()}) + "\n")
    check_replaceable(dest)
    _not_interrupted()
    old = None
    if dest.exists():
        old = temp_path(dest)
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def building_dir(dest: Path, check=None):
    """Build a directory under a temporary name beside `dest`; on success `check(tmp)` (if given) and
    publish it as `dest`; on any error or signal, remove it. The one way the tool makes a directory.
    A write the file system refuses (a library's own error while the disk is full included) becomes a
    WriteError naming `dest` and the file inside it."""
    dest = Path(dest)
    tmp = None
    try:   # the temporary is named and created inside the try: a signal at any point leaves none behind
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(dest)
            tmp = temp_path(dest)
            tmp.mkdir(mode=0o777)
        except OSError as e:
            raise WriteError(dest, e.strerror or str(e)) from None
        yield tmp
        if check is not None:
            check(tmp)
        publish_dir(tmp, dest)
    except WriteError as e:
        _discard(tmp)
        raise WriteError(dest, e.reason, _inside(tmp, e.path)) from None
    except Exception as e:
        # Decided before the temporary is removed: it may be what filled the disk.
        full = _disk_full(tmp.parent if tmp else None)
        _discard(tmp)
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            raise WriteError(dest, e.strerror, _inside(tmp, e.filename)) from None
        if full:
            raise WriteError(dest, f"No space left on device ({type(e).__name__}: {str(e)[:200]})") from None
        raise
    except BaseException:
        _discard(tmp)
        raise


def _inside(tmp: Path | None, path) -> str | None:
    """A file's name relative to the directory being built (its temporary name means nothing to a user)."""
    try:
        return str(Path(path).relative_to(tmp)) if tmp is not None and path else None
    except ValueError:
        return None


def check_writable(path: str | Path, flag: str) -> None:
    """Fail before any measurement if `path` cannot be written: the error names the flag and the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a directory, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = temp_path(path)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot be written ({e.strerror or e})") from None


def check_writable_dir(path: str | Path, flag: str) -> None:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: exists and is not a directory")
    check_writable(path / ".probe", flag)


_KINDS = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "named pipe"),
          (stat.S_ISSOCK, "socket"))


def input_problem(path: str | Path, kind: str = "file") -> str | None:
    """What stops `path` from being read as a `kind` ("file" or "directory"), in words that complete
    "prompt file P ...", or None. Checked without opening it: a named pipe would block a read for ever."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"is a link to {os.readlink(path)}, which does not exist" if path.is_symlink() else "does not exist"
    except NotADirectoryError:
        return "does not exist (a parent of it is not a directory)"
    except OSError as e:
        return f"cannot be reached ({e.strerror or e})"
    if kind == "file" and stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if kind == "directory" and stat.S_ISREG(mode):
        return "is a file, not a directory"
    if not (stat.S_ISREG(mode) if kind == "file" else stat.S_ISDIR(mode)):
        what = next((name for test, name in _KINDS if test(mode)), "special file")
        return f"is not a {'regular file' if kind == 'file' else 'directory'} ({what})"
    if not os.access(path, os.R_OK | (os.X_OK if kind == "directory" else 0)):
        return "is not readable (permission denied)"
    return None
