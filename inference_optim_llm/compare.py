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

from inference_optim_llm.report import ResultFileError, load_result
from inference_optim_llm.stats import percentile, ratio_ci

MUST_MATCH = ("gpu_name",)
SHOULD_MATCH = ("driver", "cuda", "torch", "transformers", "source_hash", "config_hash", "gpu_count")


class CompareError(ValueError):
    """The two runs cannot be compared (different GPU models, nothing in common, no result files)."""


def load_run(root: Path) -> dict[tuple, dict]:
    """Every result file under root, by cell: ('static', model, engine, prompt set, batch, gpus) or
    ('serving', model, server, prompt set, load). Files that are not results are skipped."""
    cells = {}
    for path in sorted(Path(root).rglob("*.json")):
        try:
            r = load_result(path)
        except ResultFileError:
            continue
        t = r["target"]
        if r.get("scenario") == "serving":
            key = ("serving", t["model"], t["server"], t["prompt_set"], t["load"])
        else:
            key = ("static", t["model"], t["engine"], t["prompt_set"], t["batch_size"], t.get("gpus", 1),
                   t.get("weights", "default"))
        cells[key] = r
    if not cells:
        raise CompareError(f"{root}: no result files found")
    return cells


def _name(key: tuple) -> str:
    """model / engine / prompt set / batch (/ tpN above one GPU), or model / server / prompt set / load."""
    parts = [str(k) for k in key[1:5]] + ([f"tp{key[5]}"] if len(key) > 5 and key[5] > 1 else [])
    parts += [key[6]] if len(key) > 6 and key[6] != "default" else []
    return " / ".join(parts)


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
    a, b = load_run(run_a), load_run(run_b)
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
        name = _name(key)
        if ra["status"] != "ok" or rb["status"] != "ok":
            lines.append(f"| {name} | | {ra['status']} | {rb['status']} | | | | |")
            continue
        figure, va, higher_better = headline(ra)
        _, vb, _ = headline(rb)
        if not va or not vb:
            lines.append(f"| {name} | {figure} | n/a | n/a | | | | |")
            continue
        ma, mb = percentile(va, 50), percentile(vb, 50)
        ci = ratio_ci(vb, va)
        significant = ci is not None and (ci["low"] > 1 or ci["high"] < 1)
        if significant:
            improved = (ci["low"] > 1) == higher_better
            better, worse = better + improved, worse + (not improved)
        interval = f"{100 * (ci['low'] - 1):+.1f} % to {100 * (ci['high'] - 1):+.1f} %" if ci else "n/a (one value)"
        verdicts = " / ".join((r.get("verdict") or {}).get("status", "n/a") for r in (ra, rb))
        lines.append(f"| {name} | {figure} | {ma:.2f} | {mb:.2f} | {100 * (mb / ma - 1):+.1f} % | {interval} | "
                     f"{'**yes**' if significant else 'no'} | {verdicts} |")
    only = sorted(set(a) ^ set(b), key=str)
    lines += ["", f"{len(common)} cells in common: {better} significantly better in B, {worse} significantly worse."]
    if only:
        lines += [f"In one run only: {', '.join(_name(k) for k in only)}."]
    return "\n".join(lines) + "\n"
