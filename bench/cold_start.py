"""Cold start: time from a request to the first token of a model not loaded yet, and memory.

What it measures, for one model (SmolLM2, `catalog:smollm2`), in one run:

  mmserve    a real `python -m mmserve serve` subprocess with only that model (`preload: false`,
             `keep_alive: -1`, the server's default threads, context 2048). Each round first
             POSTs /unloadmodel (the model's child process exits), then times a streamed
             `/v1/chat/completions` (httpx, max_tokens 8, temperature 0) from sending the request
             to the first content chunk: the server starts a new child process, which imports
             the engine, loads the model and answers.
  process    llama-cpp-python direct in a fresh process, the fair comparison: the time from
             starting `python -c` (which imports llama_cpp, loads `Llama(n_ctx=2048, ...)` and
             streams `create_chat_completion(stream=True)`) to the moment the child prints its
             first content chunk, timed here in the parent.
  in-process llama-cpp-python already imported in this process: `Llama(...)` plus the first
             token of the same streamed chat request; the floor (no process start, no imports).

All three use the same GGUF, prompt, threads T (the server's default, `default_threads()`) and
context; the direct ones get OMP_WAIT_POLICY=PASSIVE and OMP_NUM_THREADS=T as the server gives its
children, and n_threads_batch=T as the server's backend sets. After one warm-up round, the rounds
alternate the three (and reverse the order every round) so that drift on a shared machine hits
all alike. Medians are reported, with the ratios mmserve/process and mmserve/in-process (of the
medians, and the median of each round's own ratio), and where each contender's time goes:
for mmserve the replica's `load_seconds` from /api/v1/ (spawn of the child to its `ready`) and
the rest (HTTP, prompt, first token); for the fresh process the moments it reports (interpreter
up, llama_cpp imported, model loaded). Each request also records how many CPU cores other
programs kept busy meanwhile, to spot disturbed rounds.

Memory (psutil, resident set size, MiB = 2^20 bytes) of the server process plus all its
children: (1) after start, before any load; (2) with the model loaded (after each cold request);
(3) after /unloadmodel (before each cold request, and once at the end); also the model child's
own RSS when loaded. The difference (3) - (1) shows what the server keeps after an unload.

Run it from the repository root (takes a minute or two):

    .venv/bin/python bench/cold_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psutil

from common import (
    CpuMeter,
    describe_environment,
    is_healthy,
    median_ratios,
    medians,
    omp_env,
    start_server,
    stop_server,
    tail,
    wait_until,
    write_config,
)

MODEL = "smollm2"
SOURCE = "catalog:smollm2"
CONTEXT = 2048
MAX_TOKENS = 8
PROMPT = "Write a long story about a lighthouse keeper."
MESSAGES = [{"role": "user", "content": PROMPT}]
MIB = 2**20
LABELS = {
    "mmserve": "mmserve on demand (HTTP)",
    "process": "direct, fresh process",
    "in-process": "direct, in-process",
}


@dataclass(frozen=True)
class Sample:
    """One cold request: seconds to the first content chunk, and where they went."""

    first_token_s: float
    phases: dict[str, float] = field(default_factory=dict)  # name -> seconds, in order
    others: float = 0.0  # CPU cores that other programs kept busy meanwhile (noise)


def tree_rss(pid: int) -> int:
    """Resident bytes of a process plus all its descendants."""
    root = psutil.Process(pid)
    total = root.memory_info().rss
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


# --- (a) mmserve, on demand ----------------------------------------------------------------


@contextlib.contextmanager
def mmserve_server(directory: Path) -> Iterator[tuple[str, int, Path]]:
    """A real `mmserve serve` subprocess, healthy, nothing loaded; yields URL, pid and log."""
    model = {"name": MODEL, "kind": "llm", "source": SOURCE, "preload": False, "keep_alive": -1}
    log = directory / "server.log"
    proc, url = start_server(write_config(directory, {"models": [model]}), log)

    def on_sigterm(signum: int, frame: object) -> None:
        # Tell the server first: the exit below can be lost if the signal lands inside a
        # ctypes callback of llama.cpp (the in-process contender), which swallows exceptions.
        proc.send_signal(signal.SIGTERM)
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        wait_until(
            proc, log, lambda: is_healthy(url), timeout=120, interval=0.1, what="server not healthy"
        )
        yield url, proc.pid, log
    finally:
        stop_server(proc)
        signal.signal(signal.SIGTERM, previous)


class Mmserve:
    """Cold requests to the server, and its memory around them."""

    def __init__(self, url: str, pid: int, log: Path) -> None:
        self.url, self.pid, self.log = url, pid, log
        self.client = httpx.Client(base_url=url, timeout=300)
        self.loaded: list[int] = []  # server + children, model loaded
        self.child: list[int] = []  # the model's process alone
        self.unloaded: list[int] = []  # server + children, after /unloadmodel

    def model_status(self) -> dict[str, Any]:
        models = self.client.get("/api/v1/").json()["models"]
        return next(m for m in models if m["name"] == MODEL)

    def unload(self) -> None:
        """Unload, check that the model's process is gone, record the memory."""
        reply = self.client.post("/unloadmodel", json={"model": MODEL})
        reply.raise_for_status()
        if reply.json()["state"] != "unloaded":
            raise RuntimeError(f"/unloadmodel left the model {reply.json()['state']}")
        deadline = time.monotonic() + 10
        while psutil.Process(self.pid).children(recursive=True):
            if time.monotonic() > deadline:
                raise RuntimeError("the model's process is still running after /unloadmodel")
            time.sleep(0.05)
        self.unloaded.append(tree_rss(self.pid))

    def request(self) -> Sample:
        """Time one streamed chat request; read the stream to its end."""
        body = {
            "model": MODEL,
            "messages": MESSAGES,
            "stream": True,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        start = time.perf_counter()
        first: float | None = None
        with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"{response.status_code}: {response.text}\n{tail(self.log)}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if first is None and choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
        if first is None:
            raise RuntimeError("the stream produced no content")
        return Sample(first - start)

    def after(self, sample: Sample) -> Sample:
        """The replica's load time (spawn to ready) from /api/v1/; record the memory."""
        status = self.model_status()
        replica = status["replicas"][0]
        self.loaded.append(tree_rss(self.pid))
        self.child.append(int(replica["resident_bytes"]))
        load = float(replica["load_seconds"])
        phases = {"child spawn to ready": load, "rest": sample.first_token_s - load}
        return Sample(sample.first_token_s, phases)


# --- (b) direct, fresh process -------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    print("up", flush=True)
    import llama_cpp
    print("imported", flush=True)
    path, threads, context, max_tokens, prompt = sys.argv[1:]
    threads = int(threads)
    llm = llama_cpp.Llama(model_path=path, n_ctx=int(context), n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    print("loaded", flush=True)
    messages = [{"role": "user", "content": prompt}]
    first = True
    for chunk in llm.create_chat_completion(messages, stream=True, max_tokens=int(max_tokens),
                                            temperature=0):
        if first and chunk["choices"][0]["delta"].get("content"):
            print("FIRST", flush=True)
            first = False
    """
)
CHILD_PHASES = {
    "up": "interpreter up",
    "imported": "import llama_cpp",
    "loaded": "Llama()",
    "FIRST": "first token",
}


class DirectProcess:
    def __init__(self, model_path: Path, threads: int) -> None:
        self.args = [str(model_path), str(threads), str(CONTEXT), str(MAX_TOKENS), PROMPT]
        self.env = {**os.environ, **omp_env(threads)}
        self.proc: subprocess.Popen[str] | None = None

    def request(self) -> Sample:
        """From starting the child to its FIRST line; the child finishes afterwards."""
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *self.args],
            stdout=subprocess.PIPE,
            env=self.env,
            text=True,
        )
        assert self.proc.stdout is not None
        phases, last = {}, start
        for line in self.proc.stdout:
            now, marker = time.perf_counter(), line.strip()
            if marker in CHILD_PHASES:
                phases[CHILD_PHASES[marker]] = now - last
                last = now
            if marker == "FIRST":
                return Sample(now - start, phases)
        raise RuntimeError(f"the direct process exited with {self.proc.wait()} before a token")

    def finish(self) -> None:
        if self.proc is not None:
            assert self.proc.stdout is not None
            self.proc.stdout.read()
            if self.proc.wait(timeout=60) != 0:
                raise RuntimeError(f"the direct process exited with {self.proc.returncode}")
            self.proc = None


# --- (c) direct, in-process ------------------------------------------------------------------


def in_process_runner(model_path: Path, threads: int) -> Callable[[], Sample]:
    import llama_cpp  # imported once, outside the timing (the environment is set by now)

    def run() -> Sample:
        start = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=str(model_path),
            n_ctx=CONTEXT,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        loaded = time.perf_counter()
        first: float | None = None
        chunks: Any = llm.create_chat_completion(
            MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=MAX_TOKENS,
            temperature=0,
        )
        for chunk in chunks:
            if first is None and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
        llm.close()
        del llm
        gc.collect()
        if first is None:
            raise RuntimeError("the stream produced no content")
        return Sample(first - start, {"Llama()": loaded - start, "first token": first - loaded})

    return run


# --- running and reporting ---------------------------------------------------------------


@dataclass
class Contender:
    run: Callable[[], Sample]
    before: Callable[[], None] = lambda: None  # untimed: make it cold
    after: Callable[[Sample], Sample] = lambda sample: sample  # untimed: collect details
    cleanup: Callable[[], None] = lambda: None  # untimed: let the direct process finish


def run_rounds(
    contenders: dict[str, Contender], rounds: int, meter: CpuMeter
) -> dict[str, list[Sample]]:
    """One warm-up round, then `rounds` rounds, reversing the order every round."""
    samples: dict[str, list[Sample]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds + 1):
        label = f"round {i}" if i else "warm-up"
        for name in names if i % 2 == 0 else reversed(names):
            contender = contenders[name]
            contender.before()
            sample, others = meter.measure(contender.run)
            contender.cleanup()
            sample = replace(contender.after(sample), others=others)
            if i:
                samples[name].append(sample)
            show(label, name, sample)
    return samples


def show(label: str, name: str, sample: Sample) -> None:
    phases = ", ".join(f"{k} {v * 1000:.0f}" for k, v in sample.phases.items())
    print(
        f"  {label:8} {name:10} first token {sample.first_token_s * 1000:7.1f} ms"
        f"  ({phases})  others busy: {sample.others:.2f} cores"
    )


def report(samples: dict[str, list[Sample]]) -> None:
    first = medians(samples, lambda s: s.first_token_s)
    others = medians(samples, lambda s: s.others)
    print()
    print(f"| {'contender':<26} | median first token ms | others busy (cores) |")
    print(f"|{'-' * 28}|{'-' * 22}:|{'-' * 20}:|")
    for name in samples:
        print(f"| {LABELS[name]:<26} | {first[name] * 1000:>21.1f} | {others[name]:>19.2f} |")
    print("\nmedian ms per phase:")
    for name, runs in samples.items():
        phases = ", ".join(
            f"{phase} {statistics.median(s.phases[phase] for s in runs) * 1000:.1f}"
            for phase in runs[0].phases
        )
        print(f"  {LABELS[name]:<26} {phases}")
    print()
    for base in ("process", "in-process"):
        ratio, paired = median_ratios(
            [s.first_token_s for s in samples["mmserve"]],
            [s.first_token_s for s in samples[base]],
        )
        print(
            f"ratio mmserve/{base}, time to first token: {ratio:.2f} of the medians, "
            f"{paired:.2f} median of each round's ratio"
        )


def report_memory(started: int, server: Mmserve, final: int) -> None:
    def mib(value: float) -> str:
        return f"{value / MIB:7.1f} MiB"

    print("\nmemory, resident (server process + its children):")
    print(f"  (1) after start, nothing loaded      {mib(started)}")
    print(f"  (2) model loaded (median)            {mib(statistics.median(server.loaded))}")
    print(f"      of which the model's process     {mib(statistics.median(server.child))}")
    print(f"  (3) after /unloadmodel (median)      {mib(statistics.median(server.unloaded))}")
    print(f"      after the last /unloadmodel      {mib(final)}")
    print(f"  (3) - (1), after the last unload     {mib(final - started)}")
    print(f"  after each unload, in order: {', '.join(f'{b / MIB:.1f}' for b in server.unloaded)}")


def versions() -> list[str]:
    """The versions the report names besides mmserve's and python's."""
    import llama_cpp

    return [
        f"llama-cpp-python {llama_cpp.__version__}",
        f"httpx {version('httpx')}",
        f"psutil {psutil.__version__}",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from mmserve.catalog import resolve_source
    from mmserve.replicas.process import default_threads

    threads = default_threads()
    # As the server does for its model processes: OpenMP threads sleep instead of spinning.
    # Set before llama_cpp is imported (the library reads it when it loads).
    os.environ.update(omp_env(threads))
    model_path = resolve_source(SOURCE)
    describe_environment(versions())
    print(f"model:    {model_path.name}, {threads} threads (server default), context {CONTEXT}")
    print(f"prompt:   {PROMPT!r}, max_tokens {MAX_TOKENS}, temperature 0")
    print(f"rounds:   {args.rounds} after one warm-up round\n")
    with (
        tempfile.TemporaryDirectory(prefix="mmserve-bench-") as tmp,
        mmserve_server(Path(tmp)) as (url, pid, log),
    ):
        time.sleep(1)  # let the server settle before measuring its memory
        started = tree_rss(pid)
        server = Mmserve(url, pid, log)
        direct = DirectProcess(model_path, threads)
        contenders = {
            "mmserve": Contender(server.request, before=server.unload, after=server.after),
            "process": Contender(direct.request, cleanup=direct.finish),
            "in-process": Contender(in_process_runner(model_path, threads)),
        }
        samples = run_rounds(contenders, args.rounds, CpuMeter([os.getpid()]))
        server.unload()
        final = server.unloaded.pop()
        server.unloaded = server.unloaded[1:]  # the first one unloaded nothing
        report(samples)
        report_memory(started, server, final)


if __name__ == "__main__":
    main()
