"""Was the measurement disturbed? Other processes' CPU use during the timed phase (psutil), the load
average, other GPU processes (telemetry's gpu_busy_at_start), clock throttling (NVML's reasons), and the
spread of the headline figure: one verdict per cell, with its reasons.

  ok          nothing seen
  noisy       the headline median's 95 % interval is wider than benchmark.noisy_half_width_rel
  interfered  other work ran beside it: other processes used more than benchmark.interference_cpu_cores
              CPU cores on average, or other processes were on the GPU
  throttled   the GPU slowed its clocks for heat or a hardware reason during the timed phase, or for its
              power cap with the SM clock below 99 % of its maximum on average (a power cap that held
              the clock within 1 % is a note, not a verdict: on an H200, 2026-11-28, the 8B shapes at
              batch 16 set the power-cap bit with the SM clock at 99.8 % of its maximum)
"""
from __future__ import annotations

import os
import time

# NVML clock event ("throttle") reasons that mean the GPU was slowed, not merely idle or set so.
SLOWDOWN_REASONS = {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                    "hw_power_brake_slowdown"}
POWER_CAP = "sw_power_cap"
POWER_CAP_CLOCK_SHARE = 0.99   # mean SM clock over its maximum under which a power cap marks a cell throttled


class CpuWatch:
    """CPU time used by processes other than this one and its children, over a with-block, in cores."""

    def __init__(self, own_pids=lambda: frozenset()):
        self.own_pids = own_pids    # more processes that are part of the measurement (a server's group)
        self.result: dict | None = None

    def _own_seconds(self) -> float:
        import psutil

        me = psutil.Process()
        procs = {me.pid: me, **{p.pid: p for p in me.children(recursive=True)}}
        for pid in self.own_pids():
            try:
                procs.setdefault(pid, psutil.Process(pid))
            except psutil.Error:
                pass
        total = 0.0
        for p in procs.values():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    @staticmethod
    def _busy_seconds() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def __enter__(self) -> "CpuWatch":
        import importlib.util

        self._reason = None if importlib.util.find_spec("psutil") else "psutil is not installed"
        if self._reason:
            return self
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_seconds(), self._own_seconds()
        return self

    def __exit__(self, *exc) -> None:
        if self._reason:
            self.result = {"other_cpu_cores": None, "load_average_1m": None, "cpu_count": os.cpu_count(),
                           "null_reason": self._reason}
            return
        wall = time.perf_counter() - self._t0
        busy, own = self._busy_seconds() - self._busy0, self._own_seconds() - self._own0
        self.result = {"other_cpu_cores": max(0.0, busy - own) / wall if wall > 0 else None,
                       "own_cpu_cores": own / wall if wall > 0 else None,
                       "load_average_1m": os.getloadavg()[0], "cpu_count": os.cpu_count(), "null_reason": None}


def verdict(cpu: dict | None, gpu_busy: dict | None, throttle_reasons: list | None, half_width_rel: float | None,
            cpu_threshold: float, noisy_threshold: float, sm_clock: tuple[float | None, float | None] = (None, None)
            ) -> dict:
    """The cell's verdict and every reason behind it, and notes that did not change it (pure logic).
    sm_clock: the timed phase's mean SM clock and the card's maximum, MHz."""
    reasons = {"interfered": [], "throttled": [], "noisy": []}
    notes = []
    others = (cpu or {}).get("other_cpu_cores")
    if others is not None and others > cpu_threshold:
        reasons["interfered"].append(f"other processes used {others:.2f} CPU cores on average during the timed "
                                     f"phase (limit benchmark.interference_cpu_cores {cpu_threshold:g}; load "
                                     f"average {cpu['load_average_1m']:.2f} on {cpu['cpu_count']} cores)")
    if gpu_busy and gpu_busy.get("busy"):
        pids = ", ".join(str(p["pid"]) for p in gpu_busy.get("other_processes", []))
        reasons["interfered"].append(f"other processes on the GPU when the timed phase began (pid {pids})")
    slowed = sorted(set(throttle_reasons or []) & SLOWDOWN_REASONS)
    mean, top = sm_clock
    share = mean / top if mean and top else None
    held = f"; the SM clock averaged {100 * share:.1f} % of its maximum" if share is not None else ""
    if slowed == [POWER_CAP] and share is not None and share >= POWER_CAP_CLOCK_SHARE:
        notes.append(f"the GPU reported its power cap (sw_power_cap) during the timed phase{held}: "
                     f"not counted as throttled (under {100 * POWER_CAP_CLOCK_SHARE:g} % would be)")
    elif slowed:
        reasons["throttled"].append(f"the GPU reported clock slowdown during the timed phase: "
                                    f"{', '.join(slowed)}{held}")
    if half_width_rel is not None and half_width_rel > noisy_threshold:
        reasons["noisy"].append(f"the headline median's 95 % interval is ±{100 * half_width_rel:.1f} % "
                                f"(limit benchmark.noisy_half_width_rel {100 * noisy_threshold:g} %)")
    status = next((s for s in ("interfered", "throttled", "noisy") if reasons[s]), "ok")
    return {"status": status, "reasons": [r for s in ("interfered", "throttled", "noisy") for r in reasons[s]],
            "notes": notes, "cpu": cpu, "throttle_reasons": throttle_reasons}


class InterferenceError(RuntimeError):
    """benchmark.on_interference is fail and the cell was interfered with: nothing is written (Snakemake's
    --retries runs it again)."""
