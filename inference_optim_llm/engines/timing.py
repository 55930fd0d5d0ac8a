"""Per-token timestamps that do not slow generation.

On CUDA each stamp records an event on the current stream (asynchronous, no host sync); the times
are read once, after the batch has finished. On the CPU, where work is synchronous, a stamp is the
host clock.
"""
from __future__ import annotations

import time

import torch


class TokenClock:
    def __init__(self, device: str, enabled: bool = True):
        self.cuda = device.startswith("cuda")
        self.enabled = enabled
        self._events: list = []
        self._host: list[float] = []

    def start(self) -> None:
        if not self.enabled:
            return
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stamp(self) -> None:
        if not self.enabled:
            return
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._events.append(ev)
        else:
            self._host.append(time.perf_counter() - self._t0)

    def times_s(self) -> list[float]:
        """Seconds from start() to each stamp. Call after the work has finished."""
        if not self.enabled:
            return []
        if self.cuda:
            if self._events:
                self._events[-1].synchronize()
            return [self._start.elapsed_time(ev) / 1000.0 for ev in self._events]
        return list(self._host)
