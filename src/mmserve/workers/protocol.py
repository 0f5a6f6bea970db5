"""The JSON-lines worker protocol, version 1 (documented for users in docs/worker-protocol.md).

One JSON object per line. The parent writes `Request`s to the child's stdin; the child writes
`Reply`s to its stdout; its stderr is its log. Every request carries an `id` and every reply to
it carries the same `id`, so one child can hold several requests in flight and the parent can
cancel one. The same protocol is how user programs in any language plug in (`kind: subprocess`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from mmserve.types import WorkerInfo

__all__ = [
    "PROTOCOL_VERSION",
    "Chunk",
    "ErrorInfo",
    "ErrorReply",
    "Pong",
    "Ready",
    "Reply",
    "Request",
    "Result",
    "WorkerInfo",
    "decode_reply",
    "decode_request",
    "encode",
]

PROTOCOL_VERSION = 1

Op = Literal["chat", "complete", "embed", "call", "ping", "cancel", "shutdown"]


class _Message(BaseModel):
    # Unknown fields are ignored so that newer peers can add fields without breaking older ones.
    model_config = ConfigDict(extra="ignore")


class Request(_Message):
    """Parent -> child. `body` is the op's payload (a ChatRequest for `chat`, ...)."""

    op: Op
    id: str | None = None
    body: dict[str, Any] = Field(default_factory=dict)


class Ready(_Message):
    type: Literal["ready"] = "ready"
    protocol: int = PROTOCOL_VERSION
    info: WorkerInfo = WorkerInfo()


class Chunk(_Message):
    """A streamed part of the answer to request `id`; more follow."""

    type: Literal["chunk"] = "chunk"
    id: str
    data: dict[str, Any]


class Result(_Message):
    """The last reply to request `id`."""

    type: Literal["result"] = "result"
    id: str
    data: dict[str, Any] = Field(default_factory=dict)


class ErrorInfo(_Message):
    kind: str  # an `mmserve.errors` kind: invalid_request, context_length, backend, ...
    message: str


class ErrorReply(_Message):
    """The last reply to request `id`; `id` is null outside any request (a failed load)."""

    type: Literal["error"] = "error"
    id: str | None = None
    error: ErrorInfo


class Pong(_Message):
    type: Literal["pong"] = "pong"
    id: str | None = None


Reply = Annotated[Ready | Chunk | Result | ErrorReply | Pong, Field(discriminator="type")]
_REPLY: TypeAdapter[Reply] = TypeAdapter(Reply)


def encode(message: BaseModel) -> bytes:
    """One protocol line, newline included."""
    return message.model_dump_json().encode() + b"\n"


def decode_reply(line: bytes | str) -> Reply:
    """Parse one line from a child; raises pydantic.ValidationError on a malformed line."""
    return _REPLY.validate_json(line)


def decode_request(line: bytes | str) -> Request:
    return Request.model_validate_json(line)
