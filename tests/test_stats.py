"""percentile and summarize: the statistics behind every figure in a result."""
from __future__ import annotations

import math

import numpy as np
import pytest

from inference_optim_llm.stats import percentile, summarize

SUMMARY_KEYS = {"median", "p90", "p99", "mean", "std", "min", "max", "n", "ci95"}


# -- percentile ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, q, expected", [
    ([5.0], 0, 5.0),                 # single value: every percentile is that value
    ([5.0], 50, 5.0),
    ([5.0], 99, 5.0),
    ([3.0, 1.0, 2.0], 50, 2.0),      # odd count, unsorted input: the middle value
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # even count: mean of the two middle values
    ([1.0, 2.0, 3.0, 4.0], 90, 3.7),  # pos = 3 * 0.9 = 2.7 -> 3 + 0.7 * (4 - 3)
    ([1.0, 2.0, 3.0, 4.0], 25, 1.75),  # pos = 0.75 -> 1 + 0.75 * (2 - 1)
    ([10.0, 20.0, 30.0, 40.0, 50.0], 99, 49.6),  # pos = 4 * 0.99 = 3.96 -> 40 + 0.96 * 10
    ([10.0, 20.0], 0, 10.0),          # q = 0 is the minimum
    ([10.0, 20.0], 100, 20.0),        # q = 100 is the maximum
])
def test_percentile_hand_cases(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize("values", [
    [5.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [0.12, 0.5, 0.31, 0.07, 0.9, 0.44],
    [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0],
])
@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear_method(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q, method="linear")))


def test_percentile_does_not_reorder_the_callers_list():
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


def test_percentile_of_no_values_raises():
    with pytest.raises(ValueError):
        percentile([], 50)


# -- summarize ----------------------------------------------------------------------------------------

def test_summarize_hand_computed():
    # sorted: 2 4 4 4 5 5 7 9; mean 40/8 = 5; squared deviations 9+1+1+1+0+0+4+16 = 32; sample var 32/7
    s = summarize([9.0, 2.0, 4.0, 5.0, 4.0, 7.0, 4.0, 5.0])
    assert set(s) == SUMMARY_KEYS
    assert s["n"] == 8
    assert s["median"] == pytest.approx(4.5)
    assert s["p90"] == pytest.approx(7.6)     # pos 6.3 -> 7 + 0.3 * 2
    assert s["p99"] == pytest.approx(8.86)    # pos 6.93 -> 7 + 0.93 * 2
    assert s["mean"] == pytest.approx(5.0)
    assert s["std"] == pytest.approx(math.sqrt(32 / 7))   # sample std (n - 1), not population
    assert s["std"] != pytest.approx(2.0)                 # population std would be sqrt(32/8) = 2
    assert s["min"] == 2.0
    assert s["max"] == 9.0


def test_summarize_odd_count():
    s = summarize([0.3, 0.1, 0.2])
    assert s["median"] == pytest.approx(0.2)
    assert s["mean"] == pytest.approx(0.2)
    assert s["std"] == pytest.approx(0.1)     # deviations 0.1, 0, 0.1 -> 0.02 / 2 = 0.01
    assert (s["min"], s["max"], s["n"]) == (0.1, 0.3, 3)


def test_summarize_matches_numpy():
    values = [0.12, 0.5, 0.31, 0.07, 0.9, 0.44, 0.61]
    s = summarize(values)
    assert s["median"] == pytest.approx(float(np.median(values)))
    assert s["p90"] == pytest.approx(float(np.percentile(values, 90)))
    assert s["p99"] == pytest.approx(float(np.percentile(values, 99)))
    assert s["mean"] == pytest.approx(float(np.mean(values)))
    assert s["std"] == pytest.approx(float(np.std(values, ddof=1)))


def test_summarize_single_value():
    s = summarize([4.0])
    assert s["n"] == 1
    assert s["median"] == s["p90"] == s["p99"] == s["mean"] == s["min"] == s["max"] == 4.0


def test_summarize_empty_gives_none_figures_and_n_zero():
    s = summarize([])
    assert set(s) == SUMMARY_KEYS
    assert s["n"] == 0
    for key in SUMMARY_KEYS - {"n"}:
        assert s[key] is None, f"{key} must be None for no values, got {s[key]!r}"   # never 0


# -- the median's bootstrap interval -------------------------------------------------------------------

def test_median_ci_covers_the_true_median_about_95_percent_of_the_time():
    """Normal(100, 10) samples of 40: the true median is 100; over 200 seeded samples, the 95 % interval
    holds it in 88 % to 99 % of them (a percentile bootstrap of the median is roughly nominal at this n)."""
    from inference_optim_llm.stats import median_ci

    rng = np.random.default_rng(1)
    hits = sum(ci["low"] <= 100 <= ci["high"]
               for ci in (median_ci(list(rng.normal(100, 10, 40)), resamples=1000, seed=k) for k in range(200)))
    assert 0.88 <= hits / 200 <= 0.99


def test_median_ci_narrows_with_more_values_and_is_seeded():
    from inference_optim_llm.stats import median_ci

    rng = np.random.default_rng(2)
    small, large = list(rng.exponential(1.0, 20)), list(rng.exponential(1.0, 2000))
    assert median_ci(large)["half_width_rel"] < median_ci(small)["half_width_rel"] / 4   # ~ 1 / sqrt(n)
    assert median_ci(small) == median_ci(small) and median_ci([1.0]) is None
    assert median_ci([3.0, 3.0, 3.0]) == {"low": 3.0, "high": 3.0, "half_width_rel": 0.0, "level": 0.95,
                                          "resamples": 2000}


def test_ratio_ci_of_two_cells():
    from inference_optim_llm.stats import ratio_ci

    rng = np.random.default_rng(3)
    fast, slow = list(rng.normal(200, 4, 30)), list(rng.normal(100, 2, 30))
    ci = ratio_ci(fast, slow)
    assert ci["low"] < 2.0 < ci["high"] and ci["value"] == pytest.approx(2.0, rel=0.03)
    assert ci["half_width_rel"] < 0.03 and ratio_ci([1.0], slow) is None


def test_median_order_interval_covers_the_median_about_95_percent():
    """The serving stopping rule's cheap interval (order statistics) on a known distribution: the true median
    (1.0 for a lognormal of mu 0) inside it in about 95 % of 400 samples of 200; None under 3 values."""
    import numpy as np
    from inference_optim_llm.stats import median_ci_order
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(400):
        ci = median_ci_order(list(rng.lognormal(0.0, 0.5, 200)))
        hits += ci["low"] <= 1.0 <= ci["high"]
    assert 0.90 <= hits / 400 <= 0.99
    assert median_ci_order([1.0, 2.0]) is None
    assert median_ci_order([0.0, 0.0, 0.0, 0.0])["half_width_rel"] is None
