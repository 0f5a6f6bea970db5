"""Dynamic batching: many concurrent small requests against one direct batched call.

Image classification: 32 concurrent requests of one image each (the cat photo) to mmserve's
`imagenet` model (a) with batching (max_batch_size 8), (b) with max_batch_size 1; (c) the same
32 images in one batched call of the same model loaded in this process. Embeddings: 64
concurrent single-sentence requests to MiniLM through mmserve, batched and not, against one
direct `encode` of all 64. Every contender uses the same thread count; rounds alternate the
contenders, and the figures are medians over rounds, with ratios to the direct call.

    .venv/bin/python bench/batching.py [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from common import (
    describe_environment,
    models_ready,
    start_server,
    stop_server,
    wait_until,
    write_config,
)

IMAGES = 32
SENTENCES = 64


def cat_photo() -> Image.Image:
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "needs scikit-image (dev extra)"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "chelsea.png"
    return Image.open(path).convert("RGB")


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def sentences() -> list[str]:
    return [f"Sentence number {i} is about a cat that sat on mat {i % 7}." for i in range(64)]


async def concurrent(url: str, requests: list[tuple[str, dict[str, Any]]]) -> float:
    """Send every request at once; the seconds until the last answer."""
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(client.post(path, json=body) for path, body in requests))
        elapsed = time.perf_counter() - started
    failed = [a for a in answers if a.status_code != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[0].text[:300]}")
    return elapsed


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def report(title: str, unit: str, count: int, seconds: dict[str, list[float]], base: str) -> None:
    rates = {name: count / statistics.median(values) for name, values in seconds.items()}
    print(f"\n{title}")
    print(f"| contender | {unit}/s (median) | ratio to {base} |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / rates[base]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = args.threads
    config = {
        "models": [
            {"name": "imagenet", "kind": "vision", "backend": "efficientnet_lite0",
             "threads": threads},
            {"name": "imagenet-1", "kind": "vision", "backend": "efficientnet_lite0",
             "threads": threads, "max_batch_size": 1},
            {"name": "minilm", "kind": "embedding", "source": "catalog:minilm",
             "threads": threads},
            {"name": "minilm-1", "kind": "embedding", "source": "catalog:minilm",
             "threads": threads, "max_batch_size": 1},
            {"name": "minilm-32", "kind": "embedding", "source": "catalog:minilm",
             "threads": threads, "max_batch_size": 32},
        ]
    }  # fmt: skip
    describe_environment(["mmserve", "torch", "sentence-transformers", "onnxruntime"])
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc, url = start_server(write_config(Path(tmp), config), log)
        try:
            wait_until(proc, log, lambda: models_ready(url, log), timeout=300, interval=0.5,
                       what="models not ready")  # fmt: skip
            run_rounds(url, args.rounds, threads)
        finally:
            stop_server(proc)


def run_rounds(url: str, rounds: int, threads: int) -> None:
    from sentence_transformers import SentenceTransformer

    from mmserve.catalog import resolve_source
    from mmserve.vision import load_vision_model

    classifier = load_vision_model("efficientnet_lite0", {"threads": threads})
    embedder = SentenceTransformer(str(resolve_source("catalog:minilm")), device="cpu")
    photo, texts = cat_photo(), sentences()
    image_body = {"image": data_url(photo), "top_k": 5}

    def calls(model: str) -> list[tuple[str, dict[str, Any]]]:
        return [(f"/api/v1/{model}/call", image_body)] * IMAGES

    def embeds(model: str) -> list[tuple[str, dict[str, Any]]]:
        return [("/v1/embeddings", {"model": model, "input": t}) for t in texts]

    def direct_images() -> None:
        classifier.run([photo] * IMAGES, 5)

    def direct_embeds() -> None:
        import torch

        torch.set_num_threads(threads)
        embedder.encode(texts, batch_size=32)

    contenders: dict[str, dict[str, Callable[[], float]]] = {
        "classification": {
            "direct batched call": lambda: timed(direct_images),
            "mmserve, batched": lambda: asyncio.run(concurrent(url, calls("imagenet"))),
            "mmserve, max_batch_size 1": lambda: asyncio.run(concurrent(url, calls("imagenet-1"))),
        },
        "embeddings": {
            "direct batched encode": lambda: timed(direct_embeds),
            "mmserve, batched": lambda: asyncio.run(concurrent(url, embeds("minilm"))),
            "mmserve, max_batch_size 1": lambda: asyncio.run(concurrent(url, embeds("minilm-1"))),
            "mmserve, max_batch_size 32": lambda: asyncio.run(concurrent(url, embeds("minilm-32"))),
        },
    }
    for runs in contenders.values():  # warm-up: first calls pay for lazy initialisation
        for run in runs.values():
            run()
    seconds = {task: {name: [] for name in runs} for task, runs in contenders.items()}
    for round_ in range(rounds):
        for task, runs in contenders.items():
            names = list(runs)
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                seconds[task][name].append(runs[name]())
    report(f"{IMAGES} concurrent classification requests (one image each), {threads} thread(s)",
           "images", IMAGES, seconds["classification"], "direct batched call")  # fmt: skip
    report(f"{SENTENCES} concurrent embedding requests (one sentence each), {threads} thread(s)",
           "sentences", SENTENCES, seconds["embeddings"], "direct batched encode")  # fmt: skip
    batches = httpx.get(f"{url}/api/v1/", timeout=10).json()["models"]
    for model in batches:
        print(f"{model['name']}: batches {model['replicas'][0].get('batches')}")


if __name__ == "__main__":
    main()
