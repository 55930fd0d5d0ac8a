"""Enough measurement and a disturbed run said so: the stopping rule and the verdict (pure logic), NVML's
throttle reasons by name, energy above idle, and a real CPU hog beside a real benchmark."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from inference_optim_llm.interference import verdict
from inference_optim_llm.scenarios.static_batches import stopping
from inference_optim_llm.telemetry import Sample, summarize_samples, throttle_names


def _spec(**kw):
    base = dict(repetitions=2, min_measure_s=0, ci_target_rel=0, max_repetitions=100, max_measure_s=300)
    return SimpleNamespace(**{**base, **kw})


def test_stopping_without_a_target_is_the_repetitions():
    assert stopping(1, 1.0, [10.0, 11.0], _spec()) is None
    assert stopping(2, 2.0, [10.0] * 4, _spec())["reason"] == "repetitions done"


def test_stopping_goes_on_until_the_interval_is_narrow_enough():
    rng = np.random.default_rng(0)
    spec = _spec(ci_target_rel=0.02)
    values = list(rng.normal(100, 10, 4))                    # ±10 % noise: 4 batches are not enough
    assert stopping(2, 1.0, values, spec) is None
    many = list(rng.normal(100, 10, 400))                    # the median's interval narrows as 1/sqrt(n)
    stop = stopping(200, 100.0, many, spec)
    assert stop["reason"] == "target met" and stop["half_width_rel"] <= 0.02


def test_stopping_respects_the_minimum_time_and_the_caps():
    steady = [100.0] * 10
    assert stopping(2, 1.0, steady, _spec(min_measure_s=5)) is None
    assert stopping(2, 6.0, steady, _spec(min_measure_s=5))["reason"] == "target met"
    noisy = list(np.random.default_rng(1).normal(100, 30, 20))
    assert stopping(5, 10.0, noisy, _spec(ci_target_rel=0.001, max_repetitions=5))["reason"].startswith("repetition cap")
    assert stopping(3, 301.0, noisy, _spec(ci_target_rel=0.001))["reason"].startswith("time cap")


def test_verdict_reasons_and_order():
    cpu = {"other_cpu_cores": 1.4, "load_average_1m": 3.2, "cpu_count": 2}
    v = verdict(cpu, None, ["gpu_idle"], 0.01, 0.5, 0.1)
    assert v["status"] == "interfered" and "1.40 CPU cores" in v["reasons"][0]
    v = verdict({"other_cpu_cores": 0.1, "load_average_1m": 0.5, "cpu_count": 2}, None,
                ["gpu_idle", "sw_power_cap"], 0.3, 0.5, 0.1)
    assert v["status"] == "throttled" and len(v["reasons"]) == 2 and "±30.0 %" in v["reasons"][1]
    assert verdict(None, {"busy": True, "other_processes": [{"pid": 7}]}, None, None, 0.5, 0.1)["status"] == "interfered"
    assert verdict(None, None, ["gpu_idle", "applications_clocks_setting"], 0.05, 0.5, 0.1) == {
        "status": "ok", "reasons": [], "notes": [], "cpu": None,
        "throttle_reasons": ["gpu_idle", "applications_clocks_setting"]}


def test_power_cap_counts_as_throttled_only_when_the_clock_fell():
    """The H200's 8B cells at batch 16 (2026-11-28) set sw_power_cap with the SM clock at 99.8 % of its
    maximum: a note. Below 99 %, or with the clock unknown, or with a thermal reason: throttled."""
    held = verdict(None, None, ["sw_power_cap"], 0.01, 0.5, 0.1, (1975.8, 1980.0))
    assert held["status"] == "ok" and held["reasons"] == []
    assert "99.8 %" in held["notes"][0] and "not counted" in held["notes"][0]
    fell = verdict(None, None, ["sw_power_cap"], 0.01, 0.5, 0.1, (1900.0, 1980.0))
    assert fell["status"] == "throttled" and "96.0 %" in fell["reasons"][0] and fell["notes"] == []
    assert verdict(None, None, ["sw_power_cap"], 0.01, 0.5, 0.1)["status"] == "throttled"
    hot = verdict(None, None, ["sw_power_cap", "sw_thermal_slowdown"], 0.01, 0.5, 0.1, (1979.0, 1980.0))
    assert hot["status"] == "throttled"


class _FakeNvml:
    """A fake NVML for a unit test of idle_power's pure logic: readings fall, as NVML's one-second power
    average does after work ends."""
    def __init__(self, readings):
        self.readings = iter(readings)
    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetHandleByIndex(self, i): return "h"
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetPowerUsage(self, h): return next(self.readings, 125_000)


def test_idle_power_is_the_lowest_reading_of_its_window(monkeypatch):
    import sys
    from inference_optim_llm.telemetry import idle_power
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml([340_000, 250_000, 180_000, 130_000]))
    watts, why = idle_power(0.3, interval_s=0.01)
    assert watts == 125.0 and why is None
    assert idle_power(0, 0.01) == (None, "idle power was not measured (benchmark.idle_power_s 0)")


def test_throttle_reasons_seen_over_the_samples_and_idle_power():
    samples = [Sample(t=0.0, power_w=300.0, throttle_mask=0x0), Sample(t=1.0, power_w=320.0, throttle_mask=0x4),
               Sample(t=2.0, power_w=310.0, throttle_mask=0x40 | 0x1000)]
    rep = summarize_samples(samples, 630.0, None, 1000.0, sm_clock_max_mhz=1980.0, idle_power_w=70.0)
    assert rep.values["throttle_reasons"] == ["sw_power_cap", "hw_thermal_slowdown", "unknown_0x1000"]
    assert rep.values["idle_power_w"] == 70.0 and rep.values["sm_clock_max_mhz"] == 1980.0
    assert throttle_names(0x1) == ["gpu_idle"]
    from inference_optim_llm.results import telemetry_of
    tel = telemetry_of(rep, 100)
    assert tel["energy_above_idle_j"] == pytest.approx(630.0 - 70.0 * 2.0)
    assert tel["energy_above_idle_per_token_j"] == pytest.approx(4.9)
    none = telemetry_of(summarize_samples([], None, "no GPU", None), 100)
    assert none["energy_above_idle_j"] is None and none["null_reasons"]["energy_above_idle_j"]


HOG = "import time\nt = time.time()\nwhile time.time() - t < 120: pass\n"


@pytest.mark.slow
def test_a_cpu_hog_beside_a_benchmark_is_flagged(tmp_path):
    """Two busy processes beside a real benchmark (the synthetic tiny model on the CPU): the cell's verdict
    is interfered, naming the other processes' CPU use."""
    from inference_optim_llm.models import download_model
    from inference_optim_llm.report import load_result

    model = tmp_path / "tiny"
    download_model("tiny", "synthetic:llama-tiny", model, download_dir=tmp_path / "dl")
    (tmp_path / "p.txt").write_text("one prompt\nanother prompt\n")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
    try:
        proc = subprocess.run([sys.executable, "-m", "inference_optim_llm", "run", "baseline", "--prompts-file",
                               str(tmp_path / "p.txt"), "--model-dir", str(model), "--model-name", "tiny",
                               "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "16", "--repetitions", "20",
                               "--warmup", "1", "--batch-size", "1", "--save-result", str(tmp_path / "r.json")],
                              capture_output=True, text=True, timeout=600)
    finally:
        for h in hogs:
            h.kill()
    assert proc.returncode == 0, proc.stderr[-2000:]
    v = load_result(tmp_path / "r.json")["verdict"]
    assert v["status"] == "interfered", v
    assert "other processes used" in v["reasons"][0] and v["cpu"]["other_cpu_cores"] > 0.5
