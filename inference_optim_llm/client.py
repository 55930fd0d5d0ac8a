"""The serving client: one streamed completion request to an OpenAI-compatible server (`/v1/completions`,
server-sent events), timed on the client's clock, and its own timing floor against a trivial local endpoint.

What a request records (docs/serving.md defines the figures made from it):
  sent_s          perf_counter when the request was sent
  token_times_s   for each streamed event that carries a token, its arrival, seconds after sent_s
  usage           the server's `usage` block (completion_tokens, prompt_tokens), from the last events
A streamed event carries a token when its choice has text, or has empty text and is not the closing event
(finish_reason set, text empty: transformers serve ends that way; vLLM's last token event carries both).
An event that is not what the protocol says (not JSON, not an object, choices not a list of objects, usage
not an object of integer counts) fails the request, its error showing the start of the event.

A server's API key travels in the client's `Authorization` header only; it is replaced by *** in any error
recorded (a server or proxy may echo it).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    prompt_index: int
    sent_s: float
    token_times_s: list[float] = field(default_factory=list)
    completion_tokens: int | None = None     # the server's usage.completion_tokens
    prompt_tokens: int | None = None         # the server's usage.prompt_tokens
    finish_reason: str | None = None
    error: str | None = None
    status: int | None = None                # the HTTP status, once the server answered

    @property
    def streamed_tokens(self) -> int:
        return len(self.token_times_s)


def payload(model: str, prompt: str, max_tokens: int, length_control: str) -> dict:
    """The request body: greedy, streamed, usage asked for, and held to exactly max_tokens tokens by the
    server entry's length control (servers.py)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if length_control == "ignore_eos":
        body.update(ignore_eos=True, min_tokens=max_tokens)
    return body


async def complete(client, url: str, body: dict, prompt_index: int, timeout_s: float | None = None) -> Response:
    """Send one request and read its stream to the end, within timeout_s in all (the client's own timeout
    is per read: a stream that trickles, or keep-alive comments, would never end it). Never raises for a
    failed request: the error is recorded (HTTP status and the start of the body, an error event, or the
    exception), for the scenario to judge."""
    r = Response(prompt_index, time.perf_counter())
    try:
        await asyncio.wait_for(_read(client, url, body, r), timeout_s)
    except asyncio.TimeoutError:
        r.error = f"no complete answer within {timeout_s:g} s (request_timeout_s)"
    key = client.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if r.error and key:
        r.error = r.error.replace(key, "***")
    return r


class ProtocolError(ValueError):
    """A streamed event that is not what the OpenAI completions stream says."""


SHOWN = 200   # characters of an offending event shown in its error


def parse_event(data: str) -> dict:
    """One server-sent event's data, checked: a JSON object whose `choices` (if any) is a list of objects
    with string text and finish_reason, whose `usage` (if any) is an object of non-negative integer counts.
    Raises ProtocolError naming what is wrong and showing the event (cut to SHOWN characters)."""
    def bad(what):
        shown = data if len(data) <= SHOWN else data[:SHOWN] + "..."
        return ProtocolError(f"malformed event from the server ({what}): {shown!r}")

    try:
        event = json.loads(data)
    except ValueError:
        raise bad("not JSON") from None
    if not isinstance(event, dict):
        raise bad(f"a JSON {type(event).__name__}, not an object")
    if event.get("error"):
        return event
    choices = event.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise bad(f"choices is a {type(choices).__name__}, not a list")
    for choice in choices or []:
        if not isinstance(choice, dict):
            raise bad(f"a choice is a {type(choice).__name__}, not an object")
        for key in ("text", "finish_reason"):
            if choice.get(key) is not None and not isinstance(choice[key], str):
                raise bad(f"choice {key} is a {type(choice[key]).__name__}, not a string")
    usage = event.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise bad(f"usage is a {type(usage).__name__}, not an object")
        for key in ("completion_tokens", "prompt_tokens"):
            n = usage.get(key)
            if n is not None and (type(n) is not int or n < 0):
                raise bad(f"usage.{key} is {n!r}, not a count")
    return event


async def _read(client, url: str, body: dict, r: Response) -> None:
    try:
        async with client.stream("POST", url, json=body) as resp:
            r.status = resp.status_code
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                r.error = f"HTTP {resp.status_code}: {text[:300]}"
                return
            async for line in resp.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                if not data:
                    continue
                event = parse_event(data)
                if event.get("error"):   # a server's error event in the stream (vLLM sends them)
                    r.error = f"error event: {json.dumps(event['error'])[:300]}"
                    return
                if event.get("usage"):
                    r.completion_tokens = event["usage"].get("completion_tokens")
                    r.prompt_tokens = event["usage"].get("prompt_tokens")
                for choice in event.get("choices") or []:
                    text, finish = choice.get("text"), choice.get("finish_reason")
                    if text or (text == "" and finish is None):
                        r.token_times_s.append(now - r.sent_s)
                    r.finish_reason = finish or r.finish_reason
    except ProtocolError as e:
        r.error = str(e)
    except Exception as e:  # a failed request is recorded as such, never timed
        r.error = f"{type(e).__name__}: {str(e)[:300]}"


# -- the client's own floor ----------------------------------------------------------------------------

class TrivialEndpoint:
    """A local endpoint that streams `tokens` events at once for any request: what the client itself adds
    to TTFT and to each inter-token gap, on this host, with no model behind it."""

    def __init__(self, tokens: int):
        self.tokens = tokens
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for data in self.events():
            writer.write(b"data: " + data.encode() + b"\n\n")
            await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        writer.close()

    def events(self):
        """The data of each event streamed: `tokens` token events, the last with the usage block."""
        for k in range(self.tokens):
            last = k == self.tokens - 1
            event = {"choices": [{"index": 0, "text": "x", "finish_reason": "length" if last else None}]}
            if last:
                event["usage"] = {"completion_tokens": self.tokens, "prompt_tokens": 1}
            yield json.dumps(event)

    def _serve(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> str:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the client's trivial endpoint did not start within 10 s")
        return f"http://127.0.0.1:{self.port}/v1/completions"

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


def client_floor(tokens: int = 32, requests: int = 20) -> dict:
    """Median TTFT and inter-token gap the client measures against TrivialEndpoint (seconds)."""
    import httpx

    from inference_optim_llm.stats import percentile

    async def go(url):
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            return [await complete(client, url, payload("floor", "x", tokens, "none"), 0) for _ in range(requests)]

    with TrivialEndpoint(tokens) as url:
        responses = asyncio.run(go(url))
    bad = [r.error for r in responses if r.error]
    if bad:
        return {"ttft_s": None, "itl_s": None, "requests": requests, "tokens": tokens, "reason": bad[0]}
    ttfts = [r.token_times_s[0] for r in responses]
    gaps = [b - a for r in responses for a, b in zip(r.token_times_s, r.token_times_s[1:])]
    return {"ttft_s": percentile(ttfts, 50), "itl_s": percentile(gaps, 50) if gaps else None, "requests": requests,
            "tokens": tokens, "reason": None}
