"""RemoteReplica: a model served by another server, reached over HTTP (kind: http).

Backend `openai` relays the OpenAI routes to an OpenAI-compatible upstream as they were sent
(only `model` is renamed), so every field the upstream understands works, and a stream passes
through chunk by chunk as it arrives. Backend `json` posts a call's JSON to one endpoint.

The upstream's failures become mmserve errors that name the upstream by its address, never by
its key: a 4xx keeps its status and message (UpstreamRejected), a 5xx or an answer that is not
JSON is a 502, no connection a 502, no answer in time a 504.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from mmserve.config import ModelSpec
from mmserve.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from mmserve.replicas.base import Replica, ReplicaHooks
from mmserve.types import WorkerInfo

__all__ = ["RemoteReplica"]

CAPABILITIES = {"openai": ["chat", "complete", "embed", "relay"], "json": ["call"]}
MAX_MESSAGE = 500  # characters of an upstream's error text passed on


class RemoteReplica(Replica):
    """One HTTP client to the upstream; its connection pool is what a replica holds."""

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
        self._timeout = httpx.Timeout(spec.timeout, connect=spec.connect_timeout)
        self._pool = httpx.Limits(max_connections=spec.max_concurrency)
        self._log = hooks.log
        self._client: httpx.AsyncClient | None = None
        self.where = _public_address(self.base_url)

    @property
    def info(self) -> WorkerInfo:
        return WorkerInfo(capabilities=CAPABILITIES[self.backend])

    @property
    def alive(self) -> bool:
        return self._client is not None and not self._client.is_closed

    async def _start(self, timeout: float) -> None:
        # Nothing is asked of the upstream here: it may come up after mmserve, and a request
        # that finds it down gets a 502 naming it.
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        # trust_env=False: no proxy or .netrc credentials picked up from the environment.
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=self._timeout,
            limits=self._pool,
            trust_env=False,
            transport=self._transport,
        )
        self._log.event(f"relaying to {self.where} ({self.backend})")

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # ---- requests ----------------------------------------------------------------------------

    async def call(self, body: dict[str, Any]) -> Any:
        """Backend json: the call's JSON posted to the endpoint; its JSON answer."""
        return await self.relay("", body)

    async def relay(self, path: str, payload: dict[str, Any]) -> Any:
        """POST JSON to the upstream (`path` under base_url); its JSON answer."""
        async with self._errors():
            response = await self._http.post(self._url(path), json=self._payload(payload))
        self._check(response)
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"upstream {self.where} answered with something not JSON") from None

    async def relay_stream(self, path: str, payload: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """POST JSON and yield the answer's bytes as they arrive (a server-sent event stream)."""
        async with (
            self._errors(),
            self._http.stream("POST", self._url(path), json=self._payload(payload)) as response,
        ):
            if response.status_code >= 400:
                await response.aread()
                self._check(response)
            async for chunk in response.aiter_bytes():
                yield chunk

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise UpstreamError(f"the client for {self.where} is not started")
        return self._client

    def _url(self, path: str) -> str:
        return self.base_url + path if path else self.base_url

    def _payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.backend == "openai":
            return {**payload, "model": self.upstream_model}
        return payload

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """httpx's exceptions as mmserve's, naming the upstream (its address, never its key)."""
        try:
            yield
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"upstream {self.where} did not answer within {self._timeout.read:g} s"
            ) from None
        except httpx.ConnectError:
            raise UpstreamError(f"upstream {self.where} is unreachable (connection refused or "
                                "no route)") from None  # fmt: skip
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream {self.where} failed: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from None

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        error = _error_of(response)
        message = self._redact(str(error.get("message") or response.reason_phrase))
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


def _error_of(response: httpx.Response) -> dict[str, Any]:
    """The error an upstream described: OpenAI's envelope, FastAPI's `detail`, or its text."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return {"message": response.text.strip() or None}
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
