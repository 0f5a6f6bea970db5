"""Where a request's time goes in mmserve: the server (and its model's worker) sampled by py-spy
under 1 and 16 clients, each sample put in a stage, beside the CPU time per request.

Workloads, each on one mmserve serving two models (`keep_alive: -1`, so nothing unloads):

  relay    a non-streamed chat (`/v1/chat/completions`) relayed to bench/upstream.py
           (`kind: http`, `backend: openai`)
  embed    a one-sentence `/v1/embeddings` on MiniLM (`catalog:minilm`, T threads)
  health   `GET /health`

For each workload and client count it reads the server's and the worker's CPU time per request
from the processes' own CPU times over the whole measurement (the stable figure), while
`py-spy record --nonblocking --format raw` samples the same processes (sleeping threads are left
out). Each sample goes to the first stage of STAGES (or WORKER_STAGES) that one of its frames
matches, from the innermost frame out; a stage's microseconds per request is its share of the
samples times the CPU per request. The shares are estimates (a sampled process that waits for
the GIL or the CPU still counts as running); the CPU per request is exact.

    .venv/bin/python bench/overhead.py [--clients 1 16] [--seconds 8] [--only relay embed health]
                                      [--threads T] [--ref REF | --src DIR] [--keep DIR]

`--ref REF` profiles the mmserve of that git commit (extracted, with this venv; see
common.source_at), `--src DIR` the one whose package lies in DIR/mmserve; `--keep DIR` keeps
py-spy's raw files there.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from clients import closed_loop, percentile
from common import cpu_seconds, free_port, omp_env, serving, serving_mmserve, source_at

BENCH = Path(__file__).resolve().parent
RATE = 250  # py-spy samples per second
SENTENCE = "The cat waited by the door on a quiet morning."

# py-spy cannot tell a thread blocked in C (epoll, a lock, a pipe read) from a running one here:
# samples whose innermost frame is one of these waits are left out (they cost no CPU).
IDLE = re.compile(
    r"^(EpollSelector\.select \(selectors\.py|Condition\.wait \(threading\.py|"
    r"Event\.wait \(threading\.py|Thread\.join|ThreadedChildWatcher\._do_waitpid|"
    r"Worker\.serve \(mmserve/workers/main\.py)"
)
# (stage, frame pattern): a sample's stage is the first whose pattern matches one of its frames,
# tried from the innermost frame out. A frame reads "function (path/file.py:line)".
STAGES: list[tuple[str, str]] = [
    (
        "socket send/recv (kernel, loopback)",
        r"^(_SelectorSocketTransport\.(write|_read_ready)|"
        r"SocketStream\.(send|receive)|socket\.)",
    ),
    (
        "logging (access log, model log)",
        r"\((logging/|uvicorn/logging|mmserve/logs|mmserve/logformat)",
    ),
    (
        "thread-pool hop (a sync dependency)",
        r"\((threading\.py|queue\.py|anyio/to_thread|"
        r"starlette/concurrency)|run_sync_in_worker_thread",
    ),
    ("JSON encode/decode", r"\((json/|orjson)|^(loads|dumps) "),
    (
        "response model check + serialization",
        r"^(serialize_response|_prepare_response_content|"
        r"jsonable_encoder) ",
    ),
    (
        "request validation (pydantic, FastAPI)",
        r"\((pydantic/|pydantic_core|fastapi/dependencies/|"
        r"fastapi/_compat)",
    ),
    ("upstream client (http11, httpx)", r"\((httpx/|httpcore/|mmserve/replicas/http11)"),
    ("pipe to the worker, protocol", r"\((mmserve/workers/|asyncio/streams|asyncio/unix_events)"),
    ("batching", r"mmserve/replicas/batcher"),
    ("engine (admission, lease)", r"mmserve/engine/"),
    ("embedding reply (convert)", r"mmserve/api/convert"),
    (
        "middleware + metrics",
        r"\((mmserve/api/middleware|mmserve/api/metrics|prometheus_client|"
        r"starlette/middleware|fastapi/middleware|fastapi/_body_limit|fastapi/telemetry|"
        r"starlette/_exception_handler|uvicorn/middleware|contextvars)",
    ),
    ("HTTP server (uvicorn, parser)", r"\((uvicorn/protocols|h11/|httptools)"),
    ("routing, request/response objects", r"\((starlette/|fastapi/)"),
    ("route handlers", r"mmserve/api/"),
    ("replica", r"mmserve/replicas/"),
    # With uvloop, the loop's own work and its socket reads and writes happen in C, below the
    # Python frame that called into it: they show here.
    ("event loop (epoll, tasks, callbacks)", r"\((asyncio/|selectors\.py|uvloop)"),
]
WORKER_STAGES: list[tuple[str, str]] = [
    ("the model (`encode`)", r"^SentenceTransformer\.encode "),
    (
        "tokenization (encode's own; before: a second one too)",
        r"^(BaseModel|SentenceTransformer)\.(preprocess|tokenize) ",
    ),
    # The write's share is mostly time descheduled inside write(2), which wakes the server on
    # this core: it stands for waiting, not for CPU (see docs/benchmarks.md).
    ("reply: vectors to JSON, write", r"^(ReplyWriter\.send|encode|tolist|BaseModel\.model_dump)"),
    ("request: decode, validate", r"^(decode_request|BaseModel\.model_validate|Request\.)"),
    ("stdin read, thread hand-off", r"\((threading\.py|queue\.py)|^Worker\.(serve|_handle) "),
    ("backend (the rest)", r"mmserve/backends/"),
    ("worker loop (the rest)", r"mmserve/workers/"),
]


@dataclass
class Measured:
    requests: int
    wall_s: float
    p50_ms: float
    cpu_s: dict[str, float]  # by process role: server, worker
    samples: dict[str, collections.Counter[str]]  # by role: stage -> samples

    def per_request_us(self, role: str) -> float:
        return self.cpu_s[role] / self.requests * 1e6


def stage_of(stack: list[str], stages: list[tuple[str, str]]) -> str:
    for frame in reversed(stack):
        for stage, pattern in stages:
            if re.search(pattern, _short(frame)):
                return stage
    return "other"


def _short(frame: str) -> str:
    """`func (path/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    return re.sub(r"\((?:[^()]*/site-packages/|[^()]*/lib/python3\.\d+/|[^()]*/src/)", "(", frame)


def read_raw(path: Path, stages: list[tuple[str, str]]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if frames and not IDLE.search(_short(frames[-1])):
                counts[stage_of(frames, stages)] += int(n)
    return counts


@contextlib.contextmanager
def sampling(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """py-spy on `pid` for the span of the block (at most `seconds` + 5 s)."""
    command = ["py-spy", "record", "--nonblocking", "--rate", str(RATE), "--format", "raw"]
    command += ["--pid", str(pid), "--output", str(out), "--duration", str(int(seconds) + 5)]
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / command[0]), *command[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # attached before the load starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # stops sampling and writes the file
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(timeout=20)
        if spy.poll() is None:
            spy.kill()


def worker_of(server: int) -> int | None:
    children = psutil.Process(server).children(recursive=True)
    return children[0].pid if children else None


def request_of(workload: str) -> Callable[[httpx.AsyncClient], Any]:
    if workload == "health":
        return lambda client: client.get("/health")
    if workload == "embed":
        body: dict[str, Any] = {"model": "minilm", "input": SENTENCE}
        return lambda client: client.post("/v1/embeddings", json=body)
    body = {"model": "upstream", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    return lambda client: client.post("/v1/chat/completions", json=body)


async def load(url: str, workload: str, clients: int, seconds: float) -> tuple[int, float, float]:
    """Requests answered, wall seconds, p50 ms."""
    send = request_of(workload)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(n: int, i: int) -> None:
            (await send(client)).raise_for_status()

        done = await closed_loop(clients, one, seconds=seconds)
    if done.errors:
        raise RuntimeError(f"{len(done.errors)} failed requests: {done.errors[0]}")
    times = [t.seconds * 1000 for t in done.samples]
    return len(done.samples), done.wall_s, percentile(times, 50)


def measure(
    url: str, server: int, workload: str, clients: int, seconds: float, tmp: Path
) -> Measured:
    asyncio.run(load(url, workload, clients, min(seconds, 2)))  # warm up
    roles = {"server": server}
    worker = worker_of(server)
    if workload == "embed" and worker is not None:
        roles["worker"] = worker
    files = {role: tmp / f"{workload}-{clients}-{role}.txt" for role in roles}
    with contextlib.ExitStack() as stack:
        for role, pid in roles.items():
            stack.enter_context(sampling(pid, files[role], seconds))
        before = {role: cpu_seconds(pid, children=False) for role, pid in roles.items()}
        requests, wall, p50 = asyncio.run(load(url, workload, clients, seconds))
        used = {
            role: cpu_seconds(pid, children=False) - before[role] for role, pid in roles.items()
        }
    samples = {
        role: read_raw(path, STAGES if role == "server" else WORKER_STAGES)
        for role, path in files.items()
    }
    return Measured(requests, wall, p50, used, samples)


def table(m: Measured, role: str) -> str:
    counts = m.samples[role]
    total = sum(counts.values())
    per_request = m.per_request_us(role)
    lines = [f"| stage ({role}) | share of samples | µs per request |", "|---|---:|---:|"]
    for stage, n in counts.most_common():
        lines.append(f"| {stage} | {n / total:.1%} | {n / total * per_request:.0f} |")
    lines.append(f"| **all ({total} samples)** | 100% | **{per_request:.0f}** |")
    return "\n".join(lines)


def config(upstream: str, threads: int) -> dict[str, Any]:
    relay = {"name": "upstream", "kind": "http", "backend": "openai",
             "base_url": f"{upstream}/v1", "upstream_model": "tiny"}  # fmt: skip
    embed = {"name": "minilm", "kind": "embedding", "source": "catalog:minilm", "threads": threads}
    return {"models": [{**m, "keep_alive": -1} for m in (relay, embed)]}


def main() -> None:
    from mmserve.replicas.process import default_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--only", nargs="+", default=["relay", "embed", "health"],
                        choices=["relay", "embed", "health"])  # fmt: skip
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--src", type=Path, help="the directory holding the mmserve package")
    parser.add_argument("--ref", help="profile the mmserve of this git commit instead")
    parser.add_argument("--keep", type=Path, help="keep py-spy's raw files here")
    args = parser.parse_args()
    os.environ.update(omp_env(args.threads))
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        if args.ref:
            args.src = source_at(args.ref, tmp)
        if args.src is not None:  # the servers below import mmserve from there
            os.environ["PYTHONPATH"] = str(args.src.resolve())
        port = free_port()
        upstream = f"http://127.0.0.1:{port}"
        command = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
        with (
            serving(command, tmp / "upstream.log", f"{upstream}/health"),
            serving_mmserve(tmp, config(upstream, args.threads)) as (url, proc),
        ):
            where = args.ref or args.src or "this checkout"
            print(f"mmserve from {where}; {args.threads} thread(s)\n")
            for workload in args.only:
                for clients in args.clients:
                    m = measure(url, proc.pid, workload, clients, args.seconds, tmp)
                    cpu = ", ".join(f"{r} {m.per_request_us(r):.0f} µs" for r in m.cpu_s)
                    print(
                        f"### {workload}, {clients} client(s): {m.requests} requests in "
                        f"{m.wall_s:.1f} s, p50 {m.p50_ms:.2f} ms; CPU per request: {cpu}\n"
                    )
                    for role in m.samples:
                        print(table(m, role) + "\n")
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in tmp.glob("*-*-*.txt"):
                shutil.copy(path, args.keep / path.name)


if __name__ == "__main__":
    main()
