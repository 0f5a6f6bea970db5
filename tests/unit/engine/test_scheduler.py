"""Admission with stand-in slots: who runs, who waits, in what order, and when they give up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from mmserve.engine.scheduler import Admission
from mmserve.errors import ModelUnavailable, TooManyRequests


@dataclass(eq=False)
class FakeSlot:
    name: str
    in_flight: int = 0
    alive: bool = True

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1


def admission(max_queue: int = 4, timeout: float = 5, concurrency: int = 1) -> Admission:
    return Admission("m", concurrency=concurrency, max_queue=max_queue, queue_timeout=timeout)


async def test_the_least_busy_replica_is_chosen() -> None:
    gate = admission(concurrency=2)
    a, b = FakeSlot("a"), FakeSlot("b")
    got = [await gate.acquire(lambda: [a, b]) for _ in range(4)]
    assert [s.name for s in got] == ["a", "b", "a", "b"]
    assert (a.in_flight, b.in_flight) == (2, 2)


async def test_waiters_are_served_in_order_and_newcomers_queue_behind_them() -> None:
    gate = admission()
    slot = FakeSlot("a")
    replicas = lambda: [slot]  # noqa: E731
    await gate.acquire(replicas)
    order: list[int] = []

    async def wait(n: int) -> None:
        await gate.acquire(replicas)
        order.append(n)

    tasks = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting == 3
    for _ in range(3):
        gate.release(slot, [slot])
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and slot.in_flight == 1


async def test_a_full_queue_refuses_with_retry_after() -> None:
    gate = admission(max_queue=1)
    slot = FakeSlot("a")
    await gate.acquire(lambda: [slot])
    waiter = asyncio.create_task(gate.acquire(lambda: [slot]))
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests) as info:
        await gate.acquire(lambda: [slot])
    assert int(info.value.headers["Retry-After"]) >= 1
    waiter.cancel()


async def test_waiting_too_long_is_unavailable() -> None:
    gate = admission(timeout=0.05)
    slot = FakeSlot("a")
    await gate.acquire(lambda: [slot])
    with pytest.raises(ModelUnavailable, match="queue_timeout"):
        await gate.acquire(lambda: [slot])
    assert gate.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_loses_no_slot() -> None:
    gate = admission()
    slot = FakeSlot("a")
    await gate.acquire(lambda: [slot])
    waiter = asyncio.create_task(gate.acquire(lambda: [slot]))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.release(slot, [slot])
    assert slot.in_flight == 0


async def test_dead_replicas_get_no_requests_and_waiters_can_be_failed() -> None:
    gate = admission()
    dead = FakeSlot("dead", alive=False)
    waiter = asyncio.create_task(gate.acquire(lambda: [dead]))
    await asyncio.sleep(0)
    gate.fail_waiters(ModelUnavailable("gone"))
    with pytest.raises(ModelUnavailable, match="gone"):
        await waiter


async def test_hand_over_gives_new_capacity_to_waiters() -> None:
    gate = admission()
    replicas: list[FakeSlot] = []
    waiter = asyncio.create_task(gate.acquire(lambda: replicas))
    await asyncio.sleep(0)
    replicas.append(FakeSlot("new"))
    gate.hand_over(replicas)
    assert (await waiter).name == "new"
