"""Text generation on llama.cpp's server: mmserve against llama-server run directly, side by side.

In one run, with the same GGUF (SmolLM2-135M-Instruct Q4_1), threads, slots and context per slot:

  mmserve       `python -m mmserve serve`, the model on its default engine (backend llama_server:
                one llama-server child, `parallel` slots), reached through mmserve's HTTP front
  llama-server  the same binary (the venv's bin/llama-server, built by scripts/build-llama-cpp)
                started directly: `llama-server -m FILE -np P -c CTX*P -t T --jinja`
  llama_cpp.server  llama-cpp-python's OpenAI server (bench/.peers/llama), one sequence at a time
                (at 8 clients only: it is the slowest and the round takes longest)

Measured:

  sweep    1, 4, 8 and 16 clients, each sending its next chat request (not streamed, max_tokens
           M, temperature 0, client n always prompt n) when its last is answered: aggregate
           completion tokens/s of the round, p50/p99 latency of every request
  stream   one client, streamed: time to first token (from sending to the first content chunk)
           and decode tokens/s ((chunks - 1) / (last - first))
  cold     a model not loaded: from the request to its first streamed token, mmserve (which
           starts llama-server on demand) against starting llama-server and asking it

Rounds alternate the contenders and swap their order each round, so drift on a shared machine
hits all alike; medians over rounds, and each row's ratio to mmserve is what to read.

    .venv/bin/python bench/text_engine.py [--quick] [--threads T] [--rounds N] [--json FILE]
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from clients import closed_loop, percentile
from common import free_port, omp_env, serving, serving_mmserve
from peers import LLAMA_SERVER_SAMPLING, llama_model, running_llama_server

MODEL = "smollm2"
SOURCE = "catalog:smollm2"
CONTEXT = 1024  # per slot
SLOTS = 8
TOPICS = ["the sea", "a lighthouse", "bread", "winter", "a small robot", "the moon", "tea", "maps"]
PROMPTS = [f"Write a short story about {topic}." for topic in TOPICS]


def body(n: int, max_tokens: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        **(extra or {}),
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def sweep_round(
    url: str, clients: int, requests: int, max_tokens: int, extra: dict[str, Any] | None = None
) -> dict[str, float]:
    async def send(client: httpx.AsyncClient, n: int) -> int:
        reply = await client.post("/v1/chat/completions", json=body(n, max_tokens, extra))
        reply.raise_for_status()
        return int(reply.json()["usage"]["completion_tokens"])

    async def run() -> dict[str, float]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            loop = await closed_loop(clients, lambda n, _: send(client, n), requests=requests)
        if loop.errors:
            raise RuntimeError(loop.errors[0])
        times = [s.seconds * 1000 for s in loop.ok]
        return {
            "tps": loop.per_second(float),
            "p50": percentile(times, 50),
            "p99": percentile(times, 99),
        }

    return asyncio.run(run())


def stream_once(url: str, max_tokens: int, probes: int = 20) -> dict[str, float]:
    """One client, streamed: TTFT (ms, the median of `probes` short requests, as one is
    a few tens of ms and the machine's noise as much) and the decode tokens/s of one long
    stream, one token per content chunk."""
    ttft = statistics.median(token_times(url, 2)[0] for _ in range(probes))
    times = token_times(url, max_tokens)
    if len(times) < 2:
        raise RuntimeError("the stream brought fewer than two tokens")
    return {"ttft": ttft * 1000, "decode": (len(times) - 1) / (times[-1] - times[0])}


def token_times(url: str, max_tokens: int) -> list[float]:
    """Seconds from sending a streamed chat to each of its content chunks."""
    times: list[float] = []
    started = time.perf_counter()
    request = {**body(0, max_tokens), "stream": True}
    with (
        httpx.Client(base_url=url, timeout=600) as client,
        client.stream("POST", "/v1/chat/completions", json=request) as reply,
    ):
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                times.append(time.perf_counter() - started)
    return times


def first_token_s(url: str) -> float:
    """Seconds from sending a streamed request to its first content chunk."""
    times = token_times(url, 2)
    if not times:
        raise RuntimeError("no token came")
    return times[0]


def llama_server_command(path: Path, port: int, threads: int) -> list[str]:
    binary = Path(sys.executable).parent / "llama-server"
    return [
        str(binary), "--model", str(path), "--host", "127.0.0.1", "--port", str(port),
        "--alias", MODEL, "--parallel", str(SLOTS), "--ctx-size", str(CONTEXT * SLOTS),
        "--threads", str(threads), "--threads-batch", str(threads), "--n-gpu-layers", "0",
        "--jinja", "--no-webui",
    ]  # fmt: skip


@contextlib.contextmanager
def direct_llama_server(directory: Path, path: Path, threads: int) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **omp_env(threads)}
    command = llama_server_command(path, port, threads)
    with serving(
        command, directory / "llama-server.log", f"http://127.0.0.1:{port}/health", env=env
    ):
        yield f"http://127.0.0.1:{port}"


def mmserve_config(threads: int, preload: bool = True) -> dict[str, Any]:
    model = {
        "name": MODEL, "kind": "llm", "source": SOURCE, "threads": threads,
        "parallel": SLOTS, "context_length": CONTEXT, "preload": preload,
    }  # fmt: skip
    return {"models": [model]}


def alternate(
    contenders: dict[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, dict[str, float]]:
    """Each contender `rounds` times, the order reversed every round; medians of each figure."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            samples[name].append(contenders[name]())
    return {
        name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
        for name, runs in samples.items()
    }


def cold_mmserve(directory: Path, threads: int) -> float:
    with serving_mmserve(directory, mmserve_config(threads, preload=False)) as (url, _):
        return first_token_s(url)


def cold_direct(directory: Path, path: Path, threads: int) -> float:
    started = time.perf_counter()
    with direct_llama_server(directory, path, threads) as url:
        return time.perf_counter() - started + first_token_s(url)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from mmserve.catalog import resolve_source

    path = resolve_source(SOURCE)
    out: dict[str, Any] = {"threads": args.threads, "max_tokens": args.max_tokens}
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        (root / "m").mkdir()
        (root / "d").mkdir()
        mm, _ = stack.enter_context(serving_mmserve(root / "m", mmserve_config(args.threads)))
        direct = stack.enter_context(direct_llama_server(root / "d", path, args.threads))
        urls = {"mmserve": mm, "llama-server": direct}
        for url in urls.values():  # warm-up: every slot once
            sweep_round(url, SLOTS, 1, 8)
        out["sweep"] = {}
        for clients in args.clients:
            contenders = {
                name: (lambda u=url, c=clients: sweep_round(u, c, args.requests, args.max_tokens))
                for name, url in urls.items()
            }
            if clients == SLOTS and not args.no_peer:
                try:
                    models = [llama_model(path, MODEL, args.threads, CONTEXT)]
                    base, _ = stack.enter_context(running_llama_server(root, models, args.threads))
                    sweep_round(base, 1, 1, 8, LLAMA_SERVER_SAMPLING)
                    contenders["llama_cpp.server"] = lambda b=base: sweep_round(
                        b, SLOTS, args.requests, args.max_tokens, LLAMA_SERVER_SAMPLING
                    )
                except RuntimeError as exc:
                    out["peer_problem"] = str(exc)
            out["sweep"][clients] = alternate(contenders, args.rounds)
            print(f"{clients:2} clients: {json.dumps(out['sweep'][clients])}", flush=True)
        streams = {
            name: (lambda u=url: stream_once(u, args.max_tokens * 2)) for name, url in urls.items()
        }
        out["stream"] = alternate(streams, max(3, args.rounds * 2))
        print(f"stream: {json.dumps(out['stream'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        root = Path(tmp)
        cold: dict[str, list[float]] = {"mmserve": [], "llama-server": []}
        for round_ in range(args.rounds):
            (root / str(round_)).mkdir()
            cold["mmserve"].append(cold_mmserve(root / str(round_), args.threads))
            cold["llama-server"].append(cold_direct(root / str(round_), path, args.threads))
        out["cold"] = {name: statistics.median(v) for name, v in cold.items()}
        print(f"cold: {json.dumps(out['cold'])}", flush=True)
    return out


def report(out: dict[str, Any]) -> str:
    lines = [
        f"threads {out['threads']} for every contender, {SLOTS} slots of {CONTEXT} tokens, "
        f"max_tokens {out['max_tokens']}",
        "",
        "| clients | contender | tokens/s | ÷ mmserve | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for clients, rows in out["sweep"].items():
        base = rows["mmserve"]["tps"]
        for name, r in rows.items():
            lines.append(
                f"| {clients} | {name} | {r['tps']:.1f} | {r['tps'] / base:.2f} | "
                f"{r['p50']:.0f} | {r['p99']:.0f} |"
            )
    s = out["stream"]
    lines += [
        "",
        "| one client, streamed | decode tokens/s | TTFT ms |",
        "|---|---|---|",
        *(f"| {n} | {r['decode']:.1f} | {r['ttft']:.1f} |" for n, r in s.items()),
        "",
        f"mmserve ÷ llama-server: decode "
        f"{s['mmserve']['decode'] / s['llama-server']['decode']:.3f}, "
        f"TTFT {s['mmserve']['ttft'] - s['llama-server']['ttft']:+.1f} ms",
        "",
        "| cold start, request to first token | s |",
        "|---|---|",
        *(f"| {n} | {v:.2f} |" for n, v in out["cold"].items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 8 clients only")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--requests", type=int, default=2, help="per client per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+")
    parser.add_argument("--no-peer", action="store_true", help="skip llama_cpp.server")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.clients = args.clients or ([SLOTS] if args.quick else [1, 4, 8, 16])
    out = measure(args)
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
