"""Summary statistics used for every figure in a result, with the uncertainty of the median."""
from __future__ import annotations

import math
from typing import Sequence

BOOTSTRAP_RESAMPLES = 2000
LEVEL = 0.95


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _resampled_medians(values: Sequence[float], resamples: int, seed: int):
    """Medians of `resamples` bootstrap resamples (drawn with replacement, same size), seeded."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    out = []
    step = max(1, 2_000_000 // len(x))          # bounded memory: at most ~16 MB of indices at once
    for start in range(0, resamples, step):
        idx = rng.integers(0, len(x), size=(min(step, resamples - start), len(x)))
        out.append(np.median(x[idx], axis=1))
    return np.concatenate(out)


def median_ci(values: Sequence[float], level: float = LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = 0) -> dict | None:
    """Percentile-bootstrap confidence interval of the median: {low, high, half_width_rel, level,
    resamples}. None for fewer than two values (no spread to resample). half_width_rel is half the
    interval's width over the median (None when the median is 0)."""
    if len(values) < 2:
        return None
    import numpy as np

    meds = _resampled_medians(values, resamples, seed)
    low, high = (float(v) for v in np.percentile(meds, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))
    med = percentile(values, 50)
    return {"low": low, "high": high, "half_width_rel": (high - low) / 2 / abs(med) if med else None,
            "level": level, "resamples": resamples}


def median_ci_order(values: Sequence[float], z: float = 1.96) -> dict | None:
    """The median's distribution-free 95 % interval from order statistics (the ranks n/2 -+ z*sqrt(n)/2):
    {low, high, half_width_rel}. One sort, no resampling: cheap enough to ask after every few requests of a
    serving point (the bootstrap of median_ci, at 2000 resamples of 10^4 requests, stalls an event loop
    whose clock times the streams). None under 3 values; half_width_rel None where the median is 0."""
    n = len(values)
    if n < 3:
        return None
    xs = sorted(values)
    lo = max(0, math.floor(n / 2 - z * math.sqrt(n) / 2) - 1)
    hi = min(n - 1, math.ceil(n / 2 + z * math.sqrt(n) / 2))
    med = percentile(xs, 50)
    return {"low": xs[lo], "high": xs[hi], "half_width_rel": (xs[hi] - xs[lo]) / 2 / abs(med) if med else None}


def ratio_ci(numerator: Sequence[float], denominator: Sequence[float], level: float = LEVEL,
             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict | None:
    """Bootstrap interval of median(numerator) / median(denominator), the two samples resampled
    independently (two cells measured apart): the uncertainty of a speedup."""
    if len(numerator) < 2 or len(denominator) < 2:
        return None
    import numpy as np

    ratios = _resampled_medians(numerator, resamples, seed) / _resampled_medians(denominator, resamples, seed + 1)
    low, high = (float(v) for v in np.percentile(ratios, [100 * (1 - level) / 2, 100 * (1 + level) / 2]))
    value = percentile(numerator, 50) / percentile(denominator, 50)
    return {"value": value, "low": low, "high": high, "half_width_rel": (high - low) / 2 / value,
            "level": level, "resamples": resamples}


def summarize(values: Sequence[float], ci: bool = True) -> dict[str, float | int | None]:
    """median, p90, p99, mean, std (sample, n-1; None for one value), min, max, n, and ci95 (the median's
    bootstrap interval, median_ci; None for fewer than two values). All None for no values."""
    n = len(values)
    if n == 0:
        return {k: None for k in ("median", "p90", "p99", "mean", "std", "min", "max", "ci95")} | {"n": 0}
    mean = sum(values) / n
    # The spread of a single value is undefined: None, not 0.
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"median": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "mean": mean, "std": std, "min": min(values), "max": max(values), "n": n,
            "ci95": median_ci(values) if ci else None}
