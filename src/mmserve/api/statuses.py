"""What the OpenAPI document says each route answers: its error statuses, from the error tree.

A route's decorator takes one of the `responses=` families below; each lists the statuses of
the error classes that route can raise, with the error envelope's schema and the classes' own
words. FastAPI's automatic 422 is taken out of the document (`finished`): mmserve answers a
request that fails validation with a 400, as OpenAI does.

Statuses every route shares: 401 (API keys are on and the key is missing or wrong), 403 (the
key lacks the route's scope) and 500 (a bug: never the user's mistake).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from mmserve.api.protocol import ErrorResponse
from mmserve.errors import (
    Conflict,
    InvalidRequest,
    MMServeError,
    ModelNotFound,
    ModelUnavailable,
    PayloadTooLarge,
    PermissionDenied,
    TooManyRequests,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "CALLS",
    "HEALTH",
    "INFERENCE",
    "LISTING",
    "LOGS",
    "LOGS_FOLLOWED",
    "LOOKUP",
    "MANAGEMENT",
    "READY",
    "STREAMING_INFERENCE",
    "documented",
    "finished",
]

Responses = dict[int | str, dict[str, Any]]


def documented(*classes: type[MMServeError]) -> Responses:
    """`responses=` for a route that can raise `classes`: one entry per status."""
    by_status: dict[int, list[type[MMServeError]]] = {}
    for cls in classes:
        by_status.setdefault(cls.status, []).append(cls)
    return {
        status: {"model": ErrorResponse, "description": _describe(status, group)}
        for status, group in sorted(by_status.items())
    }


def _describe(status: int, classes: list[type[MMServeError]]) -> str:
    reasons = [(cls.__doc__ or "").strip().split("\n")[0] for cls in classes]
    return f"{HTTPStatus(status).phrase}: " + " ".join(r for r in reasons if r)


_EVERY = (Unauthorized, PermissionDenied, MMServeError)
_MODEL_RUN = (ModelNotFound, TooManyRequests, ModelUnavailable, UpstreamError, UpstreamTimeout)

HEALTH = documented(MMServeError)  # open to all, even when API keys are on
LISTING = documented(*_EVERY)
LOOKUP = documented(*_EVERY, ModelNotFound)
LOGS = documented(*_EVERY, InvalidRequest, ModelNotFound)  # the query parameters are checked
INFERENCE = documented(*_EVERY, InvalidRequest, PayloadTooLarge, *_MODEL_RUN)
CALLS = INFERENCE
MANAGEMENT = documented(
    *_EVERY, InvalidRequest, PayloadTooLarge, ModelNotFound, Conflict, TooManyRequests,
    ModelUnavailable,
)  # fmt: skip


class NotReadyModel(BaseModel):
    name: str
    state: str
    last_error: str | None


class NotReady(BaseModel):
    status: str
    not_ready: list[NotReadyModel]


READY: Responses = {
    **HEALTH,
    503: {"model": NotReady, "description": "Some model loaded at start is not ready yet"},
}
# Each event of a stream (OpenAPI 3.1: a text/event-stream schema describes one event).
_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "a chunk (chat.completion.chunk or text_completion) as JSON; an error "
            "envelope if the stream fails after it started; `[DONE]` last",
        }
    },
}
_SSE = {"text/event-stream": {"schema": _EVENT}}
STREAMING_INFERENCE: Responses = {
    **INFERENCE,
    200: {"description": "The reply; with `stream: true`, server-sent events", "content": _SSE},
}
LOGS_FOLLOWED: Responses = {
    **LOGS,
    200: {
        "description": "The records; with `follow=true`, one JSON record a line as they come",
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    },
}


def finished(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """`app.openapi`, with two corrections made to what FastAPI generates: its automatic 422
    (and the schemas only it uses) taken out of every operation, and each error response
    documented as JSON, which it is even on a route that answers text (`/metrics`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = generate()
        if first:
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    _correct(operation.get("responses", {}))
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    return openapi


def _correct(responses: dict[str, Any]) -> None:
    responses.pop("422", None)
    for status, response in responses.items():
        content = response.get("content", {})
        if status[0] in "45" and "application/json" not in content and len(content) == 1:
            response["content"] = {"application/json": content.popitem()[1]}
