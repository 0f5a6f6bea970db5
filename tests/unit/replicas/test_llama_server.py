"""LlamaServerReplica's reshaping of llama-server's replies, on recorded bytes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from mmserve.replicas.llama_server import LegacyLogprobs, _as_openai_streams


async def pieces(*parts: bytes) -> AsyncGenerator[bytes, None]:
    for part in parts:
        yield part


def collect(stream: AsyncGenerator[bytes, None]) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in stream])

    return asyncio.run(run())


def events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def chunk(index: int, delta: dict) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": index, "delta": delta}]}).encode()


def test_a_stream_that_opens_without_its_role_gets_it() -> None:
    # llama-server's first stream after its start, as recorded: content first, no role.
    raw = (
        chunk(0, {"content": "Hel"})
        + b"\n\n"
        + chunk(0, {"content": "lo"})
        + b"\n\ndata: [DONE]\n\n"
    )
    # Cut anywhere: the fix must not depend on where the pieces break.
    out = collect(_as_openai_streams(pieces(raw[:17], raw[17:60], raw[60:]), choices=1))
    deltas = [e["choices"][0]["delta"] for e in events(out)]
    assert deltas == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}]
    assert out.endswith(b"data: [DONE]\n\n")


def test_a_stream_with_its_roles_passes_untouched() -> None:
    raw = (
        chunk(0, {"role": "assistant", "content": None}) + b"\n\n"
        + chunk(1, {"content": "b"}) + b"\n\n" + chunk(0, {"content": "a"}) + b"\n\n"
    )  # fmt: skip
    out = collect(_as_openai_streams(pieces(raw), choices=2))
    deltas = [e["choices"][0]["delta"] for e in events(out)]
    assert deltas == [
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": "b"},  # choice 1's first delta
        {"content": "a"},
    ]


def test_every_chunk_gets_the_first_chunks_created() -> None:
    lines = [
        b'data: {"created":100,"choices":[{"index":0,"delta":{"role":"assistant"}}]}',
        b'data: {"created":100,"choices":[{"index":0,"delta":{"content":"a"}}]}',
        b'data: {"created": 101,"choices":[{"index":0,"delta":{"content":"b"}}]}',
    ]
    raw = b"\n\n".join(lines) + b"\n\ndata: [DONE]\n\n"
    out = collect(_as_openai_streams(pieces(raw[:30], raw[30:]), choices=1))
    assert {e["created"] for e in events(out)} == {100}
    assert [e["choices"][0]["delta"].get("content") for e in events(out)] == [None, "a", "b"]


def test_completion_logprobs_take_openais_legacy_shape() -> None:
    entry = {"token": " Paris", "logprob": -0.1, "top_logprobs": [
        {"token": " Paris", "logprob": -0.1}, {"token": " Lyon", "logprob": -2.5}]}  # fmt: skip
    answer = {"choices": [{"index": 0, "text": " Paris.", "logprobs": {"content": [
        entry, {"token": ".", "logprob": -0.5, "top_logprobs": []}]}}]}  # fmt: skip
    LegacyLogprobs().reshape(answer)
    assert answer["choices"][0]["logprobs"] == {
        "tokens": [" Paris", "."],
        "token_logprobs": [-0.1, -0.5],
        "top_logprobs": [{" Paris": -0.1, " Lyon": -2.5}, {}],
        "text_offset": [0, 6],
    }
