"""The relay's HTTP/1.1 pool against a real server on loopback: keep-alive, bodies by length,
chunks and close, a stream left early, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from mmserve.replicas.http11 import BrokenReply, ConnectFailed, Pool, Timeout

JSON = [("Content-Type", "application/json")]


class Upstream:
    """A tiny HTTP/1.1 server: the reply depends on the path; it counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self.bodies: list[bytes] = []
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.bodies.append(await reader.readexactly(length))
                path = head.split(b" ")[1]
                if not await self.answer(path, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def answer(self, path: bytes, writer: asyncio.StreamWriter) -> bool:
        """Write the reply for `path`; False closes the connection."""
        if path == b"/json":
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}')
        elif path == b"/chunks":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"data: 1\n\n", b"data: 2\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        elif path == b"/close":  # no length: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
            await writer.drain()
            return False
        elif path == b"/endless":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"5\r\ntick\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.01)
        elif path == b"/silent":
            await asyncio.sleep(5)
        elif path == b"/broken":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ntoo short")
            await writer.drain()
            return False
        elif path == b"/404":
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        return True


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    assert up.server is not None
    up.server.close()


def pool_for(up: Upstream, timeout: float = 5) -> Pool:
    return Pool(up.origin, max_connections=4, connect_timeout=2, timeout=timeout)


async def test_requests_share_one_kept_alive_connection(upstream: Upstream) -> None:
    pool = pool_for(upstream)
    for _ in range(3):
        reply = await pool.request("POST", "/json", JSON, b'{"q":1}')
        assert (reply.status, reply.reason, reply.body) == (200, "OK", b'{"ok":true}')
    assert upstream.connections == 1 and upstream.bodies == [b'{"q":1}'] * 3
    head = upstream.heads[0].decode()
    assert head.startswith("POST /json HTTP/1.1\r\n") and "\r\nHost: 127.0.0.1:" in head
    assert "Content-Length: 7" in head and "Content-Type: application/json" in head
    await pool.close()


async def test_a_chunked_reply_streams_piece_by_piece(upstream: Upstream) -> None:
    pool = pool_for(upstream)
    async with pool.stream("POST", "/chunks", JSON, b"{}") as reply:
        pieces = [piece async for piece in reply.chunks()]
    assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
    assert (await pool.request("POST", "/json", JSON, b"{}")).status == 200
    assert upstream.connections == 1  # read to its end, the connection went back to the pool
    await pool.close()


async def test_a_body_without_length_ends_with_the_connection(upstream: Upstream) -> None:
    pool = pool_for(upstream)
    assert (await pool.request("POST", "/close", JSON, b"{}")).body == b"all of it"
    assert (await pool.request("POST", "/json", JSON, b"{}")).status == 200
    assert upstream.connections == 2  # never reused: the upstream closed it
    await pool.close()


async def test_leaving_a_stream_early_closes_its_connection(upstream: Upstream) -> None:
    pool = pool_for(upstream)
    async with pool.stream("POST", "/endless", JSON, b"{}") as reply:
        async for _ in reply.chunks():
            break
    for _ in range(100):  # the upstream sees the connection go: that is how it stops the work
        if upstream.closed:
            break
        await asyncio.sleep(0.01)
    assert upstream.closed == 1
    assert (await pool.request("POST", "/json", JSON, b"{}")).status == 200
    assert upstream.connections == 2
    await pool.close()


async def test_an_idle_connection_the_upstream_closed_is_not_reused(upstream: Upstream) -> None:
    pool = pool_for(upstream)
    await pool.request("POST", "/json", JSON, b"{}")
    assert upstream.server is not None
    upstream.server.close()
    for writer in upstream.writers:  # every connection the upstream holds, idle ones too
        writer.close()
    await asyncio.sleep(0.05)
    await upstream.start()  # on the same port
    assert (await pool.request("POST", "/json", JSON, b"{}")).status == 200
    assert upstream.connections == 2
    await pool.close()


async def test_failures_are_typed(upstream: Upstream) -> None:
    pool = pool_for(upstream, timeout=0.2)
    with pytest.raises(Timeout):
        await pool.request("POST", "/silent", JSON, b"{}")
    with pytest.raises(BrokenReply):
        await pool.request("POST", "/broken", JSON, b"{}")
    assert (await pool.request("POST", "/404", JSON, b"{}")).status == 404  # a status, no error
    with pytest.raises(ValueError, match="line break"):
        await pool.request("POST", "/json", [("X-Key", "a\r\nX-Evil: 1")], b"{}")
    await pool.close()
    assert upstream.server is not None
    upstream.server.close()
    await upstream.server.wait_closed()
    with pytest.raises(ConnectFailed):
        await Pool(upstream.origin, max_connections=1, connect_timeout=1, timeout=1).request(
            "POST", "/json", JSON, b"{}"
        )
