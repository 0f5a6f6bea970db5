"""2. Chat, 8 concurrent clients: aggregate tokens/s and p50/p99 latency, mmserve and its peers.

Eight clients send chat requests at once (not streamed; SmolLM2-135M-Instruct Q4_1, T threads,
context 2048, temperature 0, the same max_tokens; client n always sends prompt n of eight), each
its next request when its previous one is answered, to:

  mmserve   `python -m mmserve serve` serving only that model, its defaults: one replica that
            runs one request at a time (max_concurrency 1), the others waiting in its queue
  server    `python -m llama_cpp.server` (bench/.peers/llama), the same GGUF: it also runs one
            request at a time (a lock around its one Llama); interrupt_requests off, so a new
            request waits instead of cutting the current one short
  direct    one `llama_cpp.Llama` in this process called from 8 threads, a lock around it (one
            Llama runs one sequence at a time)

A round is every client sending its requests to one contender; rounds alternate the contenders.
Aggregate tokens/s = completion tokens (from each reply's usage) / the round's wall time, median
over rounds; latency from sending a request to its whole reply, percentiles over every request of
every round (nearest rank: with fewer than 100 requests p99 is the slowest).

    .venv/bin/python bench/chat_many.py [--quick] [--threads T] [--rounds N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clients import Loop, closed_loop, percentile, threaded_loop
from common import CpuMeter, omp_env, serving_mmserve
from harness import Failures, effective, parse_args, rounds_done, run_benchmark, run_rounds
from peers import LLAMA_SERVER_SAMPLING, llama_model, running_llama_server
from results import Column, Result, Row, Table

MODEL = "smollm2"
SOURCE = "catalog:smollm2"
CONTEXT = 2048
CLIENTS = 8
TOPICS = ["the sea", "a lighthouse", "bread", "winter", "a small robot", "the moon", "tea", "maps"]
PROMPTS = [f"Write a short story about {topic}." for topic in TOPICS]
LABELS = {
    "mmserve": "mmserve",
    "server": "llama-cpp-python server (`llama_cpp.server`)",
    "direct": "llama-cpp-python direct (in-process, 8 threads, a lock)",
}


@dataclass(frozen=True)
class RoundSample:
    loop: Loop  # each request's latency, its value the completion tokens
    others: float  # CPU cores that other programs kept busy meanwhile (noise)

    @property
    def tokens_per_s(self) -> float:
        return self.loop.per_second(lambda tokens: float(tokens))


def body(client: int, max_tokens: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPTS[client % len(PROMPTS)]}]
    return {
        **(extra or {}),
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def http_round(
    url: str, args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> Callable[[], Loop]:
    async def send(client: httpx.AsyncClient, n: int) -> int:
        reply = await client.post("/v1/chat/completions", json=body(n, args.max_tokens, extra))
        reply.raise_for_status()
        return int(reply.json()["usage"]["completion_tokens"])

    async def round_() -> Loop:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            return await closed_loop(CLIENTS, lambda n, _: send(client, n), requests=args.requests)

    return lambda: asyncio.run(round_())


def direct_round(llm: Any, args: argparse.Namespace) -> Callable[[], Loop]:
    lock = threading.Lock()  # one Llama runs one sequence at a time: calls must not overlap

    def call(n: int, _: int) -> int:
        request = body(n, args.max_tokens)
        with lock:
            reply = llm.create_chat_completion(
                request["messages"], max_tokens=args.max_tokens, temperature=0
            )
        return int(reply["usage"]["completion_tokens"])

    return lambda: threaded_loop(CLIENTS, args.requests, call)


def measured(meter: CpuMeter, run: Callable[[], Loop]) -> Callable[[], RoundSample]:
    def sample() -> RoundSample:
        loop, others = meter.measure(run)
        if not loop.ok:
            raise RuntimeError(f"every request failed: {loop.errors[0]}")
        return RoundSample(loop, others)

    return sample


def show(label: str, name: str, s: RoundSample) -> None:
    times = [t.seconds * 1000 for t in s.loop.ok]
    print(
        f"  {label:8} {name:8} {s.tokens_per_s:6.1f} tok/s  {len(s.loop.ok)} replies in "
        f"{s.loop.wall_s:5.1f} s  p50 {percentile(times, 50):7.0f} ms  "
        f"errors {len(s.loop.errors)}  others busy {s.others:.2f} cores"
    )


def measure(result: Result, args: argparse.Namespace) -> None:
    os.environ.update(omp_env(args.threads))  # before llama_cpp loads: it reads them then
    import llama_cpp

    from mmserve.catalog import resolve_source

    path = resolve_source(SOURCE)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=CONTEXT,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    failures = Failures()
    rounds: dict[str, Callable[[], Loop]] = {}
    warm: dict[str, Callable[[], Loop]] = {}  # the warm-up: one request from each client
    once = argparse.Namespace(**{**vars(args), "requests": 1})
    pids = [os.getpid()]
    with (
        tempfile.TemporaryDirectory(prefix="bench-chat-many-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        model = {"name": MODEL, "kind": "llm", "source": SOURCE, "threads": args.threads}
        config = {"models": [{**model, "context_length": CONTEXT}]}
        url, proc = stack.enter_context(serving_mmserve(Path(tmp), config))
        rounds["mmserve"] = http_round(url, args)
        warm["mmserve"] = http_round(url, once)
        pids.append(proc.pid)
        with failures.guard("server"):
            models = [llama_model(path, MODEL, args.threads, CONTEXT)]
            base, pid = stack.enter_context(running_llama_server(Path(tmp), models, args.threads))
            rounds["server"] = http_round(base, args, LLAMA_SERVER_SAMPLING)
            warm["server"] = http_round(base, once, LLAMA_SERVER_SAMPLING)
            pids.append(pid)
        rounds["direct"] = direct_round(llm, args)
        warm["direct"] = direct_round(llm, once)
        meter = CpuMeter(pids)
        contenders = {name: measured(meter, run) for name, run in rounds.items()}
        warm_ups = {name: measured(meter, run) for name, run in warm.items()}
        samples = run_rounds(
            contenders, args.rounds, failures, show, warm_ups, deadline=args.deadline
        )
    fill(result, samples, failures, args)


def fill(
    result: Result,
    samples: dict[str, list[RoundSample]],
    failures: Failures,
    args: argparse.Namespace,
) -> None:
    columns = [
        Column("tps", "aggregate tokens/s (median)"),
        Column("p50", "p50 latency ms", digits=0),
        Column("p99", "p99 latency ms", digits=0),
        Column("others", "others busy (cores)", digits=2, ratio=False),
    ]
    rows = []
    for name, label in LABELS.items():
        runs = samples.get(name, [])
        values = {}
        errors = sum(len(s.loop.errors) for s in runs)
        if runs:
            times = [t.seconds * 1000 for s in runs for t in s.loop.ok]
            values = {
                "tps": statistics.median(s.tokens_per_s for s in runs),
                "p50": percentile(times, 50),
                "p99": percentile(times, 99),
                "others": statistics.median(s.others for s in runs),
            }
        note = failures.note(name) or (f"{errors} failed requests" if errors else "")
        rows.append(Row(label, values, note=note, baseline=name == "mmserve"))
    result.tables.append(Table(columns, rows))
    per_round = CLIENTS * args.requests
    done = rounds_done(samples, args.rounds)
    result.notes += [
        f"{done} after a warm-up (one request from each client); a round is "
        f"{CLIENTS} clients x {args.requests} requests = {per_round} requests; max_tokens "
        f"{args.max_tokens}; {args.threads} thread(s) for every contender.",
        f"mmserve runs {concurrency(args.threads)} request(s) at a time per llm replica "
        "(max_concurrency, its default; one replica): the others wait in its queue, first come "
        "first served. `llama_cpp.server` and a direct Llama run one at a time too (a lock). "
        "So the latency is mostly waiting for the other clients' requests.",
    ]


def concurrency(threads: int) -> int:
    model = {"name": MODEL, "kind": "llm", "source": SOURCE, "threads": threads}
    return int(effective(model, "max_concurrency")["max_concurrency"])


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    parser.add_argument("--requests", type=int, help="requests per client a round (2; quick 1)")
    parser.add_argument("--max-tokens", type=int, help="tokens per reply (default 64; quick 32)")


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (1 if args.quick else 2)
    args.max_tokens = args.max_tokens or (32 if args.quick else 64)
    setup = (
        f"{CLIENTS} clients send chat requests at once (not streamed), each its next one when "
        'the previous is answered; client n always sends prompt n of eight ("Write a short '
        'story about the sea.", ...). SmolLM2-135M-Instruct Q4_1, context 2048, temperature 0. '
        "The HTTP contenders are driven by one asyncio httpx client in the benchmark's process; "
        "the direct contender is 8 threads calling one Llama. Aggregate tokens/s = completion "
        "tokens (from the replies' usage) / the round's wall time; latency from sending a "
        "request to its whole reply, percentiles over all requests (nearest rank)."
    )
    title = f"2. Chat, {CLIENTS} concurrent clients: aggregate tokens/s and p50/p99 latency"
    run_benchmark(Result("chat-many", title, setup), args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
