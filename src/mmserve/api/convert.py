"""Conversions between OpenAI wire models and the engine's transport-neutral types."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import numpy as np

from mmserve.api import protocol as wire
from mmserve.engine.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    EmbedResult,
    Sampling,
    TextDelta,
    TextDone,
    TextEvent,
)
from mmserve.errors import BackendError, UnsupportedCapability

__all__ = [
    "chat_chunks",
    "chat_request",
    "collect",
    "completion_chunks",
    "completion_request",
    "embedding_response",
    "encode_base64",
    "sampling",
]


def sampling(body: wire.ChatCompletionRequest | wire.CompletionRequest) -> Sampling:
    max_tokens = body.max_tokens
    if isinstance(body, wire.ChatCompletionRequest):
        max_tokens = body.max_completion_tokens or max_tokens
        json_mode = body.response_format is not None and body.response_format.type == "json_object"
    else:
        json_mode = False
    return Sampling(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stops,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        json_mode=json_mode,
    )


def chat_request(body: wire.ChatCompletionRequest) -> ChatRequest:
    """The engine's chat request; text parts are joined, image parts refused (text models)."""
    messages = [
        ChatMessage(role=m.role, content=_text(m, i, body.model))
        for i, m in enumerate(body.messages)
    ]
    return ChatRequest(messages=messages, sampling=sampling(body))


def _text(message: wire.ChatMessageIn, index: int, model: str) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if isinstance(part, wire.ImagePart):
            raise UnsupportedCapability(
                f"model {model!r} cannot read images; send image_url parts to a vision model",
                param=f"messages.{index}.content",
            )
        texts.append(part.text)
    return "\n".join(texts)


COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def completion_request(body: wire.CompletionRequest, prompt: str) -> CompletionRequest:
    """A completion; with no max_tokens asked, OpenAI's default of 16 (the engine keeps it
    within the model's cap)."""
    settings = sampling(body).model_copy(update={"default_max_tokens": COMPLETION_MAX_TOKENS})
    return CompletionRequest(prompt=prompt, sampling=settings)


async def collect(events: AsyncIterator[TextEvent]) -> tuple[str, TextDone]:
    """Run a generation to its end: the whole text and its TextDone."""
    parts: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise BackendError("the generation ended without finishing")


def usage(prompt_tokens: int, completion_tokens: int) -> wire.Usage:
    return wire.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def chat_chunks(
    events: AsyncIterator[TextEvent], model: str, include_usage: bool
) -> AsyncIterator[wire.ChatCompletionChunk]:
    """OpenAI's chunk sequence: a role chunk, content chunks, a finish chunk, maybe usage."""
    cid = wire.new_id("chatcmpl")

    def chunk(delta: wire.Delta, finish: TextDone | None = None) -> wire.ChatCompletionChunk:
        choice = wire.ChunkChoice(
            delta=delta, finish_reason=finish.finish_reason if finish else None
        )
        return wire.ChatCompletionChunk(id=cid, model=model, choices=[choice])

    yield chunk(wire.Delta(role="assistant", content=""))
    async for event in events:
        if isinstance(event, TextDelta):
            yield chunk(wire.Delta(content=event.text))
            continue
        yield chunk(wire.Delta(), event)
        if include_usage:
            tally = usage(event.prompt_tokens, event.completion_tokens)
            yield wire.ChatCompletionChunk(id=cid, model=model, choices=[], usage=tally)


async def completion_chunks(
    streams: list[tuple[str, AsyncIterator[TextEvent]]], model: str, include_usage: bool, echo: bool
) -> AsyncIterator[wire.Completion]:
    """Text-completion chunks for each (prompt, events) in turn, indexed by prompt."""
    cid = wire.new_id("cmpl")
    prompt_tokens = completion_tokens = 0
    for index, (prompt, events) in enumerate(streams):
        if echo:
            yield wire.Completion(
                id=cid, model=model, choices=[wire.CompletionChoice(index=index, text=prompt)]
            )
        async for event in events:
            text, finish = (
                (event.text, None) if isinstance(event, TextDelta) else ("", event.finish_reason)
            )
            choice = wire.CompletionChoice(index=index, text=text, finish_reason=finish)
            yield wire.Completion(id=cid, model=model, choices=[choice])
            if isinstance(event, TextDone):
                prompt_tokens += event.prompt_tokens
                completion_tokens += event.completion_tokens
    if include_usage:
        yield wire.Completion(
            id=cid, model=model, choices=[], usage=usage(prompt_tokens, completion_tokens)
        )


def encode_base64(vector: list[float]) -> str:
    """As OpenAI encodes embeddings: little-endian float32, base64."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embedding_response(result: EmbedResult, model: str, encoding: str) -> wire.EmbeddingResponse:
    data = [
        wire.Embedding(index=i, embedding=encode_base64(v) if encoding == "base64" else v)
        for i, v in enumerate(result.vectors)
    ]
    return wire.EmbeddingResponse(data=data, model=model, usage=usage(result.prompt_tokens, 0))
