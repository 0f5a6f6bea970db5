"""Conversions between OpenAI wire models and the engine's transport-neutral types."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from mmserve.api import protocol as wire
from mmserve.errors import BackendError, UnsupportedCapability
from mmserve.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    EmbedResult,
    Sampling,
    TextDelta,
    TextDone,
    TextEvent,
)

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
    """A message's text: its string, or its text parts joined (an earlier refusal counts as
    what the assistant said)."""
    content = message.content
    if isinstance(message, wire.AssistantMessageIn) and content is None:
        return message.refusal or ""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if isinstance(part, wire.ImagePart):
            raise UnsupportedCapability(
                f"model {model!r} cannot read images; send image_url parts to a vision model",
                param=f"messages[{index}].content",
            )
        texts.append(part.text if isinstance(part, wire.TextPart) else part.refusal)
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


Clock = Callable[[], float]


def usage(prompt_tokens: int, completion_tokens: int) -> wire.Usage:
    return wire.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def chat_chunks(
    events: AsyncIterator[TextEvent], model: str, include_usage: bool, clock: Clock = time.time
) -> AsyncIterator[wire.ChatCompletionChunk]:
    """OpenAI's chunk sequence: a role chunk, content chunks, a finish chunk, maybe usage; one
    id and one `created` (the first chunk's time) for all of them."""
    cid, created = wire.new_id("chatcmpl"), int(clock())

    def chunk(
        choices: list[wire.ChunkChoice], tally: wire.Usage | None = None
    ) -> wire.ChatCompletionChunk:
        return wire.ChatCompletionChunk(
            id=cid, created=created, model=model, choices=choices, usage=tally
        )

    yield chunk([wire.ChunkChoice(delta=wire.Delta(role="assistant", content=""))])
    async for event in events:
        if isinstance(event, TextDelta):
            yield chunk([wire.ChunkChoice(delta=wire.Delta(content=event.text))])
            continue
        yield chunk([wire.ChunkChoice(delta=wire.Delta(), finish_reason=event.finish_reason)])
        if include_usage:
            yield chunk([], usage(event.prompt_tokens, event.completion_tokens))


async def completion_chunks(
    streams: list[tuple[str, AsyncIterator[TextEvent]]],
    model: str,
    include_usage: bool,
    echo: bool,
    clock: Clock = time.time,
) -> AsyncIterator[wire.Completion]:
    """Text-completion chunks for each (prompt, events) in turn, indexed by prompt; one id and
    one `created` for all of them."""
    cid, created = wire.new_id("cmpl"), int(clock())

    def chunk(
        choices: list[wire.CompletionChoice], tally: wire.Usage | None = None
    ) -> wire.Completion:
        return wire.Completion(id=cid, created=created, model=model, choices=choices, usage=tally)

    prompt_tokens = completion_tokens = 0
    for index, (prompt, events) in enumerate(streams):
        if echo:
            yield chunk([wire.CompletionChoice(index=index, text=prompt)])
        async for event in events:
            if isinstance(event, TextDelta):
                yield chunk([wire.CompletionChoice(index=index, text=event.text)])
                continue
            yield chunk(
                [wire.CompletionChoice(index=index, text="", finish_reason=event.finish_reason)]
            )
            prompt_tokens += event.prompt_tokens
            completion_tokens += event.completion_tokens
    if include_usage:
        yield chunk([], usage(prompt_tokens, completion_tokens))


def encode_base64(vector: list[float]) -> str:
    """As OpenAI encodes embeddings: little-endian float32, base64."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embedding_response(result: EmbedResult, model: str, encoding: str) -> wire.EmbeddingResponse:
    data = [
        wire.Embedding(index=i, embedding=encode_base64(v) if encoding == "base64" else v)
        for i, v in enumerate(result.vectors)
    ]
    tally = wire.EmbeddingUsage(
        prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens
    )
    return wire.EmbeddingResponse(data=data, model=model, usage=tally)
