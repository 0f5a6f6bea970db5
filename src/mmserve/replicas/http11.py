"""A small HTTP/1.1 client for relaying to an upstream: keep-alive connections to one origin,
each request written in one piece, replies parsed by httptools (llhttp, the C parser uvicorn
uses), on whatever event loop runs (uvloop in the server).

Why not httpx: a relayed request is two HTTP exchanges on loopback, and httpx's own layers
(Request and Response objects, auth, cookies, redirects, httpcore's pool, h11 in pure Python,
anyio streams) cost 790 µs of CPU per exchange where this costs about 60 (docs/benchmarks.md,
"Per-request overhead"). RemoteReplica speaks to an upstream through this `Pool`; tests that
hand RemoteReplica an httpx transport still go through httpx.

    pool = Pool("https://api.example", max_connections=64, connect_timeout=10, timeout=600)
    reply = await pool.request("POST", "/v1/chat/completions", headers, body)  # whole reply
    async with pool.stream("POST", "/v1/chat/completions", headers, body) as reply:
        async for chunk in reply.chunks(): ...
    await pool.close()

Contract:
- `timeout` bounds every wait for the upstream: a free connection, the reply's head, each piece
  of its body (a stream may last longer than `timeout`, as long as it keeps sending). Failures
  are `Timeout`, `ConnectFailed` or `BrokenReply` (all `TransportError`), never a bare OSError.
- A connection goes back to the pool only when its reply was read to the end and neither side
  asked to close. A caller that leaves mid-reply (cancelled, or a stream closed early) closes
  the connection: that is how a server such as llama-server learns to stop the request's slot.
- Idle connections are dropped after KEEPALIVE_EXPIRY seconds (as httpx does), and one the
  upstream closed is never reused: the loop tells us at once (`connection_lost`).
- Not supported (not needed to relay to an OpenAI-style API): proxies, HTTP/2, redirects,
  compressed replies (none are asked for: no Accept-Encoding is sent), request bodies streamed.
- Every method runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import cast
from urllib.parse import urlsplit

import certifi
import httptools

__all__ = ["BrokenReply", "ConnectFailed", "Pool", "Reply", "Timeout", "TransportError"]

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
HIGH_WATER = 1 << 20  # bytes of unread body that pause reading from the socket
LOW_WATER = HIGH_WATER // 4  # ... and resume it


class TransportError(Exception):
    """The exchange with the upstream failed; the message says how (never with the key)."""


class ConnectFailed(TransportError):
    pass


class Timeout(TransportError):
    pass


class BrokenReply(TransportError):
    """The upstream closed the connection, or sent something that is not HTTP/1.1."""


NextPiece = Callable[[], Awaitable[bytes | None]]  # the body's next piece; None at its end


@dataclass
class Reply:
    """One reply: its head at once; its body as `body` (`request`), or piece by piece from
    `chunks()` or whole from `read()` (`stream`)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    next_piece: NextPiece | None = field(default=None, repr=False)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (chunked encoding undone)."""
        if self.next_piece is None:
            if self.body:
                yield self.body
            return
        while (piece := await self.next_piece()) is not None:
            yield piece

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        if self.next_piece is not None:
            self.body = b"".join([piece async for piece in self.chunks()])
            self.next_piece = None
        return self.body


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the reply being read from it. The parser calls the
    `on_*` methods from `data_received`; the caller awaits `head` and `next_piece`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False  # the connection is gone (either side closed it)
        self.busy = False  # a request was sent and its reply is not over
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: TransportError | None = None
        self.pieces: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes nobody asked for, on an idle connection: never reuse it
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BrokenReply(f"the upstream's reply is not valid HTTP/1.1: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head_done and not self.complete and self._delimited_by_close():
            self.complete = True  # a body without a length ends where the connection does
        elif not self.complete:
            self._fail(BrokenReply("the upstream closed the connection before its reply ended"))
        self._wake()

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status >= 200:  # an informational reply (1xx) is followed by the real one
            self.head_done = True
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True  # a slow reader: let TCP push back on the upstream
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.reason, self.headers = "", []
            return
        self.complete = True
        # Asked here: once this callback returns, the parser has moved on to the next message.
        self.keep_alive = self.parser.should_keep_alive()
        self.busy = False
        self._wake()

    # ---- the caller's side -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._reset()
        self.busy = True
        assert self.transport is not None
        self.transport.write(data)

    async def head(self, timeout: float) -> None:
        while not self.head_done:
            await self._wait(timeout)

    async def next_piece(self, timeout: float) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while not self.pieces:
            if self.complete:
                return None
            await self._wait(timeout)
        piece = self.pieces.popleft()
        self.buffered -= len(piece)
        if self.paused and self.buffered < LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return piece

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    async def _wait(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            raise Timeout(f"no answer within {timeout:g} s") from None
        finally:
            self.waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _delimited_by_close(self) -> bool:
        names = {k.lower(): v.lower() for k, v in self.headers}
        return "content-length" not in names and "chunked" not in names.get("transfer-encoding", "")


class Pool:
    """Keep-alive connections to one origin (scheme://host:port), at most `max_connections`
    at a time; requests beyond wait (up to `timeout`) for one to come free."""

    def __init__(
        self, origin: str, *, max_connections: int, connect_timeout: float, timeout: float
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default = (parts.scheme == "https" and self.port == 443) or self.port == 80
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        self.authority = host if default else f"{host}:{self.port}"
        self.ssl = _tls_context() if parts.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self.closed = False

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Reply:
        """Send one request; its whole reply."""
        async with self.stream(method, target, headers, body) as reply:
            await reply.read()
        return reply

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> AsyncIterator[Reply]:
        """Send one request; its reply with the head read and the body to come (`chunks()`).
        Leaving the block before the body's end closes the connection."""
        if self.closed:
            raise ConnectFailed("the client is closed")
        await self._acquire_slot()
        conn: _Connection | None = None
        try:
            conn = await self._connection()
            conn.send(self._encode(method, target, headers, body))
            await conn.head(self.timeout)
            pieces = partial(conn.next_piece, self.timeout)
            yield Reply(conn.status, conn.reason, conn.headers, next_piece=pieces)
        finally:
            if conn is not None:
                self._release(conn)
            self._slots.release()

    async def close(self) -> None:
        """Close every connection. Idempotent."""
        self.closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()

    # ---- internals -----------------------------------------------------------------------------

    async def _acquire_slot(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Timeout(f"no free connection within {self.timeout:g} s") from None

    async def _connection(self) -> _Connection:
        """An idle connection that is still good, else a new one."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recent: the least likely to have expired
            if not conn.lost and now - conn.idle_since < KEEPALIVE_EXPIRY:
                return conn
            self._drop(conn)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                )
        except TimeoutError:
            raise Timeout(f"no connection within {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        self._open.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and not self.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def _encode(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"Content-Length: {len(body)}")
        head = "\r\n".join(lines)
        if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
            # A line break inside a value (a key, a path) would start a header of its own.
            raise ValueError("a header or the target holds a line break")
        return (head + "\r\n\r\n").encode("latin-1") + body


def _tls_context() -> ssl.SSLContext:
    """Certificates checked against certifi's bundle, as httpx does by default."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context
