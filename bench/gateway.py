"""5. Gateway overhead: a fast upstream called directly, through mmserve and through LiteLLM.

The upstream is bench/upstream.py (Starlette on uvicorn, loopback; it answers a fixed short chat
completion at once). The same chat request goes to:

  direct    the upstream itself, `POST /v1/chat/completions`
  mmserve   `python -m mmserve serve` with one model of `kind: http` (`backend: openai`,
            `base_url` the upstream, `upstream_model: tiny`), which relays it there
  litellm   LiteLLM's proxy (bench/.peers/litellm, one worker, no database) with the same
            upstream in its config file
  mmserve at REF (with `--ref REF`): the mmserve of that git commit, the same config

Every server is asked with an API key (LiteLLM requires one; mmserve gets one in its config;
the upstream ignores it). For each, per round: one client sending requests one after another
(latency percentiles over every request of every round, requests/s), 16 concurrent clients for
a fixed time (requests/s), one client streaming (`stream: true`, time to the first content
chunk), and `GET /health` from one client (the upstream's is a bare Starlette route on the same
uvicorn: the floor). Beside the wall-clock figures, the CPU time each server spent per request
(its process and children, read from the kernel's counters over the one-client and the
16-client loops): the figure that noise on a shared machine moves least. The clients are
asyncio tasks sharing one httpx client in the benchmark's process; every process shares the
machine's cores. Rounds alternate the contenders after a warm-up.

    .venv/bin/python bench/gateway.py [--quick] [--rounds N] [--requests N] [--seconds S]
                                      [--ref REF] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clients import Loop, closed_loop, percentile
from common import CpuMeter, cpu_seconds, free_port, serving, serving_mmserve, source_at
from harness import Failures, parse_args, rounds_done, run_benchmark, run_rounds
from peers import running_litellm
from results import Column, Result, Row, Table

BENCH = Path(__file__).resolve().parent
MANY = 16
STREAMS = 30  # streamed requests per round, one client
HEALTHS = 300  # GET /health per round, one client
MODEL = "upstream"
KEY = "sk-bench-gateway-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@dataclass(frozen=True)
class Sample:
    one: Loop  # one client, requests one after another
    many: Loop  # MANY clients for a fixed time
    ttft_ms: list[float]  # streamed requests: to the first content chunk
    health: Loop  # GET /health, one client
    cpu_one_us: float  # the server's CPU per request, one client
    cpu_many_us: float  # ... MANY clients
    others: float = 0.0  # CPU cores that other programs kept busy meanwhile (noise)


@dataclass(frozen=True)
class Server:
    """One contender: where to send, the model's name there, and the process to meter."""

    url: str
    model: str
    pid: int
    health: str = "/health"


def contender(server: Server, one: int, seconds: float) -> Callable[[], Sample]:
    """One client sending `one` requests, MANY clients for `seconds`, streams, /health."""
    body = {"model": server.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}

    async def send(client: httpx.AsyncClient) -> None:
        reply = await client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()

    async def health(client: httpx.AsyncClient) -> None:
        (await client.get(server.health)).raise_for_status()

    async def first_content(client: httpx.AsyncClient) -> float:
        began = time.perf_counter()
        streamed = {**body, "stream": True}
        elapsed = None
        async with client.stream("POST", "/v1/chat/completions", json=streamed) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():  # read to the end, as a client does
                if elapsed is None and line.startswith("data: {") and _content(line[6:]):
                    elapsed = (time.perf_counter() - began) * 1000
        if elapsed is None:
            raise RuntimeError("the stream had no content")
        return elapsed

    async def loop(
        clients: int, call: Callable[[httpx.AsyncClient], Any], **until: Any
    ) -> tuple[Loop, float]:
        """The loop, and the server's CPU seconds per request over it."""
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, limits=limits, headers=HEADERS
        ) as client:
            before = cpu_seconds(server.pid)
            done = await closed_loop(clients, lambda n, i: call(client), **until)
            used = cpu_seconds(server.pid) - before
        if done.errors:
            raise RuntimeError(f"{len(done.errors)} failed requests: {done.errors[0]}")
        return done, used / max(1, len(done.samples))

    async def streams() -> list[float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=HEADERS) as client:
            return [await first_content(client) for _ in range(STREAMS)]

    def run() -> Sample:
        single, cpu_one = asyncio.run(loop(1, send, requests=one))
        many, cpu_many = asyncio.run(loop(MANY, send, seconds=seconds))
        ttft = asyncio.run(streams())
        probes, _ = asyncio.run(loop(1, health, requests=HEALTHS))
        return Sample(single, many, ttft, probes, cpu_one * 1e6, cpu_many * 1e6)

    return run


def _content(payload: str) -> bool:
    chunk = json.loads(payload)
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])


def measured(meter: CpuMeter, run: Callable[[], Sample]) -> Callable[[], Sample]:
    def sample() -> Sample:
        s, others = meter.measure(run)
        return Sample(s.one, s.many, s.ttft_ms, s.health, s.cpu_one_us, s.cpu_many_us, others)

    return sample


def show(label: str, name: str, s: Sample) -> None:
    times = [t.seconds * 1000 for t in s.one.samples]
    health = [t.seconds * 1000 for t in s.health.samples]
    print(
        f"  {label:8} {name:8} 1 client: p50 {percentile(times, 50):6.2f} ms, "
        f"{s.one.per_second():5.0f}/s, CPU {s.cpu_one_us:5.0f} µs/req; {MANY} clients: "
        f"{s.many.per_second():5.0f}/s, CPU {s.cpu_many_us:5.0f} µs/req; TTFT p50 "
        f"{statistics.median(s.ttft_ms):5.2f} ms; /health p50 {percentile(health, 50):5.2f} ms; "
        f"others busy {s.others:.2f} cores"
    )


def mmserve_config(upstream: str) -> dict[str, object]:
    model = {
        "name": MODEL,
        "kind": "http",
        "backend": "openai",
        "base_url": f"{upstream}/v1",
        "upstream_model": "tiny",
    }
    return {"models": [model], "api_keys": [{"key": KEY}]}


def labels(ref: str | None) -> dict[str, str]:
    found = {
        "mmserve": "through mmserve (`kind: http`)",
        "litellm": "through LiteLLM's proxy (1 worker)",
        "direct": "upstream called directly (`/health`: bare Starlette)",
    }
    if ref:
        found["before"] = f"through mmserve at `{ref}`"
    return found


def measure(result: Result, args: argparse.Namespace) -> None:
    failures = Failures()
    servers: dict[str, Server] = {}
    pids = [os.getpid()]
    versions = ""
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        log = Path(tmp) / "upstream.log"
        up = stack.enter_context(serving(command, log, f"{upstream}/health"))
        pids.append(up.pid)
        servers["direct"] = Server(upstream, "tiny", up.pid)
        config = mmserve_config(upstream)
        with failures.guard("mmserve"):
            here = Path(tmp) / "mmserve"
            here.mkdir()
            url, proc = stack.enter_context(serving_mmserve(here, config))
            servers["mmserve"] = Server(url, MODEL, proc.pid)
        if args.ref:
            with failures.guard("before"):
                there = Path(tmp) / "before"
                there.mkdir()
                src = source_at(args.ref, there)
                url, proc = stack.enter_context(serving_mmserve(there, config, src=src))
                servers["before"] = Server(url, MODEL, proc.pid)
        if args.litellm:
            with failures.guard("litellm"):
                url, pid, installed = stack.enter_context(
                    running_litellm(Path(tmp), f"{upstream}/v1", MODEL, "tiny", KEY)
                )
                servers["litellm"] = Server(url, MODEL, pid, health="/health/liveliness")
                versions = ", ".join(f"{k} {v}" for k, v in installed.versions.items())
        pids += [s.pid for name, s in servers.items() if name != "direct"]
        meter = CpuMeter(pids)
        contenders = {
            name: measured(meter, contender(s, args.requests, args.seconds))
            for name, s in servers.items()
        }
        warm_ups = {name: measured(meter, contender(s, 20, 0.5)) for name, s in servers.items()}
        samples = run_rounds(
            contenders, args.rounds, failures, show, warm_ups, deadline=args.deadline
        )
    fill(result, samples, failures, args, versions)


def figures(runs: list[Sample]) -> dict[str, float]:
    times = [t.seconds * 1000 for s in runs for t in s.one.samples]
    health = [t.seconds * 1000 for s in runs for t in s.health.samples]
    return {
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "many": statistics.median(s.many.per_second() for s in runs),
        "ttft": statistics.median(t for s in runs for t in s.ttft_ms),
        "health": percentile(health, 50),
        "cpu_one": statistics.median(s.cpu_one_us for s in runs),
        "cpu_many": statistics.median(s.cpu_many_us for s in runs),
        "others": statistics.median(s.others for s in runs),
    }


def fill(
    result: Result,
    samples: dict[str, list[Sample]],
    failures: Failures,
    args: argparse.Namespace,
    versions: str,
) -> None:
    columns = [
        Column("p50", "1 client: p50 ms", digits=2),
        Column("p99", "1 client: p99 ms", digits=2),
        Column("many", f"{MANY} clients: requests/s", digits=0),
        Column("ttft", "streamed: first content, p50 ms", digits=2),
        Column("health", "`/health` p50 ms", digits=2),
        Column("cpu_one", "server CPU µs/request (1 client)", digits=0),
        Column("cpu_many", f"server CPU µs/request ({MANY} clients)", digits=0),
        Column("others", "others busy (cores)", digits=2, ratio=False),
    ]
    values = {name: figures(runs) for name, runs in samples.items() if runs}
    rows = []
    for name, label in labels(args.ref).items():
        if name == "litellm" and not args.litellm:
            continue
        note = failures.note(name, "not available")
        rows.append(Row(label, values.get(name, {}), note=note, baseline=name == "mmserve"))
    result.tables.append(Table(columns, rows))
    done = rounds_done(samples, args.rounds)
    result.notes.append(
        f"{done} after a warm-up; a round is {args.requests} requests from one client, "
        f"{MANY} clients for {args.seconds:g} s, {STREAMS} streamed requests and {HEALTHS} "
        "`/health` from one client. Percentiles over every request of every round (nearest "
        "rank); CPU per request: medians over the rounds. The direct row's CPU is the "
        "upstream's own; the others' is the gateway's alone (the upstream's comes on top)."
    )
    if "mmserve" in values and "direct" in values:
        via, direct = values["mmserve"], values["direct"]
        result.notes.append(
            f"Added by mmserve per request (1 client): p50 +{via['p50'] - direct['p50']:.2f} ms "
            f"(target ≤ 1.0), p99 +{via['p99'] - direct['p99']:.2f} ms; {MANY}-client "
            f"requests/s {via['many'] / direct['many']:.2f}x the direct figure (target ≥ 0.85); "
            f"first streamed content +{via['ttft'] - direct['ttft']:.2f} ms; `/health` "
            f"+{via['health'] - direct['health']:.2f} ms over bare Starlette (target ≤ 0.3)."
        )
    for name, what in (("litellm", "LiteLLM's proxy"), ("before", f"mmserve at `{args.ref}`")):
        if name in values and "mmserve" in values and "direct" in values:
            other, via, direct = values[name], values["mmserve"], values["direct"]
            result.notes.append(
                f"{what}: p50 +{other['p50'] - direct['p50']:.2f} ms over direct, "
                f"{MANY}-client requests/s {other['many'] / direct['many']:.2f}x direct, "
                f"server CPU {other['cpu_one']:.0f} µs per request against mmserve's "
                f"{via['cpu_one']:.0f}."
            )
    if versions:
        result.notes.append(f"LiteLLM's venv: {versions}.")


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    parser.add_argument("--requests", type=int, help="one client's requests (300; quick 100)")
    parser.add_argument("--seconds", type=float, help=f"{MANY} clients' time (4; quick 2)")
    parser.add_argument("--ref", help="also measure the mmserve of this git commit (before)")
    parser.add_argument(
        "--no-litellm", dest="litellm", action="store_false", help="leave LiteLLM's proxy out"
    )


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (100 if args.quick else 300)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    setup = (
        "A tiny OpenAI-shaped upstream on loopback (`bench/upstream.py`: Starlette on uvicorn, "
        "a fixed three-word chat completion, no model) is called directly, through mmserve "
        "serving it as a model of `kind: http` (`backend: openai`), and through LiteLLM's proxy "
        "(one worker, no database, the same upstream in its config). The same "
        "`/v1/chat/completions` request, with an API key to each; one client sending requests "
        f"one after another, {MANY} concurrent clients (asyncio, one httpx client) for a fixed "
        "time, one client streaming, one client asking `/health` (the upstream's: bare "
        "Starlette). Server CPU per request from each server process's own CPU time. The "
        "upstream, the gateways and the clients share the machine's cores."
    )
    title = "5. Gateway overhead: an upstream called directly, through mmserve and LiteLLM"
    run_benchmark(Result("gateway", title, setup), args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
