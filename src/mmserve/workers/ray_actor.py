"""ReplicaActor: one replica's backend, run inside a Ray actor on a cluster node.

The same backend classes a worker process runs (`mmserve.backends`), loaded in the actor's
constructor, so the node needs mmserve and the backend's packages (the same image as the front).
The bridge (`workers.ray_bridge`) creates it and is its only caller.

It is an *async* actor: its event loop answers `stats` and keeps the `lifeline` open while one
executor thread runs the backend, which (as in a worker) serves one request at a time, because
an engine such as llama.cpp runs one sequence at a time. Text streams out of `generate`, an async
generator that Ray turns into a streaming generator (`num_returns="streaming"`): each event is
one object the bridge reads as soon as it is produced.

Cancellation: `ray.cancel` on the bridge's generator ref cancels the actor's task that runs
`generate`; leaving it sets the flag the backend polls between tokens (and that the executor
thread checks between events), so the generation really stops on this node, and counts it in
`stats` (`cancelled`: generations stopped before the backend's end), which the tests read.

Errors never cross Ray as exceptions (a pickled MMServeError loses its kind): `generate` yields,
and the other methods return, a `{"type": "error", "kind", "message"}` dict, the kinds of
`mmserve.errors` as the worker protocol carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import traceback
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import ray
from pydantic import ValidationError

from mmserve.backends import Backend, BackendSpec, create_backend
from mmserve.errors import MMServeError, UnsupportedCapability
from mmserve.types import (
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    TextDelta,
    TextDone,
    TextEvent,
)

__all__ = ["ReplicaActor", "error_event"]

_END = object()  # the executor thread's last word on a stream


def error_event(exc: BaseException) -> dict[str, Any]:
    """An exception as the worker protocol reports it: an mmserve kind and a message."""
    if isinstance(exc, MMServeError):
        return {"type": "error", "kind": exc.kind, "message": exc.message}
    if isinstance(exc, ValidationError):
        return {"type": "error", "kind": "invalid_request", "message": str(exc)}
    traceback.print_exception(exc, file=sys.stderr)  # a foreign engine error: logged whole
    return {"type": "error", "kind": "backend", "message": f"{type(exc).__name__}: {exc}"}


class ReplicaActor:
    """One loaded backend on this node. Every method runs on the actor's event loop."""

    def __init__(self, spec_json: str) -> None:
        self.spec = BackendSpec.model_validate_json(spec_json)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")
        self.backend: Backend | None = None
        self.load_error: dict[str, Any] | None = None
        self.active = 0  # generations running
        self.served = 0
        self.cancelled = 0  # generations stopped by a cancel
        self.deltas = 0  # text pieces generated, cancelled ones included
        self.streams: dict[str, tuple[asyncio.Future[None], asyncio.Queue[dict[str, Any]]]] = {}
        # Loading blocks the actor's creation task, which is what Ray waits on; a failure is
        # kept and reported by `ready` (a raised one would surface as a bare ActorDiedError).
        try:
            self.backend = create_backend(self.spec)
        except Exception as exc:
            self.load_error = error_event(exc)

    async def ready(self) -> dict[str, Any]:
        """What the bridge says in `ready`: the model's info, or why it did not load, and
        where the actor runs."""
        context = ray.get_runtime_context()
        where = {
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "actor_id": context.get_actor_id(),
            "pid": os.getpid(),
        }
        if self.backend is None:
            return {"error": self.load_error, **where}
        return {"info": self.backend.info().model_dump(), **where, **await self.stats()}

    async def stats(self) -> dict[str, Any]:
        """Its memory and counters, answered while the backend is busy (the bridge's pong)."""
        return {
            "resident_bytes": psutil.Process().memory_info().rss,
            "active": self.active,
            "served": self.served,
            "cancelled": self.cancelled,
            "deltas": self.deltas,
        }

    async def lifeline(self) -> None:
        """Never returns: the bridge holds this call open, and its failure is how the bridge
        learns at once that the actor died (its process killed, its node gone)."""
        await asyncio.Event().wait()

    async def generate(self, op: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream one `chat` or `complete`: TextDelta dicts, then a TextDone or an error."""
        backend = self.backend
        if backend is None:
            yield self.load_error or error_event(RuntimeError("the backend is not loaded"))
            return

        def events(cancelled: Callable[[], bool]) -> Iterator[TextEvent]:
            if op == "chat":
                return backend.chat(ChatRequest.model_validate(body), cancelled)
            if op == "complete":
                return backend.complete(CompletionRequest.model_validate(body), cancelled)
            raise UnsupportedCapability(f"this model does not serve op {op!r}")

        self.active += 1
        stream = self._run(events)
        try:
            while True:
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    return
                except Exception as exc:  # the backend's, re-raised by _run
                    yield error_event(exc)
                    return
                if isinstance(event, TextDelta):
                    self.deltas += 1
                # A cancel from Ray (at this yield, or at the await above) is not caught here:
                # it ends this generator, and closing the stream below stops the backend.
                yield event.model_dump()
        finally:
            await stream.aclose()
            self.active -= 1
            self.served += 1

    # ---- the same stream, polled: Ray Client has no streaming generators --------------------

    async def open_stream(self, op: str, body: dict[str, Any]) -> str:
        """Start `generate` into a buffer; the bridge `take`s from it. Returns its id."""
        stream = uuid.uuid4().hex
        buffer: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def pump() -> None:
            async for event in self.generate(op, body):
                buffer.put_nowait(event)

        self.streams[stream] = (asyncio.ensure_future(pump()), buffer)
        return stream

    async def take(self, stream: str, wait: float) -> list[dict[str, Any]]:
        """The events produced since the last take (waiting up to `wait` s for the first);
        the stream is forgotten once its last event is taken."""
        _, buffer = self.streams[stream]
        events: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            events.append(await asyncio.wait_for(buffer.get(), wait))
        while not buffer.empty():
            events.append(buffer.get_nowait())
        if events and events[-1].get("type") in ("done", "error"):
            del self.streams[stream]
        return events

    async def close_stream(self, stream: str) -> None:
        """The bridge's client left: stop the generation (as a cancel does)."""
        if (found := self.streams.pop(stream, None)) is not None:
            found[0].cancel()

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """One `embed` (a batch the front merged): an EmbedResult dict, or an error."""
        return await self._call(lambda b: b.embed(EmbedRequest.model_validate(body)).model_dump())

    async def call(self, body: dict[str, Any]) -> dict[str, Any]:
        """The model's own operation: its JSON answer, or an error."""
        return await self._call(lambda b: {"type": "result", "data": b.call(body)})

    async def _call(self, run: Callable[[Backend], dict[str, Any]]) -> dict[str, Any]:
        if self.backend is None:
            return self.load_error or error_event(RuntimeError("the backend is not loaded"))
        backend = self.backend
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, run, backend)
        except Exception as exc:
            return error_event(exc)
        finally:
            self.served += 1

    async def _run(
        self, start: Callable[[Callable[[], bool]], Iterator[TextEvent]]
    ) -> AsyncGenerator[TextEvent, None]:
        """The backend's events, produced on the executor thread and handed to this loop one
        by one; leaving early (a cancel) sets the flag that thread and the backend poll."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                if stop.is_set():  # cancelled while it waited for the executor: never start
                    return
                events = start(stop.is_set)
                with contextlib.closing(events):  # type: ignore[type-var]
                    for event in events:
                        if stop.is_set():
                            break
                        loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        loop.run_in_executor(self.executor, produce)
        ended = False  # the backend said its last word (or raised)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                ended = isinstance(item, TextDone)  # its last word, even if none reads on
                yield item
            ended = True
        finally:
            # Left before the backend's end, however Ray cancelled the caller (an exception
            # at an await, or the generator closed at a yield): the generation is stopped.
            stop.set()
            self.cancelled += not ended
