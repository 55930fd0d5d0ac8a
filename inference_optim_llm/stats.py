"""Summary statistics used for every figure in a result."""
from __future__ import annotations

import math
from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """median, p90, p99, mean, std (sample, n-1; None for one value), min, max, n. All None for no values."""
    n = len(values)
    if n == 0:
        return {k: None for k in ("median", "p90", "p99", "mean", "std", "min", "max")} | {"n": 0}
    mean = sum(values) / n
    # The spread of a single value is undefined: None, not 0.
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"median": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}
