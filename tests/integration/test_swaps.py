"""Swaps with room for one model, on the fake backend with real worker processes: the
swap-aware order (max_swap_delay), loads that stop when nobody waits, and loading models that
are never evicted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from tests.processes import gone, wait_for

from mmserve.config import ModelSpec, Settings
from mmserve.engine.manager import ModelManager
from mmserve.engine.model import ModelState
from mmserve.engine.telemetry import NullTelemetry
from mmserve.types import ChatMessage, ChatRequest, Sampling

TOKEN_DELAY = 0.05  # seconds per generated token of the fake backend


Factory = Callable[..., ModelManager]


class SwapsAvoided(NullTelemetry):
    """What the metrics would count as swaps avoided, per model."""

    def __init__(self) -> None:
        self.served: Counter[str] = Counter()

    def served_ahead_of_swap(self, model: str) -> None:
        self.served[model] += 1


@pytest.fixture
async def two_models() -> AsyncIterator[Factory]:
    """Models a and b with room for one; `a_options` go to a only. Stopped at the end, even
    after a failure (a manager left running would hang the loop's teardown)."""
    made: list[ModelManager] = []

    def make(max_swap_delay: float, **a_options: object) -> ModelManager:
        specs = [
            ModelSpec(
                name=name,
                kind="llm",
                backend="fake",
                keep_alive=-1,
                queue_timeout=60,
                options={"delay": TOKEN_DELAY, **(a_options if name == "a" else {})},
            )
            for name in ("a", "b")
        ]
        settings = Settings(
            models=specs, max_loaded_models=1, max_swap_delay=max_swap_delay, room_timeout=60
        )
        made.append(ModelManager(settings, telemetry=SwapsAvoided()))
        return made[-1]

    yield make
    for manager in made:
        await manager.stop()


async def chat(manager: ModelManager, name: str, tokens: int = 4) -> float:
    """One request; the time it finished (monotonic)."""
    request = ChatRequest(
        messages=[ChatMessage(role="user", content="w " * tokens)],
        sampling=Sampling(max_tokens=tokens),
    )
    events = manager.generate(name, "chat", request)
    async with contextlib.aclosing(events):
        async for _ in events:
            pass
    return time.monotonic()


async def steady_requests(
    manager: ModelManager, name: str, until: float, log: list[tuple[float, float]]
) -> None:
    """A closed-loop client: (arrival, finish) of each request, until `until`."""
    while time.monotonic() < until:
        arrived = time.monotonic()
        log.append((arrived, await chat(manager, name)))


@pytest.mark.parametrize("delay", [1.0, 0.0])
async def test_the_loaded_model_serves_its_own_requests_first_up_to_the_bound(
    two_models: Factory, delay: float
) -> None:
    manager = two_models(max_swap_delay=delay)
    await manager.load("a")
    a_log: list[tuple[float, float]] = []
    clients = [
        asyncio.create_task(steady_requests(manager, "a", time.monotonic() + 3.0, a_log))
        for _ in range(2)
    ]
    await asyncio.sleep(0.3)
    swap_at = time.monotonic()
    b_done = await chat(manager, "b")
    await asyncio.gather(*clients)

    bound = swap_at + delay
    before = [done for arrived, done in a_log if swap_at < arrived < bound - 0.1]
    after = [done for arrived, done in a_log if arrived > bound + 0.1 and arrived < b_done - 0.1]
    # What came before the bound was served before the swap; what came after waited behind it.
    assert all(done < b_done for done in before)
    assert all(done > b_done for done in after)
    assert after, "no request of a arrived after the bound: the test proves nothing"
    if delay:
        assert before, "no request of a came within the bound: the test proves nothing"
        assert isinstance(manager.telemetry, SwapsAvoided)
        assert manager.telemetry.served["a"] >= len(before)
    # The swap never waited much past the bound: a's requests take 0.2 s, a load well under 2.
    assert b_done - bound < 3.0


async def test_a_cold_load_whose_only_waiter_left_is_stopped(two_models: Factory) -> None:
    manager = two_models(max_swap_delay=2.0, load_delay=5.0)
    model = manager.get("a")
    request = asyncio.create_task(chat(manager, "a"))
    await wait_for(lambda: model.starting and model.starting[0].pid is not None)
    pid = model.starting[0].pid
    assert pid is not None
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await model.settle()
    assert model.state is ModelState.UNLOADED
    assert model.replicas == [] and model.starting == []
    await wait_for(lambda: gone(pid))
    assert any("load stopped" in line for line in model.log.tail(10))
    # The room is free again: the other model loads, and it is the only one counted.
    await chat(manager, "b")
    assert manager.status().loaded_models == 1


async def test_a_load_someone_else_asked_for_runs_to_its_end(two_models: Factory) -> None:
    manager = two_models(max_swap_delay=2.0, load_delay=1.0)
    model = manager.get("a")
    request = asyncio.create_task(chat(manager, "a"))
    await wait_for(lambda: model.state is ModelState.LOADING)
    explicit = asyncio.create_task(manager.load("a"))
    await asyncio.sleep(0.2)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    status = await explicit
    assert status.state == "ready" and len(status.replicas) == 1

    # An explicit load whose own caller left (a /loadmodel client gone) runs on as well.
    await manager.unload("a")
    explicit = asyncio.create_task(manager.load("a"))
    await wait_for(lambda: model.state is ModelState.LOADING)
    explicit.cancel()
    await wait_for(lambda: model.state is ModelState.READY)


async def test_a_new_request_during_a_stopped_load_loads_the_model_again(
    two_models: Factory,
) -> None:
    manager = two_models(max_swap_delay=2.0, load_delay=1.0)
    model = manager.get("a")
    first = asyncio.create_task(chat(manager, "a"))
    await wait_for(lambda: model.starting and model.starting[0].pid is not None)
    first.cancel()
    second = asyncio.create_task(chat(manager, "a"))  # arrives as the load is being stopped
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 20)
    assert model.state is ModelState.READY


async def test_a_loading_model_is_never_evicted(two_models: Factory) -> None:
    manager = two_models(max_swap_delay=0.0, load_delay=1.5)
    a, b = manager.get("a"), manager.get("b")
    a_request = asyncio.create_task(chat(manager, "a"))
    await wait_for(lambda: a.state is ModelState.LOADING)
    b_request = asyncio.create_task(chat(manager, "b"))
    await asyncio.sleep(1.0)
    assert a.state is ModelState.LOADING and b.state is ModelState.LOADING  # b waits for room
    assert not b.starting  # nothing of b's started while a loads
    a_done = await a_request  # a loaded and answered its request
    b_done = await b_request
    assert a_done < b_done
    assert a.state is ModelState.UNLOADED and b.state is ModelState.READY
    events = a.log.tail(20)
    ready = next(i for i, line in enumerate(events) if "ready" in line)
    evicted = next(i for i, line in enumerate(events) if "evicted" in line)
    assert ready < evicted
