"""The JSON-lines worker protocol, version 1 (documented for users in docs/worker-protocol.md).

One JSON object per line. The parent writes `Request`s to the child's stdin; the child writes
`Reply`s to its stdout; its stderr is its log. Every request carries an `id` and every reply to
it carries the same `id`, so one child can hold several requests in flight and the parent can
cancel one. The same protocol is how user programs in any language plug in (`kind: subprocess`).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from mmserve.types import EmbedResult, WorkerInfo

__all__ = [
    "PROTOCOL_VERSION",
    "VECTORS_ENCODING",
    "Chunk",
    "ErrorInfo",
    "ErrorReply",
    "LoadTimes",
    "Pong",
    "Ready",
    "Reply",
    "Request",
    "Result",
    "WorkerInfo",
    "decode_reply",
    "decode_request",
    "embed_result_data",
    "embed_result_of",
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


class LoadTimes(_Message):
    """When a worker's load went through its phases. `started` and `imported` are the child's own
    `time.monotonic()`: CLOCK_MONOTONIC is system-wide on Linux, so the parent subtracts the time
    it spawned (or took) the child from them (see `workers.supervisor.LoadPhases`)."""

    started: float  # main() began: the interpreter and the protocol's modules are up
    imported: float  # the backend's implementation module is imported
    weights_s: float  # seconds the backend took to load its model
    warmup_s: float = 0.0  # seconds of a first-token warm-up, for a backend that does one


class Ready(_Message):
    type: Literal["ready"] = "ready"
    protocol: int = PROTOCOL_VERSION
    info: WorkerInfo = WorkerInfo()
    # Optional: what the child says about itself (where it runs, its memory...), shown in the
    # replica's status; a Ray bridge reports its actor's node here (see workers.ray_bridge).
    details: dict[str, Any] = Field(default_factory=dict)
    # Optional: where its load's time went (mmserve's own worker sends it; a program may not).
    load: LoadTimes | None = None


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
    details: dict[str, Any] = Field(default_factory=dict)  # as Ready's, brought up to date


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


# ---- an `embed` result's vectors ----------------------------------------------------------------
#
# `{"vectors": [[FLOAT, ...], ...]}` is what a child sends by default. A request whose body says
# `"vectors_encoding": "base64"` (mmserve's parent always does) may be answered with the vectors'
# bytes instead: `{"vectors_base64": B64, "dtype": "float32", "dimensions": N}` (little-endian,
# one vector after the other); a program that ignores the field still answers with floats.
# Writing and parsing 384 floats as decimal text cost ~90 µs per vector between the two
# processes, against ~10 µs for their bytes. float32 when that holds every value exactly (a
# model's own output does), else float64: the parent gets exactly the numbers the backend
# returned, either way.

VECTORS_ENCODING = "vectors_encoding"  # the field of an embed request's body

_DTYPES = {"float32": "<f4", "float64": "<f8"}


def embed_result_data(result: EmbedResult, body: dict[str, Any]) -> dict[str, Any]:
    """An EmbedResult as the data of the result to `embed` request `body`: its vectors as
    bytes if the request asks for them so, else as floats."""
    if body.get(VECTORS_ENCODING) != "base64":
        return result.model_dump()
    data = result.model_dump(exclude={"vectors"})
    try:
        wide = np.asarray(result.vectors, dtype="<f8")
    except ValueError:  # vectors of different lengths: as floats, for the parent to judge
        return result.model_dump()
    narrow = wide.astype("<f4")
    exact = bool(np.array_equal(narrow, wide))
    matrix = narrow if exact else wide
    dimensions = matrix.shape[1] if matrix.ndim == 2 else 0
    data.update(
        vectors_base64=base64.b64encode(matrix.tobytes()).decode("ascii"),
        dtype="float32" if exact else "float64",
        dimensions=dimensions,
    )
    return data


def embed_result_of(data: dict[str, Any]) -> EmbedResult:
    """An `embed` result's data as an EmbedResult, the vectors sent as floats or as bytes.
    Raises pydantic.ValidationError (or ValueError) on malformed data."""
    encoded = data.get("vectors_base64")
    if encoded is None:
        return EmbedResult.model_validate(data)
    dtype = _DTYPES.get(str(data.get("dtype")))
    if dtype is None or not isinstance(encoded, str):
        raise ValueError(f"an embed result's dtype must be one of {sorted(_DTYPES)}")
    flat = np.frombuffer(base64.b64decode(encoded, validate=True), dtype=dtype)
    dimensions = int(data.get("dimensions") or 0)
    vectors = flat.reshape(-1, dimensions).tolist() if dimensions else []
    return EmbedResult.model_validate({**data, "vectors": vectors})
