"""Dynamic batching: concurrent requests to one replica, run as one call of the engine.

A request that finds the replica idle, nothing else queued and the last batch run alone, runs
at once: waiting for company that does not come is what a lone client paid on every call
(batch_wait, 5 ms, was a third of a one-sentence embedding's time through the server). One batch
runs at a time per replica, and whatever arrives meanwhile forms the next one. Otherwise, when
requests come together (several are queued, or the last batch held several), a batch waits at
most `max_wait` seconds after its first request arrived for more, up to `max_batch_size`: under
load, running each request as it comes would make batches of one or two while the others are
still on their way through HTTP (measured: 125 sentences/s with 32 clients, against 165 with
the wait). Each request is one item (one image, one list of sentences); `run` maps a list
of items to a list of results in the same order.

With `ahead` (a worker process, which runs what it is sent one request at a time, in order), a
next batch that fills up (`max_batch_size`) while one runs is handed to `run` at once: the
worker then goes from one batch to the next without waiting for the reply's round trip through
the server (measured: busy 98.6% of the time under 32 clients, against 96.6%). A next batch
that is not full still waits its turn, so batches keep their size (handing every next batch
over at once made them smaller under load: 154.5 against 162.3 sentences/s with 32 clients).

A batch that fails with a request error (a bad input, a backend error) is retried item by item,
so that one bad request fails alone and never takes its neighbours with it. A failure of the
model itself (ModelUnavailable: it crashed or is stopping) fails the whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mmserve.errors import ModelUnavailable

__all__ = ["BatchStats", "Batcher"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """How requests were grouped: `calls` batches ran, holding `items` requests in all."""

    calls: int = 0
    items: int = 0
    largest: int = 0
    sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))

    def record(self, size: int) -> None:
        self.calls += 1
        self.items += size
        self.largest = max(self.largest, size)
        self.sizes.append(size)

    def to_json(self) -> dict[str, int]:
        return {"calls": self.calls, "items": self.items, "largest": self.largest}


class Batcher(Generic[T, R]):
    """Groups `submit`ted items into calls of `run`; lives on the event loop's thread."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        *,
        max_batch_size: int,
        max_wait: float,
        on_batch: Callable[[int], None] | None = None,
        ahead: bool = False,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.ahead = ahead
        self._on_batch = on_batch
        self._running = False  # a batch is in `run`'s hands (the serve loop awaits it)
        self._next: asyncio.Task[None] | None = None  # a full batch handed over ahead of its turn
        self._pending: deque[tuple[T, asyncio.Future[R], float]] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = BatchStats()

    async def submit(self, item: T) -> R:
        """The result for `item`, once its batch has run. A caller that gives up (cancelled)
        leaves the queue; if its batch already runs, its result is dropped."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, time.monotonic()))
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._serve())
        elif self._may_send_ahead():
            self._next = asyncio.create_task(self._run_batch(self._take()))
        try:
            return await future
        finally:
            future.cancel()  # a no-op once done; marks a queued item as abandoned

    async def close(self, reason: str) -> None:
        """Stop batching; requests still queued fail with ModelUnavailable(`reason`)."""
        for task in (self._task, self._next):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while self._pending:
            _, future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(ModelUnavailable(reason))

    async def _serve(self) -> None:
        while self._pending or self._next is not None:
            if self._next is not None:
                handed, self._next = self._next, None
                await self._in_run(handed)
                continue
            batch = await self._next_batch()
            if batch:
                await self._in_run(self._run_batch(batch))

    async def _in_run(self, batch: Awaitable[None]) -> None:
        self._running = True
        try:
            await batch
        finally:
            self._running = False

    def _may_send_ahead(self) -> bool:
        return (
            self.ahead
            and self._running
            and self._next is None
            and len(self._pending) >= self.max_batch_size
        )

    async def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        deadline = self._pending[0][2] + self.max_wait
        # A lone request does not wait, unless requests came together a moment ago (see the
        # module docstring).
        lone = self.stats.sizes[-1] <= 1 if self.stats.sizes else True
        while len(self._pending) < self.max_batch_size and (len(self._pending) > 1 or not lone):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return self._take()

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        """Up to max_batch_size queued items, from the oldest; those whose caller left are
        dropped."""
        batch: list[tuple[T, asyncio.Future[R]]] = []
        while self._pending and len(batch) < self.max_batch_size:
            item, future, _ = self._pending.popleft()
            if not future.done():  # its caller left while it waited
                batch.append((item, future))
        return batch

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.stats.record(len(batch))
        if self._on_batch is not None:
            self._on_batch(len(batch))
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:  # closed while it ran: its callers must not hang
            _settle(batch, ModelUnavailable("the model stopped while the request ran"))
            raise
        except ModelUnavailable as exc:
            _settle(batch, exc)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch, exc)
                return
            for one in batch:  # find the bad one: each item alone
                await self._run_batch([one])
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def _settle(batch: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
