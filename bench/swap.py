"""4. Model swap: room for one model, requests alternating between two; requests/s and latency.

Two GGUF models, SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M Q4_K_M (`catalog:smollm2`,
`catalog:gemma3-270m`), T threads, context 2048. Each request is a completion (`max_tokens` 8,
temperature 0, a fixed prompt) to the model the previous request did not use, so every request
swaps:

  mmserve   `python -m mmserve serve` with both models, `max_loaded_models: 1`, loaded on demand:
            each request evicts the other model (its process exits) and starts this one's
  server    `python -m llama_cpp.server` (bench/.peers/llama) with both models in its config
            file: it holds one Llama at a time, and closes it to load the other
  direct    llama-cpp-python in this process doing the same: close the Llama, load the other,
            complete

and, as a reference, mmserve with room for both (`max_loaded_models: 2`, both loaded): the same
alternating requests without a swap. requests/s = requests / the round's wall time; latency from
sending a request to its reply, percentiles over every request. After a warm-up (one swap each),
the rounds alternate the contenders.

    .venv/bin/python bench/swap.py [--quick] [--threads T] [--rounds N] [--requests N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clients import percentile
from common import CpuMeter, omp_env, serving_mmserve
from harness import Failures, parse_args, rounds_done, run_benchmark, run_rounds
from peers import LLAMA_SERVER_SAMPLING, llama_model, running_llama_server
from results import Column, Result, Row, Table

MODELS = {"smollm2": "catalog:smollm2", "gemma3-270m": "catalog:gemma3-270m"}
CONTEXT = 2048
PROMPT = "The capital of France is"
MAX_TOKENS = 8
LABELS = {
    "mmserve": "mmserve, room for one (`max_loaded_models: 1`)",
    "server": "llama-cpp-python server (`llama_cpp.server`, two models in its config)",
    "direct": "llama-cpp-python direct (close, load, complete)",
    "roomy": "mmserve, room for both (no swap; reference)",
}


@dataclass(frozen=True)
class Sample:
    latencies: list[float]  # seconds, one per request
    wall_s: float
    others: float = 0.0  # CPU cores that other programs kept busy meanwhile (noise)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall_s


class Alternation:
    """The next model to ask for: always the one the previous request did not use."""

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> str:
        name = list(MODELS)[self.count % len(MODELS)]
        self.count += 1
        return name


def timed_requests(requests: int, alternation: Alternation, call: Callable[[str], None]) -> Sample:
    """`requests` calls of `call(model)`, one at a time, each to the model `alternation` gives.

    The alternation is the contender's own and outlives the round, so that the first request of
    a round swaps too.
    """
    latencies, start = [], time.perf_counter()
    for _ in range(requests):
        model = alternation.next()
        began = time.perf_counter()
        call(model)
        latencies.append(time.perf_counter() - began)
    return Sample(latencies, time.perf_counter() - start)


def http_contender(
    url: str, requests: int, extra: dict[str, Any] | None = None
) -> Callable[[], Sample]:
    client = httpx.Client(base_url=url, timeout=300)
    alternation = Alternation()

    def call(model: str) -> None:
        body = {
            **(extra or {}),
            "model": model,
            "prompt": PROMPT,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        reply = client.post("/v1/completions", json=body)
        if reply.status_code != 200:
            raise RuntimeError(f"{reply.status_code} {reply.text[:300]}")

    return lambda: timed_requests(requests, alternation, call)


class DirectSwapper:
    """One Llama at a time in this process, as llama_cpp.server's LlamaProxy holds them."""

    def __init__(self, paths: dict[str, Path], threads: int) -> None:
        self.paths, self.threads = paths, threads
        self.name: str | None = None
        self.llm: Any = None
        self.alternation = Alternation()

    def complete(self, name: str) -> None:
        import llama_cpp

        if name != self.name:
            if self.llm is not None:
                self.llm.close()
                self.llm = None
                gc.collect()
            self.llm = llama_cpp.Llama(
                model_path=str(self.paths[name]),
                n_ctx=CONTEXT,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
            self.name = name
        self.llm.create_completion(PROMPT, max_tokens=MAX_TOKENS, temperature=0)

    def contender(self, requests: int) -> Callable[[], Sample]:
        return lambda: timed_requests(requests, self.alternation, self.complete)


def measured(meter: CpuMeter, run: Callable[[], Sample]) -> Callable[[], Sample]:
    def sample() -> Sample:
        s, others = meter.measure(run)
        return Sample(s.latencies, s.wall_s, others)

    return sample


def show(label: str, name: str, s: Sample) -> None:
    p50 = percentile(s.latencies, 50) * 1000
    print(
        f"  {label:8} {name:8} {s.per_second:5.2f} requests/s  p50 {p50:7.0f} ms  "
        f"others busy {s.others:.2f} cores"
    )


def mmserve_config(threads: int, room: int) -> dict[str, Any]:
    models = [
        {
            "name": name,
            "kind": "llm",
            "source": source,
            "threads": threads,
            "context_length": CONTEXT,
            "preload": room > 1,  # room for one: each loads on demand
        }
        for name, source in MODELS.items()
    ]
    return {"max_loaded_models": room, "models": models}


def measure(result: Result, args: argparse.Namespace) -> None:
    os.environ.update(omp_env(args.threads))  # before llama_cpp loads: it reads them then
    from mmserve.catalog import resolve_source

    paths = {name: resolve_source(source) for name, source in MODELS.items()}
    failures = Failures()
    runs: dict[str, Callable[[], Sample]] = {}
    warm: dict[str, Callable[[], Sample]] = {}
    pids = [os.getpid()]
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp, "one")
        directory.mkdir()
        url, proc = stack.enter_context(serving_mmserve(directory, mmserve_config(args.threads, 1)))
        runs["mmserve"] = http_contender(url, args.requests)
        warm["mmserve"] = http_contender(url, 1)
        pids.append(proc.pid)
        with failures.guard("server"):
            models = [llama_model(p, name, args.threads, CONTEXT) for name, p in paths.items()]
            base, pid = stack.enter_context(running_llama_server(Path(tmp), models, args.threads))
            runs["server"] = http_contender(base, args.requests, LLAMA_SERVER_SAMPLING)
            warm["server"] = http_contender(base, 1, LLAMA_SERVER_SAMPLING)
            pids.append(pid)
        direct = DirectSwapper(paths, args.threads)
        runs["direct"] = direct.contender(args.requests)
        warm["direct"] = direct.contender(1)
        with failures.guard("roomy"):
            directory = Path(tmp, "two")
            directory.mkdir()
            config = mmserve_config(args.threads, 2)
            roomy, proc = stack.enter_context(serving_mmserve(directory, config))
            runs["roomy"] = http_contender(roomy, args.requests)
            warm["roomy"] = http_contender(roomy, 2)
            pids.append(proc.pid)
        meter = CpuMeter(pids)
        contenders = {name: measured(meter, run) for name, run in runs.items()}
        warm_ups = {name: measured(meter, run) for name, run in warm.items()}
        samples = run_rounds(
            contenders, args.rounds, failures, show, warm_ups, deadline=args.deadline
        )
    fill(result, samples, failures, args)


def fill(
    result: Result, samples: dict[str, list[Sample]], failures: Failures, args: argparse.Namespace
) -> None:
    columns = [
        Column("rps", "requests/s (median)", digits=2),
        Column("p50", "p50 latency ms", digits=0),
        Column("p99", "p99 latency ms", digits=0),
        Column("others", "others busy (cores)", digits=2, ratio=False),
    ]
    rows = []
    for name, label in LABELS.items():
        runs = samples.get(name, [])
        values = {}
        if runs:
            times = [t * 1000 for s in runs for t in s.latencies]
            values = {
                "rps": statistics.median(s.per_second for s in runs),
                "p50": percentile(times, 50),
                "p99": percentile(times, 99),
                "others": statistics.median(s.others for s in runs),
            }
        rows.append(Row(label, values, note=failures.note(name), baseline=name == "mmserve"))
    result.tables.append(Table(columns, rows))
    done = rounds_done(samples, args.rounds)
    result.notes.append(
        f"{done} after a warm-up; a round is {args.requests} requests, one at a "
        f"time, alternating the models (each a swap, except in the reference row); "
        f"{args.threads} thread(s) per model for every contender."
    )


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    parser.add_argument("--requests", type=int, help="requests per round (default 8; quick 4)")


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (4 if args.quick else 8)
    setup = (
        "Room for one model; one client alternates completion requests between SmolLM2-135M-"
        "Instruct Q4_1 and Gemma 3 270M Q4_K_M (`/v1/completions`, prompt "
        f'"{PROMPT}", max_tokens {MAX_TOKENS}, temperature 0, context 2048), so that every '
        "request swaps. mmserve with `max_loaded_models: 1` stops one model's process and starts "
        "the other's; `llama_cpp.server` with both models in its config file closes one Llama "
        "and loads the other in its own process; the direct contender does the same in the "
        "benchmark's process. mmserve with room for both is the no-swap reference."
    )
    title = "4. Model swap: room for one model, requests alternating between two"
    run_benchmark(Result("swap", title, setup), args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
