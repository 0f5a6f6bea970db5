"""RemoteReplica: a model served by another server, reached over HTTP (kind: http).

Backend `openai` relays the OpenAI routes to an OpenAI-compatible upstream as they were sent
(only `model` is renamed), so every field the upstream understands works, and a stream passes
through chunk by chunk as it arrives. Backend `json` posts a call's JSON to one endpoint.

The upstream's failures become mmserve errors that name the upstream by its address, never by
its key: a 4xx keeps its status and message (UpstreamRejected), a 5xx or an answer that is not
JSON is a 502, no connection a 502, no answer in time a 504.
"""

from __future__ import annotations

import base64
import contextlib
import json
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

import httpx
import orjson

from mmserve.config import ModelSpec
from mmserve.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from mmserve.replicas import http11
from mmserve.replicas.base import Replica, ReplicaHooks
from mmserve.types import WorkerInfo

__all__ = ["RemoteReplica"]

CAPABILITIES = {"openai": ["chat", "complete", "embed", "relay"], "json": ["call"]}
MAX_MESSAGE = 500  # characters of an upstream's error text passed on


class RemoteReplica(Replica):
    """One connection pool to the upstream: that is what a replica holds.

    Requests go through `http11.Pool` (keep-alive HTTP/1.1, a C parser); a test that hands in
    an httpx transport (a MockTransport) gets an httpx client on it instead, behind the same
    two calls (`_Httpx`)."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        hooks: ReplicaHooks,
        transport: httpx.AsyncBaseTransport | None = None,  # tests put a MockTransport here
    ) -> None:
        super().__init__(device)
        self._transport = transport
        assert spec.base_url is not None  # ModelSpec requires it for kind http
        self.backend = spec.backend or "openai"
        self.base_url = spec.base_url.rstrip("/")
        self.upstream_model = spec.upstream_model or spec.name
        self._key = spec.api_key.get_secret_value() if spec.api_key else None
        self._timeout = spec.timeout
        self._connect_timeout = spec.connect_timeout
        self._max_connections = spec.max_concurrency
        self._log = hooks.log
        self._upstream: http11.Pool | _Httpx | None = None
        self.where = _public_address(self.base_url)
        parts = urlsplit(self.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        # The request target's start: base_url's path (and query), as httpx would send it.
        query = f"?{parts.query}" if parts.query else ""
        self._prefix = quote(parts.path, safe=_PATH_SAFE) + query
        self._headers = _headers(self._key, parts)

    @property
    def info(self) -> WorkerInfo:
        return WorkerInfo(capabilities=CAPABILITIES[self.backend])

    @property
    def alive(self) -> bool:
        return self._upstream is not None and not self._upstream.closed

    async def _start(self, timeout: float) -> None:
        # Nothing is asked of the upstream here: it may come up after mmserve, and a request
        # that finds it down gets a 502 naming it.
        if self._transport is not None:
            self._upstream = _Httpx(self._origin, self._transport, self._timeout)
        else:
            self._upstream = http11.Pool(
                self._origin,
                max_connections=self._max_connections,
                connect_timeout=self._connect_timeout,
                timeout=self._timeout,
            )
        self._log.event(f"relaying to {self.where} ({self.backend})")

    async def stop(self) -> None:
        if self._upstream is not None:
            await self._upstream.close()

    # ---- requests ----------------------------------------------------------------------------

    async def call(self, body: dict[str, Any]) -> Any:
        """Backend json: the call's JSON posted to the endpoint; its JSON answer."""
        return await self.relay("", body)

    async def relay(self, path: str, payload: dict[str, Any]) -> Any:
        """POST JSON to the upstream (`path` under base_url); its JSON answer."""
        async with self._errors():
            reply = await self._http.request("POST", self._prefix + path, self._headers,
                                             self._body(payload))  # fmt: skip
        self._check(reply)
        try:
            return orjson.loads(_decoded(reply))
        except (orjson.JSONDecodeError, zlib.error):
            raise UpstreamError(f"upstream {self.where} answered with something not JSON") from None

    async def relay_stream(self, path: str, payload: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """POST JSON and yield the answer's bytes as they arrive (a server-sent event stream).
        Closing this generator early closes the upstream connection (the upstream stops)."""
        body = self._body(payload)
        async with (
            self._errors(),
            self._http.stream("POST", self._prefix + path, self._headers, body) as reply,
        ):
            if reply.status >= 400:
                await reply.read()
                self._check(reply)
            async for chunk in reply.chunks():
                yield chunk

    @property
    def _http(self) -> http11.Pool | _Httpx:
        if self._upstream is None:
            raise UpstreamError(f"the client for {self.where} is not started")
        return self._upstream

    def _body(self, payload: dict[str, Any]) -> bytes:
        if self.backend == "openai":
            payload = {**payload, "model": self.upstream_model}
        try:
            return orjson.dumps(payload)
        except TypeError:  # orjson refuses integers beyond 64 bits, where json writes them
            return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Transport failures as mmserve's errors, naming the upstream (its address, never its
        key)."""
        try:
            yield
        except (http11.Timeout, httpx.TimeoutException):
            raise UpstreamTimeout(
                f"upstream {self.where} did not answer within {self._timeout:g} s"
            ) from None
        except (http11.ConnectFailed, httpx.ConnectError):
            raise UpstreamError(f"upstream {self.where} is unreachable (connection refused or "
                                "no route)") from None  # fmt: skip
        except (http11.TransportError, httpx.HTTPError) as exc:
            raise UpstreamError(
                f"upstream {self.where} failed: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from None

    def _check(self, reply: http11.Reply) -> None:
        status = reply.status
        if status < 400:
            return
        error = _error_of(reply)
        message = self._redact(str(error.get("message") or reply.reason))
        if status >= 500:
            raise UpstreamError(f"upstream {self.where} failed with {status}: {message}")
        raise UpstreamRejected(
            status,
            message,
            type=_text(error.get("type")),
            code=_text(error.get("code")),
            param=_text(error.get("param")),
        )

    def _redact(self, text: str) -> str:
        """An upstream may quote the key it was sent (OpenAI does, in part): never pass it on."""
        text = text[:MAX_MESSAGE]
        return text.replace(self._key, "***") if self._key else text


class _Httpx:
    """The Pool's two calls on an httpx client over a given transport (tests' MockTransport)."""

    def __init__(self, origin: str, transport: httpx.AsyncBaseTransport, timeout: float) -> None:
        # trust_env=False: no proxy or .netrc credentials picked up from the environment.
        self._client = httpx.AsyncClient(
            base_url=origin, transport=transport, timeout=timeout, trust_env=False
        )

    @property
    def closed(self) -> bool:
        return self._client.is_closed

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> http11.Reply:
        response = await self._client.request(method, target, headers=headers, content=body)
        return http11.Reply(response.status_code, response.reason_phrase,
                            list(response.headers.items()), response.content)  # fmt: skip

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> AsyncIterator[http11.Reply]:
        request = self._client.build_request(method, target, headers=headers, content=body)
        response = await self._client.send(request, stream=True)
        pieces = response.aiter_bytes()

        async def next_piece() -> bytes | None:
            return await anext(pieces, None)

        try:
            yield http11.Reply(response.status_code, response.reason_phrase,
                               list(response.headers.items()), next_piece=next_piece)  # fmt: skip
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self._client.aclose()


# Characters a request target may hold as they are (RFC 3986 pchar, "/" and an escape's "%").
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _headers(key: str | None, parts: SplitResult) -> list[tuple[str, str]]:
    """The headers every request carries: the key as a bearer token; credentials in base_url's
    user info instead become basic auth (as httpx does with them)."""
    headers = [("Content-Type", "application/json"), ("Accept", "*/*"),
               ("User-Agent", "mmserve")]  # fmt: skip
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers.append(("Authorization", "Basic " + base64.b64encode(pair.encode()).decode()))
    elif key:
        headers.append(("Authorization", f"Bearer {key}"))
    return headers


def _decoded(reply: http11.Reply) -> bytes:
    """The body, uncompressed if an upstream compressed it unasked (none is asked to)."""
    encoding = (reply.header("content-encoding") or "identity").lower()
    if encoding in ("gzip", "deflate"):
        return zlib.decompress(reply.body, wbits=47)  # 47: gzip or zlib, told by the header
    return reply.body


def _error_of(reply: http11.Reply) -> dict[str, Any]:
    """The error an upstream described: OpenAI's envelope, FastAPI's `detail`, or its text."""
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return {"message": reply.text.strip() or None}
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return dict(body["error"])
        if isinstance(body.get("error"), str):
            return {"message": body["error"]}
        if "detail" in body:
            return {"message": json.dumps(body["detail"])[:MAX_MESSAGE]}
    return {"message": json.dumps(body)[:MAX_MESSAGE]}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _public_address(url: str) -> str:
    """scheme://host:port/path of a URL: no user info, query or fragment, which may hold
    credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
