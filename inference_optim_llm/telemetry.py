"""GPU telemetry through NVML (nvidia-ml-py), sampled in a background thread.

A figure that could not be read is None and its reason is in `null_reasons`; it is never 0.
Energy comes from the total-energy counter (mJ) where the GPU has one, else from integrating the
sampled power over time (energy_source says which).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

FIELDS = ("gpu_memory_peak_mb", "gpu_memory_start_mb", "power_mean_w", "power_max_w", "energy_j",
          "utilization_mean_pct", "sm_clock_mean_mhz", "sm_clock_max_mhz", "temperature_max_c", "idle_power_w",
          "throttle_reasons")
# NVML's clock event reasons (nvmlClocksEventReason*, formerly ClocksThrottleReason*), by bit.
THROTTLE_BITS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                 0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
                 0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting"}


@dataclass
class Sample:
    t: float
    memory_mb: float | None = None
    power_w: float | None = None
    utilization_pct: float | None = None
    sm_clock_mhz: float | None = None
    temperature_c: float | None = None
    throttle_mask: int | None = None


@dataclass
class TelemetryReport:
    values: dict = field(default_factory=lambda: {k: None for k in FIELDS})
    null_reasons: dict = field(default_factory=dict)
    energy_source: str | None = None     # "counter" or "integrated_power"
    samples: int = 0
    interval_s: float | None = None
    duration_s: float | None = None
    gpu_busy_at_start: dict | None = None  # other processes / memory found before we started

    def as_dict(self) -> dict:
        return {**self.values, "energy_source": self.energy_source, "samples": self.samples,
                "interval_s": self.interval_s, "duration_s": self.duration_s,
                "gpu_busy_at_start": self.gpu_busy_at_start, "null_reasons": self.null_reasons}


def unavailable(reason: str) -> TelemetryReport:
    rep = TelemetryReport()
    rep.null_reasons = {k: reason for k in FIELDS}
    return rep


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def integrate_power(samples: list[Sample]) -> float | None:
    """Trapezoidal integral of power over time, in joules. None with fewer than two power samples."""
    pts = [(s.t, s.power_w) for s in samples if s.power_w is not None]
    if len(pts) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))


def throttle_names(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit] + (
        [f"unknown_0x{mask & ~sum(THROTTLE_BITS):x}"] if mask & ~sum(THROTTLE_BITS) else [])


def summarize_samples(samples: list[Sample], energy_counter_j: float | None,
                      counter_reason: str | None, start_memory_mb: float | None,
                      sm_clock_max_mhz: float | None = None, idle_power_w: float | None = None,
                      extra_reasons: dict | None = None) -> TelemetryReport:
    """Pure logic: turn samples (and the energy counter's difference, if any) into the report."""
    rep = TelemetryReport(samples=len(samples))
    v, why = rep.values, rep.null_reasons

    def put(key, value, reason):
        v[key] = value
        if value is None:
            why[key] = reason

    mem = [s.memory_mb for s in samples if s.memory_mb is not None]
    power = [s.power_w for s in samples if s.power_w is not None]
    util = [s.utilization_pct for s in samples if s.utilization_pct is not None]
    clock = [s.sm_clock_mhz for s in samples if s.sm_clock_mhz is not None]
    temp = [s.temperature_c for s in samples if s.temperature_c is not None]
    none = "no sample could read it" if samples else "no sample was taken (run shorter than one interval)"
    put("gpu_memory_peak_mb", max(mem) if mem else None, none)
    put("gpu_memory_start_mb", start_memory_mb, "memory could not be read at start")
    put("power_mean_w", _mean(power), none)
    put("power_max_w", max(power) if power else None, none)
    put("utilization_mean_pct", _mean(util), none)
    put("sm_clock_mean_mhz", _mean(clock), none)
    put("temperature_max_c", max(temp) if temp else None, none)
    extra = extra_reasons or {}
    put("sm_clock_max_mhz", sm_clock_max_mhz, extra.get("sm_clock_max_mhz", "the maximum SM clock could not be read"))
    put("idle_power_w", idle_power_w, extra.get("idle_power_w", "idle power was not measured"))
    masks = [s.throttle_mask for s in samples if s.throttle_mask is not None]
    seen = 0
    for m in masks:
        seen |= m
    put("throttle_reasons", throttle_names(seen) if masks else None, extra.get("throttle_reasons", none))
    if energy_counter_j is not None:
        v["energy_j"], rep.energy_source = energy_counter_j, "counter"
    else:
        integrated = integrate_power(samples)
        if integrated is not None:
            v["energy_j"], rep.energy_source = integrated, "integrated_power"
        else:
            why["energy_j"] = f"energy counter unavailable ({counter_reason}) and too few power samples"
    if samples:
        rep.duration_s = samples[-1].t - samples[0].t
    return rep


def idle_power(seconds: float, interval_s: float = 0.05, device_index: int = 0) -> tuple[float | None, str | None]:
    """The GPU's idle power: the lowest NVML power reading over `seconds`, taken before the warm-up (the model
    loaded, nothing running). Lowest, not mean: NVML's power is an average over about the last second, so
    readings just after work are still raised by it, and nothing but work raises them (measured on an H200,
    2026-11-28: a window right after the warm-up read up to 340 W where the card idles near 125 W).
    Returns (watts, None) or (None, why)."""
    if seconds <= 0:
        return None, "idle power was not measured (benchmark.idle_power_s 0)"
    s = NvmlSampler(interval_s=interval_s, device_index=device_index)
    s._open()
    if s._handle is None:
        return None, s._unavailable or "no GPU"
    readings, why = [], None
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            p, why = s._read(s._nvml.nvmlDeviceGetPowerUsage)
            if p is not None:
                readings.append(p / 1000.0)
            time.sleep(interval_s)
    finally:
        try:
            s._nvml.nvmlShutdown()
        except Exception:
            pass
    return (min(readings), None) if readings else (None, f"power could not be read ({why})")


class NvmlSampler:
    """Usage: with NvmlSampler(interval_s=0.05) as s: ... ; report = s.report.

    Without nvidia-ml-py, a driver or a GPU, the report holds None figures, each with the reason.
    """

    def __init__(self, interval_s: float = 0.05, device_index: int = 0, own_pids: frozenset[int] = frozenset(),
                 idle: tuple[float | None, str | None] | None = None):
        self.interval_s = interval_s
        self.idle = idle   # idle_power()'s (watts, reason), measured before the warm-up: idle_power_w
        self.own_pids = own_pids | {os.getpid()}   # not "other" processes: this one, the server it started
        self.device_index = device_index
        self.report: TelemetryReport | None = None
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._handle = None
        self._unavailable: str | None = None
        self.busy_at_start: dict | None = None  # busy_state() read before sampling; None without NVML

    # -- setup -----------------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            import pynvml
        except ImportError:
            self._unavailable = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            pynvml.nvmlInit()
        except Exception as e:
            self._unavailable = f"NVML could not start: {e} (no NVIDIA driver or GPU)"
            return
        self._nvml = pynvml
        try:
            self._handle = self._find_handle(pynvml)
        except Exception as e:
            self._unavailable = f"NVML found no handle for CUDA device {self.device_index}: {e}"

    def _find_handle(self, nv):
        """The NVML device that torch's CUDA device is, matched by UUID (CUDA_VISIBLE_DEVICES may
        renumber devices); index 0 of NVML if torch is not using CUDA."""
        try:
            import torch
            if torch.cuda.is_available():
                uuid = str(torch.cuda.get_device_properties(self.device_index).uuid)
                for i in range(nv.nvmlDeviceGetCount()):
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    nv_uuid = nv.nvmlDeviceGetUUID(h)
                    nv_uuid = nv_uuid.decode() if isinstance(nv_uuid, bytes) else nv_uuid
                    if nv_uuid.replace("GPU-", "") == uuid.replace("GPU-", ""):
                        return h
        except Exception:
            pass
        return nv.nvmlDeviceGetHandleByIndex(self.device_index)

    def _read(self, fn, *args):
        try:
            return fn(self._handle, *args), None
        except Exception as e:  # NVMLError_NotSupported and friends
            return None, f"{fn.__name__}: {e}"

    def _sample(self) -> Sample:
        nv = self._nvml
        s = Sample(t=time.perf_counter())
        mem, _ = self._read(nv.nvmlDeviceGetMemoryInfo)
        s.memory_mb = mem.used / 2**20 if mem is not None else None
        p, _ = self._read(nv.nvmlDeviceGetPowerUsage)
        s.power_w = p / 1000.0 if p is not None else None
        u, _ = self._read(nv.nvmlDeviceGetUtilizationRates)
        s.utilization_pct = float(u.gpu) if u is not None else None
        c, _ = self._read(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)
        s.sm_clock_mhz = float(c) if c is not None else None
        t, _ = self._read(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)
        s.temperature_c = float(t) if t is not None else None
        reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        if reasons is not None:
            s.throttle_mask, _ = self._read(reasons)
        return s

    def busy_state(self) -> dict | None:
        """Other processes on this GPU, their memory, and utilisation, read before measuring."""
        if self._handle is None:
            return None
        nv = self._nvml
        procs, _ = self._read(nv.nvmlDeviceGetComputeRunningProcesses)
        others = [{"pid": p.pid, "memory_mb": (p.usedGpuMemory or 0) / 2**20 if p.usedGpuMemory else None}
                  for p in (procs or []) if p.pid not in self.own_pids]
        mem, _ = self._read(nv.nvmlDeviceGetMemoryInfo)
        util, _ = self._read(nv.nvmlDeviceGetUtilizationRates)
        return {"other_processes": others,
                "memory_used_mb": mem.used / 2**20 if mem is not None else None,
                "utilization_pct": float(util.gpu) if util is not None else None,
                "busy": bool(others)}

    # -- run -------------------------------------------------------------------------------------------
    def __enter__(self) -> "NvmlSampler":
        self._open()
        if self._handle is None:
            return self
        self.busy_at_start = self.busy_state()
        self._extra_reasons = {}
        self._idle_power, why = self.idle or (None, "idle power was not measured (benchmark.idle_power_s 0)")
        if self._idle_power is None:
            self._extra_reasons["idle_power_w"] = why
        mx, why = self._read(self._nvml.nvmlDeviceGetMaxClockInfo, self._nvml.NVML_CLOCK_SM)
        self._sm_max = float(mx) if mx is not None else None
        if mx is None:
            self._extra_reasons["sm_clock_max_mhz"] = why
        first = self._sample()
        self._start_memory = first.memory_mb
        self._energy0, self._energy_reason = self._read(self._nvml.nvmlDeviceGetTotalEnergyConsumption)
        self._samples = [first]
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._samples.append(self._sample())

    def __exit__(self, *exc) -> None:
        if self._handle is None:
            self.report = unavailable(self._unavailable or "no GPU")
            self.report.interval_s = self.interval_s
            return
        self._stop.set()
        self._thread.join()
        self._samples.append(self._sample())
        energy_j = None
        if self._energy0 is not None:
            e1, self._energy_reason = self._read(self._nvml.nvmlDeviceGetTotalEnergyConsumption)
            if e1 is not None:
                energy_j = (e1 - self._energy0) / 1000.0
        self.report = summarize_samples(self._samples, energy_j, self._energy_reason, self._start_memory,
                                        self._sm_max, self._idle_power, self._extra_reasons)
        self.report.interval_s = self.interval_s
        self.report.gpu_busy_at_start = self.busy_at_start
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass
