"""Result files -> frame, findings, summary.csv and benchmark_results.md, from hand-made results."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from inference_optim_llm.report import ResultFileError, aggregate, build_frame, findings, load_result

MODEL = "smollm2-135m"
PS = "short"
N_NEW = 32


def summary(values: list[float]) -> dict:
    """A hand-built summary block of three values (synthetic results only): median is the middle value,
    p90/p99 interpolate linearly between the upper two (positions 1.8 and 1.98)."""
    lo, mid, hi = sorted(values)
    mean = (lo + mid + hi) / 3
    std = (((lo - mean) ** 2 + (mid - mean) ** 2 + (hi - mean) ** 2) / 2) ** 0.5
    return {"median": mid, "p90": mid + 0.8 * (hi - mid), "p99": mid + 0.98 * (hi - mid), "mean": mean,
            "std": std, "min": lo, "max": hi, "n": 3}


def provenance(time_utc: str = "2025-01-01T12:00:00+00:00") -> dict:
    return {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "driver": "550.54", "cuda": "12.4",
            "compute_capability": "9.0", "cpu": "Test CPU", "host": "node01", "python": "3.11.9",
            "torch": "2.5.0", "transformers": "4.57.0", "project": "0.2.0", "git_commit": "abc123",
            "config_hash": "0123456789abcdef", "time_utc": time_utc, "slurm": None}


def make_result(engine: str, batch: int, tps: float | None, *, model: str = MODEL, prompt_set: str = PS,
                status: str = "ok", reason: str | None = None, ttft_s: float = 0.05, tpot_s: float = 0.02,
                e2e_s: float = 0.7, gpu_memory_peak_mb: float | None = 2345.0, power_mean_w: float | None = 250.0,
                energy_per_token_j: float | None = 0.125, exact_match_rate: float | None = None,
                first_divergence: int | None = None) -> dict:
    """A result dict laid out as runner.run writes it (inference_optim_llm/schemas/result.schema.json): status ok with metric
    summaries whose medians are tps / ttft_s / tpot_s / e2e_s, or a not-run status with its reason."""
    settings = {"max_new_tokens": N_NEW, "repetitions": 3, "warmup": 1, "seed": 0, "device": "cuda",
                "dtype": "bfloat16", "telemetry_interval_s": 0.05, "record_token_times": True,
                "engine_options": {}, "prompt_tokens_mean": 12.5, "prompts": 16}
    result = {"schema_version": 1, "status": status, "reason": reason,
              "target": {"model": model, "engine": engine, "prompt_set": prompt_set, "batch_size": batch},
              "settings": settings, "model": {"model_type": "llama"}, "provenance": provenance()}
    fields = ("gpu_memory_peak_mb", "gpu_memory_start_mb", "power_mean_w", "power_max_w", "energy_j",
              "utilization_mean_pct", "sm_clock_mean_mhz", "temperature_max_c")
    if status != "ok":
        why = f"not measured: {status}"
        result.update(metrics=None, requests=[], batches=[],
                      telemetry={**{k: None for k in fields}, "energy_source": None, "samples": 0,
                                 "interval_s": None, "duration_s": None, "gpu_busy_at_start": None,
                                 "null_reasons": {k: why for k in fields}})
        return result
    # three timed batches around the wanted median; per-request figures likewise
    tps_values = [tps * 0.9, tps, tps * 1.05]
    batches = [{"repetition": r, "batch": 0, "e2e_s": N_NEW * batch / v, "output_tokens": N_NEW * batch,
                "output_tokens_per_s": v, "requests_per_s": v / N_NEW}
               for r, v in enumerate(tps_values)]
    ttfts, tpots, e2es = [ttft_s * 0.8, ttft_s, ttft_s * 1.5], [tpot_s * 0.9, tpot_s, tpot_s * 1.2], \
        [e2e_s * 0.9, e2e_s, e2e_s * 1.3]
    requests = [{"repetition": i, "batch": 0, "prompt_index": 0, "prompt_tokens": 12, "ttft_s": a, "tpot_s": b,
                 "e2e_s": c, "output_tokens": N_NEW, "tps": N_NEW / c} for i, (a, b, c) in enumerate(zip(ttfts, tpots, e2es))]
    energy_j = energy_per_token_j * N_NEW * batch * 3 if energy_per_token_j is not None else None
    tel = {"gpu_memory_peak_mb": gpu_memory_peak_mb, "gpu_memory_start_mb": 1000.0, "power_mean_w": power_mean_w,
           "power_max_w": power_mean_w * 1.2 if power_mean_w is not None else None, "energy_j": energy_j,
           "utilization_mean_pct": 90.0, "sm_clock_mean_mhz": 1980.0, "temperature_max_c": 60.0,
           "energy_source": "counter" if energy_j is not None else None, "samples": 40, "interval_s": 0.05,
           "duration_s": 2.0, "gpu_busy_at_start": None, "energy_per_token_j": energy_per_token_j,
           "torch_peak_allocated_mb": 700.0, "null_reasons": {}}
    for k in ("gpu_memory_peak_mb", "power_mean_w", "power_max_w", "energy_j", "energy_per_token_j"):
        if tel[k] is None:
            tel["null_reasons"][k] = "not readable in this test"
    result.update(
        load_s=1.5,
        token_check={"requested": N_NEW, "generated_min": N_NEW, "generated_max": N_NEW, "all_exact": True},
        metrics={"ttft_s": summary(ttfts), "tpot_s": summary(tpots), "e2e_s": summary(e2es),
                 "request_tokens_per_s": summary([r["tps"] for r in requests]),
                 "output_tokens_per_s": summary(tps_values),
                 "requests_per_s": summary([b["requests_per_s"] for b in batches])},
        telemetry=tel, requests=requests, batches=batches)
    if exact_match_rate is not None:
        result["agreement"] = {"reference_engine": "baseline", "reference_batch_size": 1,
                               "exact_match_rate": exact_match_rate, "first_divergence": first_divergence,
                               "first_divergence_per_prompt": []}
    return result


UNAVAILABLE_REASON = "TensorRT-LLM is not installed (import tensorrt_llm failed)"


def standard_results() -> list[dict]:
    """baseline at batch 1/4/8 (best: 4), compiled at 1/4 (1.5x baseline), trtllm unavailable."""
    return [
        make_result("baseline", 1, 50.0, exact_match_rate=1.0),
        make_result("baseline", 4, 180.0, ttft_s=0.08, tpot_s=0.025, e2e_s=0.9),
        make_result("baseline", 8, 160.0, ttft_s=0.12, tpot_s=0.05, e2e_s=1.7),
        make_result("compiled", 1, 75.0, ttft_s=0.04, tpot_s=0.013, e2e_s=0.45),
        make_result("compiled", 4, 270.0, ttft_s=0.06, tpot_s=0.015, e2e_s=0.55, exact_match_rate=0.75,
                    first_divergence=37),
        make_result("trtllm", 1, None, status="unavailable", reason=UNAVAILABLE_REASON),
    ]


def write_results(tmp_path: Path, results: list[dict]) -> list[Path]:
    d = tmp_path / "results"
    d.mkdir(exist_ok=True)
    paths = []
    for r in results:
        t = r["target"]
        p = d / f"{t['model']}__{t['engine']}__{t['prompt_set']}__bs{t['batch_size']}.json"
        p.write_text(json.dumps(r, indent=2))
        paths.append(p)
    return paths


def frame(tmp_path, results):
    paths = write_results(tmp_path, results)
    return build_frame([(p, load_result(p)) for p in paths])


def cell(df, engine, batch, column):
    sel = df[(df.engine == engine) & (df.batch_size == batch)]
    assert len(sel) == 1
    return sel.iloc[0][column]


# -- load_result --------------------------------------------------------------------------------------

def test_make_result_files_are_valid(tmp_path):
    for p, r in zip(write_results(tmp_path, standard_results()), standard_results()):
        assert load_result(p) == r


def test_load_result_corrupt_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(make_result("baseline", 1, 50.0))[:-40])   # truncated mid-write
    with pytest.raises(ResultFileError) as e:
        load_result(path)
    assert str(path) in str(e.value)


def test_load_result_non_utf8_names_the_file(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00{not json")
    with pytest.raises(ResultFileError) as e:
        load_result(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("foreign", [
    {"engine": "baseline", "batch_size": 1, "tokens": [[1, 2, 3]]},   # a reference-tokens file
    [1, 2, 3],
    "a string",
    None,
])
def test_load_result_foreign_json_names_the_file(tmp_path, foreign):
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(foreign))
    with pytest.raises(ResultFileError) as e:
        load_result(path)
    assert str(path) in str(e.value)
    assert "schema" in str(e.value)


def test_load_result_ok_without_metrics_is_rejected(tmp_path):
    r = make_result("baseline", 1, 50.0)
    r["metrics"] = None
    path = tmp_path / "r.json"
    path.write_text(json.dumps(r))
    with pytest.raises(ResultFileError, match="metrics"):
        load_result(path)


def test_load_result_not_run_without_reason_is_rejected(tmp_path):
    r = make_result("trtllm", 1, None, status="unavailable", reason=None)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(r))
    with pytest.raises(ResultFileError) as e:
        load_result(path)
    assert str(path) in str(e.value)


def test_load_result_missing_file_is_a_result_file_error(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(ResultFileError) as e:
        load_result(path)
    assert str(path) in str(e.value)


# -- build_frame --------------------------------------------------------------------------------------

def test_build_frame_speedup_vs_baseline_at_same_batch(tmp_path):
    df = frame(tmp_path, standard_results())
    assert len(df) == 6
    assert cell(df, "compiled", 1, "speedup_vs_baseline") == pytest.approx(75.0 / 50.0)
    assert cell(df, "compiled", 4, "speedup_vs_baseline") == pytest.approx(270.0 / 180.0)
    assert cell(df, "baseline", 4, "speedup_vs_baseline") == pytest.approx(1.0)
    assert cell(df, "baseline", 8, "output_tokens_per_s") == pytest.approx(160.0)
    assert cell(df, "baseline", 4, "ttft_ms_p50") == pytest.approx(80.0)
    assert cell(df, "baseline", 4, "tpot_ms_p50") == pytest.approx(25.0)
    assert cell(df, "baseline", 4, "e2e_s_p50") == pytest.approx(0.9)


def test_build_frame_not_run_cells_have_no_figures(tmp_path):
    df = frame(tmp_path, standard_results())
    sel = df[df.engine == "trtllm"].iloc[0]
    assert sel.status == "unavailable"
    assert sel.reason == UNAVAILABLE_REASON
    for col in ("output_tokens_per_s", "speedup_vs_baseline", "ttft_ms_p50", "gpu_memory_peak_mb"):
        v = sel[col]
        assert v is None or v != v, f"{col} = {v!r} for a target that was not run"   # None or NaN, never 0


def test_build_frame_speedup_only_against_same_model_and_prompt_set(tmp_path):
    results = [make_result("baseline", 4, 100.0), make_result("compiled", 4, 300.0),
               make_result("baseline", 4, 10.0, prompt_set="long"), make_result("compiled", 4, 40.0, prompt_set="long"),
               make_result("compiled", 4, 999.0, model="other-model")]
    df = frame(tmp_path, results)
    short = df[(df.engine == "compiled") & (df.prompt_set == PS) & (df.model == MODEL)].iloc[0]
    long_ = df[(df.engine == "compiled") & (df.prompt_set == "long")].iloc[0]
    other = df[df.model == "other-model"].iloc[0]
    assert short.speedup_vs_baseline == pytest.approx(3.0)
    assert long_.speedup_vs_baseline == pytest.approx(4.0)
    assert other.speedup_vs_baseline is None or other.speedup_vs_baseline != other.speedup_vs_baseline


# -- findings -----------------------------------------------------------------------------------------

def test_findings_best_batch_and_gain_over_batch_one(tmp_path):
    lines = findings(frame(tmp_path, standard_results()))
    base = [line for line in lines if f"`{MODEL}` / `{PS}` / `baseline`" in line]
    assert len(base) == 1
    # best batch 4 at 180 tok/s; 180 / 50 = 3.60x batch size 1
    assert "best batch size 4" in base[0]
    assert "180.0 output tokens/s" in base[0]
    assert "3.60x batch size 1" in base[0]
    comp = [line for line in lines if f"`{MODEL}` / `{PS}` / `compiled`" in line]
    assert "best batch size 4" in comp[0] and f"{270 / 75:.2f}x batch size 1" in comp[0]


def test_findings_engine_speedup_line(tmp_path):
    lines = findings(frame(tmp_path, standard_results()))
    sp = [line for line in lines if line.startswith("`compiled` against `baseline`")]
    assert len(sp) == 1
    assert "median speedup 1.50x" in sp[0] and "over 2 cells" in sp[0]


def test_findings_token_agreement_line_per_engine(tmp_path):
    """The reference cell itself (baseline, batch 1) is not a comparison; compiled at batch 4 matched
    3 of 4 prompts and parted at token 37."""
    lines = findings(frame(tmp_path, standard_results()))
    agree = [line for line in lines if "tokens against the reference" in line]
    assert agree == [f"`{MODEL}` / `compiled` tokens against the reference (baseline, batch 1): share of prompts "
                     "exactly equal 75% (mean over 1 cell); where they part, at output token 37 at the earliest "
                     "(median over cells 37)."]


def test_findings_lists_unavailable_engine_with_reason(tmp_path):
    lines = findings(frame(tmp_path, standard_results()))
    na = [line for line in lines if line.startswith("`trtllm`")]
    assert len(na) == 1
    assert "unavailable" in na[0]
    assert UNAVAILABLE_REASON in na[0]
    assert "batch 1" in na[0]
    assert not any("`trtllm`" in line and "best batch size" in line for line in lines)


# -- aggregate: summary.csv and benchmark_results.md --------------------------------------------------

def parse_md_tables(text: str) -> dict[tuple[str, str], list[dict]]:
    """{(model, prompt_set): [row dicts]} from the '## model / prompt_set' sections' github tables."""
    tables, key = {}, None
    for line in text.splitlines():
        m = re.match(r"^## (\S+) / (\S+)$", line)
        if m:
            key, header = (m.group(1), m.group(2)), None
            tables[key] = []
            continue
        if key and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                tables[key].append(dict(zip(header, cells)))
    return tables


def md_row(tables, engine, batch, model=MODEL, ps=PS):
    rows = [r for r in tables[(model, ps)] if r["engine"] == engine and r["batch"] == str(batch)]
    assert len(rows) == 1, tables[(model, ps)]
    return rows[0]


@pytest.fixture
def aggregated(tmp_path):
    results = standard_results()
    paths = write_results(tmp_path, results)
    out = tmp_path / "report"
    aggregate(paths, out_md=out / "benchmark_results.md", out_csv=out / "summary.csv", plots_dir=out / "plots")
    return results, out


def test_aggregate_writes_outputs(aggregated):
    _, out = aggregated
    assert (out / "benchmark_results.md").is_file()
    assert (out / "summary.csv").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["benchmark_results.md", "plots", "summary.csv"]
    assert (out / "plots" / f"{MODEL}__{PS}.png").is_file()


def test_markdown_table_figures_equal_result_medians(aggregated):
    results, out = aggregated
    tables = parse_md_tables((out / "benchmark_results.md").read_text())
    checked = 0
    for r in results:
        if r["status"] != "ok":
            continue
        t, m, tel = r["target"], r["metrics"], r["telemetry"]
        row = md_row(tables, t["engine"], t["batch_size"])
        assert float(row["output tok/s"]) == pytest.approx(m["output_tokens_per_s"]["median"], abs=0.051)
        assert float(row["TTFT p50 ms"]) == pytest.approx(m["ttft_s"]["median"] * 1e3, abs=0.051)
        assert float(row["TPOT p50 ms"]) == pytest.approx(m["tpot_s"]["median"] * 1e3, abs=0.0051)
        assert float(row["e2e p50 s"]) == pytest.approx(m["e2e_s"]["median"], abs=0.00051)
        assert float(row["e2e p90 s"]) == pytest.approx(m["e2e_s"]["p90"], abs=0.00051)
        assert float(row["GPU mem peak MiB"]) == pytest.approx(tel["gpu_memory_peak_mb"], abs=0.51)
        assert float(row["power W"]) == pytest.approx(tel["power_mean_w"], abs=0.051)
        assert float(row["J/token"]) == pytest.approx(tel["energy_per_token_j"], abs=0.00051)
        checked += 1
    assert checked == 5
    # speedup column: engine tps / baseline tps at the same batch
    value, hw = md_row(tables, "compiled", 4)["speedup"].split(" ± ")   # with its 95 % interval's half-width
    assert value == "1.50x" and 0 < float(hw) < 1.5
    assert md_row(tables, "baseline", 1)["speedup"].split(" ± ")[0] == "1.00x"
    assert float(md_row(tables, "compiled", 4)["token match"]) == pytest.approx(0.75)
    assert md_row(tables, "compiled", 4)["first split"] == "37"
    assert md_row(tables, "baseline", 1)["first split"] == "none"     # the reference: all tokens equal
    assert md_row(tables, "compiled", 1)["first split"] == "n/a"      # no agreement recorded


def test_markdown_unavailable_cell_shows_status_not_numbers(aggregated):
    _, out = aggregated
    tables = parse_md_tables((out / "benchmark_results.md").read_text())
    row = md_row(tables, "trtllm", 1)
    assert row["output tok/s"] == "UNAVAILABLE"
    others = [v for k, v in row.items() if k not in ("engine", "batch", "gpus", "weights", "output tok/s")]
    assert all(v == "" for v in others), row
    assert not any(re.search(r"\d", v) for v in others)


def test_markdown_findings_and_environment(aggregated):
    _, out = aggregated
    text = (out / "benchmark_results.md").read_text()
    assert "best batch size 4 (180.0 output tokens/s), 3.60x batch size 1" in text
    assert UNAVAILABLE_REASON in text
    assert "from 6 result files" in text
    assert "| GPU | NVIDIA H100 80GB HBM3 |" in text
    assert f"## {MODEL} / {PS}" in text
    assert f"![{MODEL} / {PS}](plots/{MODEL}__{PS}.png)" in text


def test_summary_csv_equals_result_medians(aggregated):
    results, out = aggregated
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results)
    by_key = {(r["engine"], int(r["batch_size"])): r for r in rows}
    for r in results:
        t = r["target"]
        row = by_key[(t["engine"], t["batch_size"])]
        assert row["status"] == r["status"]
        if r["status"] == "ok":
            assert float(row["output_tokens_per_s"]) == pytest.approx(r["metrics"]["output_tokens_per_s"]["median"])
            assert float(row["ttft_ms_p50"]) == pytest.approx(r["metrics"]["ttft_s"]["median"] * 1e3)
            assert float(row["e2e_s_p90"]) == pytest.approx(r["metrics"]["e2e_s"]["p90"])
        else:
            assert row["reason"] == r["reason"]
            for col in ("output_tokens_per_s", "ttft_ms_p50", "speedup_vs_baseline", "gpu_memory_peak_mb"):
                assert row[col] == "", f"{col} = {row[col]!r} for a target that was not run"   # empty, never 0
    assert float(by_key[("compiled", 4)]["speedup_vs_baseline"]) == pytest.approx(1.5)
    assert float(by_key[("compiled", 1)]["speedup_vs_baseline"]) == pytest.approx(1.5)


def test_aggregate_bad_file_writes_nothing(tmp_path):
    paths = write_results(tmp_path, standard_results())
    bad = tmp_path / "results" / "corrupt.json"
    bad.write_text("{\"schema_version\": 1, ")
    out = tmp_path / "report"
    with pytest.raises(ResultFileError) as e:
        aggregate(paths + [bad], out_md=out / "benchmark_results.md", out_csv=out / "summary.csv",
                  plots_dir=out / "plots")
    assert str(bad) in str(e.value)
    assert not (out / "benchmark_results.md").exists()
    assert not (out / "summary.csv").exists()


def test_markdown_ok_cell_without_baseline_shows_no_speedup_number(tmp_path):
    # compiled at batch 2 has no baseline at batch 2: its speedup is not measurable
    results = [make_result("baseline", 1, 50.0), make_result("compiled", 1, 75.0), make_result("compiled", 2, 120.0)]
    paths = write_results(tmp_path, results)
    out = tmp_path / "report"
    aggregate(paths, out_md=out / "benchmark_results.md", out_csv=out / "summary.csv", plots_dir=out / "plots")
    tables = parse_md_tables((out / "benchmark_results.md").read_text())
    assert md_row(tables, "compiled", 1)["speedup"].split(" ± ")[0] == "1.50x"
    assert md_row(tables, "compiled", 2)["speedup"] == "n/a"
