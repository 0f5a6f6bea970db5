"""The model manager: owns every configured model and its replicas.

Each `Model` owns its own state; callers call `ensure_ready()` and never act on `state`.

    state       how it is entered                    what ensure_ready() does
    unloaded    start; after unload                  starts one load, waits for it
    loading     a load is running                    waits for that same load
    ready       every replica of the load started    returns at once
    failed      the last load failed                 503 with the reason; loads again after
                                                     RETRY_FAILED_AFTER seconds
    unloading   unload() is stopping the replicas    (not reachable by requests in this version)

A replica whose process exits on its own is dropped; when the last one is gone the model goes
back to `unloaded` with the crash as its last error, so the next request loads it afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from enum import StrEnum
from typing import Any

from mmserve.config import ModelSpec, Settings
from mmserve.engine.logs import ModelLog
from mmserve.engine.replicas import ProcessReplica
from mmserve.engine.types import (
    Capability,
)
from mmserve.errors import MMServeError, ModelNotFound, ModelUnavailable, UnsupportedCapability

__all__ = ["Model", "ModelManager", "ModelState"]

RETRY_FAILED_AFTER = 10.0
KNOWN_CAPABILITIES: tuple[Capability, ...] = ("chat", "complete", "embed")

_WHAT = {"chat": "chat (/v1/chat/completions)", "complete": "text completion (/v1/completions)",
         "embed": "embeddings (/v1/embeddings)"}  # fmt: skip


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


class Model:
    """One configured model: its spec, its replicas and its lifecycle (see the module doc)."""

    def __init__(self, spec: ModelSpec, load_timeout: float) -> None:
        self.spec = spec
        self.load_timeout = load_timeout
        self.state = ModelState.UNLOADED
        self.replicas: list[ProcessReplica] = []
        self.last_error: str | None = None
        self.last_used: float | None = None
        self.log = ModelLog(spec.name)
        self._failed_at = 0.0
        self._load_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def capabilities(self) -> list[Capability]:
        """What the loaded model announced, limited to what this server knows how to route."""
        announced = self.replicas[0].info.capabilities if self.replicas else []
        return [c for c in KNOWN_CAPABILITIES if c in announced]

    async def ensure_ready(self) -> None:
        """Return once the model can serve; load it if needed (one load, however many callers).

        Raises ModelUnavailable with the reason when the load fails.
        """
        if self.state is ModelState.READY:
            return
        if (
            self.state is ModelState.FAILED
            and time.monotonic() - self._failed_at < RETRY_FAILED_AFTER
        ):
            raise ModelUnavailable(f"model {self.spec.name!r} failed to load: {self.last_error}")
        if self._load_task is None or self._load_task.done():
            self._load_task = asyncio.create_task(self._load())
        # shield: a caller that gives up (client gone) must not cancel the load the others await.
        await asyncio.shield(self._load_task)
        if not self.ready:  # the load we waited for failed
            raise ModelUnavailable(f"model {self.spec.name!r} failed to load: {self.last_error}")

    def pick(self, capability: Capability) -> ProcessReplica:
        """The least busy live replica, once the model is ready and can do `capability`."""
        if capability not in self.capabilities:
            can = ", ".join(_WHAT[c] for c in self.capabilities) or "nothing"
            raise UnsupportedCapability(
                f"model {self.spec.name!r} does not support {_WHAT[capability]}; it serves: {can}"
            )
        live = [r for r in self.replicas if r.alive]
        if not live:
            raise ModelUnavailable(f"model {self.spec.name!r} has no running replica")
        self.last_used = time.time()
        return min(live, key=lambda r: r.in_flight)

    async def unload(self) -> None:
        """Stop every replica (each child exits). Idempotent."""
        if self._load_task is not None and not self._load_task.done():
            with contextlib.suppress(MMServeError):
                await asyncio.shield(self._load_task)
        self.state = ModelState.UNLOADING
        replicas, self.replicas = self.replicas, []
        await asyncio.gather(*(r.stop() for r in replicas))
        self.state = ModelState.UNLOADED
        self.log.event("unloaded")

    async def _load(self) -> None:
        self.state = ModelState.LOADING
        self.log.event(f"loading on {', '.join(self.spec.devices)}")
        replicas = [
            ProcessReplica(self.spec, d, self.log, self._on_replica_exit) for d in self.spec.devices
        ]
        results = await asyncio.gather(
            *(r.start(self.load_timeout) for r in replicas), return_exceptions=True
        )
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            await asyncio.gather(*(r.stop() for r in replicas))
            self._fail(str(errors[0]))
            return
        self.replicas = replicas
        self.state = ModelState.READY
        self.log.event(f"ready: pids {', '.join(str(r.pid) for r in replicas)}")

    def _fail(self, reason: str) -> None:
        self.state = ModelState.FAILED
        self.last_error = reason
        self._failed_at = time.monotonic()
        self.log.event(f"failed: {reason}")

    def _on_replica_exit(self, replica: ProcessReplica) -> None:
        if replica.worker.stopping or replica not in self.replicas:
            return
        self.replicas.remove(replica)
        self.last_error = f"replica pid {replica.pid} exited with code {replica.worker.returncode}"
        self.log.event(f"crashed: {self.last_error}")
        if not self.replicas and self.state is ModelState.READY:
            self.state = ModelState.UNLOADED  # the next request loads it afresh

    def status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "aliases": self.spec.aliases,
            "kind": self.spec.kind,
            "backend": self.spec.backend,
            "state": self.state.value,
            "capabilities": self.capabilities,
            "last_error": self.last_error,
            "last_used": self.last_used,
            "replicas": [_replica_status(r) for r in self.replicas],
        }


def _replica_status(replica: ProcessReplica) -> dict[str, Any]:
    return {
        "pid": replica.pid,
        "device": replica.device,
        "in_flight": replica.in_flight,
        "requests_served": replica.requests_served,
        "resident_bytes": replica.resident_bytes(),
        "loaded_at": replica.loaded_at,
        "load_seconds": replica.load_seconds,
    }


class ModelManager:
    """Every configured model by name and alias. One per server; used from the event loop only."""

    def __init__(self, settings: Settings) -> None:
        self.models = {spec.name: Model(spec, settings.load_timeout) for spec in settings.models}
        self._by_name = {name: m for m in self.models.values() for name in m.spec.names}
        self._startup: list[asyncio.Task[None]] = []

    def get(self, name: str) -> Model:
        """The model named `name` (or an alias of it); ModelNotFound listing the known ones."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(
                f"the model {name!r} does not exist; available models: {known}"
            ) from None

    def start(self) -> None:
        """Begin loading every configured model in the background; requests wait for theirs."""
        self._startup = [asyncio.create_task(self._preload(m)) for m in self.models.values()]

    async def stop(self) -> None:
        for task in self._startup:
            task.cancel()
        await asyncio.gather(*(m.unload() for m in self.models.values()))

    async def replica(self, name: str, capability: Capability) -> ProcessReplica:
        model = self.get(name)
        await model.ensure_ready()
        return model.pick(capability)

    def status(self) -> list[dict[str, Any]]:
        return [m.status() for m in self.models.values()]

    @staticmethod
    async def _preload(model: Model) -> None:
        with contextlib.suppress(MMServeError):  # recorded in the model's state and log
            await model.ensure_ready()
