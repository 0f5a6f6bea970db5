"""Transport-neutral requests and results, shared by the API, the engine and the workers.

They are pydantic models so that the same objects validate at the HTTP edge, cross the
worker pipe as JSON, and arrive typed in the backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # pillow is an optional extra: only the vision code imports it
    from PIL.Image import Image

__all__ = [
    "Capability",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "EmbedRequest",
    "EmbedResult",
    "FinishReason",
    "ReplicaStatus",
    "Sampling",
    "TextDelta",
    "TextDone",
    "TextEvent",
    "VisionItem",
    "WorkerInfo",
]

# What a model can do; `relay`: OpenAI requests passed on as sent (see mmserve.registry).
Capability = Literal["chat", "complete", "embed", "call", "vision", "relay"]
FinishReason = Literal["stop", "length", "tool_calls"]


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
    """Each input is a text, or a token array: ids in the model's own vocabulary, without the
    special tokens, which the backend adds as the model's tokenizer does (so the ids of a
    text embed exactly as the text does)."""

    inputs: list[str | list[int]]


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


class WorkerInfo(BaseModel):
    """What a loaded replica can do: a worker sends it once in `ready`; other replica kinds
    (in-process, remote) make their own."""

    # Unknown fields are ignored so that a newer worker can add some. Plain strings on the
    # wire: a newer child may announce capabilities this parent does not know; the parent
    # serves only those it knows (see `Capability`).
    model_config = ConfigDict(extra="ignore")

    capabilities: list[str] = Field(default_factory=list)
    context_length: int | None = None
    dimensions: int | None = None


@dataclass(frozen=True)
class VisionItem:
    """One vision request: its decoded images, and how many labels it wants per image."""

    images: list[Image]
    top_k: int = 5


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as it reports itself; `details` are its kind's own (batches, task...)."""

    pid: int | None
    device: str
    in_flight: int
    requests_served: int
    resident_bytes: int | None
    loaded_at: float | None
    load_seconds: float | None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        return {**body, **body.pop("details")}
