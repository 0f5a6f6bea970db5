"""Load: N concurrent clients send mixed traffic for a fixed time; every request must get an answer.

Each of `--clients` asyncio clients (one shared `httpx.AsyncClient`, a connection each) loops
until `--seconds` have passed, each time picking one kind of request at random:

  chat         POST /v1/chat/completions to smollm2, max_tokens 16
  chat-stream  the same with "stream": true, read to `data: [DONE]`
  completion   POST /v1/completions to gemma3-270m, max_tokens 8
  embedding    POST /v1/embeddings to minilm, 1 to 8 sentences

Every request is recorded with its kind, its status (or `error: <exception type>` when the
transport failed) and its latency (sending to the last byte read; for streams also the time to
the first content chunk). When the time is up no client starts a new request, and the run waits
for those in flight. Then it prints how many requests were sent and answered, the statuses per
kind, the latency percentiles per kind, the models' state from /api/v1/ (restarts, requests
served) and the machine, the versions and the command.

It fails (exit code 1) if a request got a 5xx other than 503, or no answer (a transport error,
or a stream that ended without [DONE]), or a stream carried an error frame of a 5xx type other
than `service_unavailable`. A 429 (the queue of a model is full) or a 503 is an answer: the
server shedding load as it should.

By default it starts its own `python -m mmserve serve` with the three built-in models (caps:
max_tokens 32, max_inputs 64, the other settings the defaults: one replica each, a queue of 64),
on a free port, and stops it at the end; `--url` targets a running server instead (which must
serve models with those names). The clients run in this one process, on the same machine as
the server unless `--url` points elsewhere.

Run it from the repository root:

    .venv/bin/python bench/load.py [--clients 64] [--seconds 120] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from common import (
    describe_environment,
    models_ready,
    start_server,
    stop_server,
    tail,
    wait_until,
    write_config,
)

KINDS = ("chat", "chat-stream", "completion", "embedding")
MODELS = [
    {"name": "smollm2", "kind": "llm", "source": "catalog:smollm2"},
    {"name": "gemma3-270m", "kind": "llm", "source": "catalog:gemma3-270m"},
    {"name": "minilm", "kind": "embedding", "source": "catalog:minilm"},
]
CAPS = {"max_tokens": 32, "max_inputs": 64}
TOPICS = ["the sea", "a lighthouse", "bread", "winter", "a small robot", "the moon", "tea", "maps"]
SENTENCES = [
    "The cat sat on the mat.",
    "Stock prices fell sharply on Monday.",
    "A lighthouse keeper writes a letter every night.",
    "Fresh bread smells best in the early morning.",
    "The train to the coast leaves at nine.",
    "Rain is expected over the hills tomorrow.",
    "She tuned the old piano by ear.",
    "Twelve boats were moored in the harbour.",
    "The recipe needs two eggs and a cup of flour.",
    "He forgot his umbrella on the bus again.",
]
PROMPTS = ["The capital of France is", "Once upon a time", "The best way to learn is", "In 1969,"]
SERVER_ERRORS_IN_STREAM = {"internal_error"}  # service_unavailable in a stream is a 503


@dataclass
class Sample:
    kind: str
    status: str  # "200", "429", "error: ReadTimeout", "200, stream error: internal_error", ...
    seconds: float
    first_chunk: float | None = None  # streams: seconds to the first content chunk

    @property
    def answered(self) -> bool:
        return not self.status.startswith("error") and "no [DONE]" not in self.status

    @property
    def failure(self) -> bool:
        """A 5xx other than 503, no answer, or a 5xx-type error frame in a stream."""
        if not self.answered:
            return True
        code = int(self.status.split(",")[0])
        stream_error = self.status.partition("stream error: ")[2]
        return (code >= 500 and code != 503) or stream_error in SERVER_ERRORS_IN_STREAM


# ---- the requests --------------------------------------------------------------------------


def chat_body(rng: random.Random, stream: bool) -> dict[str, Any]:
    question = f"Write one sentence about {rng.choice(TOPICS)}."
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 16,
        "stream": stream,
    }


async def send(client: httpx.AsyncClient, kind: str, rng: random.Random) -> Sample:
    start = time.perf_counter()
    try:
        if kind == "chat-stream":
            return await read_stream(client, chat_body(rng, stream=True), start)
        if kind == "chat":
            response = await client.post("/v1/chat/completions", json=chat_body(rng, False))
        elif kind == "completion":
            body = {"model": "gemma3-270m", "prompt": rng.choice(PROMPTS), "max_tokens": 8}
            response = await client.post("/v1/completions", json=body)
        else:
            texts = rng.sample(SENTENCES, rng.randint(1, 8))
            response = await client.post("/v1/embeddings", json={"model": "minilm", "input": texts})
        return Sample(kind, str(response.status_code), time.perf_counter() - start)
    except Exception as exc:  # a transport error, or a stream that is not valid SSE/JSON
        return Sample(kind, f"error: {type(exc).__name__}", time.perf_counter() - start)


async def read_stream(client: httpx.AsyncClient, body: dict[str, Any], start: float) -> Sample:
    first: float | None = None
    error = ""
    done = False
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Sample("chat-stream", str(response.status_code), time.perf_counter() - start)
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                error = chunk["error"].get("type") or "unknown"
            elif first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - start
    status = "200"
    if error:
        status += f", stream error: {error}"
    elif not done:
        status += ", no [DONE]"
    return Sample("chat-stream", status, time.perf_counter() - start, first)


async def client_loop(
    client: httpx.AsyncClient,
    deadline: float,
    rng: random.Random,
    samples: list[Sample],
    sent: Counter[str],
) -> None:
    while time.monotonic() < deadline:
        kind = rng.choice(KINDS)
        sent[kind] += 1
        sample = await send(client, kind, rng)
        samples.append(sample)
        if sample.status == "429":
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # the queue is full: back off a little


async def run_load(
    url: str, clients: int, seconds: float, seed: int
) -> tuple[list[Sample], int, float]:
    """Every sample, how many requests were sent, and the wall time."""
    samples: list[Sample] = []
    sent: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(600, connect=30)  # a request waits up to queue_timeout (300 s)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        start = time.monotonic()
        deadline = start + seconds
        loops = [
            client_loop(client, deadline, random.Random(seed * 1000 + i), samples, sent)
            for i in range(clients)
        ]
        await asyncio.gather(*loops)
        return samples, sum(sent.values()), time.monotonic() - start


# ---- its own server --------------------------------------------------------------------------


@contextlib.contextmanager
def own_server(directory: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m mmserve serve` with the three built-in models, their loads done."""
    config = {"model_dirs": [], "models": [{**m, **CAPS} for m in MODELS]}
    log = directory / "server.log"
    proc, url = start_server(write_config(directory, config), log)
    try:
        wait_until(
            proc,
            log,
            lambda: models_ready(url, log),
            timeout=600,
            interval=0.2,
            what="models not ready",
            retry_on=(httpx.TransportError, ValueError, KeyError),
        )
        yield url, proc
    finally:
        stop_server(proc, timeout=60)
        errors = [line for line in tail(log, 200_000).splitlines() if " ERROR " in line]
        if errors:
            print(f"\nthe server logged {len(errors)} ERROR lines; the first: {errors[0]}")


# ---- the report ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def report(samples: list[Sample], sent: int, wall: float) -> bool:
    """Print the figures; True if the run passed."""
    answered = sum(s.answered for s in samples)
    print(f"\nrequests: sent {sent}, answered {answered}, not answered {sent - answered}")
    print(f"wall time {wall:.1f} s (until the last request in flight was answered)")
    print(f"throughput {answered / wall:.1f} answered requests/s\n")
    by_kind: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_kind[sample.kind].append(sample)
    header = (
        f"{'kind':<12} {'n':>5} {'req/s':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  statuses"
    )
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        group = by_kind.get(kind, [])
        if not group:
            print(f"{kind:<12} {0:>5}")
            continue
        times = [s.seconds * 1000 for s in group]
        statuses = Counter(s.status for s in group)
        counts = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        print(
            f"{kind:<12} {len(group):>5} {len(group) / wall:>6.2f} {percentile(times, 50):>8.0f} "
            f"{percentile(times, 99):>8.0f} {max(times):>8.0f}  {counts}"
        )
    firsts = [s.first_chunk * 1000 for s in by_kind.get("chat-stream", []) if s.first_chunk]
    if firsts:
        print(
            f"\nchat-stream, time to the first content chunk: p50 {percentile(firsts, 50):.0f} ms,"
            f" p99 {percentile(firsts, 99):.0f} ms"
        )
    successes = [s for s in samples if s.status == "200"]
    if successes:
        times = [s.seconds * 1000 for s in successes]
        print(
            f"all kinds, status 200 only: p50 {percentile(times, 50):.0f} ms, "
            f"p99 {percentile(times, 99):.0f} ms"
        )
    for kind in KINDS:
        if by_kind.get(kind) and not any(s.status == "200" for s in by_kind[kind]):
            print(f"\nwarning: no {kind} request got a 200 (does the server take these requests?)")
    failures = Counter(f"{s.kind} {s.status}" for s in samples if s.failure)
    if sent != len(samples):
        failures["requests without a record"] = sent - len(samples)
    if failures:
        print("\nFAILED: " + ", ".join(f"{what} x{n}" for what, n in failures.items()))
        return False
    print("\npassed: every request got an answer, and none was a 5xx other than 503")
    return True


def print_models(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        status = httpx.get(f"{url}/api/v1/", timeout=30).json()
        print("\nmodels after the run (from /api/v1/):")
        for m in status["models"]:
            served = sum(r.get("requests_served", 0) for r in m["replicas"])
            print(
                f"  {m['name']:<12} {m['state']:<9} replicas {len(m['replicas'])}, "
                f"restarts {m['restarts']}, requests served {served}, "
                f"last error {m['last_error']!r}"
            )


def versions() -> list[str]:
    """The versions the report names besides mmserve's and python's: the engines', httpx's."""
    found = []
    for package in ("llama-cpp-python", "sentence-transformers", "torch"):
        with contextlib.suppress(Exception):
            found.append(f"{package} {version(package)}")
    return [*found, f"httpx {version('httpx')}"]


def describe_server(url: str | None) -> None:
    """Print which server the clients target: its own (with the caps) or `url`."""
    if url is None:
        caps = ", ".join(f"{k} {v}" for k, v in CAPS.items())
        print(f"server:   its own, python -m mmserve serve: smollm2, gemma3-270m, minilm ({caps})")
    else:
        print(f"server:   {url}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--seconds", type=float, default=120, help="how long they send (120)")
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' choices (1)")
    return parser.parse_args()


def run(url: str, args: argparse.Namespace) -> bool:
    print(f"\n{args.clients} clients for {args.seconds:g} s, mixed traffic: {', '.join(KINDS)}")
    samples, sent, wall = asyncio.run(run_load(url, args.clients, args.seconds, args.seed))
    passed = report(samples, sent, wall)
    print_models(url)
    return passed


def main() -> None:
    args = parse_args()
    describe_environment(versions())
    describe_server(args.url)
    if args.url:
        passed = run(args.url.rstrip("/"), args)
    else:
        with tempfile.TemporaryDirectory(prefix="mmserve-load-") as tmp:
            print("starting mmserve and loading the models...")
            with own_server(Path(tmp)) as (url, _):
                passed = run(url, args)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
