"""Every reader of result files (validate-result, aggregate, compare, the report, the page renderers) gets a
result through one check, and refuses a bad one with one line naming the file, the JSON path and what is
wrong. The bad files are real results of the run of record (docs/results/), damaged."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "docs/results/nvidia-h200/run-a/runs/llama-1b/compiled/tok64/bs1.json"
SERVING = REPO / "docs/results/nvidia-h200-serving/serving/llama-1b/transformers/tok64/c4.json"


def real(path: Path = STATIC) -> dict:
    return json.loads(path.read_text())


def put(data: dict, path: str, value) -> dict:
    """Set the value at a dotted path (`requests[0].ttft_s`) of a copy of data."""
    data = copy.deepcopy(data)
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


def write(tmp_path: Path, data: dict, name: str = "bs1.json", sub: str = "runs") -> Path:
    p = tmp_path / sub / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data))   # json.dumps writes NaN, Infinity and -Infinity as those tokens
    return p


def iol(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference_optim_llm", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def validate(capsys, *files) -> subprocess.CompletedProcess:
    """`validate-result FILES` through the CLI's own entry point, in this process (the many cases below
    would otherwise each start an interpreter); the reader tests further down run it as a subprocess."""
    from inference_optim_llm.cli import main
    capsys.readouterr()
    rc = main(["validate-result", *map(str, files)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess([], rc, out.out, out.err)


def one_line_error(proc) -> str:
    """The refusal users see: exit 2, one line on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def aggregate(tmp_path: Path, *files) -> subprocess.CompletedProcess:
    out = tmp_path / "report"
    return iol("aggregate", *files, "--out-md", out / "r.md", "--out-csv", out / "s.csv", "--plots-dir", out / "plots")


def written(tmp_path: Path) -> list[Path]:
    """The files aggregate wrote (it makes the output directories before it reads, to fail early)."""
    return [p for p in (tmp_path / "report").rglob("*") if p.is_file()]


# -- the classes of bad value, through validate-result ----------------------------------------------------

WRONG_TYPE = [
    (STATIC, "metrics.ttft_s.median", "fast"),
    (STATIC, "metrics.output_tokens_per_s.ci95.low", "1"),
    (STATIC, "telemetry.power_mean_w", "250 W"),
    (STATIC, "batches[2].output_tokens_per_s", None),
    (STATIC, "requests[0].e2e_s", [1.0]),
    (STATIC, "bandwidth.fraction_of_measured", True),
    (SERVING, "metrics.duration_s", "long"),
    (SERVING, "requests[1].ttft_s", "0.1"),
    (SERVING, "metrics.goodput.fraction", {"of": 1}),
]


@pytest.mark.parametrize("src,path,value", WRONG_TYPE, ids=[p for _, p, _ in WRONG_TYPE])
def test_a_non_number_where_a_number_belongs_is_refused_with_its_path(tmp_path, capsys, src, path, value):
    f = write(tmp_path, put(real(src), path, value))
    err = one_line_error(validate(capsys, f))
    assert err.startswith(f"error: {f}: does not match ") and f" at {path}: " in err and "is not of type" in err


NON_FINITE = [(STATIC, "metrics.ttft_s.median"), (STATIC, "metrics.tpot_s.ci95.high"),
              (STATIC, "telemetry.energy_j"), (STATIC, "batches[1].output_tokens_per_s"),
              (STATIC, "requests[5].ttft_s"), (STATIC, "bandwidth.achieved_gb_s"),
              (SERVING, "metrics.output_tokens_per_s"), (SERVING, "requests[0].tpot_s"),
              (SERVING, "telemetry.power_mean_w")]


@pytest.mark.parametrize("token,value", [("NaN", float("nan")), ("Infinity", float("inf")),
                                         ("-Infinity", float("-inf"))])
@pytest.mark.parametrize("src,path", NON_FINITE, ids=[p for _, p in NON_FINITE])
def test_nan_and_infinity_are_refused_with_their_path(tmp_path, capsys, src, path, token, value):
    f = write(tmp_path, put(real(src), path, value))
    assert token in f.read_text()
    err = one_line_error(validate(capsys, f))
    assert err == f"error: {f}: {path} is {token} (a result's numbers must be finite)\n"


def test_a_literal_too_large_for_a_float_is_refused(tmp_path, capsys):
    f = write(tmp_path, put(real(), "telemetry.energy_j", 1.0))
    f.write_text(f.read_text().replace('"energy_j": 1.0', '"energy_j": 1e999'))
    assert "telemetry.energy_j is Infinity" in one_line_error(validate(capsys, f))


NEGATIVE = [(STATIC, "metrics.output_tokens_per_s.median", -5.0), (STATIC, "metrics.e2e_s.p90", -0.1),
            (STATIC, "telemetry.gpu_memory_peak_mb", -1.0), (STATIC, "telemetry.energy_per_token_j", -0.5),
            (STATIC, "batches[0].e2e_s", -2.0), (STATIC, "requests[3].tps", -1.0),
            (STATIC, "requests[0].output_tokens", -200), (STATIC, "bandwidth.fraction_of_measured", -0.3),
            (SERVING, "metrics.requests_per_s", -1.0), (SERVING, "metrics.ttft_s.p99", -0.01),
            (SERVING, "requests[2].e2e_s", -3.0)]


@pytest.mark.parametrize("src,path,value", NEGATIVE, ids=[p for _, p, _ in NEGATIVE])
def test_a_negative_physical_value_is_refused_with_its_path(tmp_path, capsys, src, path, value):
    f = write(tmp_path, put(real(src), path, value))
    err = one_line_error(validate(capsys, f))
    assert f" at {path}: " in err and "less than" in err and str(f) in err


def test_an_ok_cell_without_its_headline_figure_is_refused(tmp_path, capsys):
    """The report divides by it and ranks by it: an ok static cell must have output tok/s."""
    f = write(tmp_path, put(real(), "metrics.output_tokens_per_s.median", None))
    assert " at metrics.output_tokens_per_s.median: None is not of type 'number'" in one_line_error(validate(capsys, f))


def test_validate_result_names_every_bad_file_and_checks_the_good_ones(tmp_path):
    good = write(tmp_path, real(), "good.json")
    bad1 = write(tmp_path, put(real(), "metrics.ttft_s.median", float("inf")), "bad1.json")
    bad2 = write(tmp_path, put(real(), "telemetry.power_mean_w", "x"), "bad2.json")
    proc = iol("validate-result", bad1, good, bad2)
    assert proc.returncode == 2 and proc.stdout == f"{good}: valid\n" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and str(bad1) in lines[0] and str(bad2) in lines[1]


def test_every_committed_result_of_record_is_valid():
    files = [REPO / p for p in subprocess.run(["git", "ls-files", "docs/results"], cwd=REPO, capture_output=True,
                                              text=True, check=True).stdout.split() if p.endswith(".json")]
    results = [p for p in files if "schema_version" in json.loads(p.read_text())]
    assert len(results) >= 50
    proc = iol("validate-result", *results)
    assert proc.returncode == 0, proc.stderr


# -- each reader names the file and the path --------------------------------------------------------------

def test_aggregate_refuses_a_bad_value_naming_file_and_path_and_writes_nothing(tmp_path):
    good = write(tmp_path, real(REPO / "docs/results/nvidia-h200/run-a/runs/llama-1b/baseline/tok64/bs1.json"),
                 "base.json")
    bad = write(tmp_path, put(real(), "metrics.ttft_s.median", "fast"))
    err = one_line_error(aggregate(tmp_path, good, bad))
    assert str(bad) in err and "metrics.ttft_s.median" in err and "'fast' is not of type" in err
    assert not written(tmp_path)


def test_aggregate_names_every_bad_file(tmp_path):
    bad1 = write(tmp_path, put(real(), "batches[0].output_tokens_per_s", float("nan")), "a.json")
    bad2 = tmp_path / "runs" / "b.json"
    bad2.write_text(STATIC.read_text()[:500])   # truncated
    err = one_line_error(aggregate(tmp_path, bad1, bad2))
    assert err.startswith("error: 2 result files cannot be used: ")
    assert f"{bad1}: batches[0].output_tokens_per_s is NaN" in err and f"{bad2}: not a readable JSON result" in err


def test_aggregate_refuses_two_files_for_one_cell_naming_both(tmp_path):
    a = write(tmp_path, real(), "bs1.json")
    b = write(tmp_path, real(), "bs1-copy.json")
    err = one_line_error(aggregate(tmp_path, a, b))
    assert err == (f"error: {a} and {b} are both results of cell llama-1b / compiled / tok64 / 1: "
                   "keep one of them\n")
    assert not written(tmp_path)


def test_a_null_figure_shows_n_a_and_nothing_shows_nan_or_inf(tmp_path):
    """A figure the result could not measure (null, its reason in null_reasons) is n/a in the table."""
    r = put(real(), "telemetry.power_mean_w", None)
    r["telemetry"]["null_reasons"]["power_mean_w"] = "not readable on this card"
    f = write(tmp_path, r)
    assert aggregate(tmp_path, f).returncode == 0
    md = (tmp_path / "report" / "r.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| compiled "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(line for line in md.splitlines() if line.startswith("| engine "))
    assert cells[[c.strip() for c in header.strip("|").split("|")].index("power W")] == "n/a"
    assert "nan" not in md.lower().replace("nanosecond", "") and "inf " not in md


def _compare_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        write(run, real(), "bs1.json", "runs/llama-1b/compiled/tok64")
        write(run, real(STATIC.with_name("bs16.json")), "bs16.json", "runs/llama-1b/compiled/tok64")
    return a, b


def test_compare_refuses_a_corrupt_file_instead_of_dropping_its_cell(tmp_path):
    a, b = _compare_runs(tmp_path)
    bad = b / "runs/llama-1b/compiled/tok64/bs16.json"
    bad.write_text(bad.read_text()[:300])   # truncated
    err = one_line_error(iol("compare", a, b))
    assert f"{bad}: not a readable JSON result" in err


def test_compare_names_every_invalid_file(tmp_path):
    a, b = _compare_runs(tmp_path)
    bad1, bad2 = (b / "runs/llama-1b/compiled/tok64" / n for n in ("bs1.json", "bs16.json"))
    bad1.write_text(json.dumps(put(json.loads(bad1.read_text()), "requests[0].ttft_s", float("-inf"))))
    bad2.write_text(json.dumps(put(json.loads(bad2.read_text()), "batches[0].output_tokens_per_s", -5.0)))
    err = one_line_error(iol("compare", a, b))
    assert f"{bad1}: requests[0].ttft_s is -Infinity" in err
    assert f"{bad2}: does not match" in err and "batches[0].output_tokens_per_s: -5.0 is less than" in err


def test_compare_of_a_directory_that_does_not_exist_says_so(tmp_path):
    a, _ = _compare_runs(tmp_path)
    assert one_line_error(iol("compare", a, tmp_path / "nope")) == f"error: {tmp_path / 'nope'}: no such directory\n"
    (tmp_path / "file").write_text("")
    assert one_line_error(iol("compare", tmp_path / "file", a)) == f"error: {tmp_path / 'file'}: not a directory\n"


def test_compare_leaves_out_a_file_that_is_not_a_result_and_says_so(tmp_path):
    a, b = _compare_runs(tmp_path)
    cal = b / "calibration.json"
    cal.write_text((REPO / "docs/results/nvidia-h200/calibration.json").read_text())
    proc = iol("compare", a, b)
    assert proc.returncode == 0, proc.stderr
    assert f"Left out of `{b}`, not result files (no `schema_version`): calibration.json." in proc.stdout
    assert "In one run only" not in proc.stdout and "2 cells in common" in proc.stdout


def test_compare_refuses_two_files_for_one_cell(tmp_path):
    a, b = _compare_runs(tmp_path)
    write(b, real(), "bs1-again.json", "copy")
    err = one_line_error(iol("compare", a, b))
    assert "are both results of cell llama-1b / compiled / tok64 / 1" in err and "bs1-again.json" in err


def test_a_page_renderer_refuses_a_bad_file_naming_file_and_path(tmp_path):
    """benchmarks/card_page.py reads the batch-1 results of a run directory through the same check."""
    d = tmp_path / "run"
    bad = write(d, put(real(), "metrics.tpot_s.median", float("nan")), "bs1.json", "runs/llama-1b/compiled/tok64")
    report = d / "benchmark_results.md"
    report.write_text("# report\n")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/card_page.py"), "--results", d, "--report", report,
                           "--command", "x", "--out", tmp_path / "page.md"], cwd=REPO, capture_output=True, text=True)
    assert one_line_error(proc) == f"error: {bad}: metrics.tpot_s.median is NaN (a result's numbers must be finite)\n"
    assert not (tmp_path / "page.md").exists()


def test_the_trust_page_renderer_refuses_a_bad_file(tmp_path):
    d = tmp_path / "card"
    for run in ("run-a", "run-b"):
        write(d / run, real(), "bs1.json", "runs/llama-1b/compiled/tok64")
    bad = d / "run-b/runs/llama-1b/compiled/tok64/bs1.json"
    bad.write_text(json.dumps(put(real(), "telemetry.idle_power_w", "idle")))
    (d / "notes.md").write_text("notes\n")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/trust_page.py"), d], cwd=REPO,
                          capture_output=True, text=True)
    err = one_line_error(proc)
    assert str(bad) in err and "telemetry.idle_power_w: 'idle' is not of type" in err


# -- the writer ---------------------------------------------------------------------------------------------

def test_a_measured_result_with_nan_is_never_written_as_the_result_but_kept(tmp_path):
    """results.write checks through the same door: the output is not written, the measurement is kept
    beside it as NAME.invalid.json (never lost)."""
    from inference_optim_llm.report import ResultFileError
    from inference_optim_llm.results import write as write_result

    out = tmp_path / "bs1.json"
    with pytest.raises(ResultFileError, match=r"metrics\.e2e_s\.mean is NaN .*kept as .*bs1\.invalid\.json"):
        write_result(put(real(), "metrics.e2e_s.mean", float("nan")), [], str(out), None)
    assert not out.exists()
    assert "NaN" in (tmp_path / "bs1.invalid.json").read_text()


def test_the_serving_page_renderer_refuses_a_bad_serving_result(tmp_path):
    """benchmarks/serving_page.py renders through report.aggregate, which reads through the same check."""
    d = tmp_path / "card-serving"
    bad = write(d, put(real(SERVING), "metrics.tpot_s.median", float("inf")), "c4.json", "serving/llama-1b/x/tok64")
    (d / "notes.md").write_text("notes\n")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/serving_page.py"), d], cwd=REPO,
                          capture_output=True, text=True)
    assert one_line_error(proc) == f"error: {bad}: metrics.tpot_s.median is Infinity (a result's numbers must be finite)\n"
    assert not (tmp_path / "card-serving.md").exists()


def test_a_key_written_twice_in_a_result_is_refused(tmp_path, capsys):
    f = write(tmp_path, real())
    f.write_text(f.read_text().replace('"status": "ok",', '"status": "ok", "status": "oom",', 1))
    err = one_line_error(validate(capsys, f))
    assert err == f"error: {f}: duplicate key 'status'\n"
