"""One model: its spec, its replicas, and its lifecycle. The model owns its state.

Callers use `lease()` (or `ensure_ready()`), never `state`, to decide anything.

    state       entered when                          a request (ensure_ready) ...
    unloaded    at start; after an unload             starts one load and waits for it
    loading     a load runs (room first, then the     waits for that same load (or restart)
                replicas' processes); or the last
                replica crashed and one restarts
    ready       every replica of the load is up       is served at once
    failed      the last load failed                  gets 503 with the reason; loads again
                                                      after RETRY_FAILED_AFTER seconds
    unloading   an unload drains, then stops the      waits for it to end, then loads afresh
                replicas

Only one lifecycle task (a load, an unload or a restart) runs at a time: `_task`. A crashed
replica among others restarts in the background while the rest serve. Everything here runs on
the event loop's thread, so plain attributes need no lock; the points where a request could race
a transition are marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from mmserve.catalog import catalog_entry, is_catalog_source
from mmserve.config import ModelSpec, Settings
from mmserve.engine.devices import check_device
from mmserve.engine.inprocess import InProcessReplica
from mmserve.engine.logs import ModelLog
from mmserve.engine.remote import RemoteReplica
from mmserve.engine.replicas import ProcessReplica, Replica
from mmserve.engine.scheduler import Admission
from mmserve.engine.telemetry import Telemetry
from mmserve.engine.types import Capability, Sampling
from mmserve.errors import (
    Conflict,
    InvalidRequest,
    MMServeError,
    ModelUnavailable,
    UnsupportedCapability,
)

__all__ = ["KNOWN_CAPABILITIES", "Model", "ModelState", "estimate_bytes"]

RETRY_FAILED_AFTER = 10.0
BASE_BACKOFF = 0.5  # seconds before the first restart of a crashed replica; doubles each time
MAX_BACKOFF = 60.0
STABLE_AFTER = 60.0  # a replica that ran this long before crashing resets the backoff
LOG_TAIL = 20  # lines of the model's log shown in its status
KNOWN_CAPABILITIES: tuple[Capability, ...] = ("chat", "complete", "embed", "call", "vision")
# What a replica process costs beyond its weights (Python, the engine, buffers): a rough guess
# used only before a model has been loaded once; after that its measured size is used.
PROCESS_OVERHEAD = 150 * 2**20

_WHAT = {"chat": "chat (/v1/chat/completions)", "complete": "text completion (/v1/completions)",
         "embed": "embeddings (/v1/embeddings)",
         "call": "its own calls (/api/v1/{model}/call)",
         "vision": "images (image_url parts, or /api/v1/{model}/call with image)"}  # fmt: skip

MakeRoom = Callable[["Model"], Awaitable[None]]


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


class Model:
    """A configured model and its replicas (see the module doc for its states)."""

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        *,
        telemetry: Telemetry,
        make_room: MakeRoom,
        on_change: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.telemetry = telemetry
        self.load_timeout = settings.load_timeout
        self.drain_timeout = settings.drain_timeout
        self._make_room = make_room
        self._on_change = on_change  # told when requests end or memory is freed (room waiters)
        self.state = ModelState.UNLOADED
        self.replicas: list[Replica] = []
        self.in_flight = 0
        self.loads = 0
        self.last_error: str | None = None
        self.last_used: float = 0.0
        log_file = settings.log_dir / f"{spec.name}.log" if settings.log_dir else None
        self.log = ModelLog(spec.name, settings.log_capacity, log_file)
        self._replica_bytes: int | None = None  # one replica's memory, measured at its last unload
        self._failed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self.admission = Admission(
            spec.name,
            concurrency=spec.max_concurrency,
            max_queue=spec.max_queue,
            queue_timeout=spec.queue_timeout,
        )
        self.crashes = 0  # consecutive: reset once a replica has run for STABLE_AFTER seconds
        self.restarts = 0

    # ---- what callers ask --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def busy(self) -> bool:
        """Requests in flight or a transition running: not a candidate for eviction."""
        return self.in_flight > 0 or self.state in (ModelState.LOADING, ModelState.UNLOADING)

    @property
    def remote(self) -> bool:
        """Served by another server (kind http): holds no memory here, takes no room."""
        return self.spec.kind == "http"

    @property
    def resident(self) -> bool:
        """Holds (or is about to hold) memory: counts against max_loaded_models."""
        active = (ModelState.LOADING, ModelState.READY, ModelState.UNLOADING)
        return self.state in active and not self.remote

    @property
    def capabilities(self) -> list[Capability]:
        """What the loaded model announced, limited to what this server knows how to route."""
        announced = self.replicas[0].info.capabilities if self.replicas else []
        return [c for c in KNOWN_CAPABILITIES if c in announced]

    def resident_bytes(self) -> int:
        return sum(r.resident_bytes() or 0 for r in self.replicas)

    def estimated_bytes(self, replicas: int | None = None) -> int:
        """Memory a load will take: as measured last time, else weights plus process overhead."""
        count = replicas or len(self.spec.devices)
        if self._replica_bytes is not None:
            return self._replica_bytes * count
        return estimate_bytes(self.spec) * count

    # ---- requests ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, capability: Capability) -> AsyncIterator[Replica]:
        """The least busy ready replica for one request, held until the request ends.

        Loads the model first if needed. While a lease is held the model is busy: it is
        neither evicted nor unloaded for idleness, and a drain waits for it.
        """
        await self.ensure_ready()
        self._check(capability)
        replica = await self.admission.acquire(self._live_replicas)
        self.in_flight += 1
        self._cancel_expiry()
        started = time.monotonic()
        try:
            yield replica
        finally:
            self.in_flight -= 1
            self.admission.record(time.monotonic() - started)
            self.admission.release(replica, self._live_replicas())
            self.last_used = time.time()
            self._arm_expiry()
            self._on_change()

    async def ensure_ready(self) -> None:
        """Return once the model can serve; load it if needed (one load, however many callers).

        Raises ModelUnavailable with the reason when the load fails or finds no room.
        """
        if self.state is ModelState.UNLOADING and self._task is not None:
            await asyncio.shield(self._task)  # let the unload finish, then load afresh
        if self.ready:
            return
        recently = time.monotonic() - self._failed_at < RETRY_FAILED_AFTER
        if self.state is ModelState.FAILED and recently:
            raise self._unavailable()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._load(self.spec.devices))
        # shield: a caller that gives up (its client left) must not cancel the load others await.
        await asyncio.shield(self._task)
        if not self.ready:
            raise self._unavailable()

    def _unavailable(self) -> ModelUnavailable:
        # Every recorded reason is a whole sentence that names the model.
        return ModelUnavailable(self.last_error or f"model {self.spec.name!r} is not available")

    def check_sampling(self, sampling: Sampling) -> Sampling:
        """The sampling to run: the max_tokens asked, within the model's cap (a 400 above it);
        none asked: the request's default, or the cap, whichever is smaller."""
        cap, asked = self.spec.max_tokens, sampling.max_tokens
        if asked is not None:
            if cap is not None and asked > cap:
                raise InvalidRequest(
                    f"max_tokens is {asked}; model {self.spec.name!r} allows {cap}",
                    param="max_tokens",
                )
            return sampling
        limits = [n for n in (sampling.default_max_tokens, cap) if n is not None]
        return sampling.model_copy(update={"max_tokens": min(limits) if limits else None})

    def check_inputs(self, count: int) -> None:
        if count > self.spec.max_inputs:
            raise InvalidRequest(
                f"{count} inputs in one request; model {self.spec.name!r} takes at most "
                f"{self.spec.max_inputs} (max_inputs)",
                param="input",
            )

    def _check(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            can = ", ".join(_WHAT[c] for c in self.capabilities) or "nothing"
            raise UnsupportedCapability(
                f"model {self.spec.name!r} does not support {_WHAT[capability]}; it serves: {can}"
            )

    def _live_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    # ---- management --------------------------------------------------------------------------

    async def unload(self) -> None:
        """Drain in-flight requests (up to drain_timeout), then stop every replica. Idempotent."""
        await self._settle()
        if self.state is ModelState.FAILED:
            self.state = ModelState.UNLOADED
        if not self.ready:
            return
        self._task = asyncio.create_task(self._unload())
        await asyncio.shield(self._task)

    async def add_replica(self, device: str) -> None:
        """One more replica on `device`; if none is loaded, this loads the model there."""
        if self.spec.kind == "vision" and device != "cpu":
            raise InvalidRequest(
                "vision models run in the server process, on the cpu device only", param="device"
            )
        await self._settle()
        if not self.ready:
            self._task = asyncio.create_task(self._load([device]))
            await asyncio.shield(self._task)
            if not self.ready:
                raise ModelUnavailable(f"model {self.spec.name!r} did not load: {self.last_error}")
            return
        replica = self._new_replica(device)
        await replica.start(self.load_timeout)
        self.replicas.append(replica)
        self.log.event(f"replica added: pid {replica.pid} on {device}")
        self.admission.hand_over(self._live_replicas())

    async def remove_replica(self) -> None:
        """One fewer replica: the least busy, after its in-flight requests finish."""
        await self._settle()
        if not self.ready or not self.replicas:
            raise Conflict(f"model {self.spec.name!r} has no replica to remove")
        if len(self.replicas) == 1:
            await self.unload()
            return
        replica = min(self.replicas, key=lambda r: r.in_flight)
        self.replicas.remove(replica)  # no new requests reach it from here on
        await replica.drain(self.drain_timeout)
        await replica.stop()
        self.log.event(f"replica removed: pid {replica.pid}")
        self._on_change()

    async def _settle(self) -> None:
        """Wait for a running load or unload to end (its errors are its callers')."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(MMServeError):
                await asyncio.shield(self._task)

    # ---- transitions (run as `_task`) --------------------------------------------------------

    async def _load(self, devices: list[str]) -> None:
        self.state = ModelState.LOADING
        self.loads += 1
        try:
            if not self.remote:
                await self._make_room(self)
        except ModelUnavailable as exc:  # no room: nothing was started, nothing to undo
            self.state = ModelState.UNLOADED
            self.last_error = exc.message
            self.log.event(exc.message)
            return
        try:
            for device in devices:
                check_device(device)
        except InvalidRequest as exc:
            self._fail(f"model {self.spec.name!r} cannot load: {exc.message}")
            return
        self.log.event(f"loading on {', '.join(devices)}")
        replicas = [self._new_replica(d) for d in devices]
        started = [r.start(self.load_timeout) for r in replicas]
        results = await asyncio.gather(*started, return_exceptions=True)
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            await asyncio.gather(*(r.stop() for r in replicas))
            self._fail(str(errors[0]))
            return
        self.replicas = replicas
        self.state = ModelState.READY
        self.last_used = time.time()
        for replica in replicas:
            self.telemetry.loaded(self.spec.name, replica.load_seconds or 0.0)
        self.log.event(f"ready: pids {', '.join(str(r.pid) for r in replicas)}")
        self._arm_expiry()

    async def _unload(self) -> None:
        self.state = ModelState.UNLOADING
        self._cancel_expiry()
        if self.replicas:
            self._replica_bytes = self.resident_bytes() // len(self.replicas) or self._replica_bytes
        replicas, self.replicas = self.replicas, []
        self.admission.fail_waiters(
            ModelUnavailable(f"model {self.spec.name!r} was unloaded while the request waited")
        )
        drained = await asyncio.gather(*(r.drain(self.drain_timeout) for r in replicas))
        if not all(drained):
            self.log.event(f"requests still running after {self.drain_timeout:.0f} s: stopping")
        await asyncio.gather(*(r.stop() for r in replicas))
        self.state = ModelState.UNLOADED
        self.log.event("unloaded")
        self._on_change()

    def _new_replica(self, device: str) -> Replica:
        if self.remote:
            return RemoteReplica(self.spec, device, self.log)
        if self.spec.kind == "vision":
            return InProcessReplica(self.spec, device, self.log, self._batched)
        return ProcessReplica(
            self.spec,
            device,
            self.log,
            self._on_replica_exit,
            heartbeat=(self.settings.ping_interval, self.settings.ping_timeout),
            on_batch=self._batched,
        )

    def _batched(self, size: int) -> None:
        self.telemetry.batched(self.spec.name, size)

    def _fail(self, reason: str) -> None:
        self.state = ModelState.FAILED
        self.last_error = reason
        self._failed_at = time.monotonic()
        self.log.event(f"failed: {reason}")
        self._on_change()

    def _on_replica_exit(self, replica: ProcessReplica) -> None:
        """A replica's process exited on its own: drop it, and restart one in its place after
        an exponential backoff. Requests it was running have already failed (WorkerCrashed)."""
        if replica.worker.stopping or replica not in self.replicas:
            return
        self.replicas.remove(replica)
        uptime = time.time() - (replica.loaded_at or time.time())
        self.crashes = 1 if uptime > STABLE_AFTER else self.crashes + 1
        code = replica.worker.returncode
        self.last_error = (
            f"model {self.spec.name!r}: replica pid {replica.pid} exited with code {code}"
        )
        delay = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (self.crashes - 1))
        self.log.event(f"crashed: {self.last_error}; restarting in {delay:g} s")
        if not self.replicas:
            self.state = ModelState.LOADING  # requests wait for the restart
            self._cancel_expiry()
        restart = asyncio.create_task(self._restart(replica.device, delay))
        if self._task is None or self._task.done():
            self._task = restart  # with no replica left, ensure_ready() waits for this one
        self._on_change()

    async def _restart(self, device: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.state not in (ModelState.READY, ModelState.LOADING):
            return  # unloaded meanwhile: nothing to restart
        replica = self._new_replica(device)
        try:
            await replica.start(self.load_timeout)
        except MMServeError as exc:
            if not self.replicas:
                self._fail(f"restart failed: {exc.message}")
                self.admission.fail_waiters(
                    ModelUnavailable(f"model {self.spec.name!r}: {exc.message}")
                )
            return
        self.restarts += 1
        self.telemetry.restarted(self.spec.name)
        self.replicas.append(replica)
        self.state = ModelState.READY
        self.log.event(f"restarted: pid {replica.pid} on {device}")
        self.admission.hand_over(self._live_replicas())
        self._arm_expiry()

    # ---- idle unload (keep_alive) ------------------------------------------------------------

    def _arm_expiry(self) -> None:
        """(Re)start the keep-alive countdown once the model is idle; -1 means never."""
        self._cancel_expiry()
        if self.spec.keep_alive >= 0 and self.in_flight == 0 and self.ready:
            self._expiry = asyncio.create_task(self._expire(self.spec.keep_alive))

    def _cancel_expiry(self) -> None:
        # The expiry task itself calls unload(), which comes back here: never cancel oneself.
        if self._expiry is not None and self._expiry is not asyncio.current_task():
            self._expiry.cancel()
        self._expiry = None

    async def _expire(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.in_flight == 0 and self.ready:
            self.log.event(f"idle for {delay:g} s (keep_alive): unloading")
            await self.unload()

    # ---- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "aliases": self.spec.aliases,
            "kind": self.spec.kind,
            "backend": self.spec.backend,
            "state": self.state.value,
            "capabilities": self.capabilities,
            "in_flight": self.in_flight,
            "waiting": self.admission.waiting,
            "restarts": self.restarts,
            "loads": self.loads,
            "pinned": self.spec.pinned,
            "keep_alive": self.spec.keep_alive,
            "last_error": self.last_error,
            "log": self.log.tail(LOG_TAIL),
            "last_used": self.last_used or None,
            "resident_bytes": self.resident_bytes(),
            "replicas": [r.status() for r in self.replicas],
        }


def estimate_bytes(spec: ModelSpec) -> int:
    """Weights on disk plus a process's overhead: one replica's memory before it was measured."""
    if spec.source is None:
        return PROCESS_OVERHEAD
    if is_catalog_source(spec.source):
        return catalog_entry(spec.source).size_mb * 2**20 + PROCESS_OVERHEAD
    path = Path(spec.source)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) + PROCESS_OVERHEAD
