"""The clients of the side-by-side benchmarks: streamed chat, closed loops, percentiles.

  Stream         the content pieces of one stream with their arrival times: time to first
                 token, decode time, text
  read_sse_chat  one streamed chat request over HTTP (httpx), read to its end
  closed_loop    N asyncio clients, each sending its next request when the previous one is
                 answered, for a number of requests or of seconds
  JsonPoster     POSTs JSON and reads JSON over keep-alive connections: httpx's AsyncClient, or
                 aiohttp's (about a quarter of httpx's CPU per request: measured 0.75 against
                 3.1 ms for a one-sentence embedding, 1 client, on 2 cores; the benchmark's
                 client shares the cores with the servers it measures)
  threaded_loop  the same with N threads around an in-process call (a contender without HTTP)
  percentile     nearest-rank

Every contender that speaks HTTP is driven by the same client code, so the client's own cost
(it runs on the same cores) weighs alike on each.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import httpx

T = TypeVar("T")
CLIENTS = ("aiohttp", "httpx")  # the JsonPoster kinds


@dataclass
class Stream:
    """Collects the content pieces of one stream with their arrival times."""

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    parts: list[str] = field(default_factory=list)

    def add(self, content: str | None) -> None:
        if not content:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.parts.append(content)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def ttft_s(self) -> float:
        """From the call to the first content piece."""
        if self.first is None:
            raise RuntimeError("the stream produced no content")
        return self.first - self.start

    @property
    def decode_s(self) -> float:
        """From the first content piece to the last."""
        if self.first is None or self.last is None:
            raise RuntimeError("the stream produced no content")
        return self.last - self.first


def read_sse_chat(client: httpx.Client, path: str, body: dict[str, Any]) -> Stream:
    """POST a streamed chat completion; read its server-sent events to the end."""
    stream = Stream()
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:500]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue  # blank lines, `: ping` comments, the end
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{path}: error in the stream: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                stream.add(choice.get("delta", {}).get("content"))
    return stream


class JsonPoster:
    """`await post(path, body)`: the reply's JSON (an HTTP error status raises), over at most
    `connections` keep-alive connections to `url`, with httpx or aiohttp (`kind`)."""

    def __init__(self, url: str, kind: str, connections: int, timeout: float = 120) -> None:
        self.kind = kind
        if kind == "httpx":
            limits = httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections
            )
            self._httpx = httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)
        elif kind == "aiohttp":
            self._url = url.rstrip("/")
            self._aiohttp = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=connections),
                timeout=aiohttp.ClientTimeout(total=timeout),
            )
        else:
            raise ValueError(f"no client {kind!r}: one of {CLIENTS}")

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        if self.kind == "httpx":
            reply = await self._httpx.post(path, json=body)
            reply.raise_for_status()
            return reply.json()
        async with self._aiohttp.post(self._url + path, json=body) as answer:
            answer.raise_for_status()
            return await answer.json()

    async def __aenter__(self) -> JsonPoster:
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.kind == "httpx":
            await self._httpx.aclose()
        else:
            await self._aiohttp.close()


@dataclass(frozen=True)
class Timed:
    """One request of a loop: its latency and what it returned (or the error it raised)."""

    seconds: float
    value: Any = None
    error: str = ""


@dataclass(frozen=True)
class Loop:
    """What a loop of clients did: every request, and the wall time until the last answer."""

    samples: list[Timed]
    wall_s: float

    @property
    def ok(self) -> list[Timed]:
        return [s for s in self.samples if not s.error]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]

    def per_second(self, weight: Callable[[Any], float] = lambda _: 1.0) -> float:
        """Successful requests (or the sum of `weight(value)` over them) per second of wall."""
        return sum(weight(s.value) for s in self.ok) / self.wall_s


async def closed_loop(
    clients: int,
    send: Callable[[int, int], Awaitable[T]],
    *,
    requests: int | None = None,
    seconds: float | None = None,
) -> Loop:
    """`clients` asyncio clients calling `send(client, i)` in turn, until each has sent
    `requests`, or until `seconds` have passed (then the requests in flight are awaited).
    An exception in `send` is recorded as that request's error, not raised."""
    samples: list[Timed] = []
    start = time.perf_counter()
    deadline = None if seconds is None else start + seconds

    async def client(n: int) -> None:
        i = 0
        while (requests is None or i < requests) and (
            deadline is None or time.perf_counter() < deadline
        ):
            began = time.perf_counter()
            try:
                value = await send(n, i)
                samples.append(Timed(time.perf_counter() - began, value))
            except Exception as exc:  # recorded: the report counts and names failures
                samples.append(Timed(time.perf_counter() - began, error=describe(exc)))
            i += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    return Loop(samples, time.perf_counter() - start)


def threaded_loop(clients: int, requests: int, call: Callable[[int, int], T]) -> Loop:
    """`clients` threads, each calling `call(client, i)` `requests` times in turn."""
    samples: list[Timed] = []
    lock = threading.Lock()  # guards `samples` (list.append is atomic; the intent is explicit)

    def client(n: int) -> None:
        for i in range(requests):
            began = time.perf_counter()
            try:
                value = call(n, i)
                timed = Timed(time.perf_counter() - began, value)
            except Exception as exc:
                timed = Timed(time.perf_counter() - began, error=describe(exc))
            with lock:
                samples.append(timed)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Loop(samples, time.perf_counter() - start)


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: of 50 values, p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
