"""Cancel a non-streamed request's work when its client goes away.

Starlette cancels a streamed response when the client disconnects; a plain handler runs on to
the end. `cancel_on_disconnect` races the handler's work against the client's disconnect, so a
client that gives up frees its place in the queue or its slot in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from mmserve.errors import RequestCancelled

__all__ = ["cancel_on_disconnect"]

T = TypeVar("T")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, unless the client disconnects first: then `work` is cancelled
    (its cleanup cancels the request in the worker) and RequestCancelled is raised, whose
    response nobody will read."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise RequestCancelled("the client disconnected")
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body was read already (the handler got it parsed), so what remains is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
