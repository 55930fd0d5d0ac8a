"""From token timestamps to the figures users compare: TTFT, TPOT, latency, throughput."""
from __future__ import annotations

from dataclasses import dataclass

from inference_optim_llm.stats import summarize


class TokenCountError(RuntimeError):
    """A request generated a number of tokens other than the one asked for."""


@dataclass
class RequestTiming:
    ttft_s: float | None       # submit to first token
    tpot_s: float | None       # mean time per output token after the first
    e2e_s: float               # submit to last token
    output_tokens: int
    tps: float                 # output tokens / e2e


def request_timing(token_times_s: list[float], output_tokens: int, batch_e2e_s: float) -> RequestTiming:
    """token_times_s: seconds after submission at which each token was available (may be empty when
    per-token timing was off; then TTFT and TPOT are None and the batch's end-to-end time is used)."""
    if token_times_s:
        if len(token_times_s) != output_tokens:
            raise ValueError(f"{len(token_times_s)} timestamps for {output_tokens} tokens")
        ttft = token_times_s[0]
        tpot = (token_times_s[-1] - ttft) / (output_tokens - 1) if output_tokens > 1 else None
        e2e = token_times_s[-1]
    else:
        ttft, tpot, e2e = None, None, batch_e2e_s
    return RequestTiming(ttft, tpot, e2e, output_tokens, output_tokens / e2e if e2e > 0 else float("nan"))


def check_token_counts(tokens: list[list[int]], requested: int) -> None:
    bad = [(i, len(t)) for i, t in enumerate(tokens) if len(t) != requested]
    if bad:
        shown = ", ".join(f"request {i}: {n}" for i, n in bad[:5])
        raise TokenCountError(f"{len(bad)} request(s) did not generate exactly {requested} tokens ({shown})")


def aggregate(requests: list[dict], batches: list[dict]) -> dict:
    """Per-target figures: per-request distributions and per-batch throughput."""
    def col(rows, key):
        return [r[key] for r in rows if r.get(key) is not None]

    return {
        "ttft_s": summarize(col(requests, "ttft_s")),
        "tpot_s": summarize(col(requests, "tpot_s")),
        "e2e_s": summarize(col(requests, "e2e_s")),
        "request_tokens_per_s": summarize(col(requests, "tps")),
        # Throughput of a static batch: all its output tokens over its wall time.
        "output_tokens_per_s": summarize(col(batches, "output_tokens_per_s")),
        "requests_per_s": summarize(col(batches, "requests_per_s")),
    }


def token_agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    """Exact-match rate against reference token ids of the same prompts, and where they first part."""
    if len(tokens) != len(reference):
        raise ValueError(f"{len(tokens)} outputs against {len(reference)} reference outputs")
    first_div: list[int | None] = []
    for out, ref in zip(tokens, reference):
        n = min(len(out), len(ref))
        d = next((k for k in range(n) if out[k] != ref[k]), None)
        if d is None and len(out) != len(ref):
            d = n
        first_div.append(d)
    parted = [d for d in first_div if d is not None]
    return {
        "exact_match_rate": sum(d is None for d in first_div) / len(first_div) if first_div else None,
        "first_divergence": min(parted) if parted else None,
        "first_divergence_per_prompt": first_div,
    }
