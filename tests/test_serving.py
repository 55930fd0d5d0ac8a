"""The serving scenario. Fast: load parsing and arrival times, server entries, a server's lifetime with a
stub HTTP server (tests/servers/stub_server.py, named so: start timeout with the log's tail, failure and
SIGTERM paths stop its whole process group), the client against its trivial endpoint, the metrics from
known timings (fake responses, named so). Slow: a real `transformers serve` through Snakemake."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, copy_downloads, workflow_config
from inference_optim_llm import results
from inference_optim_llm.client import Response, client_floor, payload
from inference_optim_llm.metrics import TokenCountError
from inference_optim_llm.scenarios.serving import Load, ServingMeasurement, arrival_times, check_response
from inference_optim_llm.servers import Server, ServerEntry, ServerStartError, free_port, missing_program
from inference_optim_llm.telemetry import unavailable

STUB = REPO / "tests" / "servers" / "stub_server.py"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def _group(pgid: int) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getpgid(int(p.name)) == pgid and not _gone(int(p.name)):
                    found.append(int(p.name))
            except OSError:
                pass
    return found


# -- loads and arrivals ----------------------------------------------------------------------------------

def test_load_names():
    assert Load.parse("c4") == Load("c4", concurrency=4)
    assert Load.parse("r2.5") == Load("r2.5", rate=2.5)
    for bad in ("c0", "x4", "r", "r-1", "c1.5", "r0", "4"):
        with pytest.raises(ValueError, match="load"):
            Load.parse(bad)


def test_arrivals_are_seeded_and_have_the_asked_rate():
    a, b = arrival_times(4000, 5.0, 1.0, seed=3), arrival_times(4000, 5.0, 1.0, seed=3)
    assert a == b and a[0] == 0 and a != arrival_times(4000, 5.0, 1.0, seed=4)
    gaps = [y - x for x, y in zip(a, a[1:])]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.2, rel=0.05)
    cv = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5 / mean
    assert cv == pytest.approx(1.0, rel=0.1)                         # exponential gaps: Poisson arrivals
    bursty = arrival_times(4000, 5.0, 0.25, seed=3)
    g2 = [y - x for x, y in zip(bursty, bursty[1:])]
    m2 = sum(g2) / len(g2)
    assert m2 == pytest.approx(0.2, rel=0.1)
    assert (sum((g - m2) ** 2 for g in g2) / len(g2)) ** 0.5 / m2 == pytest.approx(2.0, rel=0.15)  # 1/sqrt(k)


# -- server entries ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, message", [
    ({}, "exactly one of command"),
    ({"command": "x --port {port}", "base_url": "http://h:1"}, "exactly one of command"),
    ({"command": "vllm serve {model_path} --port {port}"}, r"command: unknown placeholder \{model_path\}"),
    ({"command": "vllm serve {model_dir}"}, r"command: has no \{port\}"),
    ({"command": "vllm serve 'unclosed --port {port}"}, "command: No closing quotation"),
    ({"base_url": "http://h:1", "request_model": "{nme}"}, r"request_model: unknown placeholder \{nme\}"),
])
def test_bad_server_entries_name_the_key(entry, message):
    with pytest.raises(ValueError, match=r"servers\.s\b.*" + message):
        ServerEntry.from_config("s", entry)


def test_missing_program_module_or_requirement_is_named():
    assert "program 'no-such-server' not found" in missing_program(["no-such-server", "--port", "1"])
    assert "module 'no_such_mod.server' is not installed" in missing_program(
        [sys.executable, "-m", "no_such_mod.server"])
    assert "no_such_requirement not installed" in missing_program([sys.executable], ["no_such_requirement"])
    assert missing_program([sys.executable, "-m", "http.server"], ["json"]) is None


# -- a server's lifetime (stub server) ---------------------------------------------------------------------

def test_start_timeout_error_carries_the_log_tail_and_stops_the_group(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    # the stub listens on another port than the one polled: never healthy
    server = Server([sys.executable, str(STUB), str(free_port()), "fail"], log, f"http://127.0.0.1:{port}",
                    start_timeout_s=2, grace_s=2)
    with pytest.raises(ServerStartError, match=r"(?s)within 2 s \(start_timeout_s\).*stub server on port"):
        with server:
            pass
    assert _group(server.proc.pid) == []


def test_a_server_that_exits_is_reported_with_its_status(tmp_path):
    server = Server([sys.executable, "-c", "print('cannot load model'); raise SystemExit(3)"], tmp_path / "l",
                    f"http://127.0.0.1:{free_port()}", start_timeout_s=30)
    with pytest.raises(ServerStartError, match=r"(?s)exited with status 3.*cannot load model"):
        with server:
            pass


class _MeasureSpec:
    """The fields scenarios.serving.measure() reads, for the stub-server tests."""
    max_new_tokens, requests, min_duration_s, warmup_requests, burstiness = 4, 2, 0, 1, 1.0
    request_timeout_s, telemetry_interval_s, seed, refuse_busy_gpu, stream_unit = 10, 0.05, 0, False, "token"

    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_a_failed_request_fails_the_point_and_stops_the_server(tmp_path):
    from inference_optim_llm.scenarios.serving import RequestFailed, measure

    port = free_port()
    server = Server([sys.executable, str(STUB), str(port), "fail"], tmp_path / "l", f"http://127.0.0.1:{port}",
                    start_timeout_s=30, grace_s=2)


    with pytest.raises(RequestFailed, match="warm-up: request for prompt 0 failed: HTTP 500: stub server"):
        with server as url:
            measure(url + "/v1/completions", lambda i: payload("m", "p", 4, "ignore_eos"), [1], _MeasureSpec(),
                    Load.parse("c1"), "no GPU here")
    assert _group(server.proc.pid) == []


def test_a_request_over_its_time_limit_fails_the_point(tmp_path):
    """request_timeout_s bounds the whole request (httpx's timeout is per read)."""
    from inference_optim_llm.scenarios.serving import RequestFailed, measure

    port = free_port()
    server = Server([sys.executable, str(STUB), str(port), "hang"], tmp_path / "l", f"http://127.0.0.1:{port}",
                    start_timeout_s=30, grace_s=2)


    t = time.monotonic()
    with pytest.raises(RequestFailed, match=r"no complete answer within 1 s \(request_timeout_s\)"):
        with server as url:
            measure(url + "/v1/completions", lambda i: payload("m", "p", 4, "ignore_eos"), [1],
                    _MeasureSpec(request_timeout_s=1), Load.parse("c1"), "no GPU here")
    assert time.monotonic() - t < 20 and _group(server.proc.pid) == []


def _serving_spec(tmp_path, port_cmd: str, **over) -> dict:
    model = tmp_path / "model"
    if not model.exists():
        from inference_optim_llm.models import download_model
        download_model("tiny", "synthetic:llama-tiny", model, download_dir=tmp_path / "dl")
    spec = {"model": "tiny", "model_dir": str(model), "server": "stub",
            "server_entry": {"command": port_cmd, "start_timeout_s": 30}, "prompt_set": "p",
            "prompt_spec": {"tokens": 4, "count": 2}, "load": "c1", "max_new_tokens": 4, "requests": 2,
            "warmup_requests": 1, "device": "cpu", "dtype": "float32"}
    return {**spec, **over}


def test_sigterm_during_a_serving_job_stops_the_server_and_writes_nothing(tmp_path):
    spec = _serving_spec(tmp_path, f"{sys.executable} {STUB} {{port}} hang")
    out = tmp_path / "r.json"
    job = subprocess.Popen([sys.executable, "-m", "inference_optim_llm", "run-serving", "--spec", json.dumps(spec),
                            "--output", str(out), "--server-log", str(tmp_path / "server.log")],
                           stderr=subprocess.PIPE, text=True)
    log = tmp_path / "server.log"
    for _ in range(300):   # until the stub has started (its first line) and the warm-up request hangs
        if log.exists() and "child" in log.read_text():
            break
        time.sleep(0.1)
    time.sleep(1.5)
    stub_pids = [int(w) for w in log.read_text().split() if w.isdigit()]
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    assert not out.exists()
    time.sleep(0.5)
    assert all(_gone(p) for p in stub_pids), stub_pids          # the stub's child, in its group, is gone too


def test_a_missing_program_is_recorded_unavailable(tmp_path):
    from inference_optim_llm.report import load_result

    spec = _serving_spec(tmp_path, "no-such-server --port {port}")
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "run-serving", "--spec", json.dumps(spec),
                           "--output", str(out), "--server-log", str(tmp_path / "s.log")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = load_result(out)
    assert r["status"] == "unavailable" and "program 'no-such-server' not found on PATH" in r["reason"]
    assert r["metrics"] is None and r["telemetry"]["gpu_memory_peak_mb"] is None


def test_an_external_server_is_measured_and_never_started_or_stopped(tmp_path):
    """servers.<name>.base_url: a server already running (here the stub, streaming N events): measured, its
    telemetry null with the reason, nothing started or stopped by the job."""
    from inference_optim_llm.report import load_result

    port = free_port()
    stub = subprocess.Popen([sys.executable, str(STUB), str(port), "echo"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        spec = _serving_spec(tmp_path, "unused --port {port}", load="r20", requests=5)
        spec["server_entry"] = {"base_url": f"http://127.0.0.1:{port}", "request_model": "m"}
        out = tmp_path / "r.json"
        proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "run-serving", "--spec", json.dumps(spec),
                               "--output", str(out), "--server-log", str(tmp_path / "s.log")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert stub.poll() is None                                    # still running: not the job's to stop
    finally:
        stub.terminate()
        stub.wait()
    r = load_result(out)
    assert r["status"] == "ok" and r["server"]["started_by_job"] is False and r["server"]["log"] is None
    assert r["metrics"]["requests"] == 5 and r["load"]["request_rate"] == 20
    assert all(q["output_tokens"] == q["streamed_tokens"] == 4 for q in r["requests"])
    assert "runs elsewhere" in r["telemetry"]["null_reasons"]["gpu_memory_peak_mb"]


# -- the client -------------------------------------------------------------------------------------------

def test_client_counts_token_events_against_its_trivial_endpoint():
    floor = client_floor(tokens=16, requests=5)
    assert floor["reason"] is None and 0 < floor["ttft_s"] < 1 and 0 <= floor["itl_s"] < 0.1


LONG = json.dumps({"choices": "x" * 500})


@pytest.mark.parametrize("data, what", [
    ("not json", "not JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    ('"text"', "a JSON str, not an object"),
    ('{"choices": {"text": "x"}}', "choices is a dict, not a list"),
    ('{"choices": [3]}', "a choice is a int, not an object"),
    ('{"choices": [{"text": 5}]}', "choice text is a int, not a string"),
    ('{"choices": [{"text": "x", "finish_reason": 1}]}', "choice finish_reason is a int, not a string"),
    ('{"choices": [], "usage": [8]}', "usage is a list, not an object"),
    ('{"choices": [], "usage": {"completion_tokens": "8"}}', "usage.completion_tokens is '8', not a count"),
    ('{"choices": [], "usage": {"completion_tokens": 8.0}}', "usage.completion_tokens is 8.0, not a count"),
    ('{"choices": [], "usage": {"prompt_tokens": -1}}', "usage.prompt_tokens is -1, not a count"),
    ('{"choices": [], "usage": {"prompt_tokens": true}}', "usage.prompt_tokens is True, not a count"),
    (LONG, "choices is a str, not a list"),
])
def test_a_malformed_event_is_named_and_shown_cut_short(data, what):
    """Pure logic (client.parse_event): every malformed event is a ProtocolError saying what is wrong and
    showing the event, at most 200 characters of it."""
    from inference_optim_llm.client import ProtocolError, parse_event

    with pytest.raises(ProtocolError) as e:
        parse_event(data)
    shown = data if len(data) <= 200 else data[:200] + "..."
    assert str(e.value) == f"malformed event from the server ({what}): {shown!r}"


def test_well_formed_events_pass():
    from inference_optim_llm.client import parse_event

    for data in ('{"choices": [{"index": 0, "text": "x", "finish_reason": null}], "usage": null}',
                 '{"choices": [], "usage": {"completion_tokens": 8, "prompt_tokens": 5, "total_tokens": 13}}',
                 '{"error": {"message": "overloaded"}}', '{"choices": null}'):
        assert isinstance(parse_event(data), dict)


def test_a_malformed_event_from_a_real_endpoint_fails_the_point_naming_the_request():
    """Through HTTP: a local endpoint (client.TrivialEndpoint, no model) whose second event is a JSON list."""
    from inference_optim_llm.client import TrivialEndpoint
    from inference_optim_llm.scenarios.serving import RequestFailed, measure

    class ListEvent(TrivialEndpoint):
        def events(self):
            events = list(super().events())
            return events[:1] + ["[1, 2]"] + events[1:]

    with ListEvent(4) as url:
        with pytest.raises(RequestFailed) as e:
            measure(url, lambda i: payload("m", "p", 4, "none"), [1], _MeasureSpec(), Load.parse("c1"), "no GPU here")
    assert str(e.value) == ("warm-up: request for prompt 0 failed: malformed event from the server (a JSON list, "
                            "not an object): '[1, 2]'")


def test_payload_holds_the_length_by_the_server_entry():
    assert payload("m", "p", 8, "ignore_eos")["min_tokens"] == 8
    assert "ignore_eos" not in payload("m", "p", 8, "generation_config")


# -- checks and metrics from known timings (fake responses) -----------------------------------------------

def _base():
    """The fixed part of a serving result that results.serving reads (target, thresholds)."""
    return {"target": {"server": "s", "load": "c2"},
            "settings": {"interference_cpu_cores": 0.5, "noisy_half_width_rel": 0.1}}


def _response(i, ttft, gap, n, sent=0.0, usage=None):
    return Response(i, sent, [ttft + k * gap for k in range(n)], completion_tokens=n if usage is None else usage,
                    prompt_tokens=5, finish_reason="length")


def test_a_token_count_other_than_asked_is_an_error():
    with pytest.raises(TokenCountError, match="usage.completion_tokens is 7, not the 8"):
        check_response(_response(0, 0.1, 0.01, 8, usage=7), 8, 5, "load c1")
    with pytest.raises(TokenCountError, match="streamed token events is 7, not the 8"):
        check_response(_response(0, 0.1, 0.01, 7, usage=8), 8, 5, "load c1")
    with pytest.raises(ValueError, match="the server counted 5 prompt tokens where the model's tokenizer counts 6"):
        check_response(_response(0, 0.1, 0.01, 8), 8, 6, "load c1")
    check_response(_response(0, 0.1, 0.01, 8), 8, 5, "load c1")
    # a server declared to stream chunks: usage must still say 8; 1 to 8 events
    check_response(_response(0, 0.1, 0.01, 3, usage=8), 8, 5, "load c1", "chunk")
    with pytest.raises(TokenCountError, match="usage.completion_tokens is 7"):
        check_response(_response(0, 0.1, 0.01, 3, usage=7), 8, 5, "load c1", "chunk")
    with pytest.raises(TokenCountError, match="say stream_unit: chunk"):
        check_response(_response(0, 0.1, 0.01, 3, usage=8), 8, 5, "load c1")


def test_a_chunked_stream_has_chunk_gaps_and_no_itl():
    fake = [_response(0, 0.10, 0.05, 3, sent=0.0, usage=5)]
    m = ServingMeasurement(Load("c1", concurrency=1), 5, [], fake, 0.2, None, unavailable("no GPU"))
    r, _ = results.serving(_base(), m, ["a"], [5], {}, "chunk")
    mt = r["metrics"]
    assert mt["itl_s"]["n"] == 0 and "several tokens to an event" in mt["itl_null_reason"]
    assert mt["chunk_gap_s"]["n"] == 2 and mt["tpot_s"]["median"] == pytest.approx(0.1 / 4)
    assert r["token_check"]["all_exact"] and r["token_check"]["checked_against"].startswith("usage (events")


def test_serving_metrics_from_known_timings():
    N = 5
    fake = [_response(0, 0.10, 0.02, N, sent=100.0), _response(1, 0.30, 0.04, N, sent=100.5)]
    m = ServingMeasurement(Load("c2", concurrency=2), N, [], fake, duration_s=0.5 + 0.30 + 4 * 0.04,
                           send_lag_max_s=None, telemetry=unavailable("no GPU"))
    r, records = results.serving(_base(), m, ["a", "b"], [5, 5], {"ttft_s": 0.2, "tpot_s": 0.03})
    mt = r["metrics"]
    assert mt["ttft_s"]["median"] == pytest.approx(0.2) and mt["ttft_s"]["max"] == pytest.approx(0.3)
    assert mt["tpot_s"]["min"] == pytest.approx(0.02) and mt["tpot_s"]["max"] == pytest.approx(0.04)
    assert mt["itl_s"]["n"] == 2 * (N - 1) and mt["itl_s"]["median"] == pytest.approx(0.03)
    assert mt["e2e_s"]["max"] == pytest.approx(0.46)
    assert mt["requests_per_s"] == pytest.approx(2 / 0.96) and mt["output_tokens_per_s"] == pytest.approx(10 / 0.96)
    assert mt["goodput"]["requests_meeting_slo"] == 1 and mt["goodput"]["fraction"] == 0.5
    assert [q["sent_s"] for q in r["requests"]] == [0.0, 0.5]
    assert r["token_check"]["all_exact"] and len(records) == 2
    assert r["telemetry"]["energy_per_token_j"] is None and r["telemetry"]["null_reasons"]["energy_per_token_j"]


# -- end to end: a real server through Snakemake ----------------------------------------------------------

def _snakemake(wd: Path, *args, check=True):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
                           "--cores", "2", *args], capture_output=True, text=True, timeout=1500)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_gguf):
    pytest.importorskip("fastapi", reason="the serving extra: pip install -e '.[serving]'")
    import yaml
    wd = tmp_path_factory.mktemp("serving")
    (wd / "config").mkdir()
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(workflow_config("serving")))
    copy_downloads(smollm2_gguf, wd)
    _snakemake(wd)
    return wd


@pytest.mark.slow
def test_a_real_server_under_three_loads(served):
    from inference_optim_llm.report import load_result

    paths = sorted((served / "results" / "serving").rglob("*.json"))
    assert [p.stem for p in paths] == ["c1", "c3", "r2"]
    for p in paths:
        r = load_result(p)
        assert r["status"] == "ok" and r["token_check"]["all_exact"]
        assert all(q["output_tokens"] == q["streamed_tokens"] == 8 for q in r["requests"])
        assert all(q["server_prompt_tokens"] == q["prompt_tokens"] == 16 for q in r["requests"])
        assert all(q["ttft_s"] <= q["e2e_s"] for q in r["requests"])
        assert len(r["requests"]) >= 6
        for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            s = r["metrics"][key]
            assert s["min"] <= s["median"] <= s["p90"] <= s["p99"] <= s["max"]
        assert r["telemetry"]["gpu_memory_peak_mb"] is None and r["telemetry"]["null_reasons"]["gpu_memory_peak_mb"]
        assert r["client_floor"]["ttft_s"] < r["metrics"]["ttft_s"]["median"]
        log = served / "results" / "logs" / "serving" / "smollm2-135m" / "transformers" / "tok16" / f"{p.stem}.server.log"
        assert log.stat().st_size > 0
        assert r["server"]["argv"][:2] == ["transformers", "serve"]
    assert load_result(paths[1])["load"]["concurrency"] == 3 and load_result(paths[2])["load"]["request_rate"] == 2
    out = subprocess.run(["pgrep", "-f", "transformers serve"], capture_output=True, text=True).stdout
    assert out.strip() == "", f"server processes left: {out}"


@pytest.mark.slow
def test_the_serving_report_matches_the_result_files(served):
    from inference_optim_llm.report import load_result

    md = (served / "results" / "benchmark_results.md").read_text()
    assert "# Serving under load" in md and "# Static batches and servers, same workload" in md
    assert "measured requests repeat a prompt" in md   # 4 prompts for 1 + 6 requests: said
    for p in sorted((served / "results" / "serving").rglob("*.json")):
        m = load_result(p)["metrics"]
        row = next(line for line in md.splitlines() if line.startswith(f"| transformers | {p.stem} "))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[2] == f"{m['requests_per_s']:.2f}" and cells[3] == f"{m['output_tokens_per_s']:.1f}"
        ttft_p50, ttft_hw = cells[4].split(" / ")[0].split(" ± ")   # p50 with its interval's half-width
        ci = m["ttft_s"]["ci95"]
        assert ttft_p50 == f"{m['ttft_s']['median'] * 1e3:.1f}" and ttft_hw == f"{(ci['high'] - ci['low']) / 2 * 1e3:.1f}"
        assert cells[5].split(" / ")[1] == f"{m['tpot_s']['p90'] * 1e3:.2f}"
    assert (served / "results" / "plots" / "serving__smollm2-135m__tok16.png").stat().st_size > 0


@pytest.mark.slow
def test_rebuilding_one_load_point_reruns_only_it_and_the_report(served):
    target = served / "results" / "serving" / "smollm2-135m" / "transformers" / "tok16" / "c1.json"
    others = {p: p.stat().st_mtime for p in (served / "results" / "serving").rglob("*.json") if p != target}
    target.unlink()
    proc = _snakemake(served, "-n")
    assert "run_serving" in proc.stdout and proc.stdout.count("rule run_serving") == 1
    _snakemake(served)
    assert target.exists() and all(p.stat().st_mtime == t for p, t in others.items())


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "config" / "examples").glob("*.yaml")))
def test_each_serving_example_plans_its_targets(example):
    proc = _snakemake(REPO, "-n", "--forceall", "serving", "--configfile", str(REPO / "config" / "examples" / example))
    assert "run_serving" in proc.stdout and "aggregate_serving" in proc.stdout


@pytest.mark.slow
def test_an_example_whose_server_is_not_installed_records_unavailable(tmp_path, smollm2_gguf):
    import yaml

    from inference_optim_llm.report import load_result

    config = yaml.safe_load((REPO / "config" / "examples" / "vllm.yaml").read_text())
    config["benchmark"] = {"device": "cpu", "max_new_tokens": 4}   # as on a machine without a GPU
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    copy_downloads(smollm2_gguf, tmp_path)
    _snakemake(tmp_path, "results/serving/model/vllm/in512/c1.json")
    r = load_result(tmp_path / "results" / "serving" / "model" / "vllm" / "in512" / "c1.json")
    assert r["status"] == "unavailable" and "'vllm' not found on PATH" in r["reason"]


def test_the_committed_h200_page_matches_its_result_files(tmp_path):
    """docs/results/nvidia-h200-serving.md: its report part, rendered again from the committed result files."""
    from inference_optim_llm.report import aggregate

    d = REPO / "docs" / "results" / "nvidia-h200-serving"
    files = sorted(p for p in (d / "runs").rglob("*.json")) + sorted(p for p in (d / "serving").rglob("*.json"))
    assert len(files) == 12
    aggregate(files, out_md=tmp_path / "r.md", out_csv=tmp_path / "s.csv", plots_dir=tmp_path / "plots",
              calibration=[d / "calibration.json"], title="x")
    page = (REPO / "docs" / "results" / "nvidia-h200-serving.md").read_text()
    tables = [line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| ")]
    assert len(tables) > 20 and all(line in page for line in tables)


def test_the_report_links_plots_kept_outside_its_directory(tmp_path):
    from inference_optim_llm.report import aggregate

    d = REPO / "docs" / "results" / "nvidia-h200-serving"
    aggregate(sorted((d / "serving").rglob("*.json")), out_md=tmp_path / "a" / "r.md", out_csv=tmp_path / "a" / "s.csv",
              plots_dir=tmp_path / "b" / "plots")
    assert "](../b/plots/serving__llama-1b__tok64.png)" in (tmp_path / "a" / "r.md").read_text()


# -- the stopping rule ------------------------------------------------------------------------------------

def test_serving_stopping_rule_on_known_distributions():
    """Pure logic: the minimum first, then the interval target, then the caps; off (0) stops at the minimum."""
    import numpy as np
    from types import SimpleNamespace
    from inference_optim_llm.scenarios.serving import stopping

    def spec(**kw):
        return SimpleNamespace(**{"min_duration_s": 0, "ci_target_rel": 0.02, "max_requests": 1000,
                                  "max_duration_s": 60, **kw})

    steady = list(np.random.default_rng(0).normal(0.010, 0.0001, 50))
    wide = list(np.random.default_rng(1).normal(0.010, 0.004, 50))
    assert stopping(7, 1.0, steady, spec(), minimum=8) is None                      # under the minimum
    assert stopping(8, 1.0, steady, spec(min_duration_s=5), minimum=8) is None      # under min_duration_s
    met = stopping(50, 1.0, steady, spec(), minimum=8)
    assert met["reason"] == "target met" and met["half_width_rel"] <= 0.02
    assert stopping(50, 1.0, wide, spec(), minimum=8) is None                       # too wide: go on
    assert stopping(1000, 1.0, wide, spec(), minimum=8)["reason"] == "request cap (max_requests)"
    assert stopping(50, 61.0, wide, spec(), minimum=8)["reason"] == "time cap (max_duration_s)"
    off = stopping(8, 0.5, wide, spec(ci_target_rel=0), minimum=8)
    assert off["reason"] == "requests done" and off["half_width_rel"] is None


@pytest.mark.slow
@pytest.mark.parametrize("load", ["c2", "r40"])
def test_a_load_point_runs_on_until_its_interval_target_or_cap(tmp_path, load):
    """Against the stub server (named so: it streams N events 2 ms apart, no model): a loose target stops at
    the minimum of requests; an unreachable one runs to max_requests; both record why."""
    from inference_optim_llm.report import load_result

    port = free_port()
    stub = subprocess.Popen([sys.executable, str(STUB), str(port), "echo"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        got = {}
        for name, target, cap in (("loose", 0.5, 1000), ("tight", 1e-9, 9)):
            spec = _serving_spec(tmp_path, "unused --port {port}", load=load, requests=4)
            spec.update(ci_target_rel=target, max_requests=cap, max_duration_s=60)
            spec["server_entry"] = {"base_url": f"http://127.0.0.1:{port}", "request_model": "m"}
            out = tmp_path / f"{name}.json"
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "run-serving", "--spec",
                                   json.dumps(spec), "--output", str(out), "--server-log", str(tmp_path / "s.log")],
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            got[name] = load_result(out)
            got[name + "_wall_s"] = time.perf_counter() - t
    finally:
        stub.terminate()
        stub.wait()
    loose, tight = got["loose"], got["tight"]
    assert loose["stopping"]["reason"] == "target met" and loose["metrics"]["requests"] == 4
    # once met, the point ends: an open loop's later scheduled sends (up to 60 s of them) do not keep the
    # measured phase (telemetry, CPU watch) open
    assert got["loose_wall_s"] < 40
    assert tight["stopping"]["reason"] == "request cap (max_requests)"
    assert tight["metrics"]["requests"] >= 9 and tight["stopping"]["half_width_rel"] > 1e-9
    assert tight["settings"]["ci_target_rel"] == 1e-9
