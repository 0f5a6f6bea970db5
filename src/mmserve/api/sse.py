"""Server-sent events: an async iterator of wire models -> `data:` frames, then `[DONE]`.

An error after the headers are sent cannot change the status any more: it becomes one frame
carrying OpenAI's error envelope, and the stream closes (OpenAI's clients raise on it).
A client that disconnects makes Starlette cancel this iterator; the cancellation runs the
`finally` blocks down the chain, which cancel the request in the worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel
from starlette.responses import StreamingResponse

from mmserve.errors import BackendError, MMServeError

__all__ = ["event_stream", "relayed_stream", "sse_frames"]

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def _frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def sse_frames(items: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    frames = (_frame(item.model_dump_json().encode()) async for item in items)
    async for frame in _guarded(frames, DONE):
        yield frame


async def _guarded(frames: AsyncIterator[bytes], end: bytes) -> AsyncIterator[bytes]:
    """`frames`, then `end`; or, on an error, the error's frame instead of what is left."""
    try:
        async for frame in frames:
            yield frame
    except MMServeError as exc:
        yield _frame(_envelope(exc))
        return
    except Exception:
        log.exception("stream failed after its headers were sent")
        yield _frame(_envelope(BackendError("the stream failed; see the server log")))
        return
    if end:
        yield end


def _envelope(exc: MMServeError) -> bytes:
    return json.dumps(exc.envelope()).encode()


def event_stream(items: AsyncIterator[BaseModel]) -> StreamingResponse:
    return _response(sse_frames(items))


def relayed_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    """An upstream's event stream as it arrives (its own frames and `[DONE]`); an error on the
    way ends it with an error frame, as a local stream's would."""
    return _response(_guarded(chunks, b""))


def _response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
