"""Wire models for the OpenAI-compatible routes, named as OpenAI names them.

Requests validate at the edge (a bad field is a 400 naming it); unknown fields are ignored, as
most OpenAI-compatible servers do, except those that would change the answer and that mmserve
does not implement (n > 1, tools, logprobs...), which are refused by name.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmserve.engine.types import FinishReason
from mmserve.errors import InvalidRequest

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "Completion",
    "CompletionChunk",
    "CompletionRequest",
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ModelCard",
    "ModelList",
    "Usage",
    "invalid_fields",
    "new_id",
    "object_body",
    "parse",
]


def invalid_fields(errors: Sequence[Any]) -> InvalidRequest:
    """The first validation problem, as OpenAI words it: which field, and what is wrong."""
    err = errors[0]
    loc = [str(part) for part in err["loc"] if part != "body"]
    if err["type"] == "json_invalid":
        return InvalidRequest(
            f"the request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
        )
    if not loc:
        return InvalidRequest(f"the request body is invalid: {err['msg']}")
    field = ".".join(loc)
    return InvalidRequest(f"invalid value for '{field}': {err['msg']}", param=loc[0])


def object_body(raw: bytes) -> dict[str, Any]:
    """A body read by hand (routes whose body is optional): a JSON object, or {} when empty."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """Validate `data` as `model` in a route's body (a 400 naming the field, as at the edge)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_fields(exc.errors()) from None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: object) -> object:
        """JSON may carry lone surrogates (`"\\ud800"`), which are not text: refuse them here,
        at the edge, rather than fail deep inside when the text is encoded for a model."""
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for text in texts:
            if isinstance(text, str) and not _is_utf8(text):
                raise ValueError(
                    "contains a lone surrogate (\\ud800-\\udfff), which is not valid text"
                )
        return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests -------------------------------------------------------------------------------


class TextPart(_In):
    type: Literal["text"]
    text: str


class ImageURL(_In):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_In):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessageIn(_In):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_In):
    include_usage: bool = False


class ResponseFormat(_In):
    type: Literal["text", "json_object"]


class _Sampling(_In):
    """Fields shared by chat and completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: Literal[1] = Field(1, description="mmserve returns one choice per prompt")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop must be at most 16 non-empty strings")
        return stop

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = Field(None, max_length=0, description="not supported")
    logprobs: Literal[False] | None = Field(None, description="not supported")


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="default 16, as OpenAI's")
    echo: bool = False
    suffix: None = Field(None, description="not supported")
    logprobs: None = Field(None, description="not supported")
    best_of: Literal[1] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) > 64:
            raise ValueError("at most 64 prompts per request")
        if isinstance(prompt, list) and not all(prompt):
            raise ValueError("prompts must not be empty strings")
        return prompt

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class EmbeddingRequest(_In):
    model: str = Field(min_length=1)
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if any(not text for text in texts):
            raise ValueError("input must not contain empty strings")
        return value

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---- responses ------------------------------------------------------------------------------


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class _Response(_Out):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Out):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Out):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(_Out):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class Completion(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


CompletionChunk = Completion  # OpenAI streams completions with the same object shape


class Embedding(_Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string when encoding_format is "base64"


class EmbeddingResponse(_Out):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mmserve"
    # mmserve's additions: what the model is and whether it is loaded.
    kind: str
    state: str
    aliases: list[str] = Field(default_factory=list)
    capabilities: list[str] = Field(default_factory=list)


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]
