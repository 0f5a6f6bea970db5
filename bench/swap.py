"""4. Model swap: room for one model, requests alternating between models (four scenarios).

Four scenarios (`--scenarios`, all by default), each its own table with its own contenders; T
threads per model for every contender, context 2048, temperature 0, 8 tokens a reply:

  gguf     one client alternates completions between SmolLM2-135M-Instruct Q4_1 and Gemma 3
           270M Q4_K_M (`catalog:smollm2`, `catalog:gemma3-270m`), so every request swaps:
             mmserve   `mmserve serve`, both models, `max_loaded_models: 1`, loaded on demand:
                       each request evicts the other model (its llama-server exits) and starts
                       this one's
             one slot  the same with `parallel: 1` (mmserve's default is 4 slots, each with its
                       own context): the KV cache of the peers, one sequence of 2048
             server    `python -m llama_cpp.server` (bench/.peers/llama), both models in its
                       config file: it holds one Llama at a time, and closes it to load the other
             direct    llama-cpp-python in this process doing the same: close, load, complete
             roomy     mmserve with room for both (both loaded): no swap, the reference
  mixed    one client alternates embeddings of MiniLM (`catalog:minilm`, one sentence) and chats
           with SmolLM2, room for one:
             mmserve   `max_loaded_models: 1`: a worker process with sentence-transformers, then
                       a llama-server, in turn (warm workers as configured by default)
             direct    this process: SentenceTransformer, then llama_cpp.Llama, dropping the one
                       before loading the other (torch and llama_cpp imported once)
  clients  four clients, two on each GGUF model, each sending its next completion as soon as it
           has its reply, room for one: mmserve with `max_swap_delay: 2` (a request that needs a
           swap lets the loaded model serve its queued requests first, for up to 2 s) against
           `max_swap_delay: 0` (first come, first served); swaps counted from the status'
           `evictions`
  memory   20 swaps one after another (SmolLM2 and Gemma; then MiniLM and SmolLM2), and after
           each the resident memory of the server and of all its children (psutil), and the
           status' idle `warm_workers` when it lists them; growth from the first to the last
           swap with the same model loaded

requests/s = requests / the round's wall time; latency from sending a request to its reply,
percentiles over every request. After a warm-up, the rounds alternate the contenders.

    .venv/bin/python bench/swap.py [--quick] [--threads T] [--rounds N] [--requests N]
                                   [--scenarios gguf,mixed,clients,memory] [--swaps N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from clients import percentile
from common import CpuMeter, omp_env, serving_mmserve
from harness import Failures, parse_args, rounds_done, run_benchmark, run_rounds
from peers import LLAMA_SERVER_SAMPLING, llama_model, running_llama_server
from results import Column, Result, Row, Table

GGUF = {"smollm2": "catalog:smollm2", "gemma3-270m": "catalog:gemma3-270m"}
MIXED = {"minilm": "catalog:minilm", "smollm2": "catalog:smollm2"}
CONTEXT = 2048
PROMPT = "The capital of France is"
QUESTION = "What is the capital of France?"
SENTENCE = "The capital of France is Paris."
MAX_TOKENS = 8
SWAP_DELAY = 2.0  # max_swap_delay of the swap-aware contender
SCENARIOS = ("gguf", "mixed", "clients", "memory")
MB = 2**20

GGUF_LABELS = {
    "mmserve": "mmserve, room for one (`max_loaded_models: 1`)",
    "one-slot": "mmserve, room for one, one slot (`parallel: 1`, the peers' KV cache)",
    "server": "llama-cpp-python server (`llama_cpp.server`, two models in its config)",
    "direct": "llama-cpp-python direct (close, load, complete)",
    "roomy": "mmserve, room for both (no swap; reference)",
}
MIXED_LABELS = {
    "mmserve": "mmserve, room for one (`max_loaded_models: 1`)",
    "direct": "direct, one process (SentenceTransformer, then llama_cpp.Llama; drop, load, run)",
}
CLIENT_LABELS = {
    "mmserve": f"mmserve, swap-aware order (`max_swap_delay: {SWAP_DELAY:g}`)",
    "fcfs": "mmserve, first come first served (`max_swap_delay: 0`)",
}


@dataclass(frozen=True)
class Sample:
    latencies: list[float]  # seconds, one per request
    wall_s: float
    others: float = 0.0  # CPU cores that other programs kept busy meanwhile (noise)
    swaps: int = 0  # evictions the server counted during the round (where known)
    failed: list[str] = field(default_factory=list)  # the refusals of requests that failed
    answers: dict[str, set[str]] = field(default_factory=dict)  # model -> the texts it replied

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall_s


class Alternation:
    """The next model to ask for: always the one the previous request did not use."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.count = 0

    def next(self) -> str:
        name = self.names[self.count % len(self.names)]
        self.count += 1
        return name


# ---- requests ------------------------------------------------------------------------------


def request_of(model: str, kind: str) -> tuple[str, dict[str, Any]]:
    """The route and body of one request of `kind` (complete, chat, embed) to `model`."""
    if kind == "embed":
        return "/v1/embeddings", {"model": model, "input": SENTENCE}
    if kind == "chat":
        messages = [{"role": "user", "content": QUESTION}]
        body = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
        return "/v1/chat/completions", body
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    return "/v1/completions", body


def answer_of(reply: httpx.Response) -> str:
    """The reply's text (or an embedding's size); RuntimeError if it is not a good reply."""
    if reply.status_code != 200:
        raise RuntimeError(f"{reply.status_code} {reply.text[:300]}")
    body = reply.json()
    if "data" in body:
        return f"{len(body['data'][0]['embedding'])} dimensions"
    choice = body["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    if not text:
        raise RuntimeError(f"an empty answer: {body}")
    return str(text)


def timed_requests(
    requests: int, alternation: Alternation, call: Callable[[str], str | None]
) -> Sample:
    """`requests` calls of `call(model)`, one at a time, each to the model `alternation` gives.

    The alternation is the contender's own and outlives the round, so that the first request of
    a round swaps too.
    """
    latencies, answers, start = [], {}, time.perf_counter()
    for _ in range(requests):
        model = alternation.next()
        began = time.perf_counter()
        answer = call(model)
        latencies.append(time.perf_counter() - began)
        if answer is not None:
            answers.setdefault(model, set()).add(answer)
    return Sample(latencies, time.perf_counter() - start, answers=answers)


def http_contender(
    url: str,
    requests: int,
    kinds: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> Callable[[], Sample]:
    """One client alternating between the models of `kinds` (model -> request kind)."""
    client = httpx.Client(base_url=url, timeout=300)
    alternation = Alternation(list(kinds))

    def call(model: str) -> str:
        path, body = request_of(model, kinds[model])
        return answer_of(client.post(path, json={**(extra or {}), **body}))

    return lambda: timed_requests(requests, alternation, call)


def evictions(url: str) -> int:
    return int(httpx.get(f"{url}/api/v1/", timeout=30).json()["evictions"])


def clients_contender(url: str, per_client: int) -> Callable[[], Sample]:
    """Four clients at once, two on each GGUF model, each sending `per_client` completions one
    after another; the round ends when the last one has its last reply."""
    models = [name for name in GGUF for _ in range(2)]

    def run() -> Sample:
        latencies: list[float] = []
        answers: dict[str, set[str]] = {}
        failed: list[str] = []  # a refused request is counted; its client goes on
        errors: list[BaseException] = []
        lock = threading.Lock()
        gate = threading.Barrier(len(models) + 1)

        def client(model: str) -> None:
            with httpx.Client(base_url=url, timeout=300) as http:
                gate.wait()
                try:
                    for _ in range(per_client):
                        path, body = request_of(model, "complete")
                        began = time.perf_counter()
                        reply = http.post(path, json=body)
                        took = time.perf_counter() - began
                        if reply.status_code != 200:
                            with lock:
                                failed.append(f"{reply.status_code} {reply.text[:200]}")
                            continue
                        answer = answer_of(reply)
                        with lock:
                            latencies.append(took)
                            answers.setdefault(model, set()).add(answer)
                except BaseException as exc:  # raised again in the round, below
                    errors.append(exc)

        before = evictions(url)
        threads = [threading.Thread(target=client, args=(m,)) for m in models]
        for thread in threads:
            thread.start()
        gate.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        swaps = evictions(url) - before
        return Sample(latencies, wall, swaps=swaps, failed=failed, answers=answers)

    return run


class DirectSwapper:
    """One Llama at a time in this process, as llama_cpp.server's LlamaProxy holds them."""

    def __init__(self, paths: dict[str, Path], threads: int) -> None:
        self.paths, self.threads = paths, threads
        self.name: str | None = None
        self.llm: Any = None
        self.alternation = Alternation(list(paths))

    def complete(self, name: str) -> str:
        if name != self.name:
            self.drop()
            self.llm = load_llama(self.paths[name], self.threads)
            self.name = name
        reply = self.llm.create_completion(PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        return str(reply["choices"][0]["text"])

    def drop(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None
            gc.collect()

    def contender(self, requests: int) -> Callable[[], Sample]:
        return lambda: timed_requests(requests, self.alternation, self.complete)


class DirectMixed:
    """MiniLM (sentence-transformers) and SmolLM2 (llama-cpp-python) in this process, one at a
    time: the one in memory is dropped before the other is loaded."""

    def __init__(self, paths: dict[str, Path], threads: int) -> None:
        self.paths, self.threads = paths, threads
        self.name: str | None = None
        self.model: Any = None
        self.alternation = Alternation(list(MIXED))

    def call(self, name: str) -> str:
        if name != self.name:
            self.drop()
            self.model = self.load(name)
            self.name = name
        if name == "minilm":
            return f"{len(self.model.encode([SENTENCE])[0])} dimensions"
        messages = [{"role": "user", "content": QUESTION}]
        reply = self.model.create_chat_completion(messages, max_tokens=MAX_TOKENS, temperature=0)
        return str(reply["choices"][0]["message"]["content"])

    def load(self, name: str) -> Any:
        if name == "smollm2":
            return load_llama(self.paths[name], self.threads)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(self.paths[name]), device="cpu", local_files_only=True)

    def drop(self) -> None:
        if self.model is not None:
            if hasattr(self.model, "close"):  # a Llama
                self.model.close()
            self.model = None
            gc.collect()

    def contender(self, requests: int) -> Callable[[], Sample]:
        return lambda: timed_requests(requests, self.alternation, self.call)


def load_llama(path: Path, threads: int) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def measured(meter: CpuMeter, run: Callable[[], Sample]) -> Callable[[], Sample]:
    def sample() -> Sample:
        s, others = meter.measure(run)
        return dataclasses.replace(s, others=others)

    return sample


def show(label: str, name: str, s: Sample) -> None:
    p50 = percentile(s.latencies, 50) * 1000
    swaps = f"  {s.swaps} swaps" if s.swaps else ""
    swaps += f"  {len(s.failed)} failed" if s.failed else ""
    print(
        f"  {label:8} {name:8} {s.per_second:5.2f} requests/s  p50 {p50:7.0f} ms{swaps}  "
        f"others busy {s.others:.2f} cores"
    )


def mmserve_config(
    models: dict[str, str], threads: int, room: int, **settings: Any
) -> dict[str, Any]:
    """mmserve serving `models` (name -> source) with room for `room` of them; `parallel`
    among `settings` goes to each GGUF model, the rest to the top level."""
    parallel = settings.pop("parallel", None)
    entries = []
    for name, source in models.items():
        embedding = name == "minilm"
        entry: dict[str, Any] = {
            "name": name,
            "kind": "embedding" if embedding else "llm",
            "source": source,
            "threads": threads,
            "preload": room > 1,  # room for one: each loads on demand
        }
        if not embedding:
            entry["context_length"] = CONTEXT
            if parallel is not None:
                entry["parallel"] = parallel
        entries.append(entry)
    return {"max_loaded_models": room, **settings, "models": entries}


@contextlib.contextmanager
def mmserve(tmp: Path, name: str, config: dict[str, Any]) -> Iterator[tuple[str, psutil.Process]]:
    directory = Path(tmp, name)
    directory.mkdir()
    with serving_mmserve(directory, config) as (url, proc):
        yield url, psutil.Process(proc.pid)


# ---- the scenarios -------------------------------------------------------------------------


def run_gguf(args: argparse.Namespace, tmp: Path, deadline: float | None) -> Table:
    from mmserve.catalog import resolve_source

    paths = {name: resolve_source(source) for name, source in GGUF.items()}
    kinds = dict.fromkeys(GGUF, "complete")
    failures = Failures()
    runs: dict[str, Callable[[], Sample]] = {}
    warm: dict[str, Callable[[], Sample]] = {}
    pids = [os.getpid()]
    with contextlib.ExitStack() as stack:
        for name, config in (
            ("mmserve", mmserve_config(GGUF, args.threads, 1)),
            ("one-slot", mmserve_config(GGUF, args.threads, 1, parallel=1)),
        ):
            with failures.guard(name):
                url, proc = stack.enter_context(mmserve(tmp, name, config))
                runs[name] = http_contender(url, args.requests, kinds)
                warm[name] = http_contender(url, 1, kinds)
                pids.append(proc.pid)
        with failures.guard("server"):
            models = [llama_model(p, name, args.threads, CONTEXT) for name, p in paths.items()]
            server_dir = Path(tmp, "llama-cpp-server")
            server_dir.mkdir()
            base, pid = stack.enter_context(running_llama_server(server_dir, models, args.threads))
            runs["server"] = http_contender(base, args.requests, kinds, LLAMA_SERVER_SAMPLING)
            warm["server"] = http_contender(base, 1, kinds, LLAMA_SERVER_SAMPLING)
            pids.append(pid)
        direct = DirectSwapper(paths, args.threads)
        stack.callback(direct.drop)
        runs["direct"] = direct.contender(args.requests)
        warm["direct"] = direct.contender(1)
        with failures.guard("roomy"):
            url, proc = stack.enter_context(
                mmserve(tmp, "roomy", mmserve_config(GGUF, args.threads, 2))
            )
            runs["roomy"] = http_contender(url, args.requests, kinds)
            warm["roomy"] = http_contender(url, 2, kinds)
            pids.append(proc.pid)
        samples = rounds(runs, warm, pids, args, failures, deadline)
    caption = (
        "**One client, two GGUF models** (SmolLM2 and Gemma, completions), room for one: "
        "every request swaps."
    )
    return request_table(caption, GGUF_LABELS, samples, failures, args)


def run_mixed(args: argparse.Namespace, tmp: Path, deadline: float | None) -> Table:
    from mmserve.catalog import resolve_source

    os.environ["HF_HUB_OFFLINE"] = "1"
    paths = {name: resolve_source(source) for name, source in MIXED.items()}
    kinds = {"minilm": "embed", "smollm2": "chat"}
    failures = Failures()
    runs: dict[str, Callable[[], Sample]] = {}
    warm: dict[str, Callable[[], Sample]] = {}
    pids = [os.getpid()]
    with contextlib.ExitStack() as stack:
        with failures.guard("mmserve"):
            url, proc = stack.enter_context(
                mmserve(tmp, "mixed", mmserve_config(MIXED, args.threads, 1))
            )
            runs["mmserve"] = http_contender(url, args.requests, kinds)
            warm["mmserve"] = http_contender(url, 2, kinds)
            pids.append(proc.pid)
        with failures.guard("direct"):
            import torch

            torch.set_num_threads(args.threads)
            direct = DirectMixed(paths, args.threads)
            stack.callback(direct.drop)
            runs["direct"] = direct.contender(args.requests)
            warm["direct"] = direct.contender(2)
        samples = rounds(runs, warm, pids, args, failures, deadline)
    caption = (
        "**One client, an embedding model and a chat model** (MiniLM embeddings of one "
        "sentence, SmolLM2 chat), room for one: every request swaps."
    )
    return request_table(caption, MIXED_LABELS, samples, failures, args)


def run_clients(args: argparse.Namespace, tmp: Path, deadline: float | None) -> Table:
    failures = Failures()
    runs: dict[str, Callable[[], Sample]] = {}
    warm: dict[str, Callable[[], Sample]] = {}
    pids = [os.getpid()]
    with contextlib.ExitStack() as stack:
        for name, delay in (("mmserve", SWAP_DELAY), ("fcfs", 0.0)):
            with failures.guard(name):
                config = mmserve_config(GGUF, args.threads, 1, max_swap_delay=delay)
                url, proc = stack.enter_context(mmserve(tmp, f"clients-{name}", config))
                runs[name] = clients_contender(url, args.per_client)
                warm[name] = clients_contender(url, 1)
                pids.append(proc.pid)
        samples = rounds(runs, warm, pids, args, failures, deadline)
    caption = (
        f"**Four clients, two on each GGUF model** (SmolLM2 and Gemma, completions; each "
        f"sends {args.per_client} requests a round, one after another), room for one: the "
        "order in which a swap-aware mmserve serves them against first come first served. "
        "A refused request is counted, not timed, and its client goes on; requests/s counts "
        "the answered ones."
    )
    return request_table(caption, CLIENT_LABELS, samples, failures, args, swaps=True)


def rounds(
    runs: dict[str, Callable[[], Sample]],
    warm: dict[str, Callable[[], Sample]],
    pids: list[int],
    args: argparse.Namespace,
    failures: Failures,
    deadline: float | None,
) -> dict[str, list[Sample]]:
    meter = CpuMeter(pids)
    contenders = {name: measured(meter, run) for name, run in runs.items()}
    warm_ups = {name: measured(meter, run) for name, run in warm.items()}
    return run_rounds(contenders, args.rounds, failures, show, warm_ups, deadline=deadline)


def request_table(
    caption: str,
    labels: dict[str, str],
    samples: dict[str, list[Sample]],
    failures: Failures,
    args: argparse.Namespace,
    swaps: bool = False,
) -> Table:
    columns = [
        Column("rps", "requests/s (median)", digits=2),
        Column("p50", "p50 latency ms", digits=0),
        Column("p99", "p99 latency ms", digits=0),
    ]
    if swaps:
        columns.append(Column("swaps", "swaps a round (median)", digits=0, ratio=False))
        columns.append(Column("failed", "failed requests (all rounds)", digits=0, ratio=False))
    columns.append(Column("others", "others busy (cores)", digits=2, ratio=False))
    rows = []
    for name, label in labels.items():
        runs = samples.get(name, [])
        values = {}
        note = failures.note(name)
        if runs:
            times = [t * 1000 for s in runs for t in s.latencies]
            values = {
                "rps": statistics.median(s.per_second for s in runs),
                "p50": percentile(times, 50),
                "p99": percentile(times, 99),
                "swaps": statistics.median(s.swaps for s in runs),
                "failed": sum(len(s.failed) for s in runs),
                "others": statistics.median(s.others for s in runs),
            }
            refusals = [f for s in runs for f in s.failed]
            if refusals:
                note = f"{len(refusals)} failed, the first: {refusals[0]}"
            note = note or differing_answers(runs)
        rows.append(Row(label, values, note=note, baseline=name == "mmserve"))
    done = rounds_done(samples, args.rounds)
    return Table(columns, rows, caption=f"{caption} {done} after a warm-up.")


def differing_answers(runs: list[Sample]) -> str:
    """A note when a model gave different texts to the same request (temperature 0) across
    the rounds: a swap that changed the answer."""
    texts: dict[str, set[str]] = {}
    for sample in runs:
        for model, answers in sample.answers.items():
            texts.setdefault(model, set()).update(answers)
    differing = {model: sorted(t) for model, t in texts.items() if len(t) > 1}
    return f"answers differ: {differing}" if differing else ""


# ---- memory ----------------------------------------------------------------------------------


@dataclass
class Memory:
    """Resident memory after one request, in bytes."""

    model: str  # the model just served (the one loaded)
    server: int  # the server process alone
    children: int  # every process under it (model processes, warm workers)
    warm: int  # the idle warm workers the status lists (part of `children`)

    @property
    def total(self) -> int:
        return self.server + self.children


def memory_now(url: str, proc: psutil.Process, model: str) -> Memory:
    children = 0
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            children += child.memory_info().rss
    status = httpx.get(f"{url}/api/v1/", timeout=30).json()
    workers = status.get("warm_workers") or []
    warm = sum(int(w.get("rss_bytes") or 0) for w in workers)
    return Memory(model, proc.memory_info().rss, children, warm)


def run_memory(args: argparse.Namespace, tmp: Path, deadline: float | None) -> Table:
    pairs = {
        "SmolLM2 and Gemma": (GGUF, dict.fromkeys(GGUF, "complete")),
        "MiniLM and SmolLM2": (MIXED, {"minilm": "embed", "smollm2": "chat"}),
    }
    rows: list[Row] = []
    notes: list[str] = []
    for index, (pair, (models, kinds)) in enumerate(pairs.items()):
        share = None if deadline is None else (deadline - time.monotonic()) / (len(pairs) - index)
        until = None if share is None else time.monotonic() + share
        try:
            config = mmserve_config(models, args.threads, 1)
            with mmserve(tmp, f"memory-{index}", config) as (url, proc):
                samples = swaps_with_memory(url, proc, kinds, args.swaps, until)
        except Exception as exc:  # the other pair still runs; its row says why
            rows.append(Row(pair, note=f"not measured: {str(exc).splitlines()[0][:200]}"))
            continue
        rows += memory_rows(pair, samples)
        if len(samples) - 1 < args.swaps:
            notes.append(f"{pair}: {len(samples) - 1} of {args.swaps} swaps (time budget)")
    columns = [
        Column("first", "after the first swap MB", digits=0, ratio=False),
        Column("last", "after the last swap MB", digits=0, ratio=False),
        Column("growth", "growth MB", digits=0, ratio=False),
    ]
    caption = (
        f"**Memory over {args.swaps} swaps**, room for one, one client: resident memory after "
        "each swap (psutil RSS; each row compares swaps that ended with the same model "
        "loaded). An idle warm worker (the status' `warm_workers`) may still be importing "
        "when it is measured: the rows less them are the ones to compare."
        + (f" {'; '.join(notes)}." if notes else "")
    )
    return Table(columns, rows, caption=caption)


def swaps_with_memory(
    url: str, proc: psutil.Process, kinds: dict[str, str], swaps: int, until: float | None
) -> list[Memory]:
    """The first request (a load), then `swaps` requests that each swap; memory after each."""
    client = httpx.Client(base_url=url, timeout=300)
    alternation = Alternation(list(kinds))
    samples: list[Memory] = []
    for i in range(swaps + 1):
        if until is not None and i > 2 and time.monotonic() > until:
            break
        model = alternation.next()
        path, body = request_of(model, kinds[model])
        answer_of(client.post(path, json=body))
        samples.append(memory_now(url, proc, model))
        sample = samples[-1]
        warm = f", warm workers {sample.warm / MB:.0f} MB" if sample.warm else ""
        print(
            f"  memory   {'load' if i == 0 else f'swap {i}':8} {model:12} server "
            f"{sample.server / MB:5.0f} MB + children {sample.children / MB:5.0f} MB = "
            f"{sample.total / MB:5.0f} MB{warm}"
        )
    status = httpx.get(f"{url}/api/v1/", timeout=30).json()
    if "warm_workers" in status:
        print(f"  memory   warm_workers in the status: {status['warm_workers']}")
    client.close()
    return samples


def memory_rows(pair: str, samples: list[Memory]) -> list[Row]:
    swapped = samples[1:] or samples  # the first request loads; the rest swap
    rows = []

    def row(label: str, values: list[int]) -> Row:
        first, last = values[0] / MB, values[-1] / MB
        return Row(label, {"first": first, "last": last, "growth": last - first})

    for model in dict.fromkeys(s.model for s in swapped):
        same = [s for s in swapped if s.model == model]
        rows.append(row(f"{pair}: {model} loaded, server + children", [s.total for s in same]))
        if any(s.warm for s in same):
            less = [s.total - s.warm for s in same]
            rows.append(row(f"{pair}: {model} loaded, less idle warm workers", less))
    rows.append(row(f"{pair}: the server process alone", [s.server for s in swapped]))
    return rows


# ---- the benchmark ---------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[argparse.Namespace, Path, float | None], Table]] = {
    "gguf": run_gguf,
    "mixed": run_mixed,
    "clients": run_clients,
    "memory": run_memory,
}


def measure(result: Result, args: argparse.Namespace) -> None:
    os.environ.update(omp_env(args.threads))  # before llama_cpp and torch load: they read them
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        for index, name in enumerate(args.scenarios):
            # Each scenario gets its share of the time left (bench/run's budget).
            deadline = args.deadline
            if deadline is not None:
                left = len(args.scenarios) - index
                deadline = time.monotonic() + (deadline - time.monotonic()) / left
            print(f"{name}:")
            try:
                result.tables.append(RUNNERS[name](args, Path(tmp), deadline))
            except Exception as exc:  # the other scenarios still run; the notes say why
                result.notes.append(f"{name}: not completed: {str(exc).splitlines()[0][:300]}")
    result.notes.append(
        f"A round is {args.requests} requests, one at a time, alternating the models (each a "
        "swap, except in the reference row), in the one-client tables; "
        f"{args.threads} thread(s) per model for every contender. Targets (issue 15): mmserve "
        "÷ llama_cpp.server ≥ 1.2 requests/s with two GGUF models; mmserve ÷ direct ≥ 1.0 "
        "with MiniLM and SmolLM2; swap-aware ÷ first come first served ≥ 2.0 requests/s with "
        "p99 within 1.5x; memory growth ≤ 50 MB over the swaps."
    )


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="measured rounds (default 3; quick 1)")
    parser.add_argument("--requests", type=int, help="requests per round (default 8; quick 4)")
    parser.add_argument(
        "--per-client",
        type=int,
        help="requests per client a round, four clients (default 6; quick 3)",
    )
    parser.add_argument("--swaps", type=int, help="swaps of the memory scenario (default 20)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"which to run, comma-separated (default: all of {','.join(SCENARIOS)})",
    )


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.requests = args.requests or (4 if args.quick else 8)
    args.per_client = args.per_client or (3 if args.quick else 6)
    args.swaps = args.swaps or (6 if args.quick else 20)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    setup = (
        "Room for one model, requests that need the other one. With one client alternating "
        "completions between SmolLM2-135M-Instruct Q4_1 and Gemma 3 270M Q4_K_M "
        f'(`/v1/completions`, prompt "{PROMPT}", max_tokens {MAX_TOKENS}, temperature 0, '
        "context 2048) every request swaps: mmserve with `max_loaded_models: 1` stops one "
        "model's llama-server and starts the other's; `llama_cpp.server` with both models in "
        "its config file closes one Llama and loads the other in its own process; the direct "
        "contender does the same in the benchmark's process; mmserve with room for both is "
        "the no-swap reference. Then MiniLM embeddings alternating with SmolLM2 chats "
        "(mmserve against one process that loads each in turn); four clients, two on each "
        "GGUF model (mmserve's swap-aware order against first come first served); and the "
        "memory of the server and its children over a run of swaps."
    )
    title = "4. Model swap: room for one model, requests alternating between models"
    run_benchmark(Result("swap", title, setup), args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
