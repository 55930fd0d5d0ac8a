"""docs/results/<card>.md from a GPU run: the issue's bar (synthetic shapes at batch 1), notes, kernel
profiles if any, then the rendered report. Every figure is read from the result files.

    python benchmarks/card_page.py --results DIR --report DIR/benchmark_results.md --notes NOTES.md \
        --command "..." --out docs/results/nvidia-h100-80gb-hbm3.md [--profiles P1.json P2.json]

DIR holds runs/ (result files) as the pipeline's results/ does; the report's plot links are rewritten
relative to the page.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from inference_optim_llm.result_file import ResultFileError, load_result

BAR = {"llama-1b": 0.50, "llama-8b": 0.75}   # fraction of the measured bandwidth, compiled at batch 1
SPEEDUP_BAR = {"llama-1b": 5.0}              # compiled over baseline at batch 1


def load(results: Path, model: str, engine: str) -> dict | None:
    p = results / "runs" / model / engine / "tok64" / "bs1.json"
    return load_result(p) if p.is_file() else None


def _f(v, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """A figure as the table shows it; n/a where the result has none (its null_reasons or reason say why)."""
    return "n/a" if v is None else format(v * scale, spec) + unit


def bar_rows(results: Path) -> list[str]:
    rows = ["| shape | engine | status | output tok/s | TPOT ms | achieved GB/s | of measured | bar | result |",
            "|---|---|---|---|---|---|---|---|---|"]
    for model, need in BAR.items():
        base = load(results, model, "baseline")
        for engine in ("baseline", "compiled"):
            r = load(results, model, engine)
            if r is None:
                rows.append(f"| {model} | {engine} | not run | | | | | | |")
                continue
            if r["status"] != "ok":
                rows.append(f"| {model} | {engine} | {r['status']}: {r['reason']} | | | | | | |")
                continue
            tps = r["metrics"]["output_tokens_per_s"]["median"]
            bw = r["bandwidth"] or {}
            frac = bw.get("fraction_of_measured")
            bar = verdict = ""
            if engine == "compiled" and frac is None:
                bar, verdict = f"{need:.0%} of measured", f"n/a ({bw.get('reason') or 'no bandwidth figure'})"
            elif engine == "compiled":
                bar = f"{need:.0%} of measured"
                verdict = (f"met (+{100 * (frac - need):.1f} points)" if frac >= need
                           else f"**missed by {100 * (need - frac):.1f} points**")
                if model in SPEEDUP_BAR and base and base["status"] == "ok":
                    x = tps / base["metrics"]["output_tokens_per_s"]["median"]
                    ok = "met" if x >= SPEEDUP_BAR[model] else "**missed**"
                    bar += f"; {SPEEDUP_BAR[model]:.0f}x baseline"
                    verdict += f"; {x:.1f}x baseline: {ok}"
            rows.append(f"| {model} | {engine} | ok | {tps:.1f} | {_f(r['metrics']['tpot_s']['median'], '.3f', 1e3)} | "
                        f"{_f(bw.get('achieved_gb_s'), '.0f')} | {_f(frac, '.1f', 100, ' %')} | {bar} | {verdict} |")
    return rows


def profile_rows(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        if not p.is_file():
            out += [f"- {p.name}: not produced", ""]
            continue
        r = json.loads(p.read_text())
        out += [f"### {Path(r['model_dir']).name}, batch {r['batch']}, {r['steps_profiled']} decode steps profiled",
                "",
                f"TPOT {r['tpot_ms']:.3f} ms ({100 * r['fraction_of_measured']:.1f} % of the measured "
                f"{r['measured_gb_s']:.0f} GB/s); under the profiler a step took {r['profiled_step_wall_us']:.0f} us "
                f"wall, of which the GPU was busy {r['gpu_busy_us_per_step']:.0f} us, in "
                f"{r['kernels_per_step']:.0f} kernels. The matrix products alone read the weights at "
                f"{r['matmul_gb_s']:.0f} GB/s.", "",
                "| kind | kernels per step | us per step | mean us per kernel |", "|---|---|---|---|"]
        out += [f"| {k} | {v['kernels_per_step']:.1f} | {v['us_per_step']:.1f} | {v['mean_us']:.2f} |"
                for k, v in r["by_kind"].items()]
        out += ["", "Top kernels:", "", "| us per step | calls per step | mean us | kind | kernel |", "|---|---|---|---|---|"]
        out += [f"| {k['us_per_step']:.1f} | {k['calls_per_step']:.1f} | {k['mean_us']:.2f} | {k['kind']} | "
                f"`{k['name'][:90]}` |" for k in r["top_kernels"][:12]]
        out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True, help="the run's results/ directory (or a copy of it)")
    ap.add_argument("--report", required=True, help="the rendered benchmark_results.md")
    ap.add_argument("--notes", help="markdown placed after the bar table")
    ap.add_argument("--profiles", nargs="*", default=[])
    ap.add_argument("--command", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    results = Path(a.results)
    bs1 = sorted((results / "runs").glob("*/*/*/bs1.json"))
    if not bs1:
        raise ResultFileError(f"{results / 'runs'}: no result at batch 1 (runs/MODEL/ENGINE/PROMPTS/bs1.json)")
    first = load_result(bs1[0])["provenance"]
    out = Path(a.out)
    report_path = Path(a.report)
    report = report_path.read_text()
    report = re.sub(r"^#", "##", report, flags=re.M)   # nest its headings under this page's
    rel = report_path.parent.resolve().relative_to(out.parent.resolve())
    report = report.replace("](plots/", f"]({rel.as_posix()}/plots/")
    notes = Path(a.notes).read_text().rstrip("\n").splitlines() if a.notes else []
    lines = [f"# GPU results: {first['gpu_name']}", "",
             f"Card: **{first['gpu_name']}** (driver {first['driver']}, CUDA {first['cuda']}), torch {first['torch']}, "
             f"transformers {first['transformers']}. Date: **{first['time_utc'][:10]}**. Git commit as the results record it: {first['git_commit']}.",
             "", "Produced by the pipeline itself on the GPU machine (no snakemake or network there: the wheels and the",
             "embedded model travel with the tree, see benchmarks/device_run.sh):", "", "    " + a.command, "",
             "## The bar (issue 3): synthetic Llama shapes, batch 1, 64-token prompts, 200 new tokens, greedy, bf16",
             "", *bar_rows(results), "",
             "Fractions are of the bandwidth that the pipeline's `calibrate` step measured on this card (large",
             "device-to-device copy, bytes read + written); bytes per step are the weights read once plus the KV cache",
             "of the mean context (inference_optim_llm/bandwidth.py).", "", *notes, ""]
    if a.profiles:
        lines += ["## Kernel profile of the compiled decode step", "",
                  "`benchmarks/profile_step.py`, run after the pipeline on its build artifacts (no new compilation).",
                  "", *profile_rows([Path(p) for p in a.profiles])]
    lines += ["## The pipeline's report", "", *report.splitlines()]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main()
    except ResultFileError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
