"""Wire models for the OpenAI-compatible routes, named as OpenAI names them.

Requests validate at the edge (a bad field is a 400 naming it, worded by `api.validation`);
unknown fields are ignored, as most OpenAI-compatible servers do, except those that would
change the answer and that mmserve does not implement (tools, suffix...), which are refused by
name. `n`, logprobs and token-array prompts are served by engines that relay the request to a
server that has them (llama-server, an upstream); other engines refuse them by name
(`api.openai.refuse_relay_only`). Every constraint the server enforces on a field's own value
is declared on the field, so the OpenAPI document states it; what depends on the model (its
max_tokens cap, its context, its vocabulary, what it can do) is checked by the engine.

Replies have exactly the keys OpenAI's schema gives them: a key the schema makes nullable is
`null` when empty (`refusal`), one it makes optional is left out (a chunk's `delta.role` after
the first).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mmserve.api.validation import invalid_fields, json_numbers, object_body, parse
from mmserve.types import FinishReason

__all__ = [
    "CallBody",
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
    "ErrorResponse",
    "ModelCard",
    "ModelList",
    "Usage",
    "invalid_fields",
    "new_id",
    "object_body",
    "parse",
]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class _In(BaseModel):
    # Strict: JSON's types, as the schema states them (`true` is not 1, "5" is not 5).
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        return json_numbers(data)

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
    # Fields with a default are always sent: the schema marks them required, as OpenAI's does.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


def only(value: bool | int) -> Any:
    """The validator of a field that takes one number or bool, typed as JSON types it (alone,
    a Literal compares as Python does: `true` would pass for 1, and 0 for false)."""

    def check(given: object) -> object:
        if type(given) is not type(value):
            raise ValueError(f"must be {json.dumps(value)}")
        return given

    return BeforeValidator(check)


def _absent(value: object) -> bool:
    return value is None


def left_out_when_none() -> Any:
    """A key OpenAI's schema makes optional but not nullable: left out when it has no value."""
    return Field(None, exclude_if=_absent)


NonEmpty = Annotated[str, Field(min_length=1)]
# Token ids in the model's own vocabulary (the backend checks the upper bound).
TokenArray = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


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


class RefusalPart(_In):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]

TextContent = str | Annotated[list[TextPart], Field(min_length=1)]


class SystemMessage(_In):
    role: Literal["system"]
    content: TextContent
    name: str | None = None


class DeveloperMessage(_In):
    role: Literal["developer"]
    content: TextContent
    name: str | None = None


class UserMessage(_In):
    role: Literal["user"]
    content: str | Annotated[list[UserPart], Field(min_length=1)]
    name: str | None = None


class FunctionCallIn(_In):
    name: str = Field(min_length=1)
    arguments: str = Field(description="the arguments, as a JSON text")


class ToolCallIn(_In):
    """A call an earlier answer made (the tool's result follows in a `tool` message)."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class AssistantMessageIn(_In):
    """An earlier answer in the conversation; OpenAI makes its content optional."""

    role: Literal["assistant"]
    content: str | Annotated[list[AssistantPart], Field(min_length=1)] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None


class ToolMessage(_In):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


ChatMessageIn = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessageIn | ToolMessage,
    Field(discriminator="role"),
]


class StreamOptions(_In):
    include_usage: bool = False


# A tool's or a schema's name, as OpenAI allows it.
ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class JsonSchema(_In):
    name: ToolName
    description: str | None = None
    # What the model's output must validate against; the engine says which keywords it enforces.
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_In):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema goes with type: json_schema, and it needs one")
        return self


class FunctionDefinition(_In):
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="a JSON Schema of the arguments (an object); none: no arguments"
    )
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _an_object(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "object") != "object":
            raise ValueError("must be a JSON Schema of an object (type: object)")
        return value


class Tool(_In):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_In):
    name: str


class NamedToolChoice(_In):
    type: Literal["function"]
    function: NamedFunction


# A seed is any integer a double holds exactly (JSON numbers beyond that are not exact).
Seed = Annotated[int, Field(ge=-(2**53), le=2**53)]


class _Sampling(_In):
    """Fields shared by chat and completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128, description="choices per prompt")
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=16)] | None = None
    seed: Seed | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

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
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = Field(None, description="the chosen tokens' log probabilities")
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="with logprobs: the N likeliest tokens at each position"
    )

    @model_validator(mode="after")
    def _tool_choice(self) -> ChatCompletionRequest:
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools: two tools have the same name")
        choice = self.tool_choice
        if choice is not None and choice != "none" and not names:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools")
        return self

    @property
    def calls_tools(self) -> bool:
        """Tools are given and the model may call them."""
        return bool(self.tools) and self.tool_choice != "none"

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("goes with logprobs: true")
        return value


class CompletionRequest(_Sampling):
    # An empty prompt starts from the model's start token.
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=64)]
        | TokenArray
        | Annotated[list[TokenArray], Field(min_length=1, max_length=64)]
    ) = Field(description="text, or token arrays (ids in the model's own vocabulary)")
    max_tokens: int | None = Field(None, ge=1, description="default 16, as OpenAI's")
    echo: bool = False
    suffix: None = Field(None, description="not supported")
    logprobs: int | None = Field(
        None, ge=0, le=5, description="the N likeliest tokens' log probabilities at each position"
    )
    best_of: Annotated[Literal[1], only(1)] | None = None

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text, or one token array."""
        if isinstance(self.prompt, str) or _is_token_array(self.prompt):
            return [self.prompt]
        return [item for item in self.prompt if not isinstance(item, int)]


class EmbeddingRequest(_In):
    model: str = Field(min_length=1)
    input: (
        NonEmpty
        | Annotated[list[NonEmpty], Field(min_length=1)]
        | TokenArray
        | Annotated[list[TokenArray], Field(min_length=1)]
    ) = Field(
        description="text, or token arrays: the ids of the text's tokens in the model's own "
        "vocabulary, without the special tokens (the server adds them)"
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @property
    def inputs(self) -> list[str | list[int]]:
        """Each input: a text, or one token array."""
        if isinstance(self.input, str) or _is_token_array(self.input):
            return [self.input]
        return [item for item in self.input if not isinstance(item, int)]


def _is_token_array(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(isinstance(item, int) for item in value)


# `POST /api/v1/{model}/call`: the path names the model; the body takes the form of its kind.


class ChatCall(ChatCompletionRequest):
    """A chat model's call: the chat request without `model` (never streamed)."""

    model: str = Field("", description="ignored: the path names the model")


class CompletionCall(CompletionRequest):
    model: str = Field("", description="ignored: the path names the model")


class EmbeddingCall(EmbeddingRequest):
    model: str = Field("", description="ignored: the path names the model")


class ImageCall(_In):
    """A vision model's call on one image (a data URL or bare base64)."""

    image: str
    top_k: int = Field(5, ge=1, le=1000, description="a classifier's labels per image")


class ImagesCall(_In):
    images: list[str] = Field(min_length=1)
    top_k: int = Field(5, ge=1, le=1000, description="a classifier's labels per image")


def _as_sent(body: Any) -> Any:
    return body


# The call route reads the body by the model's kind (api.calls); the document shows each form,
# and any object for a program or a JSON endpoint, which take their own.
CallBody = Annotated[
    dict[str, Any],
    BeforeValidator(
        _as_sent,
        json_schema_input_type=ChatCall
        | CompletionCall
        | EmbeddingCall
        | ImageCall
        | ImagesCall
        | dict[str, Any],
    ),
]


# ---- responses ------------------------------------------------------------------------------


class Usage(_Out):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    # What an engine that relays its replies adds, as OpenAI does (llama-server: cached_tokens).
    prompt_tokens_details: dict[str, Any] | None = left_out_when_none()
    completion_tokens_details: dict[str, Any] | None = left_out_when_none()


class EmbeddingUsage(_Out):
    prompt_tokens: int
    total_tokens: int


class _Response(_Out):
    id: str
    # One value for every chunk of a stream: its first chunk's (see api.convert).
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = left_out_when_none()  # the engine's build, when it says


class FunctionCallOut(_Out):
    name: str
    arguments: str = Field(description="the arguments, as a JSON text")


class ToolCallOut(_Out):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCallOut] | None = left_out_when_none()


# The log probabilities of a choice's tokens, as OpenAI gives them (`content`: a list of
# {token, logprob, bytes, top_logprobs}; a completion's: tokens, token_logprobs, top_logprobs,
# text_offset): only engines that relay (llama-server, an upstream) give them.
Logprobs = dict[str, Any] | None


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: Logprobs = None


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class Delta(_Out):
    """What a chunk adds: `role` in the first chunk only, `content` while there is text."""

    role: Literal["assistant"] | None = left_out_when_none()
    content: str | None = left_out_when_none()
    tool_calls: list[dict[str, Any]] | None = left_out_when_none()  # per index: id, name, args


class ChunkChoice(_Out):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: Logprobs = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    # With stream_options.include_usage: null in every chunk but the last, as OpenAI sends it.
    usage: Usage | None = None


class CompletionChoice(_Out):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: Logprobs = None


class Completion(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = left_out_when_none()


CompletionChunk = Completion  # OpenAI streams completions with the same object shape


class Embedding(_Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string when encoding_format is "base64"


class EmbeddingResponse(_Out):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


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


class ErrorDetail(_Out):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Out):
    """OpenAI's error envelope: every error mmserve answers has this body."""

    error: ErrorDetail
