"""Compare two result sets (a run before and after a driver, version or code change): per cell, the change
of its headline figure with a 95 % interval, and whether it is significant (the interval excludes no
change). Refuses two runs on different GPU models (--force to go on); warns, at the top, where the runs
differ in what else matters (driver, CUDA, torch, transformers, code, configuration).

    python -m inference_optim_llm compare RUN_A RUN_B --output compare.md

RUN_A and RUN_B are directories searched for result files (a workflow's results/, or a committed
docs/results/<card>/). Headline figures: static batches, output tok/s over the timed batches; serving,
TPOT over the measured requests (output tok/s of a serving point is one window, with no spread).
"""
from __future__ import annotations

from pathlib import Path

from inference_optim_llm.result_file import cell, cell_name, load_results
from inference_optim_llm.stats import percentile, ratio_ci

MUST_MATCH = ("gpu_name",)
SHOULD_MATCH = ("driver", "cuda", "torch", "transformers", "source_hash", "config_hash", "gpu_count")


class CompareError(ValueError):
    """The two runs cannot be compared (different GPU models, nothing in common, no result files)."""


def load_run(root: Path, foreign: list[Path] | None = None) -> dict[tuple, dict]:
    """Every result file under root, by cell (result_file.cell). A file that cannot be read, or is not a
    valid result, is an error naming it (every such file at once), and so are two files for one cell: a
    comparison without them would silently lose cells. JSON files that are plainly not results (no
    schema_version) are added to `foreign`."""
    root = Path(root)
    if not root.is_dir():
        raise CompareError(f"{root}: {'not a directory' if root.exists() else 'no such directory'}")
    skipped = []
    cells = {cell(r): r for _, r in load_results(sorted(root.rglob("*.json")), skipped)}
    if foreign is not None:
        foreign += skipped
    if not cells:
        raise CompareError(f"{root}: no result files found" + (
            f" ({len(skipped)} JSON files without schema_version, not results)" if skipped else ""))
    return cells


def headline(result: dict) -> tuple[str, list[float], bool]:
    """(figure name, its values, higher is better)."""
    if result.get("scenario") == "serving":
        return "TPOT ms", [q["tpot_s"] * 1e3 for q in result["requests"] if q.get("tpot_s") is not None], False
    return "output tok/s", [b["output_tokens_per_s"] for b in result["batches"]], True


def environment_differences(a: dict[tuple, dict], b: dict[tuple, dict]) -> dict[str, tuple[set, set]]:
    out = {}
    for key in MUST_MATCH + SHOULD_MATCH:
        va = {str(r["provenance"].get(key)) for r in a.values()}
        vb = {str(r["provenance"].get(key)) for r in b.values()}
        if va != vb:
            out[key] = (va, vb)
    return out


def compare(run_a: Path, run_b: Path, force: bool = False) -> str:
    foreign_a, foreign_b = [], []
    a, b = load_run(run_a, foreign_a), load_run(run_b, foreign_b)
    diff = environment_differences(a, b)
    refused = [k for k in MUST_MATCH if k in diff]
    if refused and not force:
        k = refused[0]
        raise CompareError(f"the runs were measured on different {k}: {sorted(diff[k][0])} against "
                           f"{sorted(diff[k][1])}; their figures are not comparable (--force to compare anyway)")
    common = sorted(set(a) & set(b), key=str)
    if not common:
        raise CompareError(f"{run_a} and {run_b} have no cell in common")
    lines = [f"# Comparison: `{run_b}` against `{run_a}`", ""]
    if diff:
        lines += ["**Warning: the runs differ in what can change the figures:**", ""]
        lines += [f"- {k}: {', '.join(sorted(va))} → {', '.join(sorted(vb))}" for k, (va, vb) in diff.items()]
        lines += [""]
    else:
        lines += ["Same GPU model, driver, CUDA, torch, transformers, code (source hash) and configuration.", ""]
    for run, foreign in ((run_a, foreign_a), (run_b, foreign_b)):
        if foreign:
            lines += [f"Left out of `{run}`, not result files (no `schema_version`): "
                      f"{', '.join(p.relative_to(run).as_posix() for p in foreign)}.", ""]
    lines += ["Change of each cell's headline median, B over A, with the 95 % interval of the ratio (both runs'",
              "timed batches, or requests, resampled); **significant** where the interval excludes no change.",
              "The interval knows only the spread within each run: two runs of the same code on the same card",
              "also differ from run to run (an A/A pair on an H200, 2026-11-28: up to 2.5 % for `compiled` and",
              "22 % for `baseline` at batch 1, docs/results/nvidia-h200.md), so read a small significant change",
              "against an A/A pair of your own.", "",
              "| cell | figure | A | B | change | 95 % interval | significant | verdicts A / B |",
              "|---|---|---|---|---|---|---|---|"]
    better = worse = 0
    for key in common:
        ra, rb = a[key], b[key]
        name = cell_name(key)
        if ra["status"] != "ok" or rb["status"] != "ok":
            lines.append(f"| {name} | | {ra['status']} | {rb['status']} | | | | |")
            continue
        figure, va, higher_better = headline(ra)
        _, vb, _ = headline(rb)
        if not va or not vb or percentile(va, 50) == 0:   # no figure, or none to divide by
            lines.append(f"| {name} | {figure} | n/a | n/a | | | | |")
            continue
        ma, mb = percentile(va, 50), percentile(vb, 50)
        ci = ratio_ci(vb, va) if 0 not in va else None   # a resampled median of A could be 0
        significant = ci is not None and (ci["low"] > 1 or ci["high"] < 1)
        if significant:
            improved = (ci["low"] > 1) == higher_better
            better, worse = better + improved, worse + (not improved)
        interval = f"{100 * (ci['low'] - 1):+.1f} % to {100 * (ci['high'] - 1):+.1f} %" if ci else (
            "n/a (one value)" if min(len(va), len(vb)) < 2 else "n/a (a value of 0 in A)")
        verdicts = " / ".join((r.get("verdict") or {}).get("status", "n/a") for r in (ra, rb))
        lines.append(f"| {name} | {figure} | {ma:.2f} | {mb:.2f} | {100 * (mb / ma - 1):+.1f} % | {interval} | "
                     f"{'**yes**' if significant else 'no'} | {verdicts} |")
    only = sorted(set(a) ^ set(b), key=str)
    lines += ["", f"{len(common)} cells in common: {better} significantly better in B, {worse} significantly worse."]
    if only:
        lines += [f"In one run only: {', '.join(cell_name(k) for k in only)}."]
    return "\n".join(lines) + "\n"
