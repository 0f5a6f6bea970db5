"""Remote images: refused unless the operator allows them; fetched from a real local HTTP
server within the byte cap and the deadline."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from mmserve.errors import InvalidRequest
from mmserve.vision import ImageLimits, load_image

ALLOWED = ImageLimits(allow_remote=True, fetch_timeout=2.0)


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 128, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


CAT = _png((12, 7))
BIG = bytes(5000)


class Handler(BaseHTTPRequestHandler):
    """Routes: /cat.png, /big (declared length), /stream (no length), /text, /moved, /slow, 404."""

    def do_GET(self) -> None:
        route = self.path
        if route == "/cat.png":
            self._send(200, CAT, length=True)
        elif route == "/big":
            self._send(200, BIG, length=True)
        elif route == "/text":
            self._send(200, b"<html>an error page served with status 200</html>", length=True)
        elif route == "/stream":  # no Content-Length: HTTP/1.0, the body ends at close
            self._send(200, BIG, length=False)
        elif route == "/moved":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/slow":
            time.sleep(1.0)
            self._send(200, CAT, length=True)
        else:
            self._send(404, b"not here", length=True)

    def _send(self, status: int, body: bytes, *, length: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # The client may give up first (too large, timed out): expected.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


async def refusal(ref: str, limits: ImageLimits) -> str:
    with pytest.raises(InvalidRequest) as caught:
        await load_image(ref, limits, param="image_url")
    assert caught.value.param == "image_url"
    return caught.value.message


async def test_remote_urls_are_refused_unless_allowed(server: str) -> None:
    message = await refusal(f"{server}/cat.png", ImageLimits())
    assert "allow_remote_images" in message


async def test_fetched_when_allowed(server: str) -> None:
    image = await load_image(f"{server}/cat.png", ALLOWED)
    assert image.mode == "RGB" and image.size == (12, 7)


async def test_redirects_are_followed(server: str) -> None:
    assert (await load_image(f"{server}/moved", ALLOWED)).size == (12, 7)


async def test_a_shared_client_is_used_when_given(server: str) -> None:
    async with httpx.AsyncClient() as client:
        image = await load_image(f"{server}/cat.png", ALLOWED, client=client)
    assert image.size == (12, 7)


@pytest.mark.parametrize("route", ["/big", "/stream"])
async def test_too_large_stops_at_max_bytes(server: str, route: str) -> None:
    limits = ImageLimits(allow_remote=True, max_bytes=1000)
    message = await refusal(f"{server}{route}", limits)
    assert "larger than the limit of 1000 bytes" in message


async def test_an_http_error_is_reported(server: str) -> None:
    assert "HTTP 404" in await refusal(f"{server}/missing", ALLOWED)


async def test_a_slow_server_times_out(server: str) -> None:
    limits = ImageLimits(allow_remote=True, fetch_timeout=0.2)
    assert "timed out after 0.2 s" in await refusal(f"{server}/slow", limits)


async def test_a_refused_connection_is_reported() -> None:
    # Port 9 (discard) on loopback: nothing listens there on a test machine.
    message = await refusal("http://127.0.0.1:9/cat.png", ALLOWED)
    assert "could not fetch the image URL" in message


async def test_a_fetched_non_image_is_refused(server: str) -> None:
    assert "not an image" in await refusal(f"{server}/text", ALLOWED)
