"""On the GPU machine: what a static batch's TTFT includes, and the compiled engine's fp32 forward on CUDA.

    python benchmarks/ttft_check.py --model-dir DIR_1B --tiny-dir DIR_TINY --out ttft.json

1. TTFT of the compiled engine at its defaults (batch 1, a 64-token prompt, 200 new tokens, bf16), rounds
   interleaved so that a drift favours no clock:
   - pipeline: generate()'s first token time, the clock results carry (engines/timing.py: the host's clock
     from generate()'s call, the prompt's token ids on the host, to the first token on the host)
   - events: the clock results carried before: a CUDA event at generate()'s call and one after the prefill
     (no host sync: the token exists on the device, it is not yet on the host)
   - phases: the same work as generate() up to its first token, each phase ended by a host sync: the
     padded prompt built on the host and copied (pad_left), the mask and positions (setup), the prefill,
     the first token copied to the host
   - prefill alone: inputs already on the device and synced, then the prefill and the first token to the host
     (what a check timed from outside the pipeline's clock reads)
   The pipeline's TPOT gives TTFT in decode steps. And a probe: two timing events around host work alone
   (a 1 ms wait, the prompt's copy to the device, one kernel) against the host's clock over the same span.
2. fp32 on CUDA: compiled (eager prefill, torch's kernels; and eager prefill at its default kernels) against
   baseline, both fp32, 16 new tokens of 4 prompts, on the tiny shapes and the 1B shapes: it runs, and the
   tokens agree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from inference_optim_llm.engines import engine_class
from inference_optim_llm.engines.baseline import pad_left
from inference_optim_llm.engines.compiled import prompt_width
from inference_optim_llm.models import model_facts
from inference_optim_llm.prompts import random_token_ids
from inference_optim_llm.spec import shape_settings


def up_to_first_token(e, prompts, mark) -> None:
    """What CompiledEngine.generate and run_batch do up to the first token, `mark(phase)` after each phase."""
    ids, mask = pad_left(prompts, e.pad_id, e.settings.device)
    mark("pad_left")
    W = prompt_width(ids.shape[1], e.prefill_mode)
    mask = e.share_batch(ids, mask, 200)
    if W > ids.shape[1]:
        ids = F.pad(ids, (W - ids.shape[1], 0), value=e.pad_id)
        mask = F.pad(mask, (W - mask.shape[1], 0), value=0)
    B, P = ids.shape
    valid = e.net.valid
    valid.fill_(True)
    valid[:, :P] = mask.bool()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    _ = positions[:, -1:] + 1
    out = torch.empty(B, 200, dtype=torch.long, device=ids.device)
    mark("setup")
    with torch.no_grad():
        tok = e.prefill(ids, positions, e.net.kv_index[:P], valid)
        out[:, 0] = tok
    mark("prefill")
    out[:, 0].cpu()
    mark("to_host")
    return ids, positions, valid, P


def phases(e, prompts) -> dict:
    torch.cuda.synchronize()
    t = [time.perf_counter()]
    names = []

    def mark(name):
        torch.cuda.synchronize()
        t.append(time.perf_counter())
        names.append(name)
    up_to_first_token(e, prompts, mark)
    return {n: b - a for n, a, b in zip(names, t, t[1:])} | {"total": t[-1] - t[0]}


def events_ttft(e, prompts) -> float:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()

    def mark(name):
        if name == "prefill":
            end.record()
    up_to_first_token(e, prompts, mark)
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def prefill_alone(e, prompts) -> float:
    ids, positions, valid, P = up_to_first_token(e, prompts, lambda name: None)
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        tok = e.prefill(ids, positions, e.net.kv_index[:P], valid)
    tok.cpu()
    return time.perf_counter() - t


def ttft(model_dir: Path, rounds: int) -> dict:
    s = shape_settings(model_dir, "compiled", 1, 64, 200, "cuda", "bfloat16")
    e = engine_class("compiled")(s)
    e.load()
    prompts = random_token_ids(64, 1, model_facts(model_dir)["vocab_size"], seed=0)
    for _ in range(3):
        e.generate(prompts, 200)
    rows = []
    for r in range(rounds):
        out = e.generate(prompts, 200)
        times = out.token_times_s[0]
        rows.append({"pipeline": times[0], "tpot": (times[-1] - times[0]) / 199, "e2e": out.e2e_s,
                     "events": events_ttft(e, prompts), "prefill_alone": prefill_alone(e, prompts),
                     **{f"phase_{k}": v for k, v in phases(e, prompts).items()}})
    e.close()
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    spread = {k: (min(row[k] for row in rows), max(row[k] for row in rows)) for k in rows[0]}
    return {"kernels": e.kernel_set, "prefill": e.prefill_mode, "rounds": rounds,
            "median_ms": {k: v * 1e3 for k, v in med.items()},
            "min_max_ms": {k: [a * 1e3, b * 1e3] for k, (a, b) in spread.items()},
            "pipeline_ttft_in_decode_steps": med["pipeline"] / med["tpot"],
            "events_ttft_in_decode_steps": med["events"] / med["tpot"], "rows": rows}


def fp32(model_dir: Path) -> dict:
    prompts = random_token_ids(16, 4, model_facts(model_dir)["vocab_size"], seed=3)
    out = {}
    for name, options in (("baseline", {}), ("compiled eager torch", {"prefill": "eager", "kernels": "torch"}),
                          ("compiled eager", {"prefill": "eager"})):
        engine = name.split()[0]
        try:
            torch._dynamo.reset()
            e = engine_class(engine)(shape_settings(model_dir, engine, 4, 16, 16, "cuda", "float32", options))
            e.load()
            out[name] = {"tokens": e.generate(prompts, 16).tokens, "error": None}
            e.close()
        except Exception as exc:   # what the check reports: the error itself, with its place
            out[name] = {"tokens": None, "error": f"{type(exc).__name__}: {exc}",
                         "where": traceback.format_exc().splitlines()[-4:]}
    ref = out["baseline"]["tokens"]
    for name, r in out.items():
        r["agrees_with_baseline"] = r["tokens"] == ref if r["tokens"] is not None else None
    return out


def event_probe(rounds: int = 20) -> dict:
    """A pair of timing events around host work alone, on an idle GPU, against the host's clock over the
    same span: whether an event interval that starts on an idle device reads the host's time."""
    out = {}
    for name, work in (("host wait 1 ms", lambda: _spin(1e-3)),
                       ("prompt to the device", lambda: torch.tensor(list(range(64))).to("cuda")),
                       ("one kernel", lambda: torch.ones(64, device="cuda").sum())):
        rows = []
        for _ in range(rounds):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t = time.perf_counter()
            start.record()
            work()
            end.record()
            end.synchronize()
            rows.append((time.perf_counter() - t, start.elapsed_time(end) / 1e3))
        out[name] = {"host_ms": statistics.median(r[0] for r in rows) * 1e3,
                     "events_ms": statistics.median(r[1] for r in rows) * 1e3}
    return out


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True, help="the 1B shapes (synthetic:llama-3.2-1b)")
    ap.add_argument("--tiny-dir", required=True, help="the tiny shapes (synthetic:llama-tiny)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", required=True)
    ap.add_argument("--probe-only", action="store_true", help="only the event probe")
    a = ap.parse_args()
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res["event_probe"] = event_probe()
    print(json.dumps(res["event_probe"]), flush=True)
    if a.probe_only:
        return Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    res["fp32"] = {m.name: fp32(m) for m in (Path(a.tiny_dir), Path(a.model_dir))}
    print(json.dumps({m: {k: (v["error"], v["agrees_with_baseline"]) for k, v in r.items()}
                      for m, r in res["fp32"].items()}), flush=True)
    torch._dynamo.reset()
    res["ttft"] = ttft(Path(a.model_dir), a.rounds)
    print(json.dumps({k: v for k, v in res["ttft"].items() if k != "rows"}, indent=1), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
