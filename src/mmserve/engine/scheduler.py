"""Admission: which replica runs a request now, and who waits.

Each replica runs at most `max_concurrency` requests at once (llama.cpp: one). A request that
finds every slot taken waits in its model's queue, first come first served, bounded by
`max_queue` (beyond it: 429 with Retry-After) and by `queue_timeout` (then 503). A slot that
frees up is handed straight to the first waiter, so newcomers never overtake the queue. A waiter
whose client leaves is removed from the queue (its task is cancelled).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from mmserve.errors import ModelUnavailable, TooManyRequests

__all__ = ["Admission", "Slot"]


class Slot(Protocol):
    """What admission needs of a replica."""

    in_flight: int

    @property
    def alive(self) -> bool: ...

    def acquire(self) -> None: ...

    def release(self) -> None: ...


S = TypeVar("S", bound=Slot)


class Admission:
    """The slots and the wait queue of one model. Used from the event loop's thread only."""

    def __init__(
        self, name: str, *, concurrency: int, max_queue: int, queue_timeout: float
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.average_seconds = 1.0  # moving average of a request's run time, for Retry-After
        self._waiters: deque[asyncio.Future[Any]] = deque()  # each gets the Slot handed to it

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, replicas: Callable[[], Sequence[S]]) -> S:
        """A slot on the least busy replica: at once, or after waiting in the queue.

        Raises TooManyRequests when the queue is full, ModelUnavailable after queue_timeout.
        """
        if not self._waiters and (slot := self._free(replicas())) is not None:
            slot.acquire()
            return slot
        if len(self._waiters) >= self.max_queue:
            raise TooManyRequests(
                f"model {self.name!r} is busy: {self.waiting} requests are already waiting",
                headers={"Retry-After": str(self.retry_after())},
            )
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return cast(S, await asyncio.wait_for(waiter, self.queue_timeout))
        except TimeoutError:
            raise ModelUnavailable(
                f"request waited {self.queue_timeout:g} s in the queue of model {self.name!r} "
                "(queue_timeout) without getting a turn"
            ) from None
        except asyncio.CancelledError:
            # Cancelled just after a slot was handed over: pass the slot on, do not leak it.
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result(), replicas())
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, slot: Slot, replicas: Sequence[Slot]) -> None:
        """A request on `slot` ended: hand the slot to the first waiter, if any."""
        slot.release()
        self.hand_over(replicas)

    def hand_over(self, replicas: Sequence[Slot]) -> None:
        """Give free slots to waiters, in order (also after a replica was added or restarted)."""
        while self._waiters and (slot := self._free(replicas)) is not None:
            waiter = self._waiters.popleft()
            if not waiter.done():
                slot.acquire()
                waiter.set_result(slot)

    def fail_waiters(self, error: Exception) -> None:
        """Every waiter gets `error` (the model went away while they waited)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def record(self, seconds: float) -> None:
        self.average_seconds = 0.8 * self.average_seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on: its length times a request's run time."""
        return max(
            1, min(60, math.ceil(self.average_seconds * (self.waiting + 1) / self.concurrency))
        )

    def _free(self, replicas: Sequence[S]) -> S | None:
        open_slots = [r for r in replicas if r.alive and r.in_flight < self.concurrency]
        return min(open_slots, key=lambda r: r.in_flight) if open_slots else None
