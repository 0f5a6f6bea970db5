"""Regression tests for two lifecycle races of the engine, on the fake backend with real worker
processes: an unloaded model must own no process, whatever happened around the unload."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from mmserve.config import ModelSpec, Settings
from mmserve.engine.manager import ModelManager
from mmserve.engine.model import BASE_BACKOFF, Model, ModelState

# Children of the test process from before this module ran (other tests' servers).
BEFORE: set[int] = set()


def live_children() -> set[int]:
    """This process's child processes that still run (a zombie has given its memory back),
    but for those other tests started before (see `BEFORE`)."""
    me = psutil.Process()
    running = {c.pid for c in me.children() if c.status() != psutil.STATUS_ZOMBIE}
    return running - BEFORE


@pytest.fixture(autouse=True)
def _others_children() -> None:
    BEFORE.clear()
    BEFORE.update(c.pid for c in psutil.Process().children())


def fake_model(replicas: int = 1, **fields: object) -> tuple[ModelManager, Model]:
    spec = ModelSpec(name="m", kind="llm", backend="fake", replicas=replicas, **fields)
    manager = ModelManager(Settings(models=[spec]))
    return manager, manager.get("m")


async def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_replicas_killed_at_once_do_not_come_back_after_an_unload() -> None:
    # Slow starts widen the window the old code lost a restart in (found 4 out of 4 runs).
    manager, model = fake_model(replicas=2, options={"load_delay": 0.8})
    await model.ensure_ready()
    for replica in model.replicas:
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGKILL)
    await wait_for(lambda: not model.replicas)  # both exits handled: restarts are due
    assert model.state is ModelState.LOADING

    await model.unload()
    assert model.state is ModelState.UNLOADED and model.replicas == []
    # Both restarts were due after 0.5 and 1 s: long past them, still nothing runs.
    await asyncio.sleep(BASE_BACKOFF * 4 + 1.0)
    await model.settle()
    assert model.state is ModelState.UNLOADED and model.replicas == []
    assert live_children() == set()
    await manager.stop()


async def test_an_add_replica_racing_an_unload_leaves_no_process() -> None:
    manager, model = fake_model(options={"load_delay": 0.3})
    await model.ensure_ready()
    add = asyncio.create_task(model.add_replica("cpu"))
    await asyncio.sleep(0.05)  # the add is starting its replica
    await model.unload()
    await add
    assert model.state is ModelState.UNLOADED and model.replicas == []
    assert live_children() == set()
    await manager.stop()


async def test_an_add_after_an_unload_loads_the_model_for_real() -> None:
    manager, model = fake_model()
    await model.ensure_ready()
    await model.unload()
    await model.add_replica("cpu")
    assert model.state is ModelState.READY and len(model.replicas) == 1
    assert live_children() == {model.replicas[0].pid}
    await manager.stop()
    assert live_children() == set()


async def test_a_restart_scheduled_before_an_unload_is_a_no_op_after_a_reload() -> None:
    """The generation: a restart due from before an unload must not add to the next load."""
    manager, model = fake_model()
    await model.ensure_ready()
    pid = model.replicas[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: not model.replicas)
    await model.unload()
    await model.ensure_ready()  # a new generation, one replica
    await asyncio.sleep(BASE_BACKOFF + 0.5)  # the old restart came due meanwhile
    await model.settle()
    assert len(model.replicas) == 1 and model.restarts == 0
    assert live_children() == {model.replicas[0].pid}
    await manager.stop()
