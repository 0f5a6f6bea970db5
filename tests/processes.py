"""Helpers the tests share for watching real processes: wait for a condition, tell whether a
pid is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psutil

__all__ = ["gone", "wait_for"]


async def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll `condition` every 20 ms until it holds; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """The process has exited (a zombie has given its memory back)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
