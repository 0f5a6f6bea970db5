"""Transport-neutral requests and results, shared by the API, the engine and the workers.

They are pydantic models so that the same objects validate at the HTTP edge, cross the
worker pipe as JSON, and arrive typed in the backend.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Capability",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "EmbedRequest",
    "EmbedResult",
    "FinishReason",
    "Sampling",
    "TextDelta",
    "TextDone",
    "TextEvent",
]

Capability = Literal["chat", "complete", "embed", "call", "vision"]
FinishReason = Literal["stop", "length"]


class _Frozen(BaseModel):
    # Unknown fields are ignored: a newer worker may add some (the protocol's forward rule).
    model_config = ConfigDict(frozen=True, extra="ignore")


class Sampling(_Frozen):
    """Sampling settings, named as OpenAI names them; None means the engine's default."""

    max_tokens: int | None = None
    # What max_tokens becomes when a request asks none (OpenAI's completions: 16), kept within
    # the model's cap by the engine; None means "until the context or a stop".
    default_max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_mode: bool = False


class ChatMessage(_Frozen):
    role: str
    content: str


class ChatRequest(_Frozen):
    messages: list[ChatMessage]
    sampling: Sampling = Sampling()


class CompletionRequest(_Frozen):
    prompt: str
    sampling: Sampling = Sampling()


class EmbedRequest(_Frozen):
    inputs: list[str]


class TextDelta(_Frozen):
    """A piece of generated text, streamed as it is produced."""

    type: Literal["delta"] = "delta"
    text: str


class TextDone(_Frozen):
    """The end of one generation, with its accounting."""

    type: Literal["done"] = "done"
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


TextEvent = TextDelta | TextDone


class EmbedResult(_Frozen):
    vectors: list[list[float]]
    prompt_tokens: int
    # Each input's tokens, when the backend tells: a batched call's usage is split by them.
    input_tokens: list[int] | None = None
