"""A workflow job stops when the workflow that started it is gone.

After kill -9 of Snakemake its running job is re-parented and goes on: it would measure beside the rerun
of its own target, on the same device, and publish minutes later. So a job watches the processes
between it and the top-most Snakemake process among its ancestors (the local executor's `snakemake`;
under a cluster executor, the `snakemake` that runs this one job inside the cluster job). When one of
them exits, turns zombie, or its pid now names another process (start time differs), the job sends
itself SIGTERM and so stops as on any SIGTERM: temporaries removed, its server stopped, nothing
published.

Nothing above the top-most Snakemake process is watched: a terminal closed under nohup must not stop
a job. With no Snakemake process among the ancestors (a script run by hand), nothing is watched.
Reads /proc (Linux); where there is none, nothing is watched.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

POLL_S = 1.0
# Python options that take a value as the next argument (`python -X dev -m snakemake`).
_PYTHON_OPTIONS_WITH_VALUE = {"-X", "-W", "-Q"}


@dataclass(frozen=True)
class Process:
    pid: int
    start: int   # clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart
    name: str


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process; None if it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # the name before it, in parentheses, may hold anything
    return fields[0], int(fields[1]), int(fields[19])


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def is_snakemake(argv: list[str]) -> bool:
    """`snakemake ...`, `python .../bin/snakemake ...` or `python -m snakemake ...`."""
    if not argv:
        return False
    if Path(argv[0]).name == "snakemake":
        return True
    if not Path(argv[0]).name.startswith("python"):
        return False
    args = iter(argv[1:])
    for a in args:
        if a == "-m":
            return next(args, None) == "snakemake"
        if a in _PYTHON_OPTIONS_WITH_VALUE:
            next(args, None)
        elif not a.startswith("-"):
            return Path(a).name == "snakemake"
    return False


def alive(p: Process) -> bool:
    stat = _stat(p.pid)
    return stat is not None and stat[0] not in "ZX" and stat[2] == p.start


def workflow_processes(pid: int | None = None) -> list[Process]:
    """The ancestors of `pid` (this process by default), from its parent up to and including the top-most
    Snakemake process; empty if none of them is a Snakemake process."""
    chain = []
    stat = _stat(pid or os.getpid())
    while stat is not None and stat[1] > 1 and len(chain) < 4096:
        ppid = stat[1]
        stat = _stat(ppid)
        if stat is None:
            break
        argv = _argv(ppid)
        snakemake = is_snakemake(argv)
        name = "snakemake" if snakemake else Path(argv[0]).name if argv else "?"
        chain.append((Process(ppid, stat[2], name), snakemake))
    tops = [i for i, (_, snakemake) in enumerate(chain) if snakemake]
    if not tops:
        return []
    return [p for p, _ in chain[:tops[-1] + 1]]


def _describe(processes: list[Process]) -> str:
    return ", ".join(f"{p.pid} ({p.name})" for p in processes)


def watch(processes: list[Process] | None = None, poll_s: float = POLL_S) -> threading.Thread | None:
    """Start a daemon thread that sends this process SIGTERM once any of `processes` (by default
    workflow_processes()) is gone. Logs one line saying what it watches; returns None if nothing is."""
    processes = workflow_processes() if processes is None else processes
    if not processes:
        print("watchdog: no Snakemake process among this job's ancestors: nothing watched", file=sys.stderr,
              flush=True)
        return None
    print(f"watchdog: this job stops if a process of the workflow that started it ends: {_describe(processes)}",
          file=sys.stderr, flush=True)

    def loop():
        # Signals for the job go to its other threads: one that blocks them meanwhile (servers.Server.stop
        # holds them back until its server is gone) gets them once it unblocks, never through this thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        while True:
            time.sleep(poll_s)
            gone = [p for p in processes if not alive(p)]
            if gone:
                print(f"watchdog: {_describe(gone)} ended, so nothing waits for this job's result: stopping it "
                      "(SIGTERM)", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=loop, name="iol-watchdog", daemon=True)
    thread.start()
    return thread
