"""Servers: an OpenAI-compatible inference server as a config entry (a command line, or the base_url of one
already running), and its lifetime when the job starts it: a free port, its own process group, a start
timeout whose error carries the tail of its log, SIGTERM then SIGKILL on every way out.

A config entry (`servers.<name>`):
  command          the server's command line, a list (or a string, split like a shell would, never run by
                   one) with placeholders {model_dir} {model} {port} {host} {device} {dtype}; a literal
                   brace is doubled ({{ and }}, as in a JSON flag)
  base_url         instead of command: a server already running elsewhere (nothing started or stopped)
  request_model    the `model` field of each request (default "{model_dir}", what `vllm serve DIR` and
                   `transformers serve DIR` answer to)
  length_control   how a request is held to exactly max_new_tokens tokens:
                     ignore_eos         the request says `ignore_eos: true, min_tokens: N` (vLLM, SGLang,
                                        trtllm-serve, TGI through its OpenAI route)
                     generation_config  the server is given a copy of the model whose generation config
                                        has no EOS and suppresses special tokens (`transformers serve`
                                        rejects both request fields with HTTP 422)
  health_path      polled until it answers 200 (default /health)
  start_timeout_s  how long the server may take to answer its health check (default 600)
  env              extra environment variables for the server process (taken as written: no placeholders)
  stream_unit      token (default): the server streams one event per token, and the client checks that
                   and reports per-token ITL; chunk: it streams text as it becomes printable, several
                   tokens to an event (transformers serve 5.17 with continuous batching): usage must still
                   say N, the events are 1 to N, and the gaps are reported as chunk gaps, not ITL
  requires         Python modules the server needs in the job's environment (transformers serve: fastapi,
                   uvicorn): one that is missing records `unavailable`, as a missing program does
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from inference_optim_llm.hostfacts import log

PLACEHOLDERS = {"model_dir", "model", "port", "host", "device", "dtype"}
LENGTH_CONTROLS = ("ignore_eos", "generation_config")


class ServerUnavailable(RuntimeError):
    """The server's program is not installed here: the target records status `unavailable`."""


class ServerStartError(RuntimeError):
    """The server did not become healthy in time, or exited; the message carries the tail of its log."""


@dataclass
class ServerEntry:
    name: str
    command: list[str] | None = None
    base_url: str | None = None
    request_model: str = "{model_dir}"
    length_control: str = "ignore_eos"
    health_path: str = "/health"
    start_timeout_s: float = 600
    env: dict = field(default_factory=dict)
    requires: list = field(default_factory=list)
    stream_unit: str = "token"

    @classmethod
    def from_config(cls, name: str, entry: dict) -> "ServerEntry":
        """Check one `servers.<name>` entry beyond its schema; errors name the key."""
        where = f"servers.{name}"
        command = entry.get("command")
        if isinstance(command, str):
            try:
                command = shlex.split(command)
            except ValueError as e:
                raise ValueError(f"{where}.command: {e}") from None
        if (command is None) == (entry.get("base_url") is None):
            raise ValueError(f"{where}: give exactly one of command (a server this job starts) and base_url "
                             "(one already running)")
        for key, text in [("command", " ".join(command or [])), ("request_model", entry.get("request_model", ""))]:
            for _, placeholder, _, _ in string.Formatter().parse(text):
                if placeholder is not None and placeholder not in PLACEHOLDERS:
                    raise ValueError(f"{where}.{key}: unknown placeholder {{{placeholder}}} "
                                     f"(known: {', '.join(sorted(PLACEHOLDERS))})")
        if command is not None and "{port}" not in " ".join(command):
            raise ValueError(f"{where}.command: has no {{port}}: every job starts its server on a free port")
        return cls(name=name, command=command, **{k: v for k, v in entry.items() if k != "command"})

    @property
    def external(self) -> bool:
        return self.base_url is not None


def render(template: str, **values) -> str:
    return template.format(**{k: values.get(k, "") for k in PLACEHOLDERS})


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice). Each job picks its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def missing_program(argv: list[str], requires: list[str] = ()) -> str | None:
    """Why the command cannot start here (its program, the module of `python -m X`, or a module it requires
    is absent); None if it can."""
    import importlib.util

    missing = [m for m in requires if importlib.util.find_spec(m) is None]
    if missing:
        return f"module(s) {', '.join(missing)} not installed (pip install {' '.join(missing)})"
    program = shutil.which(argv[0])
    if program is None:
        return f"program {argv[0]!r} not found on PATH"
    if "-m" in argv[:-1] and Path(argv[0]).name.startswith("python"):
        module = argv[argv.index("-m") + 1]
        try:
            probe = subprocess.run([program, "-c", f"import importlib.util, sys; "
                                    f"sys.exit(importlib.util.find_spec({module.split('.')[0]!r}) is None)"],
                                   capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return f"{program} did not say within 60 s whether module {module!r} is installed"
        if probe.returncode != 0:
            return f"module {module!r} is not installed for {program}"
    return None


def _die_with_parent() -> None:
    """In the server's process, before it runs: SIGTERM it if the job dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), so that a killed job never leaves a server holding the GPU."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(log unreadable: {e})"


class Server:
    """A server this job starts and stops: `with Server(argv, env, log_path, url, ...) as base_url:`.

    It runs in its own process group (start_new_session), so that stopping it stops every process it
    started (workers, engines); SIGTERM first, SIGKILL after `grace_s`. The stop runs on every way out of
    the block: an error, a signal turned into an exception (stages.job), the end of the measurement."""

    def __init__(self, argv: list[str], log_path: Path, base_url: str, health_path: str = "/health",
                 start_timeout_s: float = 600, env: dict | None = None, grace_s: float = 15,
                 requires: list[str] = ()):
        self.argv, self.log_path, self.base_url, self.requires = argv, Path(log_path), base_url, list(requires)
        self.health_url = base_url.rstrip("/") + health_path
        self.start_timeout_s, self.env, self.grace_s = start_timeout_s, env or {}, grace_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        why = missing_program(self.argv, self.requires)
        if why:
            raise ServerUnavailable(why)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log(f"starting server: {shlex.join(self.argv)} (log {self.log_path})")
        try:   # started inside the try: a signal at any point after Popen still stops it
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                             start_new_session=True, preexec_fn=_die_with_parent)
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_healthy(self) -> None:
        import httpx

        start = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(f"server exited with status {code} before answering {self.health_url}; "
                                       f"last lines of {self.log_path}:\n{tail(self.log_path)}")
            try:
                if httpx.get(self.health_url, timeout=5).status_code == 200:
                    log(f"server healthy after {time.monotonic() - start:.1f} s")
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > self.start_timeout_s:
                raise ServerStartError(f"server did not answer {self.health_url} within {self.start_timeout_s:g} s "
                                       f"(start_timeout_s); last lines of {self.log_path}:\n{tail(self.log_path)}")
            time.sleep(0.5)

    def pids(self) -> frozenset[int]:
        """The processes of the server's group now (its workers included): not "other" GPU processes."""
        if self.proc is None:
            return frozenset()
        found = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == self.proc.pid:
                        found.add(int(entry.name))
                except OSError:
                    pass
        return frozenset(found)

    def stop(self) -> None:
        """SIGTERM to the whole process group; SIGKILL to what is left of it after grace_s (the leader and
        the workers it started, which may still be freeing the GPU). The job's own SIGTERM/SIGINT/SIGHUP are
        held back meanwhile (a second one from SLURM or Snakemake must not cut the stop short); one that
        came is raised once the server is gone."""
        if self.proc is None:
            return
        held = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            self._signal_group(signal.SIGTERM)
            end = time.monotonic() + self.grace_s
            while time.monotonic() < end and (self.proc.poll() is None or self.pids()):
                time.sleep(0.2)
            if self.proc.poll() is None or self.pids():
                log(f"server group not gone {self.grace_s:g} s after SIGTERM: SIGKILL")
                self._signal_group(signal.SIGKILL)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    log(f"server leader {self.proc.pid} still there 10 s after SIGKILL")
            log(f"server stopped (status {self.proc.returncode})")
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc) -> None:
        self.stop()
