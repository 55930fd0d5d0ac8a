"""Scenario: an out-of-process server under load. A warm-up that is not measured, then one load point:

  cN   closed loop: N users, each sends its next request when its previous one has ended
  rX   open loop: requests arrive at X per second, Poisson (gamma gaps of shape `burstiness`; 1 is
       Poisson, below 1 burstier), seeded, whether or not earlier ones have ended

until at least max(`requests`, N) requests were measured and `min_duration_s` has passed (closed loop: every
user sends at least one, so the point runs at its concurrency), or
max(requests, X * min_duration_s) requests were sent (open loop). With `ci_target_rel` set, requests go on
until the median TPOT of the finished requests is known within it (95 % bootstrap interval), or
`max_requests` were sent, or `max_duration_s` has passed (stopping(); the reason is recorded). Every
request's token count is checked against the server's usage field and the streamed events; a failed
request fails the point.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
import time
from dataclasses import dataclass

from inference_optim_llm import metrics
from inference_optim_llm.client import Response, complete
from inference_optim_llm.hostfacts import log
from inference_optim_llm.interference import CpuWatch
from inference_optim_llm.scenarios.static_batches import check_busy
from inference_optim_llm.servers import Unauthorized
from inference_optim_llm.telemetry import NvmlSampler, TelemetryReport, idle_power, unavailable

LOAD_PATTERN = r"c[1-9][0-9]{0,4}|r(0|[1-9][0-9]{0,5})(\.[0-9]{1,3})?"


class RequestFailed(RuntimeError):
    """A request of the load point failed (HTTP error, timeout, broken stream): no figure is made."""


@dataclass(frozen=True)
class Load:
    name: str
    concurrency: int | None = None
    rate: float | None = None

    @classmethod
    def parse(cls, name: str) -> "Load":
        if not re.fullmatch(LOAD_PATTERN, str(name)):
            raise ValueError(f"load {name!r}: expected cN (N concurrent users) or rX (X requests/s), e.g. c4, r2.5")
        if name.startswith("c"):
            return cls(name, concurrency=int(name[1:]))
        rate = float(name[1:])
        if rate <= 0:
            raise ValueError(f"load {name!r}: a request rate must be above 0")
        return cls(name, rate=rate)


def arrival_times(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Seconds after the start at which each of n requests is sent: the first at 0, then gaps drawn from a
    gamma distribution of mean 1/rate and shape `burstiness` (1: exponential gaps, a Poisson process)."""
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(n):
        times.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return times


@dataclass
class ServingMeasurement:
    load: Load
    requested_tokens: int
    warmup: list[Response]
    responses: list[Response]      # the measured requests, in the order they were sent
    duration_s: float              # first measured send to last measured token
    send_lag_max_s: float | None   # open loop: how late the client sent a request against its schedule
    telemetry: TelemetryReport
    cpu: dict | None = None        # interference.CpuWatch over the measured phase (the server's processes are ours)
    stopping: dict | None = None   # why the measured phase ended (stopping())


def stopping(sent: int, elapsed_s: float, values: list[float], spec, minimum: int) -> dict | None:
    """Before each request beyond the first `minimum`: None to send it, else why the load point stops (pure
    logic). At least `minimum` requests sent and min_duration_s passed; then, with ci_target_rel set, more
    while the median's 95 % interval over `values` (the finished requests' TPOT; order statistics, cheap to
    ask often: stats.median_ci_order) is wider than it, up to max_requests sent and max_duration_s. The
    result's own intervals are the bootstrap's, computed once at the end."""
    from inference_optim_llm.stats import median_ci_order as median_ci

    if sent < minimum or elapsed_s < spec.min_duration_s:
        return None
    state = {"requests_sent": sent, "measured_s": elapsed_s, "half_width_rel": None,
             "target": spec.ci_target_rel or None}
    if spec.ci_target_rel <= 0:
        return {"reason": "requests done", **state}
    ci = median_ci(values)
    hw = state["half_width_rel"] = ci["half_width_rel"] if ci else None
    if hw is not None and hw <= spec.ci_target_rel:
        return {"reason": "target met", **state}
    if sent >= spec.max_requests:
        return {"reason": "request cap (max_requests)", **state}
    if elapsed_s >= spec.max_duration_s:
        return {"reason": "time cap (max_duration_s)", **state}
    return None


class _Count:
    """The warm-up's stopper: a fixed number of requests."""

    def __init__(self, n: int):
        self.n = n

    def stop(self, sent: int, done) -> bool:
        return sent >= self.n


class _Stopper:
    """stopping() over the responses so far, asked by every user (closed loop) or scheduled send (open loop).
    The bootstrap runs again only once the finished requests have grown by 5 % (at least one) since it last
    ran; a decision to stop holds."""

    def __init__(self, spec, n_tokens: int, minimum: int):
        self.spec, self.n, self.minimum = spec, n_tokens, minimum
        self.t0 = time.perf_counter()
        self.decision: dict | None = None
        self._next = 0   # finished requests at which the bootstrap runs again

    def value(self, r: Response) -> float | None:
        t = r.token_times_s
        if r.error or not t:
            return None
        if self.n == 1:
            return t[-1]                                # no TPOT with one token: E2E for every request
        return (t[-1] - t[0]) / (self.n - 1) if len(t) > 1 else None   # a single-event chunked stream: none

    def stop(self, sent: int, done: list[Response]) -> bool:
        if self.decision is None:
            cheap = sent < self.minimum or self.spec.ci_target_rel <= 0
            if cheap or len(done) >= self._next:
                values = []
                if not cheap:
                    values = [v for v in map(self.value, done) if v is not None]
                    self._next = len(done) + max(1, len(done) // 20)
                self.decision = stopping(sent, time.perf_counter() - self.t0, values, self.spec, self.minimum)
        return self.decision is not None

    def finish(self, sent: int, done: list[Response]) -> dict:
        """The record, once the open loop's whole schedule went out (its length is the minimum, or the caps)."""
        if self.decision is None:
            from inference_optim_llm.stats import median_ci_order
            values = [v for v in map(self.value, done) if v is not None]
            ci = median_ci_order(values) if self.spec.ci_target_rel > 0 else None
            hw = ci["half_width_rel"] if ci else None
            met = hw is not None and hw <= self.spec.ci_target_rel
            reason = ("requests done" if self.spec.ci_target_rel <= 0 else "target met" if met else
                      "request cap (max_requests)" if sent >= self.spec.max_requests else "time cap (max_duration_s)")
            self.decision = {"reason": reason, "requests_sent": sent, "measured_s": time.perf_counter() - self.t0,
                             "half_width_rel": hw,
                             "target": self.spec.ci_target_rel or None}
        return self.decision


def check_response(r: Response, n: int, prompt_tokens: int, where: str, stream_unit: str = "token") -> None:
    """usage.completion_tokens must be n; the streamed events too where the server streams one per token
    (stream_unit token), else between 1 and n (stream_unit chunk: a server that streams text as it
    becomes printable, several tokens to an event)."""
    if r.status in (401, 403):
        raise Unauthorized(r.status)
    if r.error:
        raise RequestFailed(f"{where}: request for prompt {r.prompt_index} failed: {r.error}")
    said = f"(finish_reason {r.finish_reason!r}; usage {r.completion_tokens}, streamed events {r.streamed_tokens})"
    if r.completion_tokens != n:
        raise metrics.TokenCountError(f"{where}: prompt {r.prompt_index}: the server's usage.completion_tokens is "
                                      f"{r.completion_tokens}, not the {n} tokens asked for {said}")
    if stream_unit == "token" and r.streamed_tokens != n:
        raise metrics.TokenCountError(
            f"{where}: prompt {r.prompt_index}: the streamed token events is {r.streamed_tokens}, not the {n} "
            f"tokens asked for {said}; if this server streams several tokens to an event, say "
            "stream_unit: chunk in its entry (then no per-token ITL is reported)")
    if stream_unit == "chunk" and not 1 <= r.streamed_tokens <= n:
        raise metrics.TokenCountError(f"{where}: prompt {r.prompt_index}: {r.streamed_tokens} streamed events for "
                                      f"{n} tokens {said}")
    if r.prompt_tokens is not None and r.prompt_tokens != prompt_tokens:
        raise ValueError(f"{where}: prompt {r.prompt_index}: the server counted {r.prompt_tokens} prompt tokens "
                         f"where the model's tokenizer counts {prompt_tokens}: it tokenizes differently")


NOT_SENT = "not sent: an earlier request of the point failed"
NOT_NEEDED = "not sent: the stopping rule had ended the point"


async def _closed(client, url, body, n_prompts, users, stopper: _Stopper, timeout_s, first_index=0):
    """Prompt k % n_prompts for the k-th request (k from first_index: the measured requests do not reuse
    the warm-up's prompts unless the set is smaller than both together), until the stopper says enough.
    Every user stops at the first failed request: a dead server fails the point at once, instead of being
    asked again and again."""
    done: list[Response] = []
    failed: list[Response] = []
    counter = itertools.count(first_index)

    async def user():
        while not failed:
            k = next(counter)
            if stopper.stop(k - first_index, done):
                return
            r = await complete(client, url, body(k % n_prompts), k % n_prompts, timeout_s)
            done.append(r)
            if r.error:
                failed.append(r)

    await asyncio.gather(*(user() for _ in range(users)))
    return sorted(done, key=lambda r: r.sent_s)


async def _open(client, url, body, n_prompts, times, stopper: _Stopper, timeout_s, first_index=0):
    """One request at each of `times` (seconds from the start); those beyond the stopper's minimum are sent
    only while it has not said enough."""
    t0 = time.perf_counter()
    lags, failed, done = [], [], []
    stopped = asyncio.Event()   # set once the stopper says enough: the sends still waiting end at once

    async def one(k, at):
        try:
            await asyncio.wait_for(stopped.wait(), timeout=max(0.0, t0 + at - time.perf_counter()))
        except asyncio.TimeoutError:
            pass
        i = (first_index + k) % n_prompts
        if failed:
            return Response(i, time.perf_counter(), error=NOT_SENT)
        if stopped.is_set() or stopper.stop(k, done):
            stopped.set()
            return Response(i, time.perf_counter(), error=NOT_NEEDED)
        lags.append(time.perf_counter() - (t0 + at))
        r = await complete(client, url, body(i), i, timeout_s)
        done.append(r)
        if r.error:
            failed.append(r)
        return r

    sent = await asyncio.gather(*(one(k, at) for k, at in enumerate(times)))
    if not failed:
        stopper.finish(len(times), done)
    return [r for r in sent if r.error != NOT_NEEDED], max(lags)


def measure(url: str, body, prompt_tokens: list[int], spec, load: Load, sample_gpu: str | None,
            server_pids: frozenset[int] = frozenset(), headers: dict | None = None) -> ServingMeasurement:
    """body(i) is the request body for prompt i; prompt_tokens[i] its length in the model's tokens.
    sample_gpu: None to sample this host's GPU during the measured phase, else why not (an external server).
    server_pids: the server's processes, which are not "other work" on the GPU. headers: sent with every
    request (the API key's Authorization header)."""
    import httpx

    n_prompts, N = len(prompt_tokens), spec.max_new_tokens
    users = load.concurrency or 1
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)

    async def run():
        # trust_env=False: a cluster's HTTP(S)_PROXY must not route requests meant for this host's server
        async with httpx.AsyncClient(timeout=spec.request_timeout_s, limits=limits, headers=headers,
                                     trust_env=not url.startswith("http://127.0.0.1")) as client:
            idle = idle_power(spec.idle_power_s, spec.telemetry_interval_s) if sample_gpu is None else None
            warm = await _closed(client, url, body, n_prompts, min(users, max(spec.warmup_requests, 1)),
                                 _Count(spec.warmup_requests), spec.request_timeout_s)
            for r in warm:
                check_response(r, N, prompt_tokens[r.prompt_index], "warm-up", spec.stream_unit)
            log(f"warm-up: {len(warm)} requests")
            sampler = None
            if sample_gpu is None:
                sampler = NvmlSampler(interval_s=spec.telemetry_interval_s, own_pids=server_pids,
                                      idle=idle)
                sampler.__enter__()
            cpu = CpuWatch(lambda: server_pids).__enter__()
            try:
                if sampler:
                    check_busy(sampler.busy_at_start, spec.refuse_busy_gpu)
                if load.concurrency:
                    stopper = _Stopper(spec, N, max(spec.requests, load.concurrency))
                    measured = await _closed(client, url, body, n_prompts, load.concurrency, stopper,
                                             spec.request_timeout_s, first_index=spec.warmup_requests)
                    lag = None
                else:
                    n = max(spec.requests, math.ceil(load.rate * spec.min_duration_s))
                    stopper = _Stopper(spec, N, n)
                    if spec.ci_target_rel > 0:   # the schedule runs on to the caps; the stopper ends it sooner
                        n = max(n, min(spec.max_requests, math.ceil(load.rate * spec.max_duration_s)))
                    times = arrival_times(n, load.rate, spec.burstiness, spec.seed)
                    measured, lag = await _open(client, url, body, n_prompts, times, stopper,
                                                spec.request_timeout_s, first_index=spec.warmup_requests)
            finally:
                cpu.__exit__(None, None, None)
                if sampler:
                    sampler.__exit__(None, None, None)
            return warm, list(measured), lag, sampler, cpu.result, stopper.decision

    warm, measured, lag, sampler, cpu, stop = asyncio.run(run())
    failed = [r for r in measured if r.error and r.error != NOT_SENT]
    for r in failed[:1] + measured:
        check_response(r, N, prompt_tokens[r.prompt_index], f"load {load.name}", spec.stream_unit)
    start = min(r.sent_s for r in measured)
    end = max(r.sent_s + r.token_times_s[-1] for r in measured)
    tel = sampler.report if sampler else unavailable(sample_gpu)
    log(f"load {load.name}: {len(measured)} requests in {end - start:.2f} s, "
        f"{len(measured) * N / (end - start):.1f} output tokens/s")
    if stop:
        log(f"load {load.name}: stopped: {stop['reason']}")
    return ServingMeasurement(load, N, warm, measured, end - start, lag, tel, cpu, stop)
