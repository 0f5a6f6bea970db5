"""ASGI middleware (`Front`): request ids, metrics, API keys and the request body limit.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, so that streamed responses pass through
untouched and a client that leaves still cancels its stream.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mmserve.api.metrics import Metrics
from mmserve.config import ApiKey
from mmserve.engine.telemetry import REQUEST_TALLY, Tally
from mmserve.errors import MMServeError, PayloadTooLarge, Unauthorized
from mmserve.logformat import REQUEST_ID

__all__ = ["OPEN_PATHS", "PROBES", "Front", "RequestHook", "is_open", "send_error"]

# A request that named a model, once answered: (model, route, status, seconds, tokens).
RequestHook = Callable[[str, str, int, float, int], None]

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
    await send({"type": "http.response.body", "body": orjson.dumps(error.envelope())})


class Front:
    """Every HTTP request's way in, as one ASGI layer: its request id, its metrics, its API key,
    its body limit, in that order (a 401 or a 413 is counted and carries its request id).

    One layer with one wrapped `send`, where there were four nested middlewares, each wrapping
    `send` and copying the headers into a dict of its own: a tenth of a small request's time in
    the server went there (docs/benchmarks.md, "Per-request overhead").

    - Request id: the client's own `x-request-id` if it is a sane token, else a new one; every
      reply carries it, and log records written while the request runs (logformat.REQUEST_ID).
    - Metrics: every answered request by model, route template and status (`Metrics.answered`),
      and each one that named a model handed to `on_request` (the model's log).
    - API keys (when configured): every path but the open ones (`is_open`) needs one of them, as
      `Authorization: Bearer KEY` or `x-api-key: KEY`; its scopes go to `request.state.scopes`.
      Keys are compared in constant time and never logged.
    - Body limit: a body over `limit` bytes is a 413, by Content-Length or as it streams.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        limit: int,
        keys: list[ApiKey] | None = None,
        on_request: RequestHook | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit
        self.keys: list[tuple[bytes, list[str]]] = [
            (k.key.get_secret_value().encode(), list(k.scopes)) for k in keys or []
        ]
        self.on_request = on_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"")
        rid = given.decode() if _REQUEST_ID.match(given) else uuid.uuid4().hex
        tagged = (b"x-request-id", rid.encode())
        status = 500  # if the app fails before answering

        async def respond(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), tagged]}
            await send(message)

        started, tally = time.monotonic(), Tally()
        rid_token, tally_token = REQUEST_ID.set(rid), REQUEST_TALLY.set(tally)
        try:
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                await send_error(respond, refusal)
            else:
                await self.app(scope, self._receive(receive, headers), respond)
        finally:
            REQUEST_TALLY.reset(tally_token)
            self._record(scope, status, time.monotonic() - started, tally.tokens)
            REQUEST_ID.reset(rid_token)  # after the record: the model's log line carries it

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> MMServeError | None:
        """A 401 or a 413 to answer at once, or None (the key's scopes then in the state)."""
        if self.keys and not is_open(scope["path"]):
            scopes = self._scopes_for(_presented_key(headers))
            if scopes is None:
                return Unauthorized("a valid API key is required: send Authorization: Bearer KEY")
            scope.setdefault("state", {})["scopes"] = scopes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return self._too_large()
        return None

    def _scopes_for(self, presented: bytes) -> list[str] | None:
        found = None
        for key, scopes in self.keys:  # no early exit: the time taken does not depend on which key
            if hmac.compare_digest(key, presented):
                found = scopes
        return found

    def _receive(self, receive: Receive, headers: dict[bytes, bytes]) -> Receive:
        """`receive`, counting the body's bytes when no Content-Length bounds them (a chunked
        body): the server's parser never passes on more than a declared length."""
        if b"content-length" in headers:
            return receive
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self._too_large()  # rendered by the app's error handler
            return message

        return counted

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than {self.limit} bytes (max_body_bytes)"
        )

    def _record(self, scope: Scope, status: int, seconds: float, tokens: int) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        model = scope.get("state", {}).get("model", "")  # set by handlers, a configured name
        self.metrics.answered(model, route, status, seconds)
        if model and self.on_request is not None:
            self.on_request(model, route, status, seconds, tokens)


def _presented_key(headers: dict[bytes, bytes]) -> bytes:
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return headers.get(b"x-api-key", b"").strip()
