"""Streamed tokens/s: mmserve over HTTP vs llama-cpp-python called directly, side by side.

What it measures, for one prompt and one model (SmolLM2, `catalog:smollm2`), in one run:

  mmserve   a real `python -m mmserve serve` subprocess serving only that model (T threads,
            context 2048), streamed `/v1/chat/completions` through the official `openai` client
  direct    `llama_cpp.Llama` with the same GGUF, threads and context, in this process,
            `create_chat_completion(stream=True)`

For each request: time to first token (TTFT: from the call to the first content chunk) and
decode tokens/s = (completion_tokens - 1) / (t_last_token - t_first_token). mmserve's
completion_tokens comes from the stream's usage chunk; the direct one from tokenizing the final
text. Both run greedy (temperature 0, fixed seed); the report says whether every request
produced the same text, which makes the two token counts comparable.

After one warm-up request each, the rounds alternate the two contenders (and swap the order
every round) so that drift on a shared machine hits both alike. Medians are reported, with the
ratio mmserve/direct for tokens/s (of the medians, and the median of each round's own ratio):
on a noisy machine the ratios are the figures that matter. Each request also records how many
CPU cores other programs kept busy meanwhile, to spot disturbed rounds.

T, the threads of both, is by default the server's own default (`default_threads()` in
mmserve.replicas.process: half the cores, so 1 on a 2-core machine, where 1 thread decoded faster
than 2; see docs/benchmarks.md); `--threads` sets another.

Run it from the repository root (takes a minute or two):

    .venv/bin/python bench/stream_tokens.py [--rounds 5] [--max-tokens 128] [--threads T]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from common import (
    CpuMeter,
    describe_environment,
    is_healthy,
    median_ratios,
    medians,
    models_ready,
    omp_env,
    start_server,
    terminate,
    wait_until,
    write_config,
)

MODEL = "smollm2"
SOURCE = "catalog:smollm2"
CONTEXT = 2048
SEED = 1234
PROMPT = "Write a long story about a lighthouse keeper."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


@dataclass(frozen=True)
class Sample:
    """One streamed request, timed."""

    ttft_s: float
    tokens: int
    decode_s: float
    text: str
    others: float = 0.0  # CPU cores that other programs kept busy meanwhile (noise)

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else float("nan")


class Stream:
    """Collects the content chunks of one stream with their arrival times."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.parts: list[str] = []

    def add(self, content: str | None) -> None:
        if not content:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.parts.append(content)

    def sample(self, tokens: int) -> Sample:
        if self.first is None or self.last is None:
            raise RuntimeError("the stream produced no content")
        text = "".join(self.parts)
        return Sample(self.first - self.start, tokens, self.last - self.first, text)


# --- (a) mmserve over HTTP ---------------------------------------------------------------


@contextlib.contextmanager
def mmserve_server(directory: Path, threads: int) -> Iterator[tuple[str, int]]:
    """A real `mmserve serve` subprocess with only the benchmark model; yields its URL and pid."""
    model = {
        "name": MODEL,
        "kind": "llm",
        "source": SOURCE,
        "threads": threads,
        "context_length": CONTEXT,
    }
    log = directory / "server.log"
    proc, url = start_server(write_config(directory, {"models": [model]}), log)
    try:
        wait_until(
            proc,
            log,
            lambda: is_healthy(url) and models_ready(url, log),  # /health, then the model ready
            timeout=300,
            interval=0.2,
            what="server not ready",
        )
        yield url, proc.pid
    finally:
        terminate(proc)


def mmserve_runner(url: str, max_tokens: int) -> Callable[[], Sample]:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def run() -> Sample:
        stream = Stream()
        tokens = 0
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            temperature=0,
            seed=SEED,
            max_tokens=max_tokens,
        )
        for chunk in chunks:
            if chunk.choices:
                stream.add(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return stream.sample(tokens)

    return run


# --- (b) llama-cpp-python directly -------------------------------------------------------


def direct_runner(model_path: Path, max_tokens: int, threads: int) -> Callable[[], Sample]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(model_path),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )

    def run() -> Sample:
        stream = Stream()
        chunks: Any = llm.create_chat_completion(
            MESSAGES,  # type: ignore[arg-type]
            stream=True,
            temperature=0,
            seed=SEED,
            max_tokens=max_tokens,
        )
        for chunk in chunks:
            stream.add(chunk["choices"][0]["delta"].get("content"))
        text = "".join(stream.parts)
        return stream.sample(len(llm.tokenize(text.encode(), add_bos=False, special=False)))

    return run


# --- running and reporting ---------------------------------------------------------------


def measure(meter: CpuMeter, run: Callable[[], Sample]) -> Sample:
    """One request, with the CPU cores that other programs kept busy meanwhile."""
    sample, others = meter.measure(run)
    return replace(sample, others=others)


def run_rounds(
    contenders: dict[str, Callable[[], Sample]], rounds: int, meter: CpuMeter
) -> dict[str, list[Sample]]:
    """One warm-up each, then `rounds` rounds alternating the order (ABBA...)."""
    for name, run in contenders.items():
        show("warm-up", name, measure(meter, run))
    samples: dict[str, list[Sample]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            sample = measure(meter, contenders[name])
            samples[name].append(sample)
            show(f"round {i + 1}", name, sample)
    return samples


def show(label: str, name: str, sample: Sample) -> None:
    print(
        f"  {label:9} {name:8} {sample.tokens_per_s:6.1f} tok/s"
        f"  TTFT {sample.ttft_s * 1000:6.1f} ms  {sample.tokens} tokens"
        f"  others busy: {sample.others:.2f} cores"
    )


def report(samples: dict[str, list[Sample]]) -> None:
    tps = medians(samples, lambda s: s.tokens_per_s)
    ttft = medians(samples, lambda s: s.ttft_s)
    others = medians(samples, lambda s: s.others)
    print()
    print(f"| {'contender':<29} | median tokens/s | median TTFT ms | others busy (cores) |")
    print(f"|{'-' * 31}|{'-' * 16}:|{'-' * 15}:|{'-' * 20}:|")
    labels = {"mmserve": "mmserve (HTTP, openai client)", "direct": "llama-cpp-python direct"}
    for name in samples:
        print(
            f"| {labels[name]:<29} | {tps[name]:>15.1f} | {ttft[name] * 1000:>14.1f} "
            f"| {others[name]:>19.2f} |"
        )
    ratio, paired = median_ratios(
        [s.tokens_per_s for s in samples["mmserve"]], [s.tokens_per_s for s in samples["direct"]]
    )
    print(f"\nratio mmserve/direct, tokens/s, of the medians: {ratio:.3f}")
    print(f"ratio mmserve/direct, tokens/s, median of each round's ratio: {paired:.3f}")
    texts = {s.text for runs in samples.values() for s in runs}
    print(f"identical output text across all requests: {len(texts) == 1}")


def versions() -> list[str]:
    """The versions the report names besides mmserve's and python's."""
    import llama_cpp
    import openai

    return [
        f"llama-cpp-python {llama_cpp.__version__}",
        f"openai {openai.__version__}",
        f"httpx {version('httpx')}",
    ]


def parse_args() -> argparse.Namespace:
    from mmserve.replicas.process import default_threads

    threads = default_threads()  # the server's default: half the cores
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per request")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help=f"CPU threads for both (default {threads}: the server's default, half the cores)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # As the server does for its model processes: OpenMP threads sleep instead of spinning.
    # Set before llama_cpp is imported (the library reads it when it loads).
    os.environ.update(omp_env(args.threads))
    from mmserve.catalog import resolve_source

    model_path = resolve_source(SOURCE)
    describe_environment(versions())
    print(f"model:    {model_path.name}, {args.threads} threads, context {CONTEXT}")
    print(f"prompt:   {PROMPT!r}, max_tokens {args.max_tokens}, temperature 0, seed {SEED}")
    print(f"rounds:   {args.rounds} after one warm-up each\n")
    with tempfile.TemporaryDirectory(prefix="mmserve-bench-") as tmp:
        print("starting mmserve and loading the direct model...")
        with mmserve_server(Path(tmp), args.threads) as (url, pid):
            contenders = {
                "mmserve": mmserve_runner(url, args.max_tokens),
                "direct": direct_runner(model_path, args.max_tokens, args.threads),
            }
            samples = run_rounds(contenders, args.rounds, CpuMeter([os.getpid(), pid]))
    report(samples)


if __name__ == "__main__":
    main()
