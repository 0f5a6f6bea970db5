"""1. Chat, one client: streamed tokens/s and time to first token, mmserve and its peers.

The same streamed chat request (SmolLM2-135M-Instruct Q4_1, `catalog:smollm2`; T threads,
context 2048, greedy: temperature 0, fixed seed; the same prompt and max_tokens) to:

  mmserve   `python -m mmserve serve` serving only that model; `/v1/chat/completions`
  server    llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`, from
            bench/.peers/llama, same llama-cpp-python version), the same GGUF file
  direct    `llama_cpp.Llama` in this process, `create_chat_completion(stream=True)`

The two servers are read by the same httpx SSE client. Every contender gets the OpenMP
settings mmserve gives its model processes (OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS=T).
Tokens are counted by tokenizing each reply's text with the model's tokenizer, alike for all;
decode tokens/s = (tokens - 1) / (last content chunk - first); TTFT from sending the request to
the first content chunk. One warm-up request each, then rounds calling each contender once, in
an order that changes every round; medians over the rounds.

    .venv/bin/python bench/chat_one.py [--quick] [--threads T] [--rounds N] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clients import Stream, read_sse_chat
from common import CpuMeter, omp_env, serving_mmserve
from harness import Failures, parse_args, rounds_done, run_benchmark, run_rounds
from peers import LLAMA_SERVER_SAMPLING, llama_model, running_llama_server
from results import Column, Result, Row, Table

MODEL = "smollm2"
SOURCE = "catalog:smollm2"
CONTEXT = 2048
SEED = 1234
PROMPT = "Write a long story about a lighthouse keeper."
MESSAGES = [{"role": "user", "content": PROMPT}]
LABELS = {
    "mmserve": "mmserve",
    "server": "llama-cpp-python server (`llama_cpp.server`)",
    "direct": "llama-cpp-python direct (in-process)",
}


@dataclass(frozen=True)
class Sample:
    tokens: int
    tokens_per_s: float
    ttft_s: float
    text: str
    others: float  # CPU cores that other programs kept busy meanwhile (noise)


def http_runner(
    url: str, model: str, max_tokens: int, extra: dict[str, Any] | None = None
) -> Callable[[], Stream]:
    client = httpx.Client(base_url=url, timeout=300)
    body = {
        **(extra or {}),
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": SEED,
    }
    return lambda: read_sse_chat(client, "/v1/chat/completions", body)


def direct_runner(llm: Any, max_tokens: int) -> Callable[[], Stream]:
    def run() -> Stream:
        stream = Stream()
        chunks = llm.create_chat_completion(
            MESSAGES, stream=True, temperature=0, seed=SEED, max_tokens=max_tokens
        )
        for chunk in chunks:
            stream.add(chunk["choices"][0]["delta"].get("content"))
        return stream

    return run


def sampled(llm: Any, meter: CpuMeter, run: Callable[[], Stream]) -> Callable[[], Sample]:
    """Time one request and count its tokens with the model's own tokenizer."""

    def sample() -> Sample:
        stream, others = meter.measure(run)
        tokens = len(llm.tokenize(stream.text.encode(), add_bos=False, special=False))
        speed = (tokens - 1) / stream.decode_s if stream.decode_s > 0 else float("nan")
        return Sample(tokens, speed, stream.ttft_s, stream.text, others)

    return sample


def show(label: str, name: str, s: Sample) -> None:
    print(
        f"  {label:8} {name:8} {s.tokens_per_s:6.1f} tok/s  TTFT {s.ttft_s * 1000:6.1f} ms"
        f"  {s.tokens} tokens  others busy {s.others:.2f} cores"
    )


def measure(result: Result, args: argparse.Namespace) -> None:
    os.environ.update(omp_env(args.threads))  # before llama_cpp loads: it reads them then
    import llama_cpp

    from mmserve.catalog import resolve_source

    path = resolve_source(SOURCE)
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=CONTEXT,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    failures = Failures()
    runners: dict[str, Callable[[], Stream]] = {}
    pids = [os.getpid()]
    with (
        tempfile.TemporaryDirectory(prefix="bench-chat-one-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        model = {"name": MODEL, "kind": "llm", "source": SOURCE, "threads": args.threads}
        url, proc = stack.enter_context(
            serving_mmserve(Path(tmp), {"models": [{**model, "context_length": CONTEXT}]})
        )
        runners["mmserve"] = http_runner(url, MODEL, args.max_tokens)
        pids.append(proc.pid)
        with failures.guard("server"):
            models = [llama_model(path, MODEL, args.threads, CONTEXT)]
            base, pid = stack.enter_context(running_llama_server(Path(tmp), models, args.threads))
            runners["server"] = http_runner(base, MODEL, args.max_tokens, LLAMA_SERVER_SAMPLING)
            pids.append(pid)
        runners["direct"] = direct_runner(llm, args.max_tokens)
        meter = CpuMeter(pids)
        contenders = {name: sampled(llm, meter, run) for name, run in runners.items()}
        samples = run_rounds(contenders, args.rounds, failures, show, deadline=args.deadline)
    fill(result, samples, failures, args)


def fill(
    result: Result, samples: dict[str, list[Sample]], failures: Failures, args: argparse.Namespace
) -> None:
    columns = [
        Column("tps", "tokens/s (median)"),
        Column("ttft", "TTFT ms (median)"),
        Column("others", "others busy (cores)", digits=2, ratio=False),
    ]
    rows = []
    for name, label in LABELS.items():
        runs = samples.get(name, [])
        values = {}
        if runs:
            values = {
                "tps": statistics.median(s.tokens_per_s for s in runs),
                "ttft": statistics.median(s.ttft_s for s in runs) * 1000,
                "others": statistics.median(s.others for s in runs),
            }
        rows.append(
            Row(
                label,
                values,
                note=failures.note(name),
                baseline=name == "mmserve",
            )
        )
    result.tables.append(Table(columns, rows))
    tokens = sorted({s.tokens for runs in samples.values() for s in runs})
    done = rounds_done(samples, args.rounds)
    result.notes += [
        f"{done} after one warm-up request each; {args.threads} thread(s) for every "
        f"contender; max_tokens {args.max_tokens}; tokens per reply: "
        f"{', '.join(map(str, tokens))}.",
        agreement(samples),
    ]


def agreement(samples: dict[str, list[Sample]]) -> str:
    """Whether every reply had the same text (greedy decoding: it should), else who differs."""
    groups: dict[str, list[str]] = {}
    for name, runs in samples.items():
        for text in {s.text for s in runs}:
            groups.setdefault(text, []).append(LABELS[name])
    if len(groups) <= 1:
        return "Every reply had the same text."
    return "The replies' texts differed; contenders with the same text: " + "; ".join(
        " = ".join(names) for names in groups.values()
    )


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, help="measured rounds (default 5; quick 2)")
    parser.add_argument("--max-tokens", type=int, help="tokens per reply (default 128; quick 48)")


def main() -> None:
    args = parse_args(__doc__, extra)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.max_tokens = args.max_tokens or (48 if args.quick else 128)
    setup = (
        "One client streams the same chat request, one at a time, to each contender: "
        "SmolLM2-135M-Instruct Q4_1 (`catalog:smollm2`), context 2048, greedy (temperature 0), "
        f'prompt "{PROMPT}". mmserve and `llama_cpp.server` are read by the same httpx SSE '
        "client (`llama_cpp.server` gets `repeat_penalty: 1.0`, the others' default, in place "
        "of its own 1.1); the direct contender calls `create_chat_completion(stream=True)` in the "
        "benchmark's process. Decode tokens/s = (tokens - 1) / (last content chunk - first), "
        "tokens counted by the model's tokenizer on each reply's text; TTFT from sending the "
        "request to the first content chunk."
    )
    result = Result(
        "chat-one", "1. Chat, one client: streamed tokens/s and time to first token", setup
    )
    run_benchmark(result, args, lambda r: measure(r, args))


if __name__ == "__main__":
    main()
