"""Telemetry summary logic (with fake samples) and the real NVML fallback on a machine without a GPU."""
from __future__ import annotations

import pytest

from inference_optim_llm.telemetry import (FIELDS, NvmlSampler, Sample, TelemetryReport, integrate_power,
                                           summarize_samples, unavailable)


def fake_samples() -> list[Sample]:
    """Hand-made samples standing in for NVML reads (pure-logic unit test only): 1 s apart,
    utilisation never readable."""
    return [
        Sample(t=10.0, memory_mb=1000.0, power_w=100.0, sm_clock_mhz=1500.0, temperature_c=50.0),
        Sample(t=11.0, memory_mb=1500.0, power_w=200.0, sm_clock_mhz=1700.0, temperature_c=55.0),
        Sample(t=12.0, memory_mb=1200.0, power_w=300.0, sm_clock_mhz=1800.0, temperature_c=61.0),
        Sample(t=13.0, memory_mb=1100.0, power_w=200.0, sm_clock_mhz=1800.0, temperature_c=58.0),
    ]


# trapezoids: (100+200)/2 + (200+300)/2 + (300+200)/2 = 150 + 250 + 250
FAKE_INTEGRATED_J = 650.0


def assert_every_null_has_a_reason(rep: TelemetryReport) -> None:
    for k in FIELDS:
        if rep.values[k] is None:
            assert rep.null_reasons.get(k), f"{k} is None without a reason"
        else:
            assert k not in rep.null_reasons, f"{k} has a value and a null reason"


# -- summarize_samples --------------------------------------------------------------------------------

def test_summarize_samples_figures():
    rep = summarize_samples(fake_samples(), energy_counter_j=None, counter_reason="not supported",
                            start_memory_mb=950.0)
    v = rep.values
    assert v["gpu_memory_peak_mb"] == 1500.0
    assert v["gpu_memory_start_mb"] == 950.0
    assert v["power_mean_w"] == pytest.approx(200.0)        # (100 + 200 + 300 + 200) / 4
    assert v["power_max_w"] == 300.0
    assert v["sm_clock_mean_mhz"] == pytest.approx(1700.0)  # 6800 / 4
    assert v["temperature_max_c"] == 61.0
    assert rep.samples == 4
    assert rep.duration_s == pytest.approx(3.0)
    assert_every_null_has_a_reason(rep)


def test_energy_counter_wins_over_integration():
    rep = summarize_samples(fake_samples(), energy_counter_j=700.0, counter_reason=None, start_memory_mb=950.0)
    assert rep.values["energy_j"] == pytest.approx(700.0)
    assert rep.energy_source == "counter"
    assert "energy_j" not in rep.null_reasons


def test_energy_counter_reading_zero_is_a_figure_not_missing():
    rep = summarize_samples(fake_samples(), energy_counter_j=0.0, counter_reason=None, start_memory_mb=None)
    assert rep.values["energy_j"] == 0.0
    assert rep.energy_source == "counter"


def test_energy_without_counter_is_integrated_power():
    rep = summarize_samples(fake_samples(), energy_counter_j=None, counter_reason="NotSupported",
                            start_memory_mb=950.0)
    assert rep.values["energy_j"] == pytest.approx(FAKE_INTEGRATED_J)
    assert rep.energy_source == "integrated_power"
    assert "energy_j" not in rep.null_reasons


def test_field_never_read_is_none_with_reason_never_zero():
    rep = summarize_samples(fake_samples(), energy_counter_j=None, counter_reason="x", start_memory_mb=None)
    assert rep.values["utilization_mean_pct"] is None          # no fake sample has utilisation
    assert rep.null_reasons["utilization_mean_pct"]
    assert rep.values["gpu_memory_start_mb"] is None
    assert "start" in rep.null_reasons["gpu_memory_start_mb"]
    assert_every_null_has_a_reason(rep)
    d = rep.as_dict()
    assert d["utilization_mean_pct"] is None and d["null_reasons"]["utilization_mean_pct"]


def test_fields_missing_in_some_samples_use_the_others():
    samples = [Sample(t=0.0, power_w=100.0, utilization_pct=None),
               Sample(t=1.0, power_w=None, utilization_pct=40.0),
               Sample(t=2.0, power_w=300.0, utilization_pct=60.0)]
    rep = summarize_samples(samples, None, "n/a", None)
    assert rep.values["power_mean_w"] == pytest.approx(200.0)
    assert rep.values["utilization_mean_pct"] == pytest.approx(50.0)
    assert rep.values["energy_j"] == pytest.approx(400.0)        # (2 - 0) * (100 + 300) / 2
    assert rep.values["gpu_memory_peak_mb"] is None and rep.null_reasons["gpu_memory_peak_mb"]


def test_no_samples_gives_none_and_reasons():
    rep = summarize_samples([], energy_counter_j=None, counter_reason="NVMLError_NotSupported",
                            start_memory_mb=None)
    assert rep.samples == 0
    assert rep.duration_s is None
    assert rep.energy_source is None
    for k in FIELDS:
        assert rep.values[k] is None, k
        assert rep.null_reasons[k], k
    assert "no sample" in rep.null_reasons["power_mean_w"]
    assert "NVMLError_NotSupported" in rep.null_reasons["energy_j"]


def test_one_power_sample_and_no_counter_gives_no_energy():
    rep = summarize_samples([Sample(t=0.0, power_w=150.0)], None, "not supported", None)
    assert rep.values["power_mean_w"] == 150.0
    assert rep.values["energy_j"] is None
    assert "not supported" in rep.null_reasons["energy_j"]
    assert rep.energy_source is None


# -- integrate_power ----------------------------------------------------------------------------------

def test_integrate_power_trapezoidal():
    assert integrate_power(fake_samples()) == pytest.approx(FAKE_INTEGRATED_J)


def test_integrate_power_uneven_intervals():
    samples = [Sample(t=0.0, power_w=100.0), Sample(t=0.5, power_w=100.0), Sample(t=2.0, power_w=400.0)]
    assert integrate_power(samples) == pytest.approx(0.5 * 100 + 1.5 * 250)   # 425 J


def test_integrate_power_skips_unread_samples():
    samples = [Sample(t=0.0, power_w=100.0), Sample(t=1.0), Sample(t=2.0, power_w=300.0)]
    assert integrate_power(samples) == pytest.approx(400.0)


@pytest.mark.parametrize("samples", [[], [Sample(t=0.0, power_w=10.0)], [Sample(t=0.0), Sample(t=1.0)]])
def test_integrate_power_needs_two_power_samples(samples):
    assert integrate_power(samples) is None


# -- unavailable --------------------------------------------------------------------------------------

def test_unavailable_puts_the_reason_on_every_field():
    rep = unavailable("not measured: oom")
    assert set(rep.null_reasons) == set(FIELDS)
    assert all(r == "not measured: oom" for r in rep.null_reasons.values())
    assert all(rep.values[k] is None for k in FIELDS)
    assert rep.energy_source is None and rep.samples == 0
    d = rep.as_dict()
    assert all(d[k] is None for k in FIELDS)
    assert d["null_reasons"] == {k: "not measured: oom" for k in FIELDS}


# -- the real sampler on this machine ---------------------------------------------------------------

def _nvml_works() -> bool:
    try:
        import pynvml
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_nvml_works(), reason="NVML works here: this test is about the no-GPU fallback")
def test_real_nvml_sampler_without_gpu_reports_none_with_reason():
    with NvmlSampler(interval_s=0.01) as sampler:
        sum(range(10000))
    rep = sampler.report
    assert rep is not None
    assert rep.interval_s == 0.01
    assert rep.samples == 0
    assert rep.energy_source is None
    for k in FIELDS:
        assert rep.values[k] is None, f"{k} should be None without NVML, got {rep.values[k]!r}"
        assert "nvml" in rep.null_reasons[k].lower(), rep.null_reasons[k]
    d = rep.as_dict()
    assert all(d[k] is None for k in FIELDS)
