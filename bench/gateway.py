"""5. Gateway overhead: a fast upstream called directly, and through mmserve's `http` model.

The upstream is bench/upstream.py (Starlette on uvicorn, loopback; it answers a fixed short chat
completion at once). The same non-streamed chat request goes to:

  direct    the upstream itself, `POST /v1/chat/completions`
  mmserve   `python -m mmserve serve` with one model of `kind: http` (`backend: openai`,
            `base_url` the upstream, `upstream_model: tiny`), which relays it there

For each: one client sending requests one after another (latency percentiles over every request
of every round, and requests/s), then 16 concurrent clients for a fixed time (requests/s). The
added latency per request is mmserve's percentile minus the direct one. The clients are asyncio
tasks sharing one httpx client in the benchmark's process; the upstream, mmserve and the
clients share the machine's cores. Rounds alternate the two after a warm-up.

Until mmserve has `kind: http`, its row says it is not available (the direct side is still
measured).

    .venv/bin/python bench/gateway.py [--quick] [--rounds N] [--requests N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from clients import Loop, closed_loop, percentile
from common import CpuMeter, free_port, serving, serving_mmserve
from harness import Failures, parse_args, rounds_done, run_benchmark, run_rounds
from results import Column, Result, Row, Table

BENCH = Path(__file__).resolve().parent
MANY = 16
MODEL = "upstream"
LABELS = {"mmserve": "through mmserve (`kind: http`)", "direct": "upstream called directly"}


@dataclass(frozen=True)
class Sample:
    one: Loop  # one client, requests one after another
    many: Loop  # MANY clients for a fixed time
    others: float  # CPU cores that other programs kept busy meanwhile (noise)


def contender(url: str, model: str, one_requests: int, many_seconds: float) -> Callable[[], Sample]:
    """One client sending `one_requests`, then MANY clients for `many_seconds`."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}

    async def send(client: httpx.AsyncClient) -> None:
        reply = await client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()

    async def loop(clients: int, requests: int | None = None, seconds: float | None = None) -> Loop:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            done = await closed_loop(
                clients, lambda n, i: send(client), requests=requests, seconds=seconds
            )
        if done.errors:
            raise RuntimeError(f"{len(done.errors)} failed requests: {done.errors[0]}")
        return done

    def run() -> Sample:
        one = asyncio.run(loop(1, requests=one_requests))
        many = asyncio.run(loop(MANY, seconds=many_seconds))
        return Sample(one, many, 0.0)

    return run


def measured(meter: CpuMeter, run: Callable[[], Sample]) -> Callable[[], Sample]:
    def sample() -> Sample:
        s, others = meter.measure(run)
        return Sample(s.one, s.many, others)

    return sample


def show(label: str, name: str, s: Sample) -> None:
    times = [t.seconds * 1000 for t in s.one.samples]
    print(
        f"  {label:8} {name:8} 1 client: p50 {percentile(times, 50):6.2f} ms, "
        f"p99 {percentile(times, 99):6.2f} ms, {s.one.per_second():6.0f}/s; "
        f"{MANY} clients: {s.many.per_second():6.0f}/s  others busy {s.others:.2f} cores"
    )


def mmserve_config(upstream: str) -> dict[str, object]:
    model = {
        "name": MODEL,
        "kind": "http",
        "backend": "openai",
        "base_url": f"{upstream}/v1",
        "upstream_model": "tiny",
    }
    return {"models": [model]}


def measure(result: Result, args: argparse.Namespace) -> None:
    failures = Failures()
    runs: dict[str, Callable[[], Sample]] = {}
    warm: dict[str, Callable[[], Sample]] = {}
    pids = [os.getpid()]
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        log = Path(tmp) / "upstream.log"
        pids.append(stack.enter_context(serving(command, log, f"{upstream}/health")).pid)
        with failures.guard("mmserve"):
            url, proc = stack.enter_context(serving_mmserve(Path(tmp), mmserve_config(upstream)))
            runs["mmserve"] = contender(url, MODEL, args.requests, args.seconds)
            warm["mmserve"] = contender(url, MODEL, 20, 0.5)
            pids.append(proc.pid)
        runs["direct"] = contender(upstream, "tiny", args.requests, args.seconds)
        warm["direct"] = contender(upstream, "tiny", 20, 0.5)
        meter = CpuMeter(pids)
        contenders = {name: measured(meter, run) for name, run in runs.items()}
        warm_ups = {name: measured(meter, run) for name, run in warm.items()}
        samples = run_rounds(
            contenders, args.rounds, failures, show, warm_ups, deadline=args.deadline
        )
    fill(result, samples, failures, args)


def figures(runs: list[Sample]) -> dict[str, float]:
    times = [t.seconds * 1000 for s in runs for t in s.one.samples]
    return {
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "one": statistics.median(s.one.per_second() for s in runs),
        "many": statistics.median(s.many.per_second() for s in runs),
        "others": statistics.median(s.others for s in runs),
    }


def fill(
    result: Result, samples: dict[str, list[Sample]], failures: Failures, args: argparse.Namespace
) -> None:
    columns = [
        Column("p50", "1 client: p50 ms", digits=2),
        Column("p99", "1 client: p99 ms", digits=2),
        Column("one", "1 client: requests/s", digits=0),
        Column("many", f"{MANY} clients: requests/s", digits=0),
        Column("others", "others busy (cores)", digits=2, ratio=False),
    ]
    values = {name: figures(runs) for name, runs in samples.items() if runs}
    rows = []
    for name, label in LABELS.items():
        note = failures.note(name, "not available")
        rows.append(Row(label, values.get(name, {}), note=note, baseline=name == "mmserve"))
    result.tables.append(Table(columns, rows))
    done = rounds_done(samples, args.rounds)
    result.notes.append(
        f"{done} after a warm-up; a round is {args.requests} requests from one "
        f"client, then {MANY} clients for {args.seconds:g} s. Percentiles over every request "
        "of every round (nearest rank)."
    )
    if "mmserve" in values and "direct" in values:
        via, direct = values["mmserve"], values["direct"]
        result.notes.append(
            f"Added by mmserve per request (1 client): p50 +{via['p50'] - direct['p50']:.2f} ms, "
            f"p99 +{via['p99'] - direct['p99']:.2f} ms; requests/s with {MANY} clients "
            f"{via['many'] / direct['many']:.2f}x the direct figure."
        )


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    parser.add_argument("--requests", type=int, help="one client's requests (300; quick 100)")
    parser.add_argument("--seconds", type=float, help=f"{MANY} clients' time (4; quick 2)")


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (100 if args.quick else 300)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    setup = (
        "A tiny OpenAI-shaped upstream on loopback (`bench/upstream.py`: Starlette on uvicorn, "
        "a fixed three-word chat completion, no model) is called directly, and through mmserve "
        "serving it as a model of `kind: http` (`backend: openai`). The same non-streamed "
        "`/v1/chat/completions` request; one client sending requests one after another, then "
        f"{MANY} concurrent clients (asyncio, one httpx client) for a fixed time. The upstream, "
        "mmserve and the clients share the machine's cores."
    )
    title = "5. Gateway overhead: an upstream called directly and through mmserve"
    run_benchmark(Result("gateway", title, setup), args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
