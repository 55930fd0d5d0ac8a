"""Per-token timestamps that do not slow generation.

TTFT is read on the host's clock, the way serving tools read it: from start() (the batch handed to the
engine, its prompts' token ids on the host) to the first token available on the host. The first stamp
takes the first token to the host (on CUDA: one host sync per batch, after the prefill). Later tokens are
CUDA events on the current stream (no host sync), placed on the host's timeline after the first token:
time of token k = TTFT + (event k - event of the first token), read once the batch has finished. On the
CPU, where work is synchronous, every stamp is the host clock.
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
        if self.enabled:
            self._t0 = time.perf_counter()

    def stamp(self, token: torch.Tensor | None = None) -> None:
        """A token exists. The first stamp waits until it is on the host: `token` (the batch's first tokens,
        on the device) is copied there; without it, the device's stream is waited for."""
        if not self.enabled:
            return
        if self.cuda and self._host:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._events.append(ev)
            return
        if self.cuda:
            if token is not None:
                token.cpu()
            else:
                torch.cuda.current_stream().synchronize()
        self._host.append(time.perf_counter() - self._t0)
        if self.cuda:
            self._first = torch.cuda.Event(enable_timing=True)
            self._first.record()

    def times_s(self) -> list[float]:
        """Seconds from start() to each stamp. Call after the work has finished."""
        if not self.enabled:
            return []
        if self.cuda and self._host:
            if self._events:
                self._events[-1].synchronize()
            ttft = self._host[0]
            return [ttft] + [ttft + self._first.elapsed_time(ev) / 1000.0 for ev in self._events]
        return list(self._host)
