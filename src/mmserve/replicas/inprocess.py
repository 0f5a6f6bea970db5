"""InProcessReplica: a vision model running inside the server process (kind: vision).

Vision models are small and fast per call (an image in 20-500 ms), so a child process would
cost more in pickling images than it saves; they load into this process instead, and several
share it. Their blocking `run` calls go to one thread pool shared by every vision replica, so
the event loop never waits on them; each replica runs one batch at a time (its Batcher groups
concurrent requests), since parallel calls into one model only compete for the same cores.

Memory: a replica's size is the growth of this process's resident memory while it loaded (an
estimate: the allocator may keep freed memory, so an unload does not always give it all back to
the system, unlike a child process's exit).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from mmserve.config import ModelSpec
from mmserve.errors import ModelUnavailable
from mmserve.replicas.base import Replica, ReplicaHooks
from mmserve.replicas.batcher import Batcher
from mmserve.types import VisionItem, WorkerInfo
from mmserve.vision import VisionModel, load_vision_model

__all__ = ["InProcessReplica"]

# One pool for every vision replica: at most one batch per replica runs at a time, so this
# bounds how many run at once across models.
_POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="vision")


class InProcessReplica(Replica):
    def __init__(self, spec: ModelSpec, device: str, hooks: ReplicaHooks) -> None:
        super().__init__(device)
        self.spec = spec
        self._log = hooks.log
        self._model: VisionModel | None = None
        self._bytes: int | None = None
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=spec.max_batch_size,
            max_wait=spec.batch_wait,
            on_batch=hooks.on_batch,
        )

    @property
    def task(self) -> str:
        return self._model.task if self._model is not None else "unknown"

    @property
    def info(self) -> WorkerInfo:
        return WorkerInfo(capabilities=["chat", "vision"])

    @property
    def pid(self) -> int | None:
        return os.getpid()

    @property
    def alive(self) -> bool:
        return self._model is not None

    async def _start(self, timeout: float) -> None:
        options = dict(self.spec.options)
        if self.spec.threads is not None:
            options.setdefault("threads", self.spec.threads)
        before = _rss()
        load = asyncio.to_thread(load_vision_model, self.spec.backend or "", options)
        try:
            self._model = await asyncio.wait_for(load, timeout)
        except TimeoutError:
            raise ModelUnavailable(
                f"model {self.spec.name!r} did not load within {timeout:g} s"
            ) from None
        self._bytes = max(0, _rss() - before)
        self._log.event(f"loaded in the server process ({self._model.task})")

    async def stop(self) -> None:
        await self.batcher.close(f"model {self.spec.name!r} was unloaded while the request waited")
        self._model = None  # the last reference: its memory goes back to the allocator

    def resident_bytes(self) -> int | None:
        return self._bytes if self._model is not None else None

    def _details(self) -> dict[str, Any]:
        return {"task": self.task, "batches": self.batcher.stats.to_json()}

    async def see(self, item: VisionItem) -> list[dict[str, Any]]:
        """One result per image of `item`, in order (batched with concurrent requests)."""
        return await self.batcher.submit(item)

    async def _run_batch(self, items: list[VisionItem]) -> list[list[dict[str, Any]]]:
        model = self._model
        if model is None:
            raise ModelUnavailable(f"model {self.spec.name!r} is not loaded")
        images = [image for item in items for image in item.images]
        top_k = max(item.top_k for item in items)
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(_POOL, model.run, images, top_k)
        answers, start = [], 0
        for item in items:
            mine = results[start : start + len(item.images)]
            answers.append([_trim(result, item.top_k) for result in mine])
            start += len(item.images)
        return answers


def _trim(result: dict[str, Any], top_k: int) -> dict[str, Any]:
    """A classifier's labels cut to what this request asked (its batch asked for the most)."""
    if "labels" in result:
        return {**result, "labels": result["labels"][:top_k]}
    return result


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)
