"""A Ray replica against a local one, in one run: what the cluster hop costs.

One `mmserve serve` holds each model twice, side by side and loaded at once: as a local worker
process (`placement: local`) and as a Ray actor (`placement: ray`) on a one-node Ray cluster
started on loopback for the run. Both run the same backend with the same thread budget (one
thread): SmolLM2 on llama-cpp-python (which the Ray replica runs; the local default engine,
llama-server, would compare engines, not the hop), MiniLM on sentence-transformers, and the
fake backend, whose answers cost nothing, so that its latency is the path alone. Rounds
alternate local and Ray, so drift on the shared cores weighs alike on both.

  streamed tokens/s   one streamed chat of 128 tokens at a time, tokens over the decode time
                      (first piece to last); Ray ÷ local of the medians
  embedding latency   one sentence per request, one request at a time, with MiniLM; p50 of
                      each, Ray ÷ local
  hop                 a one-token chat on the fake backend, one at a time: p50 and p99 of
                      each, and Ray - local (what a request pays for the hop: pipe to the bridge,
                      Ray call, and back)

    .venv/bin/python bench/ray.py [--rounds N] [--json FILE]

(This file is named as the issue asked; it never imports Ray, which here would be itself: the
cluster runs in a child started from the repository root.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from clients import percentile, read_sse_chat
from common import describe_environment, serving_mmserve

# A one-node cluster on loopback, in a child process (this script is no Ray driver).
CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 4, "object_store_memory": 80 * 2**20, "node_ip_address": "127.0.0.1",
    "include_dashboard": False})
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""
PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
SENTENCE = "The quick brown fox jumps over the lazy dog."


@contextlib.contextmanager
def ray_cluster() -> Iterator[str]:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=env, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(60)


def config(address: str) -> dict[str, Any]:
    models: list[dict[str, Any]] = []
    for placement in ("local", "ray"):
        same = {"placement": placement, "threads": 1, "keep_alive": -1}
        models += [
            {"name": f"smollm2-{placement}", "kind": "llm", "backend": "llama_cpp",
             "source": "catalog:smollm2", **same},
            {"name": f"minilm-{placement}", "kind": "embedding", "source": "catalog:minilm",
             "max_batch_size": 1, **same},
            {"name": f"echo-{placement}", "kind": "llm", "backend": "fake", **same},
        ]  # fmt: skip
    return {"cluster": {"address": address}, "log_level": "warning", "models": models}


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def tokens_per_second(client: httpx.Client, model: str) -> float:
    body = {"model": model, "messages": PROMPT, "max_tokens": 128, "temperature": 0}
    stream = read_sse_chat(client, "/v1/chat/completions", body)
    return (len(stream.parts) - 1) / stream.decode_s


def embed_once(client: httpx.Client, model: str) -> None:
    response = client.post("/v1/embeddings", json={"model": model, "input": SENTENCE})
    response.raise_for_status()


def one_token(client: httpx.Client, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    client.post("/v1/chat/completions", json=body).raise_for_status()


def alternate(rounds: int, per_round: int, run: Callable[[str], float]) -> dict[str, list[float]]:
    """`run(placement)` `per_round` times for each placement, alternating, `rounds` times."""
    samples: dict[str, list[float]] = {"local": [], "ray": []}
    for _ in range(rounds):
        for placement in samples:
            samples[placement] += [run(placement) for _ in range(per_round)]
    return samples


def measure(url: str, rounds: int) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=120) as client:
        for name in ("smollm2", "minilm", "echo"):  # warm both paths once
            for placement in ("local", "ray"):
                model = f"{name}-{placement}"
                (one_token if name != "minilm" else embed_once)(client, model)
        speed = alternate(rounds, 1, lambda p: tokens_per_second(client, f"smollm2-{p}"))
        embed = alternate(rounds, 20, lambda p: timed(lambda: embed_once(client, f"minilm-{p}")))
        hop = alternate(rounds, 40, lambda p: timed(lambda: one_token(client, f"echo-{p}")))
    median = {k: {p: statistics.median(v) for p, v in s.items()} for k, s in
              (("speed", speed), ("embed", embed))}  # fmt: skip
    p50 = {p: percentile(v, 50) for p, v in hop.items()}
    p99 = {p: percentile(v, 99) for p, v in hop.items()}
    return {
        "tokens_per_s": median["speed"],
        "tokens_per_s_ratio": median["speed"]["ray"] / median["speed"]["local"],
        "embed_p50_ms": {p: 1000 * percentile(v, 50) for p, v in embed.items()},
        "embed_p50_ratio": percentile(embed["ray"], 50) / percentile(embed["local"], 50),
        "hop_p50_ms": {p: 1000 * v for p, v in p50.items()},
        "hop_p99_ms": {p: 1000 * v for p, v in p99.items()},
        "hop_overhead_ms": {
            "p50": 1000 * (p50["ray"] - p50["local"]),
            "p99": 1000 * (p99["ray"] - p99["local"]),
        },
        "samples": {
            "streams": len(speed["ray"]),
            "embeddings": len(embed["ray"]),
            "one_token": len(hop["ray"]),
        },
    }


def report(figures: dict[str, Any]) -> None:
    speed, embed = figures["tokens_per_s"], figures["embed_p50_ms"]
    hop50, hop99, extra = figures["hop_p50_ms"], figures["hop_p99_ms"], figures["hop_overhead_ms"]
    print("| measure | local | Ray | Ray ÷ local |\n|---|---|---|---|")
    print(f"| SmolLM2 streamed tokens/s (median) | {speed['local']:.1f} | {speed['ray']:.1f} "
          f"| {figures['tokens_per_s_ratio']:.2f} |")  # fmt: skip
    print(f"| MiniLM one-sentence embedding, p50 ms | {embed['local']:.1f} | {embed['ray']:.1f} "
          f"| {figures['embed_p50_ratio']:.2f} |")  # fmt: skip
    print(f"| one-token request (fake), p50 ms | {hop50['local']:.2f} | {hop50['ray']:.2f} | |")
    print(f"| one-token request (fake), p99 ms | {hop99['local']:.2f} | {hop99['ray']:.2f} | |")
    print(
        f"\nthe Ray hop per request: +{extra['p50']:.2f} ms at p50, +{extra['p99']:.2f} ms at p99"
    )
    print(f"samples: {figures['samples']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with ray_cluster() as address, tempfile.TemporaryDirectory() as directory:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        with serving_mmserve(Path(directory), config(address), timeout=300) as (url, _):
            figures = measure(url, args.rounds)
    describe_environment(
        [f"ray {version('ray')}", f"llama-cpp-python {version('llama-cpp-python')}"]
    )
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
