"""Servers: an OpenAI-compatible inference server as a config entry (a command line, or the base_url of one
already running), and its lifetime when the job starts it: a free port, its own process group, a start
timeout whose error carries the tail of its log, SIGTERM then SIGKILL on every way out.

A config entry (`servers.<name>`):
  command          the server's command line, a list (or a string, split like a shell would, never run by
                   one) with placeholders {model_dir} {model} {port} {host} {device} {dtype} {api_key}; a
                   literal brace is doubled ({{ and }}, as in a JSON flag)
  base_url         instead of command: a server already running elsewhere (nothing started or stopped);
                   credentials in it (user:password@) are refused: use api_key_env
  api_key_env      the name of an environment variable, read where the job runs, that holds the server's
                   API key: every request (and the health check) carries `Authorization: Bearer <key>`,
                   and {api_key} in command is the key. Only the variable's name travels in the spec
                   (Snakemake's params and metadata); results say `from env NAME`, logs show ***
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
  env              extra environment variables for the server process (taken as written: no placeholders);
                   a name that looks secret-bearing (key, token, secret, password) is refused: the server
                   inherits the job's environment, so export such a variable there instead
  stream_unit      token (default): the server streams one event per token, and the client checks that
                   and reports per-token ITL; chunk: it streams text as it becomes printable, several
                   tokens to an event (transformers serve 5.17 with continuous batching): usage must still
                   say N, the events are 1 to N, and the gaps are reported as chunk gaps, not ITL
  requires         Python modules the server needs in the job's environment (transformers serve: fastapi,
                   uvicorn): one that is missing records `unavailable`, as a missing program does
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from inference_optim_llm.hostfacts import log

PLACEHOLDERS = {"model_dir", "model", "port", "host", "device", "dtype", "api_key"}
LENGTH_CONTROLS = ("ignore_eos", "generation_config")
HIDDEN = "***"
# A flag or variable name that carries a secret: one of these words in it, the words split at - and _
# (--api-key, --api_key, --hf-token, --password, HF_TOKEN, OPENAI_API_KEY). Whole words, so that
# --tokenizer and --max-num-batched-tokens are not taken for secrets.
SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}


def secret_name(name: str) -> bool:
    return bool(SECRET_WORDS & set(re.split(r"[-_]+", name.lstrip("-").lower())))


def _secret_flags(argv: list[str]):
    """(index of the value, flag) for each value of a secret-bearing flag: `--flag VALUE` and `--flag=VALUE`."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        flag, eq, _ = arg.partition("=")
        if secret_name(flag):
            if eq:
                yield i, flag
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                yield i + 1, flag


def redact_argv(argv: list[str], secrets=()) -> list[str]:
    """argv as it may be recorded or logged: values of secret-bearing flags and every known secret shown
    as ***."""
    shown = [redact(a, secrets) for a in argv]
    for i, _ in _secret_flags(argv):
        flag, eq, _ = shown[i].partition("=")
        shown[i] = f"{flag}={HIDDEN}" if eq and flag.startswith("-") else HIDDEN
    return shown


def redact(text: str, secrets=()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    return text


def _check_no_secrets(where: str, entry: dict, command: list[str] | None) -> None:
    """A secret written in the config would be copied into Snakemake's params and metadata and every
    result: refuse it, naming the key, and say how to pass it instead."""
    for i, flag in _secret_flags(command or []):
        value = command[i].partition("=")[2] if command[i].startswith("-") else command[i]
        if value != "{api_key}":
            raise ValueError(f"{where}.command: {flag} is given a literal value, which would be written into "
                             f"results, logs and Snakemake's metadata; for the server's API key, name an "
                             f"environment variable holding it in {where}.api_key_env and write {flag} {{api_key}}; "
                             "for another secret, export the variable the server reads (HF_TOKEN) where the job runs")
    for name in entry.get("env") or {}:
        if secret_name(name):
            raise ValueError(f"{where}.env.{name}: looks like a secret, which would be written into Snakemake's "
                             f"metadata; leave it out of the config: the server inherits the job's environment, "
                             f"so export {name} where the job runs (and name the API key's variable in "
                             f"{where}.api_key_env)")
    base_url = entry.get("base_url")
    if base_url:
        parts = urlsplit(base_url)
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{where}.base_url: holds credentials (user:password@), which would be written into "
                             f"every result; remove them, put the key in an environment variable and name it in "
                             f"{where}.api_key_env (sent as Authorization: Bearer)")
        if parts.query or parts.fragment:
            raise ValueError(f"{where}.base_url: has a query or fragment ({base_url.split('?')[0]}?...); give the "
                             f"server's root, e.g. http://host:8000, and a key through {where}.api_key_env")
    uses_key = "{api_key}" in " ".join(command or [])
    if uses_key and not entry.get("api_key_env"):
        raise ValueError(f"{where}.command: uses {{api_key}} but {where}.api_key_env (the environment variable "
                         "holding the key) is not set")
    if "{api_key}" in entry.get("request_model", ""):
        raise ValueError(f"{where}.request_model: {{api_key}} is only for command (the key would be sent in "
                         "every request body and recorded)")


class ServerUnavailable(RuntimeError):
    """The server's program is not installed here: the target records status `unavailable`."""


class ServerStartError(RuntimeError):
    """The server did not become healthy in time, or exited; the message carries the tail of its log."""


class ServerAuthError(ValueError):
    """The server refused the job's credentials, or the key's variable is not set: a configuration error,
    reported in one line that names the server."""


class Unauthorized(Exception):
    """A server answered 401 or 403 (to the health check or a request); the runner names the server."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def api_key(entry: "ServerEntry") -> str | None:
    """The key from the environment variable that servers.<name>.api_key_env names (None without one)."""
    if not entry.api_key_env:
        return None
    key = os.environ.get(entry.api_key_env, "")
    if not key:
        raise ServerAuthError(f"servers.{entry.name}.api_key_env: environment variable {entry.api_key_env} is "
                              "not set (or empty) where the job runs; it should hold the server's API key")
    return key


def auth_error(entry: "ServerEntry", status: int) -> ServerAuthError:
    if entry.api_key_env:
        return ServerAuthError(f"servers.{entry.name} rejected the API key (HTTP {status}) from environment "
                               f"variable {entry.api_key_env}: check that it holds the key the server expects")
    return ServerAuthError(f"servers.{entry.name} answered HTTP {status}: it wants an API key; put the key in an "
                           f"environment variable and name it in servers.{entry.name}.api_key_env")


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
    api_key_env: str | None = None

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
        _check_no_secrets(where, entry, command)
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


def tail(path: Path, lines: int = 30, secrets=()) -> str:
    try:
        return redact("\n".join(path.read_text(errors="replace").splitlines()[-lines:]), secrets)
    except OSError as e:
        return f"(log unreadable: {e})"


def _copy_redacted(source, path: Path, secrets) -> None:
    """The server's output into its log, line by line, each secret replaced by *** (a server may print its
    arguments: vLLM does, its --api-key too)."""
    hidden = [s.encode() for s in secrets if s]
    with source, open(path, "ab") as out:
        for line in source:
            for secret in hidden:
                line = line.replace(secret, HIDDEN.encode())
            out.write(line)
            out.flush()


class Server:
    """A server this job starts and stops: `with Server(argv, env, log_path, url, ...) as base_url:`.

    It runs in its own process group (start_new_session), so that stopping it stops every process it
    started (workers, engines); SIGTERM first, SIGKILL after `grace_s`. The stop runs on every way out of
    the block: an error, a signal turned into an exception (stages.job), the end of the measurement."""

    def __init__(self, argv: list[str], log_path: Path, base_url: str, health_path: str = "/health",
                 start_timeout_s: float = 600, env: dict | None = None, grace_s: float = 15,
                 requires: list[str] = (), secrets: list[str] = (), headers: dict | None = None):
        """secrets: values never to be written in clear (the API key): the log line that starts the server,
        the server's own log and the tail in an error show *** instead. headers: sent with the health check
        (the API key's Authorization header)."""
        self.argv, self.log_path, self.base_url, self.requires = argv, Path(log_path), base_url, list(requires)
        self.health_url = base_url.rstrip("/") + health_path
        self.start_timeout_s, self.env, self.grace_s = start_timeout_s, env or {}, grace_s
        self.secrets, self.headers = [s for s in secrets if s], headers or {}
        self.proc: subprocess.Popen | None = None
        self.copier: threading.Thread | None = None

    def __enter__(self) -> str:
        why = missing_program(self.argv, self.requires)
        if why:
            raise ServerUnavailable(why)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log(f"starting server: {shlex.join(redact_argv(self.argv, self.secrets))} (log {self.log_path})")
        try:   # started inside the try: a signal at any point after Popen still stops it
            with open(self.log_path, "ab") as out:
                # with a secret to hide, the output goes through this process (a thread that redacts it)
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE if self.secrets else out,
                                             stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                             start_new_session=True, preexec_fn=_die_with_parent)
            if self.secrets:
                self.copier = threading.Thread(target=_copy_redacted, daemon=True,
                                               args=(self.proc.stdout, self.log_path, self.secrets))
                self.copier.start()
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
                self._drain()
                raise ServerStartError(f"server exited with status {code} before answering {self.health_url}; "
                                       f"last lines of {self.log_path}:\n{self._tail()}")
            try:
                status = httpx.get(self.health_url, headers=self.headers, timeout=5).status_code
                if status == 200:
                    log(f"server healthy after {time.monotonic() - start:.1f} s")
                    return
                if status in (401, 403):
                    raise Unauthorized(status)
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > self.start_timeout_s:
                raise ServerStartError(f"server did not answer {self.health_url} within {self.start_timeout_s:g} s "
                                       f"(start_timeout_s); last lines of {self.log_path}:\n{self._tail()}")
            time.sleep(0.5)

    def _tail(self) -> str:
        return tail(self.log_path, secrets=self.secrets)

    def _drain(self, timeout_s: float = 5) -> None:
        """Let the redacting copy write what the server printed before it exited (a child of the server
        may hold the pipe open longer: not waited for)."""
        if self.copier is not None:
            self.copier.join(timeout_s)

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
            self._drain()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc) -> None:
        self.stop()
