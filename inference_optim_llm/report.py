"""Aggregation: result files -> summary.csv, benchmark_results.md and plots.

Every number in the report is computed here from the result files; nothing is typed by hand.
"""
from __future__ import annotations

import os
from pathlib import Path

from inference_optim_llm.intermediates import read_calibration
from inference_optim_llm.io import check_writable, check_writable_dir, write_atomic, writing_file
# the one door to a result; readers and results.write import these from here too
from inference_optim_llm.result_file import ResultFileError, check_result, load_result, load_results  # noqa: F401
from inference_optim_llm.stats import ratio_ci

TEMPLATE = Path(__file__).parent / "templates" / "benchmark_results.md.j2"
REFERENCE_ENGINE = "baseline"


def _med(metrics: dict | None, key: str, scale: float = 1.0):
    if not metrics or metrics.get(key) is None or metrics[key].get("median") is None:
        return None
    return metrics[key]["median"] * scale


def _hw(metrics: dict | None, key: str, scale: float = 1.0):
    """Half the width of the median's 95 % interval (stats.median_ci), in the figure's unit; None without one."""
    ci = ((metrics or {}).get(key) or {}).get("ci95")
    return None if not ci else (ci["high"] - ci["low"]) / 2 * scale


def _datasheet_fraction(bw: dict, gpu_name: str | None, gpus: int = 1) -> float | None:
    """Achieved decode bandwidth over the card's datasheet figure (bandwidth.DATASHEET_GB_S), from what the
    result file holds (so results measured before the field existed get it too)."""
    from inference_optim_llm.bandwidth import datasheet_bandwidth
    sheet, _ = datasheet_bandwidth(gpu_name)
    return bw["achieved_gb_s"] / (sheet * gpus) if sheet and bw.get("achieved_gb_s") else None


def row(result: dict, path: Path) -> dict:
    t, m, tel, prov = result["target"], result["metrics"], result["telemetry"], result["provenance"]
    agreement = result.get("agreement") or {}
    bw = result.get("bandwidth") or {}
    e2e = (m or {}).get("e2e_s") or {}
    return {
        "model": t["model"], "engine": t["engine"], "prompt_set": t["prompt_set"], "batch_size": t["batch_size"],
        "gpus": t.get("gpus", 1), "weights": t.get("weights", "default"),
        "status": result["status"], "reason": result["reason"],
        "device": result["settings"]["device"], "dtype": result["settings"]["dtype"],
        "max_new_tokens": result["settings"]["max_new_tokens"],
        "decode_steps": result.get("decode_steps_per_request", result["settings"]["max_new_tokens"] - 1),
        "padding_requests": (result["settings"].get("padding") or {}).get("padding_requests_per_repetition", 0),
        "prompts": result["settings"].get("prompts"),
        "prompt_tokens_mean": result["settings"].get("prompt_tokens_mean"),
        "output_tokens_per_s": _med(m, "output_tokens_per_s"),
        "output_tokens_per_s_hw": _hw(m, "output_tokens_per_s"),
        "tpot_ms_hw": _hw(m, "tpot_s", 1e3),
        "ttft_ms_hw": _hw(m, "ttft_s", 1e3),
        "batch_tps": [b["output_tokens_per_s"] for b in result.get("batches") or []],
        "requests_per_s": _med(m, "requests_per_s"),
        "ttft_ms_p50": _med(m, "ttft_s", 1e3),
        "tpot_ms_p50": _med(m, "tpot_s", 1e3),
        "e2e_s_p50": e2e.get("median"), "e2e_s_p90": e2e.get("p90"),
        "gpu_memory_peak_mb": tel.get("gpu_memory_peak_mb"),
        "torch_peak_allocated_mb": tel.get("torch_peak_allocated_mb"),
        "power_mean_w": tel.get("power_mean_w"),
        "energy_per_token_j": tel.get("energy_per_token_j"),
        "exact_match_rate": agreement.get("exact_match_rate"),
        "first_divergence": agreement.get("first_divergence"),
        "bandwidth_fraction": bw.get("fraction_of_measured"),
        "datasheet_fraction": _datasheet_fraction(bw, prov.get("gpu_name"), t.get("gpus", 1)),
        "collective_share": (result.get("collectives") or {}).get("share"),
        "verdict": (result.get("verdict") or {}).get("status"),
        "verdict_reasons": "; ".join((result.get("verdict") or {}).get("reasons") or []) or None,
        "verdict_notes": "; ".join((result.get("verdict") or {}).get("notes") or []) or None,
        "repetitions_timed": (result.get("stopping") or {}).get("repetitions"),
        "stopped_because": (result.get("stopping") or {}).get("reason"),
        "energy_above_idle_per_token_j": tel.get("energy_above_idle_per_token_j"),
        "idle_power_w": tel.get("idle_power_w"),
        "gpu_name": prov.get("gpu_name"), "cpu": prov.get("cpu"), "host": prov.get("host"),
        "slurm_job_id": (prov.get("slurm") or {}).get("job_id"),
        "file": str(path),
    }


def build_frame(results: list[tuple[Path, dict]]):
    import pandas as pd

    df = pd.DataFrame([row(r, p) for p, r in results])
    if df.empty:
        return df
    df = df.sort_values(["model", "prompt_set", "engine", "gpus", "weights", "batch_size"]).reset_index(drop=True)
    # Speedup: over baseline (default weights) at the same batch size and number of GPUs.
    key = ["model", "prompt_set", "batch_size", "gpus"]
    base = df[(df.engine == REFERENCE_ENGINE) & (df.status == "ok")].set_index(key)["output_tokens_per_s"]
    base_batches = df[(df.engine == REFERENCE_ENGINE) & (df.status == "ok")].set_index(key)["batch_tps"]
    # No speedup where no decode step ran (max_new_tokens 1): the figure would compare prefills only.
    df["speedup_vs_baseline"] = [
        (r.output_tokens_per_s / base[(r.model, r.prompt_set, r.batch_size, r.gpus)])
        if r.status == "ok" and r.decode_steps > 0 and (r.model, r.prompt_set, r.batch_size, r.gpus) in base.index
        else None
        for r in df.itertuples()]
    # Its 95 % interval: both cells' timed batches resampled (stats.ratio_ci); None with fewer than two each.
    cis = [ratio_ci(r.batch_tps, base_batches[(r.model, r.prompt_set, r.batch_size, r.gpus)])
           if r.speedup_vs_baseline is not None and r.speedup_vs_baseline == r.speedup_vs_baseline else None
           for r in df.itertuples()]
    df["speedup_hw"] = [(ci["high"] - ci["low"]) / 2 if ci else None for ci in cis]
    return df.drop(columns="batch_tps")


def _on(gpus, weights="default") -> str:
    """How a sentence names a tensor-parallel or fp8 cell: nothing for one GPU and default weights."""
    return (f" on {int(gpus)} GPUs" if int(gpus) > 1 else "") + (f" with {weights} weights" if weights != "default" else "")


def findings(df) -> list[str]:
    """Sentences computed from the table: best batch size, gain from batching, gain per engine."""
    out = []
    ok = df[df.status == "ok"]
    for (model, ps, engine, gpus, weights), g in ok.groupby(["model", "prompt_set", "engine", "gpus", "weights"],
                                                           sort=True):
        best = g.loc[g.output_tokens_per_s.idxmax()]
        line = (f"`{model}` / `{ps}` / `{engine}`{_on(gpus, weights)}: best batch size {int(best.batch_size)} "
                f"({best.output_tokens_per_s:.1f} output tokens/s)")
        one = g[g.batch_size == 1]
        if len(g) > 1 and not one.empty:
            line += f", {best.output_tokens_per_s / one.output_tokens_per_s.iloc[0]:.2f}x batch size 1"
        out.append(line + ".")
    for engine, g in ok[ok.engine != REFERENCE_ENGINE].groupby("engine"):
        s = g.speedup_vs_baseline.dropna()
        if not s.empty:
            out.append(f"`{engine}` against `{REFERENCE_ENGINE}` at equal batch size: median speedup "
                       f"{s.median():.2f}x (from {s.min():.2f}x to {s.max():.2f}x over {len(s)} cells).")
    compared = ok[ok.exact_match_rate.notna() & ~((ok.engine == REFERENCE_ENGINE) & (ok.batch_size == 1))]
    for (model, engine, weights), g in compared.groupby(["model", "engine", "weights"], sort=True):
        splits = g.first_divergence.dropna()
        line = (f"`{model}` / `{engine}`{_on(1, weights)} tokens against the reference ({REFERENCE_ENGINE}, batch 1): share of "
                f"prompts exactly equal {g.exact_match_rate.mean():.0%} (mean over {len(g)} "
                f"cell{'s' * (len(g) != 1)})")
        line += (f"; where they part, at output token {int(splits.min())} at the earliest "
                 f"(median over cells {splits.median():.0f})." if not splits.empty else ".")
        out.append(line)
    for r in ok[ok.decode_steps == 0].itertuples():
        out.append(f"`{r.engine}` on `{r.model}` / `{r.prompt_set}` / batch {r.batch_size}{_on(r.gpus, r.weights)}: max_new_tokens is 1, "
                   "so no decode step ran (only the prefill): no TPOT, no bandwidth fraction, no speedup.")
    for r in ok[ok.padding_requests > 0].itertuples():
        out.append(f"`{r.engine}` on `{r.model}` / `{r.prompt_set}` / batch {r.batch_size}{_on(r.gpus, r.weights)}: {r.prompts} prompts do "
                   f"not fill whole batches, so each repetition's last batch repeats {r.padding_requests} of the "
                   "first prompts; they count in throughput, not in the per-request figures (TTFT, TPOT, e2e).")
    for r in df[df.status != "ok"].itertuples():
        out.append(f"`{r.engine}` on `{r.model}` / `{r.prompt_set}` / batch {r.batch_size}{_on(r.gpus, r.weights)} was not run: "
                   f"{r.status} ({r.reason}).")
    out += verdict_findings(df, lambda r: f"`{r.engine}` on `{r.model}` / `{r.prompt_set}` / batch "
                                          f"{r.batch_size}{_on(r.gpus, r.weights)}")
    return out


def verdict_findings(df, name) -> list[str]:
    """One line per cell whose measurement was disturbed or imprecise, with its reasons (interference.py)."""
    if "verdict" not in df:
        return []
    out = [f"{name(r)}: **{r.verdict}**: {r.verdict_reasons}." for r in df.itertuples()
           if r.status == "ok" and r.verdict not in (None, "ok") and r.verdict == r.verdict]
    return out + [f"{name(r)}: note: {r.verdict_notes}." for r in df.itertuples()
                  if r.status == "ok" and isinstance(getattr(r, "verdict_notes", None), str)]


def _fmt(v, digits=1):
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _percent(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f} %"


def _split(rate, position) -> str:
    """The earliest output position where some prompt's tokens part from the reference's."""
    if rate is None or rate != rate:
        return "n/a"
    return "none" if position is None or position != position else str(int(position))


def _speedup(v, hw=None) -> str:
    if v is None or v != v:
        return "n/a"
    return f"{v:.2f}x" + (f" ± {hw:.2f}" if hw is not None and hw == hw else "")


def _pm(v, hw, digits=1) -> str:
    """value ± half-width of its 95 % interval (the half-width left out where there is none)."""
    return _fmt(v, digits) + (f" ± {hw:.{digits}f}" if v is not None and v == v and hw is not None and hw == hw else "")


def _weights(r) -> str:
    """The weights column: the run's dtype, or the storage that replaced it (fp8)."""
    return r.dtype if r.weights == "default" else f"{r.weights} (e4m3)"


def cell_table(g) -> str:
    from tabulate import tabulate

    rows = []
    for r in g.itertuples():
        if r.status != "ok":
            rows.append([r.engine, r.batch_size, r.gpus, _weights(r), r.status.upper()] + [""] * 15)
            continue
        rows.append([r.engine, r.batch_size, r.gpus, _weights(r), _pm(r.output_tokens_per_s, r.output_tokens_per_s_hw),
                     _pm(r.ttft_ms_p50, r.ttft_ms_hw), _pm(r.tpot_ms_p50, r.tpot_ms_hw, 2), _fmt(r.e2e_s_p50, 3),
                     _fmt(r.e2e_s_p90, 3), _fmt(r.gpu_memory_peak_mb, 0), _fmt(r.torch_peak_allocated_mb, 0),
                     _fmt(r.power_mean_w), _fmt(r.energy_per_token_j, 4),
                     _speedup(r.speedup_vs_baseline, r.speedup_hw),
                     _fmt(r.exact_match_rate, 2), _split(r.exact_match_rate, r.first_divergence),
                     _percent(r.bandwidth_fraction), _percent(r.datasheet_fraction),
                     _percent(r.collective_share) if r.gpus > 1 else "",
                     r.verdict if isinstance(r.verdict, str) else "n/a"])
    headers = ["engine", "batch", "gpus", "weights", "output tok/s", "TTFT p50 ms", "TPOT p50 ms", "e2e p50 s", "e2e p90 s",
               "GPU mem peak MiB", "torch peak MiB", "power W", "J/token", "speedup", "token match",
               "first split", "of bandwidth", "of datasheet", "in collectives", "verdict"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically (a temporary name, then a rename) and close it. Names
    come from validated result files (no '/', no '..')."""
    import matplotlib.pyplot as plt

    try:   # writing_file: a failed write (a full disk) names the figure and leaves no temporary
        with writing_file(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path


def _bars(half_widths):
    """Error bar lengths for matplotlib: a figure without an interval gets none (0), not a missing point."""
    return [0.0 if v is None or v != v else float(v) for v in half_widths]


def plots(df, plots_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    made = []
    ok = df[df.status == "ok"]
    for (model, ps), g in ok.groupby(["model", "prompt_set"]):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for (engine, gpus, weights), e in g.groupby(["engine", "gpus", "weights"]):
            e = e.sort_values("batch_size")
            engine = f"{engine}{_on(gpus, weights)}"   # one line per engine, number of GPUs and weights
            bars = _bars(e.output_tokens_per_s_hw)      # the median's 95 % interval
            a1.errorbar(e.batch_size, e.output_tokens_per_s, yerr=bars, marker="o", capsize=3, label=engine)
            a2.errorbar(e.output_tokens_per_s, e.e2e_s_p50, xerr=bars, marker="o", capsize=3, label=engine)
            for r in e.itertuples():
                a2.annotate(f"bs{r.batch_size}", (r.output_tokens_per_s, r.e2e_s_p50), fontsize=7)
        a1.set(xlabel="batch size", ylabel="output tokens/s (bars: 95 % CI of the median)",
               title=f"{model} / {ps}: throughput")
        a1.set_xscale("log", base=2)
        sizes = sorted(int(b) for b in g.batch_size.unique())
        a1.set_xticks(sizes, [str(b) for b in sizes])
        a1.minorticks_off()
        a2.set(xlabel="output tokens/s", ylabel="end-to-end latency p50 (s)", title="latency against throughput")
        a1.legend(), a2.legend()
        fig.tight_layout()
        made.append(save_figure(fig, plots_dir / f"{model}__{ps}.png"))
    return made


def environment(results: list[dict]) -> list[tuple[str, str]]:
    def values(key):
        return ", ".join(sorted({str(r["provenance"].get(key) or "none") for r in results}))
    times = sorted(r["provenance"]["time_utc"] for r in results)
    return [("GPU", values("gpu_name")), ("GPU driver", values("driver")), ("CUDA (torch build)", values("cuda")),
            ("CPU", values("cpu")), ("host", values("host")), ("torch", values("torch")),
            ("transformers", values("transformers")), ("project", values("project")),
            ("git commit", values("git_commit")),
            ("source hash", values("source_hash")), ("measured (UTC)", f"{times[0]} to {times[-1]}")]


def aggregate(paths: list[Path], *, out_md: Path, out_csv: Path, plots_dir: Path,
              calibration: list[Path] = (), title: str = "Benchmark results") -> None:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    for path, flag in ((out_md, "--out-md"), (out_csv, "--out-csv")):
        check_writable(path, flag)
    check_writable_dir(plots_dir, "--plots-dir")
    results = load_results(paths)   # every file is checked, and no cell has two, before anything is written
    calib = [read_calibration(c) for c in calibration]
    from inference_optim_llm import serving_report
    static = [(p, r) for p, r in results if r.get("scenario") != "serving"]
    served = [(p, r) for p, r in results if r.get("scenario") == "serving"]
    df, sdf = build_frame(static), serving_report.build_frame(served)
    made = plots(df, plots_dir) if not df.empty else []
    plots_dir.mkdir(parents=True, exist_ok=True)
    sections = [{"model": model, "prompt_set": ps, "table": cell_table(g),
                 "plot": next((p for p in made if p.name == f"{model}__{ps}.png"), None),
                 "prompt_tokens": g.prompt_tokens_mean.dropna().mean(),
                 "max_new_tokens": sorted(set(g.max_new_tokens)), "devices": sorted(set(g.device))}
                for (model, ps), g in df.groupby(["model", "prompt_set"], sort=True)] if not df.empty else []
    env = Environment(loader=FileSystemLoader(TEMPLATE.parent), undefined=StrictUndefined,
                      keep_trailing_newline=True)
    text = env.get_template(TEMPLATE.name).render(
        title=title, environment=environment([r for _, r in results]), sections=sections,
        findings=(findings(df) if not df.empty else []) + serving_report.findings(sdf),
        n_results=len(results), calibration=calib, static=not df.empty,
        serving_sections=serving_report.sections(sdf, plots_dir),
        comparison=serving_report.comparison(df, sdf),
        plots_rel=lambda p: Path(os.path.relpath(Path(p).absolute(), out_md.absolute().parent)).as_posix() if p else None)
    import pandas as pd
    frames = [f.assign(scenario=name) for name, f in (("static_batches", df), ("serving", sdf)) if not f.empty]
    write_atomic(out_csv, pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else "")
    write_atomic(out_md, text)


def console_summary(result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['target']['engine']}: {result['status']} ({result['reason']})"
    from tabulate import tabulate
    m = result["metrics"]
    rows = [[k, _fmt(v["median"], 4), _fmt(v["p90"], 4), _fmt(v["mean"], 4), _fmt(v["std"], 4), v["n"]]
            for k, v in m.items()]
    return tabulate(rows, headers=["metric", "median", "p90", "mean", "std", "n"], tablefmt="github")
