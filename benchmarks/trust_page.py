"""docs/results/<card>.md from a committed trust run (issue 13): its notes (notes.md: card, date, commands,
what was seen), then a table of every cell of both runs (median ± the half-width of its 95 % interval,
why the cell stopped, idle power, throttle reasons, verdict), the comparison of the two runs, and run A's
report. Every figure is read from the result files under DIR/run-a and DIR/run-b.

    python benchmarks/trust_page.py docs/results/nvidia-h200
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from inference_optim_llm.compare import compare
from inference_optim_llm.report import aggregate, load_result


def _f(v, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """A figure as the table shows it; n/a where the result has none (its null_reasons say why)."""
    return "n/a" if v is None else format(v * scale, spec) + unit


def cell_rows(d: Path) -> list[str]:
    rows = ["| run | cell | output tok/s | ± (95 %) | repetitions | timed s | stopped because | idle W | "
            "power W | SM clock, share of max | throttle reasons | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in ("a", "b"):
        for path in sorted((d / f"run-{run}" / "runs").rglob("*.json")):
            r = load_result(path)
            t, tel = r["target"], r["telemetry"]
            name = f"{t['model']} / {t['engine']} / bs{t['batch_size']}"
            if r["status"] != "ok":
                rows.append(f"| {run.upper()} | {name} | {r['status']}: {r['reason']} |" + " |" * 9)
                continue
            stop, m = r.get("stopping") or {}, r["metrics"]["output_tokens_per_s"]
            clocks = tel.get("sm_clock_mean_mhz"), tel.get("sm_clock_max_mhz")
            clock = clocks[0] / clocks[1] if None not in clocks and clocks[1] else None
            throttle = tel.get("throttle_reasons")
            rows.append(f"| {run.upper()} | {name} | {m['median']:.1f} | "
                        f"{_f((m.get('ci95') or {}).get('half_width_rel'), '.2f', 100, ' %')} | "
                        f"{stop.get('repetitions', 'n/a')} | {_f(stop.get('timed_s'), '.1f')} | "
                        f"{stop.get('reason', 'n/a')} | {_f(tel.get('idle_power_w'), '.0f')} | "
                        f"{_f(tel.get('power_mean_w'), '.0f')} | {_f(clock, '.2f', 100, ' %')} | "
                        f"{'n/a' if throttle is None else ', '.join(throttle) or 'none'} | "
                        f"{(r.get('verdict') or {}).get('status', 'n/a')} |")
    return rows


def main(run_dir: str) -> None:
    d = Path(run_dir)
    page = d.parent / f"{d.name}.md"
    parts = [(d / "notes.md").read_text(), "## Every cell of both runs\n", "\n".join(cell_rows(d)), ""]
    md = compare(d / "run-a", d / "run-b")
    (d / "compare.md").write_text(md)
    parts += ["## Run B against run A (`python -m inference_optim_llm compare`)\n",
              md.split("\n", 1)[1].strip(), ""]
    for run in ("a", "b"):
        files = sorted((d / f"run-{run}" / "runs").rglob("*.json"))
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            out = Path(tmp) / "report.md"
            aggregate(files, out_md=out, out_csv=d / f"run-{run}" / "summary.csv", plots_dir=d / f"run-{run}" / "plots",
                      calibration=[d / "calibration.json"], title=f"Run {run.upper()}")
            body = out.read_text().replace(f"](../run-{run}/", "](")   # plots/..., beside this report
        (d / f"run-{run}" / "benchmark_results.md").write_text(body)
    body = (d / "run-a" / "benchmark_results.md").read_text().split("\n", 1)[1]
    root = d.name   # links relative to the page, which sits beside the run directory
    parts += ["## Run A's report (`aggregate`; run B's: "
              f"[{d.name}/run-b/benchmark_results.md]({root}/run-b/benchmark_results.md))\n",
              body.replace("](plots/", f"]({root}/run-a/plots/")]
    page.write_text("\n".join(parts))
    print(f"{page}: {sum(1 for _ in d.rglob('runs/*/*/*/*.json'))} result files")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except ValueError as e:   # a result file that is not a valid result (named), or runs that cannot be compared
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
