"""ASGI middleware: API keys and the request body limit.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, so that streamed responses pass through
untouched and a client that leaves still cancels its stream.
"""

from __future__ import annotations

import hmac
import json
import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmserve.config import ApiKey
from mmserve.errors import MMServeError, PayloadTooLarge, Unauthorized
from mmserve.logformat import REQUEST_ID

__all__ = [
    "OPEN_PATHS",
    "PROBES",
    "ApiKeyAuth",
    "BodyLimit",
    "RequestId",
    "is_open",
    "send_error",
]

# Reachable without a key: liveness and readiness probes must work before anyone has a key.
PROBES = frozenset({"/health", "/ready"})
# ... and the dashboard's page and its files (api/ui.py), which hold no data: the page asks for a
# key and sends it with every data call. `/` only redirects a browser to the page.
OPEN_PATHS = PROBES | {"/", "/ui"}
UI_FILES = "/ui/"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def is_open(path: str) -> bool:
    """Whether `path` is served without a key: OPEN_PATHS, and `/ui/NAME` (one segment)."""
    if path in OPEN_PATHS:
        return True
    return path.startswith(UI_FILES) and "/" not in path[len(UI_FILES) :]


async def send_error(send: Send, error: MMServeError) -> None:
    """Answer with OpenAI's error envelope, straight from the ASGI layer."""
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(error.envelope()).encode()})


class ApiKeyAuth:
    """Every path but the open ones (`is_open`) needs one of the configured keys, as
    `Authorization: Bearer KEY` or `x-api-key: KEY`. The key's scopes go to
    `request.state.scopes` for the routes that need more than `inference`. Keys are compared in
    constant time and never logged."""

    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keys: list[tuple[bytes, list[str]]] = [
            (k.key.get_secret_value().encode(), list(k.scopes)) for k in keys
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        scopes = self._scopes_for(_presented_key(scope))
        if scopes is None:
            await send_error(
                send, Unauthorized("a valid API key is required: send Authorization: Bearer KEY")
            )
            return
        scope.setdefault("state", {})["scopes"] = scopes
        await self.app(scope, receive, send)

    def _scopes_for(self, presented: bytes) -> list[str] | None:
        found = None
        for key, scopes in self.keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(key, presented):
                found = scopes
        return found


def _presented_key(scope: Scope) -> bytes:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"").strip()


class BodyLimit:
    """Refuse request bodies over `limit` bytes with a 413, by Content-Length or as they stream."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_error(send, self._error())
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message: dict[str, Any] = dict(await receive())
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self._error()  # rendered by the app's error handler
            return message

        return counted

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than {self.limit} bytes (max_body_bytes)"
        )


class RequestId:
    """Every reply carries `x-request-id`: the client's own (if it is a sane token) or a new one.
    Log records written while the request runs carry it too (see logformat.REQUEST_ID)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        rid = given.decode() if _REQUEST_ID.match(given) else uuid.uuid4().hex

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, tagged)
        finally:
            REQUEST_ID.reset(token)
