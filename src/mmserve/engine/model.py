"""One model: its spec, its replicas, and its lifecycle, owned by the model's own task.

**One owner.** Every change of `state` and of the replica list happens in a command handled by
the model's actor task, one command at a time, in the order they were sent. Routes, timers and
crash callbacks never change either: they send a command (`_ask` awaits its outcome, `_tell`
does not) and the actor carries it out. A command that finds the world changed under it (a
restart due for a generation that was unloaded since) is a no-op: `generation` counts unloads.

    command            sent by        state before    does                      state after
    load(devices)      request,       unloaded,       room, then one replica    ready; failed;
                       preload, add   failed (retry   per device (all or none)  unloaded (no
                                      after 10 s)                               room)
                                      ready           nothing                   ready
    unload             route,         ready, or       generation += 1; drain    unloaded
                       eviction,      loading with    (drain_timeout), then
                       keep-alive     a restart due   stop every replica
                                      failed          forget the failure        unloaded
    add(device)        route          ready, or a     one more replica          ready
                                      restart due
                                      otherwise       load([device])            as load
    remove             route          ready, > 1      drain, stop least busy    ready
                                      ready, 1        unload                    unloaded
    exited(replica)    the worker     ready           drop it; restart(device,  ready, or
                                                      generation) after the     loading (none
                                                      backoff                   left)
    restart(dev, g)    a timer        ready/loading   a new replica, unless g   ready, or failed
                                                      is not the generation     (none left)
    expired(epoch, g)  a timer        ready, idle     unload, unless a request  unloaded
                                                      came since it was armed

Requests never wait on the actor when the model is ready: `lease()` takes a slot at once (or
queues in `Admission`). A request that finds the model not ready sends `load` and waits for
its outcome; while a restart is due it waits for the state to change instead. Each command runs
as a task of its own: a load that only requests asked for ("load on demand") is cancelled when
the last of them leaves (its processes are stopped, the room given back); an explicit load, a
preload or an added replica always runs to its end.

**Swap-aware order.** When another model needs this one's room and it is busy, the manager
`hold`s it: requests that arrive up to `max_swap_delay` after the swap began are still served
(same-model requests first, which saves swaps), later ones wait at the door (`lease`) until the
swap is done, then load this model again if it was evicted. Within a model the order stays
first come, first served.

Everything here runs on the event loop's thread, so plain attributes need no lock: only the
actor writes, and it does so between awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mmserve.catalog import catalog_entry, is_catalog_source
from mmserve.config import ModelSpec, Settings
from mmserve.engine.devices import check_device
from mmserve.engine.scheduler import Admission
from mmserve.engine.status import ModelStatus
from mmserve.engine.telemetry import Telemetry
from mmserve.errors import (
    Conflict,
    InvalidRequest,
    MMServeError,
    ModelUnavailable,
    UnsupportedCapability,
)
from mmserve.logs import ModelLog
from mmserve.registry import KNOWN_CAPABILITIES, Entry, entry, import_object
from mmserve.replicas.base import Replica, ReplicaHooks
from mmserve.types import Capability, Sampling
from mmserve.workers.warm import WarmPool

__all__ = ["Model", "ModelState", "estimate_bytes"]

RETRY_FAILED_AFTER = 10.0
BASE_BACKOFF = 0.5  # seconds before the first restart of a crashed replica; doubles each time
MAX_BACKOFF = 60.0
STABLE_AFTER = 60.0  # a replica that ran this long before crashing resets the backoff
LOG_TAIL = 20  # lines of the model's log shown in its status
# What a replica process costs beyond its weights (Python, the engine, buffers): a rough guess
# used only before a model has been loaded once; after that its measured size is used.
PROCESS_OVERHEAD = 150 * 2**20

_WHAT = {"chat": "chat (/v1/chat/completions)", "complete": "text completion (/v1/completions)",
         "embed": "embeddings (/v1/embeddings)",
         "call": "its own calls (/api/v1/{model}/call)",
         "vision": "images (image_url parts, or /api/v1/{model}/call with image)",
         "relay": "relayed OpenAI requests"}  # fmt: skip

MakeRoom = Callable[["Model"], Awaitable[None]]


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


@dataclass
class _Command:
    """One lifecycle step for the actor; `outcome` is None when nobody awaits it."""

    name: str
    run: Callable[[], Awaitable[None]]
    outcome: asyncio.Future[None] | None = field(default=None)


class Model:
    """A configured model and its replicas (see the module doc for its commands and states)."""

    def __init__(
        self,
        spec: ModelSpec,
        settings: Settings,
        *,
        telemetry: Telemetry,
        make_room: MakeRoom,
        on_change: Callable[[], None],
        warm: WarmPool | None = None,
    ) -> None:
        assert spec.backend is not None  # ModelSpec fills it in
        self.spec = spec
        self.entry: Entry = entry(spec.kind, spec.backend, spec.managed, spec.placement or "local")
        self.settings = settings
        self.telemetry = telemetry
        self.load_timeout = settings.load_timeout
        self.drain_timeout = settings.drain_timeout
        self._make_room = make_room
        self._on_change = on_change  # told when requests end or memory is freed (room waiters)
        self.warm = warm  # the server's warm workers, handed to each replica (workers.warm)
        # Written by the actor only (see the module doc).
        self.state = ModelState.UNLOADED
        self.replicas: list[Replica] = []
        self.starting: list[Replica] = []  # being started by the command under way
        self.stopping: list[Replica] = []  # being drained and stopped by it (still processes)
        self.generation = 0
        self.loads = 0
        self.crashes = 0  # consecutive: reset once a replica has run for STABLE_AFTER seconds
        self.restarts = 0
        self.last_error: str | None = None
        self._failed_at = 0.0
        self._replica_bytes: int | None = None  # one replica's memory, measured at its unload
        # Written by requests (lease) on the loop's thread.
        self.in_flight = 0
        self._leasing = 0  # callers between lease's start and their replica (loading, queued)
        self._load_waiters = {True: 0, False: 0}  # in ensure_ready: {on demand: n, explicit: n}
        # Swap-aware order (see `hold`): requests that arrive at or after `_held_from` wait at
        # the door until every hold is released; those that came earlier are served first.
        self._holds = 0
        self._hold_began = 0.0  # when the first of the current holds came
        self._held_from: float | None = None
        self._door = asyncio.Event()
        self._door.set()
        self._at_door = 0
        self.last_used: float = 0.0
        self._epoch = 0  # leases begun: a keep-alive timer armed before the last one is stale
        self._expiry: asyncio.TimerHandle | None = None
        self._watchers: list[asyncio.Future[None]] = []  # woken when `state` changes
        self._inbox: asyncio.Queue[_Command] = asyncio.Queue()
        self._actor: asyncio.Task[None] | None = None
        self._current: tuple[_Command, asyncio.Task[None]] | None = None  # the command running
        self._closed = False
        log_file = settings.log_dir / f"{spec.name}.log" if settings.log_dir else None
        self.log = ModelLog(spec.name, settings.log_capacity, log_file)
        self.admission = Admission(
            spec.name,
            concurrency=spec.max_concurrency,
            max_queue=spec.max_queue,
            queue_timeout=spec.queue_timeout,
        )

    # ---- what callers ask --------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def busy(self) -> bool:
        """Requests in flight or a transition running: not a candidate for eviction."""
        return self.in_flight > 0 or self.state in (ModelState.LOADING, ModelState.UNLOADING)

    @property
    def resident(self) -> bool:
        """Holds (or is about to hold) memory here: counts against max_loaded_models."""
        active = (ModelState.LOADING, ModelState.READY, ModelState.UNLOADING)
        return self.state in active and self.entry.holds_memory

    @property
    def capabilities(self) -> list[Capability]:
        """What the model serves: what its kind offers (mmserve.registry), narrowed to what the
        loaded model announced."""
        return [c for c in KNOWN_CAPABILITIES if self.can(c)]

    def can(self, capability: Capability) -> bool:
        """Whether the model serves `capability` (known before it loads, for its kind): the one
        rule, asked two or three times per request without building `capabilities`."""
        if capability not in self.entry.capabilities:
            return False
        return not self.replicas or capability in self.replicas[0].info.capabilities

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
        # A caller on its way to a replica keeps the model from idling out: a keep_alive of 0
        # armed as its load completes must not unload it before the caller gets there.
        arrived = time.monotonic()
        self._leasing += 1
        try:
            while True:
                await self.ensure_ready(on_demand=True)
                if self._held_from is None or arrived < self._held_from:
                    break
                await self._wait_at_door()  # a swap goes first; then this model again
            # No await between ensure_ready's last look at the state and joining the queue: a
            # waiter only ever joins a ready model, and every way out of ready fails or serves
            # it.
            self.check(capability)
            if self._held_from is not None and arrived >= self._hold_began:
                self.telemetry.served_ahead_of_swap(self.spec.name)
            replica = await self.admission.acquire(self._live_replicas)
        except BaseException:
            self._leasing -= 1
            self._arm_expiry()
            raise
        self._leasing -= 1
        self.in_flight += 1
        self._epoch += 1
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

    async def ensure_ready(self, *, on_demand: bool = False) -> None:
        """Return once the model can serve; load it if needed (one load, however many callers).

        Raises ModelUnavailable with the reason when the load fails or finds no room. Returns
        without yielding to the loop when the model is already ready. `on_demand`: the caller
        is a request; a load that only requests wait for is stopped once every one of them
        has left (`_stop_unwaited_load`); a load anyone else asked for runs to its end.
        """
        while not self.ready:
            self._load_waiters[on_demand] += 1
            left = False
            try:
                if self.state is ModelState.LOADING:
                    await self._state_change()  # someone's load, or a crashed replica's restart
                else:
                    name = "load on demand" if on_demand else "load"
                    load = functools.partial(self._load, self.spec.devices, on_demand=on_demand)
                    await self._ask(name, load)
            except asyncio.CancelledError:
                left = True
                raise
            finally:
                self._load_waiters[on_demand] -= 1
                if left and not any(self._load_waiters.values()):
                    self._stop_unwaited_load()
            if self.state is ModelState.FAILED:
                raise self._unavailable()
            # Not ready, not failed: the model went again before this caller got to it (a swap
            # evicted it as it became ready, a load stopped as it came): wait for the next load.

    # ---- swap-aware order (held by the manager while a swap waits for this model's room) ----

    def hold(self, from_time: float) -> None:
        """Requests arriving from `from_time` on (monotonic) wait until `release`: a model that
        needs this one's room goes first. Earlier ones, queued or in flight, are served."""
        self._holds += 1
        held = self._held_from
        if held is None:
            self._hold_began = time.monotonic()
        self._held_from = from_time if held is None else min(held, from_time)
        self._door.clear()

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._held_from = None
            self._door.set()

    async def _wait_at_door(self) -> None:
        self._at_door += 1
        try:
            await asyncio.wait_for(self._door.wait(), self.spec.queue_timeout)
        except TimeoutError:
            raise ModelUnavailable(
                f"request waited {self.spec.queue_timeout:g} s (queue_timeout) for model "
                f"{self.spec.name!r} while other models were swapped in"
            ) from None
        finally:
            self._at_door -= 1

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

    def check_relayed(self, body: dict[str, Any]) -> dict[str, Any]:
        """A relayed request's body within the model's max_tokens cap (as check_sampling)."""
        cap = self.spec.max_tokens
        if cap is None:
            return body
        key = "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens"
        asked = body.get(key)
        if asked is None:
            return {**body, "max_tokens": cap}
        if isinstance(asked, int) and asked > cap:
            raise InvalidRequest(
                f"{key} is {asked}; model {self.spec.name!r} allows {cap}", param=key
            )
        return body

    def check_inputs(self, count: int) -> None:
        if count > self.spec.max_inputs:
            raise InvalidRequest(
                f"{count} inputs in one request; model {self.spec.name!r} takes at most "
                f"{self.spec.max_inputs} (max_inputs)",
                param="input",
            )

    def check(self, capability: Capability) -> None:
        """UnsupportedCapability (a 400) unless the model serves `capability`."""
        if not self.can(capability):
            can = ", ".join(_WHAT[c] for c in self.capabilities if c != "relay") or "nothing"
            raise UnsupportedCapability(
                f"model {self.spec.name!r} does not support {_WHAT[capability]}; it serves: {can}"
            )

    def _unavailable(self) -> ModelUnavailable:
        # Every recorded reason is a whole sentence that names the model.
        return ModelUnavailable(self.last_error or f"model {self.spec.name!r} is not available")

    def _live_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    # ---- management: each a command to the actor --------------------------------------------

    async def unload(self) -> None:
        """Drain in-flight requests (up to drain_timeout), then stop every replica. Idempotent."""
        await self._ask("unload", self._unload)

    async def add_replica(self, device: str) -> None:
        """One more replica on `device`; if none is loaded, this loads the model there."""
        if self.entry.in_process and device != "cpu":
            raise InvalidRequest(
                "vision models run in the server process, on the cpu device only", param="device"
            )
        await self._ask("add replica", functools.partial(self._add, device))

    async def remove_replica(self) -> None:
        """One fewer replica: the least busy, after its in-flight requests finish."""
        await self._ask("remove replica", self._remove)

    async def settle(self) -> None:
        """Wait until every command sent before this call has been handled."""

        async def nothing() -> None:
            pass

        await self._ask("settle", nothing)

    async def close(self) -> None:
        """Unload, then end the actor (the server is stopping). No command runs after this."""
        await self.unload()
        self._closed = True
        if self._actor is not None:
            self._actor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._actor
            self._actor = None

    # ---- the actor ---------------------------------------------------------------------------

    async def _ask(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Send a command and wait for its outcome (its exception, if it raised).

        A caller that is cancelled (its client left) stops waiting; the command still runs,
        since others may be waiting for the same load.
        """
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._send(_Command(name, run, outcome))
        await asyncio.shield(outcome)

    def _tell(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Send a command nobody waits for (from a timer or a crash callback)."""
        self._send(_Command(name, run))

    def _send(self, command: _Command) -> None:
        if self._closed:  # the server is stopping: a late timer or crash changes nothing
            if command.outcome is not None:
                command.outcome.set_exception(self._unavailable())
            return
        self._inbox.put_nowait(command)
        if self._actor is None or self._actor.done():
            self._actor = asyncio.get_running_loop().create_task(
                self._run(), name=f"model {self.spec.name}"
            )

    async def _run(self) -> None:
        """Handle commands one at a time, for the life of the model. Each runs as a task of
        its own, so that a load nobody waits for any more can be stopped (cancelled)."""
        while True:
            command = await self._inbox.get()
            task = asyncio.ensure_future(command.run())
            self._current = (command, task)
            try:
                await asyncio.wait([task])
            except asyncio.CancelledError:  # the actor itself is ended (close)
                task.cancel()
                raise
            finally:
                self._current = None
            if task.cancelled():
                exc: BaseException | None = ModelUnavailable(
                    f"the load of model {self.spec.name!r} was stopped: nobody waited for it"
                )
            else:
                exc = task.exception()
            if exc is not None:  # the command's outcome: its caller's error
                if command.outcome is None:
                    self.log.event(f"{command.name} failed: {exc}")
                elif not command.outcome.done():
                    command.outcome.set_exception(exc)
                    command.outcome.exception()  # retrieved: a caller that left is no error
            elif command.outcome is not None and not command.outcome.done():
                command.outcome.set_result(None)

    def _stop_unwaited_load(self) -> None:
        """Every request waiting for this model's on-demand load has left: stop the load."""
        if self._current is not None and self._current[0].name == "load on demand":
            self._current[1].cancel()

    def _set_state(self, state: ModelState) -> None:
        self.state = state
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    async def _state_change(self) -> None:
        watcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append(watcher)
        await watcher

    @property
    def _restart_due(self) -> bool:
        return self.state is ModelState.LOADING and not self.replicas

    # ---- command handlers (run by the actor only) --------------------------------------------

    async def _load(self, devices: list[str], *, on_demand: bool = False) -> None:
        if self.ready or self._restart_due:
            return
        if on_demand and not any(self._load_waiters.values()):
            return  # every request that asked for it left while it was queued
        recently = time.monotonic() - self._failed_at < RETRY_FAILED_AFTER
        if self.state is ModelState.FAILED and recently:
            raise self._unavailable()
        self._set_state(ModelState.LOADING)
        self.loads += 1
        try:
            await self._load_replicas(devices)
        except asyncio.CancelledError:  # _stop_unwaited_load: processes ended, room given back
            self.log.event("load stopped: every request waiting for it left")
            self._set_state(ModelState.UNLOADED)
            self._on_change()
            raise

    async def _load_replicas(self, devices: list[str]) -> None:
        try:
            # This machine's room, or (placement: ray) the cluster nodes' (engine.placement).
            if self.entry.holds_memory or self.entry.in_cluster:
                await self._make_room(self)
        except ModelUnavailable as exc:  # no room: nothing was started, nothing to undo
            self.last_error = exc.message
            self.log.event(exc.message)
            self._set_state(ModelState.UNLOADED)
            raise
        try:
            for device in devices:
                check_device(device)
        except InvalidRequest as exc:
            self._fail(f"model {self.spec.name!r} cannot load: {exc.message}")
            return
        self.log.event(f"loading on {', '.join(devices)}")
        replicas = [self._new_replica(d) for d in devices]
        self.starting = replicas
        try:
            started = [r.start(self.load_timeout) for r in replicas]
            results = await asyncio.gather(*started, return_exceptions=True)
            errors = [e for e in results if isinstance(e, BaseException)]
            if errors:
                await asyncio.gather(*(r.stop() for r in replicas))
                self._fail(str(errors[0]))
                return
        except asyncio.CancelledError:
            await asyncio.gather(*(r.stop() for r in replicas))
            raise
        finally:
            self.starting = []
        self.replicas = replicas
        self.last_used = time.time()
        self._set_state(ModelState.READY)
        self._on_change()  # loaded: the manager's warm workers follow (and room waiters look)
        for replica in replicas:
            self.telemetry.loaded(self.spec.name, replica.load_seconds or 0.0)
        self.log.event(f"ready: pids {', '.join(str(r.pid) for r in replicas)}")
        self._arm_expiry()

    async def _unload(self) -> None:
        self.generation += 1  # restarts and timers of the old generation become no-ops
        self._cancel_expiry()
        if self.state is ModelState.FAILED:
            self._set_state(ModelState.UNLOADED)
        if self.state is ModelState.UNLOADED:
            return
        self._set_state(ModelState.UNLOADING)
        if self.replicas:
            self._replica_bytes = self.resident_bytes() // len(self.replicas) or self._replica_bytes
        replicas, self.replicas = self.replicas, []
        self.admission.fail_waiters(
            ModelUnavailable(f"model {self.spec.name!r} was unloaded while the request waited")
        )
        await self._drain_and_stop(replicas)
        self._set_state(ModelState.UNLOADED)
        self.log.event("unloaded")
        self._on_change()

    async def _add(self, device: str) -> None:
        if not self.ready and not self._restart_due:
            await self._load([device])
            if not self.ready:
                raise ModelUnavailable(f"model {self.spec.name!r} did not load: {self.last_error}")
            return
        replica = await self._start_one(device)
        self.replicas.append(replica)
        self._set_state(ModelState.READY)
        self.log.event(f"replica added: pid {replica.pid} on {device}")
        self.admission.hand_over(self._live_replicas())

    async def _remove(self) -> None:
        if not self.ready or not self.replicas:
            raise Conflict(f"model {self.spec.name!r} has no replica to remove")
        if len(self.replicas) == 1:
            await self._unload()
            return
        replica = min(self.replicas, key=lambda r: r.in_flight)
        self.replicas.remove(replica)  # no new requests reach it from here on
        await self._drain_and_stop([replica])
        self.log.event(f"replica removed: pid {replica.pid}")
        self._on_change()

    async def _drain_and_stop(self, replicas: list[Replica]) -> None:
        """Let their requests finish (up to drain_timeout), then stop them; shown in the status
        as `stopping` until their processes are gone."""
        self.stopping = replicas
        try:
            drained = await asyncio.gather(*(r.drain(self.drain_timeout) for r in replicas))
            if not all(drained):
                self.log.event(f"requests still running after {self.drain_timeout:.0f} s: stopping")
            await asyncio.gather(*(r.stop() for r in replicas))
        finally:
            self.stopping = []

    async def _exited(self, replica: Replica) -> None:
        """A replica's process exited on its own: drop it, and have one restarted in its place
        after an exponential backoff. Requests it ran have already failed (WorkerCrashed)."""
        if replica not in self.replicas:
            return  # stopped by us, or already handled
        self.replicas.remove(replica)
        uptime = time.time() - (replica.loaded_at or time.time())
        self.crashes = 1 if uptime > STABLE_AFTER else self.crashes + 1
        self.last_error = (
            f"model {self.spec.name!r}: replica pid {replica.pid} exited{_exit_code(replica)}"
        )
        delay = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (self.crashes - 1))
        self.log.event(f"crashed: {self.last_error}; restarting in {delay:g} s")
        if not self.replicas:
            self._cancel_expiry()
            self._set_state(ModelState.LOADING)  # requests wait for the restart
        restart = functools.partial(self._restart, replica.device, self.generation)
        asyncio.get_running_loop().call_later(delay, self._tell, "restart", restart)
        self._on_change()

    async def _restart(self, device: str, generation: int) -> None:
        if generation != self.generation or self.state not in (
            ModelState.READY,
            ModelState.LOADING,
        ):
            return  # unloaded since the crash: nothing to restart
        try:
            replica = await self._start_one(device)
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
        self._set_state(ModelState.READY)
        self.log.event(f"restarted: pid {replica.pid} on {device}")
        self.admission.hand_over(self._live_replicas())
        self._arm_expiry()

    async def _expired(self, epoch: int, generation: int) -> None:
        stale = epoch != self._epoch or generation != self.generation
        if stale or self.in_flight > 0 or self._leasing > 0 or not self.ready:
            return
        self.log.event(f"idle for {self.spec.keep_alive:g} s (keep_alive): unloading")
        await self._unload()

    async def _start_one(self, device: str) -> Replica:
        """A new replica on `device`, started (stopped again if its start fails)."""
        replica = self._new_replica(device)
        self.starting = [replica]
        try:
            await replica.start(self.load_timeout)
        except BaseException:
            await replica.stop()
            raise
        finally:
            self.starting = []
        return replica

    def _new_replica(self, device: str) -> Replica:
        hooks = ReplicaHooks(
            log=self.log,
            on_exit=lambda r: self._tell("replica exited", functools.partial(self._exited, r)),
            on_batch=self._batched,
            heartbeat=(self.settings.ping_interval, self.settings.ping_timeout),
            cluster=self.settings.cluster,  # placement: ray (replicas.ray)
            memory=self.estimated_bytes(1),  # what a Ray actor reserves by default
            warm=self.warm,
        )
        replica: Replica = import_object(self.entry.replica)(self.spec, device, hooks)
        return replica

    def _batched(self, size: int) -> None:
        self.telemetry.batched(self.spec.name, size)

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        self._failed_at = time.monotonic()
        self.log.event(f"failed: {reason}")
        self._set_state(ModelState.FAILED)
        self._on_change()

    # ---- idle unload (keep_alive) ------------------------------------------------------------

    def _arm_expiry(self) -> None:
        """(Re)start the keep-alive countdown once the model is idle; -1 means never."""
        self._cancel_expiry()
        idle = self.in_flight == 0 and self._leasing == 0
        if self.spec.keep_alive >= 0 and idle and self.ready:
            expired = functools.partial(self._expired, self._epoch, self.generation)
            self._expiry = asyncio.get_running_loop().call_later(
                self.spec.keep_alive, self._tell, "keep-alive expired", expired
            )

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = None

    # ---- status ------------------------------------------------------------------------------

    def status(self) -> ModelStatus:
        return ModelStatus(
            name=self.spec.name,
            aliases=self.spec.aliases,
            kind=self.spec.kind,
            backend=self.spec.backend,
            state=self.state.value,
            capabilities=self.capabilities,
            in_flight=self.in_flight,
            waiting=self.admission.waiting + self._at_door,
            restarts=self.restarts,
            loads=self.loads,
            pinned=self.spec.pinned,
            keep_alive=self.spec.keep_alive,
            last_error=self.last_error,
            log=self.log.tail(LOG_TAIL),
            last_used=self.last_used or None,
            resident_bytes=self.resident_bytes(),
            replicas=[r.status() for r in self.replicas],
            starting=[r.status() for r in self.starting],
            stopping=[r.status() for r in self.stopping],
        )


def _exit_code(replica: Replica) -> str:
    code = replica.returncode
    return f" with code {code}" if code is not None else ""


def estimate_bytes(spec: ModelSpec) -> int:
    """Weights on disk plus a process's overhead: one replica's memory before it was measured."""
    if spec.source is None:
        return PROCESS_OVERHEAD
    if is_catalog_source(spec.source):
        return catalog_entry(spec.source).size_mb * 2**20 + PROCESS_OVERHEAD
    path = Path(spec.source)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) + PROCESS_OVERHEAD
