"""The dynamic batcher: grouping, waiting, isolation of a bad item, cancellation, closing."""

from __future__ import annotations

import asyncio

import pytest

from mmserve.errors import InvalidRequest, ModelUnavailable
from mmserve.replicas.batcher import Batcher


class Engine:
    """Doubles each number; a negative one is a bad input; records each call's batch."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.calls: list[list[int]] = []
        self.seconds = seconds
        self.fail_with: Exception | None = None
        self.running = 0
        self.most_at_once = 0  # batches in its hands at the same time, at most

    async def run(self, items: list[int]) -> list[int]:
        self.calls.append(items)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        if self.fail_with is not None:
            raise self.fail_with
        if any(i < 0 for i in items):
            raise InvalidRequest(f"bad item in {items}")
        return [2 * i for i in items]


async def test_concurrent_items_run_in_few_batches_in_order() -> None:
    engine = Engine()
    batcher = Batcher(engine.run, max_batch_size=8, max_wait=0.005)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(16)))
    assert results == [2 * i for i in range(16)]
    assert [len(c) for c in engine.calls] == [8, 8]
    assert batcher.stats.to_json() == {"calls": 2, "items": 16, "largest": 8}


async def test_a_lone_item_on_an_idle_replica_runs_at_once() -> None:
    engine = Engine(seconds=0)
    batcher = Batcher(engine.run, max_batch_size=8, max_wait=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await batcher.submit(3) == 6
    assert await batcher.submit(4) == 8
    assert loop.time() - started < 0.25  # neither waited max_wait for company
    assert engine.calls == [[3], [4]]


async def test_items_queued_together_wait_at_most_max_wait_for_company() -> None:
    engine = Engine(seconds=0)
    batcher = Batcher(engine.run, max_batch_size=8, max_wait=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in first)  # two queued: they wait for more
    late = asyncio.create_task(batcher.submit(3))
    assert await asyncio.gather(*first, late) == [2, 4, 6]
    assert 0.04 < loop.time() - started < 1.0
    assert engine.calls == [[1, 2, 3]]


async def test_arrivals_during_a_batch_form_the_next_one() -> None:
    engine = Engine(seconds=0.05)
    batcher = Batcher(engine.run, max_batch_size=4, max_wait=0)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)  # the first batch, of one, is running
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 6)]
    await asyncio.gather(first, *rest)
    assert engine.calls == [[1], [2, 3, 4, 5]]


async def test_a_bad_item_fails_alone() -> None:
    engine = Engine()
    batcher = Batcher(engine.run, max_batch_size=8, max_wait=0.005)
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True)
    assert results[0] == 2 and results[2] == 4
    assert isinstance(results[1], InvalidRequest)
    assert engine.calls == [[1, -1, 2], [1], [-1], [2]]


async def test_an_unavailable_model_fails_the_whole_batch() -> None:
    engine = Engine()
    engine.fail_with = ModelUnavailable("crashed")
    batcher = Batcher(engine.run, max_batch_size=8, max_wait=0.005)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ModelUnavailable) for r in results)
    assert len(engine.calls) == 1


async def test_a_caller_that_leaves_is_not_run() -> None:
    engine = Engine(seconds=0.05)
    batcher = Batcher(engine.run, max_batch_size=1, max_wait=0)
    first = asyncio.create_task(batcher.submit(1))
    leaving = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.01)
    leaving.cancel()
    assert await first == 2
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.sleep(0.06)
    assert engine.calls == [[1]]


async def test_close_fails_what_waits_and_what_runs() -> None:
    engine = Engine(seconds=10)
    batcher = Batcher(engine.run, max_batch_size=1, max_wait=0)
    running = asyncio.create_task(batcher.submit(1))
    queued = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.01)
    await batcher.close("model 'm' was unloaded")
    for task in (running, queued):
        with pytest.raises(ModelUnavailable):
            await task


async def test_after_a_batch_of_several_a_lone_item_waits_for_company() -> None:
    engine = Engine(seconds=0)
    batcher = Batcher(engine.run, max_batch_size=8, max_wait=0.05)
    await asyncio.gather(*(batcher.submit(i) for i in (1, 2)))  # requests come together
    loop = asyncio.get_running_loop()
    started = loop.time()
    lone = asyncio.create_task(batcher.submit(3))
    await asyncio.sleep(0.01)
    assert not lone.done()  # more are likely on their way: it waits, up to max_wait
    company = asyncio.create_task(batcher.submit(4))
    assert await asyncio.gather(lone, company) == [6, 8]
    assert loop.time() - started > 0.04
    assert engine.calls == [[1, 2], [3, 4]]


async def test_ahead_a_full_next_batch_is_handed_over_while_one_runs() -> None:
    engine = Engine(seconds=0.05)
    batcher = Batcher(engine.run, max_batch_size=2, max_wait=0, ahead=True)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)  # the first batch, of one, is running
    full = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0.01)
    assert engine.calls == [[1], [2, 3]] and engine.running == 2  # at once, not after [1]
    assert await asyncio.gather(first, *full) == [2, 4, 6]
    assert engine.most_at_once == 2


@pytest.mark.parametrize(
    ("max_batch_size", "ahead"), [(3, True), (2, False)], ids=["not full", "without ahead"]
)
async def test_a_next_batch_waits_its_turn(max_batch_size: int, ahead: bool) -> None:
    engine = Engine(seconds=0.05)
    batcher = Batcher(engine.run, max_batch_size=max_batch_size, max_wait=0, ahead=ahead)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    assert await asyncio.gather(first, *rest) == [2, 4, 6]
    assert engine.calls == [[1], [2, 3]] and engine.most_at_once == 1


async def test_close_fails_a_batch_handed_over_ahead() -> None:
    engine = Engine(seconds=10)
    batcher = Batcher(engine.run, max_batch_size=1, max_wait=0, ahead=True)
    running = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    ahead = asyncio.create_task(batcher.submit(2))
    behind = asyncio.create_task(batcher.submit(3))  # a third waits: one ahead at most
    await asyncio.sleep(0.01)
    assert engine.calls == [[1], [2]]
    await batcher.close("model 'm' was unloaded")
    for task in (running, ahead, behind):
        with pytest.raises(ModelUnavailable):
            await task
