"""The report's serving part, from serving result files: per model a table over the load sweep, a
latency-throughput chart (TTFT and TPOT p50/p90 against output tokens/s), goodput against load, and one
comparison of static-batch engines and servers where the workload matches (model, prompt set, new tokens)."""
from __future__ import annotations

from pathlib import Path

from inference_optim_llm.report import _bars, _fmt, _hw, _pm, save_figure


def _q(metrics, key, q="median", scale=1.0):
    v = ((metrics or {}).get(key) or {}).get(q)
    return None if v is None else v * scale


def row(result: dict, path: Path) -> dict:
    t, m, tel = result["target"], result["metrics"], result["telemetry"]
    load = result.get("load") or {}
    good = (m or {}).get("goodput") or {}
    return {
        "model": t["model"], "server": t["server"], "prompt_set": t["prompt_set"], "load": t["load"],
        "concurrency": load.get("concurrency"), "request_rate": load.get("request_rate"),
        "status": result["status"], "reason": result["reason"],
        "device": result["settings"]["device"], "max_new_tokens": result["settings"]["max_new_tokens"],
        "prompt_tokens_mean": result["settings"].get("prompt_tokens_mean"),
        "requests": (m or {}).get("requests"),
        "requests_per_s": (m or {}).get("requests_per_s"),
        "output_tokens_per_s": (m or {}).get("output_tokens_per_s"),
        "ttft_ms_p50": _q(m, "ttft_s", "median", 1e3), "ttft_ms_p90": _q(m, "ttft_s", "p90", 1e3),
        "ttft_ms_p99": _q(m, "ttft_s", "p99", 1e3),
        "tpot_ms_p50": _q(m, "tpot_s", "median", 1e3), "tpot_ms_p90": _q(m, "tpot_s", "p90", 1e3),
        "ttft_ms_hw": _hw(m, "ttft_s", 1e3), "tpot_ms_hw": _hw(m, "tpot_s", 1e3),
        "itl_ms_p50": _q(m, "itl_s", "median", 1e3), "itl_ms_p99": _q(m, "itl_s", "p99", 1e3),
        "e2e_s_p50": _q(m, "e2e_s"), "e2e_s_p90": _q(m, "e2e_s", "p90"),
        "goodput_requests_per_s": good.get("requests_per_s"), "goodput_fraction": good.get("fraction"),
        "slo": ", ".join(f"{k} <= {v:g}" for k, v in (good.get("slo") or {}).items()) or None,
        "gpu_memory_peak_mb": tel.get("gpu_memory_peak_mb"), "power_mean_w": tel.get("power_mean_w"),
        "energy_per_token_j": tel.get("energy_per_token_j"),
        "client_floor_ttft_ms": _scale((result.get("client_floor") or {}).get("ttft_s"), 1e3),
        "client_floor_itl_ms": _scale((result.get("client_floor") or {}).get("itl_s"), 1e3),
        "itl_null_reason": (m or {}).get("itl_null_reason"),
        "verdict": (result.get("verdict") or {}).get("status"),
        "verdict_reasons": "; ".join((result.get("verdict") or {}).get("reasons") or []) or None,
        "verdict_notes": "; ".join((result.get("verdict") or {}).get("notes") or []) or None,
        "repeated_prompts": load.get("repeated_prompts") or 0,
        "gpu_name": result["provenance"].get("gpu_name"), "file": str(path),
    }


def _scale(v, k):
    return None if v is None else v * k


def _order(load: str) -> tuple:
    """Closed-loop points by concurrency, then open-loop points by rate."""
    return (0, int(load[1:])) if load.startswith("c") else (1, float(load[1:]))


def build_frame(results: list[tuple[Path, dict]]):
    import pandas as pd

    df = pd.DataFrame([row(r, p) for p, r in results])
    if df.empty:
        return df
    df["_order"] = df["load"].map(_order)
    return df.sort_values(["model", "prompt_set", "server", "_order"]).drop(columns="_order").reset_index(drop=True)





def table(g) -> str:
    from tabulate import tabulate

    rows = []
    for r in g.itertuples():
        if r.status != "ok":
            rows.append([r.server, r.load, r.status.upper()] + [""] * 12)
            continue
        rows.append([r.server, r.load, _fmt(r.requests_per_s, 2), _fmt(r.output_tokens_per_s),
                     f"{_pm(r.ttft_ms_p50, r.ttft_ms_hw)} / {_fmt(r.ttft_ms_p90)} / {_fmt(r.ttft_ms_p99)}",
                     f"{_pm(r.tpot_ms_p50, r.tpot_ms_hw, 2)} / {_fmt(r.tpot_ms_p90, 2)}",
                     f"{_fmt(r.itl_ms_p50, 2)} / {_fmt(r.itl_ms_p99, 2)}", f"{_fmt(r.e2e_s_p50, 3)} / {_fmt(r.e2e_s_p90, 3)}",
                     _fmt(r.goodput_requests_per_s, 2), "n/a" if r.goodput_fraction != r.goodput_fraction
                     else f"{100 * r.goodput_fraction:.0f} %", _fmt(r.gpu_memory_peak_mb, 0), _fmt(r.power_mean_w),
                     _fmt(r.energy_per_token_j, 4), int(r.requests),
                     r.verdict if isinstance(r.verdict, str) else "n/a"])
    headers = ["server", "load", "req/s", "output tok/s", "TTFT p50/p90/p99 ms", "TPOT p50/p90 ms",
               "ITL p50/p99 ms", "e2e p50/p90 s", "goodput req/s", "meeting SLO", "GPU mem peak MiB", "power W",
               "J/token", "requests", "verdict"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def plot(g, path: Path) -> Path:
    """Latency against throughput over the sweep (TTFT and TPOT, p50 solid with error bars, p90 dashed), and goodput
    against load, one line per server."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4))
    loads = sorted(set(g[g.status == "ok"].load), key=_order)   # one x axis for every server
    for server, by_load in g[g.status == "ok"].groupby("server"):
        s = by_load.sort_values("output_tokens_per_s")
        for ax, key in ((a1, "ttft"), (a2, "tpot")):
            # p50 with its 95 % interval as error bars (none where a point has no interval)
            line = ax.errorbar(s.output_tokens_per_s, s[f"{key}_ms_p50"], yerr=_bars(s[f"{key}_ms_hw"]),
                               marker="o", capsize=3, label=f"{server} p50 ± 95 % CI").lines[0]
            ax.plot(s.output_tokens_per_s, s[f"{key}_ms_p90"], marker="x", ls="--", color=line.get_color(),
                    label=f"{server} p90")
            for r in s.itertuples():
                ax.annotate(r.load, (r.output_tokens_per_s, getattr(r, f"{key}_ms_p50")), fontsize=7)
        x = [loads.index(v) for v in by_load.load]
        a3.plot(x, by_load.goodput_requests_per_s, marker="o", label=f"{server} goodput")
        a3.plot(x, by_load.requests_per_s, marker="x", ls="--", label=f"{server} all requests")
    a3.set_xticks(range(len(loads)), loads)
    a1.set(xlabel="output tokens/s", ylabel="TTFT (ms)", title="TTFT against throughput")
    a2.set(xlabel="output tokens/s", ylabel="TPOT (ms)", title="TPOT against throughput")
    a3.set(xlabel="load point", ylabel="requests/s", title="goodput against load")
    for ax in (a1, a2, a3):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def sections(df, plots_dir: Path) -> list[dict]:
    if df.empty:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for (model, ps), g in df.groupby(["model", "prompt_set"], sort=True):
        ok = g[g.status == "ok"]
        out.append({"model": model, "prompt_set": ps, "table": table(g),
                    "plot": plot(g, plots_dir / f"serving__{model}__{ps}.png") if not ok.empty else None,
                    "prompt_tokens": g.prompt_tokens_mean.dropna().mean(),
                    "max_new_tokens": sorted(set(g.max_new_tokens)), "devices": sorted(set(g.device)),
                    "slo": sorted(set(ok.slo.dropna())),
                    "client_floor": (ok.client_floor_ttft_ms.median(), ok.client_floor_itl_ms.median())})
    return out


def comparison(static_df, serving_df) -> list[dict]:
    """Static-batch cells and serving points of the same model, prompt set and new tokens, in one table:
    output tokens/s, TTFT p50, TPOT p50, e2e p50."""
    from tabulate import tabulate

    if static_df.empty or serving_df.empty:
        return []
    out = []
    keys = ["model", "prompt_set", "max_new_tokens"]
    st, sv = static_df[static_df.status == "ok"], serving_df[serving_df.status == "ok"]
    for key, g in sv.groupby(keys, sort=True):
        s = st[(st.model == key[0]) & (st.prompt_set == key[1]) & (st.max_new_tokens == key[2])]
        if s.empty:
            continue
        rows = [[f"`{r.engine}` (static)", f"batch {r.batch_size}", _fmt(r.output_tokens_per_s), _fmt(r.ttft_ms_p50),
                 _fmt(r.tpot_ms_p50, 2), _fmt(r.e2e_s_p50, 3)] for r in s.itertuples()]
        rows += [[f"`{r.server}` (server)", r.load, _fmt(r.output_tokens_per_s), _fmt(r.ttft_ms_p50),
                  _fmt(r.tpot_ms_p50, 2), _fmt(r.e2e_s_p50, 3)] for r in g.itertuples()]
        out.append({"model": key[0], "prompt_set": key[1], "max_new_tokens": int(key[2]),
                    "table": tabulate(rows, headers=["engine or server", "batch or load", "output tok/s",
                                                     "TTFT p50 ms", "TPOT p50 ms", "e2e p50 s"],
                                      tablefmt="github", disable_numparse=True)})
    return out


def findings(df) -> list[str]:
    out = []
    if df.empty:
        return out
    for (model, ps, server), g in df[df.status == "ok"].groupby(["model", "prompt_set", "server"], sort=True):
        best = g.loc[g.output_tokens_per_s.idxmax()]
        line = (f"`{server}` serving `{model}` / `{ps}`: most output tokens/s at load `{best.load}` "
                f"({best.output_tokens_per_s:.1f}, TTFT p90 {best.ttft_ms_p90:.0f} ms)")
        if best.slo:
            good = g.loc[g.goodput_requests_per_s.idxmax()]
            line += f"; most goodput ({best.slo}) at `{good.load}`: {good.goodput_requests_per_s:.2f} requests/s"
        out.append(line + ".")
    for r in df[df.repeated_prompts > 0].itertuples():
        out.append(f"`{r.server}` on `{r.model}` / `{r.prompt_set}` / load `{r.load}`: {r.repeated_prompts} of "
                   f"{int(r.requests)} measured requests repeat a prompt (the set has fewer prompts than the "
                   "point sent): a server that caches prefixes answers those faster; give the set at least "
                   "as many prompts as warm-up and measured requests together, or turn prefix caching off.")
    chunked = df[df.itl_null_reason.notna()] if "itl_null_reason" in df else df.iloc[0:0]
    for (server, model), g in chunked.groupby(["server", "model"], sort=True):
        out.append(f"`{server}` on `{model}`: ITL is n/a at {', '.join(f'`{x}`' for x in g.load)}: "
                   f"{g.itl_null_reason.iloc[0]}; TTFT is the time to the first streamed text.")
    for r in df[df.status != "ok"].itertuples():
        out.append(f"`{r.server}` on `{r.model}` / `{r.prompt_set}` / load `{r.load}` was not run: "
                   f"{r.status} ({r.reason}).")
    from inference_optim_llm.report import verdict_findings
    return out + verdict_findings(df, lambda r: f"`{r.server}` on `{r.model}` / `{r.prompt_set}` / load `{r.load}`")
