"""One job per target at a time.

A job holds an exclusive lock (flock) on `.NAME.iol-lock` beside its first output for its whole life; a
second job for the same target (a rerun while an orphaned job of a killed workflow still measures, a
cluster job that outlived its workflow) refuses to start, naming the target and the process holding it.
The kernel releases a flock when its process ends, however it ends, so a kill -9 never leaves a stale
lock: at most the empty file stays, and the next job of that target takes it and removes it at its end.

The file is removed while still locked, so a job that opened it just before must find, once it holds
the lock, that the path no longer names its file, and start over: two jobs never hold two files.
"""
from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path

LOCK_TAG = ".iol-lock"


class TargetBusy(RuntimeError):
    """Another living process holds the target's lock."""


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    return target.parent / f".{target.name}{LOCK_TAG}"


def _acquire(path: Path, target: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "a process that has not said its pid yet"
            os.close(fd)
            raise TargetBusy(f"{target}: another job is making this target ({holder}, lock {path}): not started "
                             "twice; wait for it to end, or stop it, then run again") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            mine = os.stat(path, follow_symlinks=False)
            held = os.fstat(fd)
            same = (mine.st_dev, mine.st_ino) == (held.st_dev, held.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)   # its holder removed it as we opened it: take the new one


@contextmanager
def target_lock(target: str | Path):
    """Hold the lock of `target` (a file or directory path) inside the block; TargetBusy if it is held."""
    target = Path(target)
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, target)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)   # while still locked (see the module's note)
        os.close(fd)
