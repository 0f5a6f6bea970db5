"""The model manager: every model by name and alias, and the room they share.

Each `Model` owns its own lifecycle (see `engine.model`). The manager owns what spans models:
registering them (from the config, or at runtime), and making room for a load under
`max_loaded_models` and `max_memory` by evicting idle models, least recently used first. The
policy is the pure function `engine.eviction.plan_eviction`; this module carries it out, by
sending the victims an unload command (their actors do the work). A model that is loading or
serving is never evicted: the load waits (room_timeout), and after max_swap_delay the models it
waits for stop taking newer requests (`Model.hold`) so that they drain.

It is the API's one way into the engine: each request method leases a replica of the model for
a capability and calls that capability's method of the `Replica` protocol (a kind that lacks it
raises UnsupportedCapability); status comes back as typed snapshots (`engine.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from mmserve.config import ModelSpec, Settings
from mmserve.engine.devices import check_device
from mmserve.engine.eviction import Resident, plan_eviction
from mmserve.engine.model import Model, ModelState
from mmserve.engine.placement import ClusterResident, Demand, plan_cluster_eviction
from mmserve.engine.status import ModelStatus, ServerStatus
from mmserve.engine.telemetry import NullTelemetry, StreamMeter, Telemetry, count_tokens
from mmserve.errors import (
    Conflict,
    InvalidRequest,
    MMServeError,
    ModelNotFound,
    ModelUnavailable,
)
from mmserve.logs import ModelLog
from mmserve.replicas.base import TextOp
from mmserve.replicas.llama_server import llama_cpp_version
from mmserve.replicas.process import warm_keys
from mmserve.replicas.ray import NodeView, RayReplica, ray_demand
from mmserve.types import (
    Capability,
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    TextDelta,
    TextDone,
    TextEvent,
    VisionItem,
)
from mmserve.workers.warm import WarmKey, WarmPool

__all__ = ["ModelManager", "ModelState"]

MB = 2**20
FRESH_VIEW_WAIT = 5.0  # seconds a cluster load waits for a view of the nodes newer than itself


class ModelManager:
    """One per server; every method runs on the event loop's thread."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.telemetry: Telemetry = telemetry or NullTelemetry()
        self.models: dict[str, Model] = {}
        self._by_name: dict[str, Model] = {}
        self.evictions = 0
        # One placement decision at a time: two loads must not both take the last free slot.
        self._room_lock = asyncio.Lock()
        self._room_changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        # Started, pre-imported workers for the next loads (workers.warm); filled from start().
        self.warm: WarmPool | None = WarmPool() if settings.warm_workers else None
        self._started = False
        self._warm_keys: dict[str, list[WarmKey]] = {}  # each model's, computed once
        for spec in settings.models:
            self.register(spec)

    # ---- the registry ------------------------------------------------------------------------

    def register(self, spec: ModelSpec) -> Model:
        """Add a model (not loaded yet). Conflict if one of its names is taken."""
        taken = [n for n in spec.names if n in self._by_name]
        if taken:
            owner = self._by_name[taken[0]].spec.name
            raise Conflict(f"the name {taken[0]!r} is already used by model {owner!r}")
        model = Model(
            spec,
            self.settings,
            telemetry=self.telemetry,
            make_room=self._make_room,
            on_change=self._changed,
            warm=self.warm,
        )
        self.models[spec.name] = model
        self._by_name.update(dict.fromkeys(spec.names, model))
        if self.warm is not None:
            self._warm_keys[spec.name] = warm_keys(spec, model.entry)
            self._sync_warm()  # a model added at runtime: its first load may come any time
        return model

    async def unregister(self, name: str) -> None:
        """Unload a model and forget it (its names become free)."""
        model = self.get(name)
        await model.close()
        del self.models[model.spec.name]
        self._warm_keys.pop(model.spec.name, None)
        self._sync_warm()
        for alias in model.spec.names:
            self._by_name.pop(alias, None)

    def get(self, name: str) -> Model:
        """The model named `name` (or an alias of it); ModelNotFound listing the known ones."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(
                f"the model {name!r} does not exist; available models: {known}"
            ) from None

    # ---- management: each returns the model's status afterwards -----------------------------

    async def load(self, name: str) -> ModelStatus:
        """Load model `name` if no replica runs; otherwise nothing."""
        model = self.get(name)
        await model.ensure_ready()
        return model.status()

    async def unload(self, name: str) -> ModelStatus:
        model = self.get(name)
        await model.unload()
        return model.status()

    async def add_replica(self, name: str, device: str) -> ModelStatus:
        check_device(device)
        model = self.get(name)
        await model.add_replica(device)
        return model.status()

    async def remove_replica(self, name: str) -> ModelStatus:
        model = self.get(name)
        await model.remove_replica()
        return model.status()

    def model_status(self, name: str) -> ModelStatus:
        return self.get(name).status()

    def log_of(self, name: str) -> ModelLog:
        return self.get(name).log

    # ---- requests ------------------------------------------------------------------------------

    async def generate(
        self, name: str, op: TextOp, request: ChatRequest | CompletionRequest
    ) -> AsyncGenerator[TextEvent, None]:
        """Stream one generation from model `name`, holding its lease until the end."""
        model = self.get(name)
        request = request.model_copy(update={"sampling": model.check_sampling(request.sampling)})
        started, first = time.monotonic(), True
        async with model.lease(op) as replica:
            events = replica.generate(op, request)
            async with contextlib.aclosing(events):
                async for event in events:
                    if first and isinstance(event, TextDelta):
                        self.telemetry.first_token(model.spec.name, time.monotonic() - started)
                        first = False
                    if isinstance(event, TextDone):
                        self.telemetry.generated(model.spec.name, event.completion_tokens)
                        count_tokens(event.prompt_tokens + event.completion_tokens)
                    yield event

    async def embed(
        self, name: str, request: EmbedRequest, dimensions: int | None = None
    ) -> EmbedResult:
        """Embed with model `name`; `dimensions`, when given, must be the model's own."""
        model = self.get(name)
        model.check_inputs(len(request.inputs))
        async with model.lease("embed") as replica:
            if dimensions is not None and dimensions != replica.info.dimensions:
                raise InvalidRequest(
                    f"model {name!r} gives {replica.info.dimensions} dimensions, not {dimensions}",
                    param="dimensions",
                )
            result = await replica.embed(request)
        self.telemetry.embedded(model.spec.name, len(request.inputs))
        count_tokens(result.prompt_tokens)
        return result

    async def call(self, name: str, body: dict[str, Any]) -> Any:
        """A model's own operation, JSON in and out: a program's `call` op, or a JSON endpoint."""
        model = self.get(name)
        async with model.lease("call") as replica:
            return await replica.call(body)

    async def see(self, name: str, item: VisionItem) -> list[dict[str, Any]]:
        """Run vision model `name` on the images of one request: one result per image."""
        model = self.get(name)
        model.check_inputs(len(item.images))
        async with model.lease("vision") as replica:
            return await replica.see(item)

    async def relay(
        self, name: str, capability: Capability, path: str, body: dict[str, Any]
    ) -> Any:
        """Pass an OpenAI request on as it came, to a model that relays; its JSON answer."""
        model = self.get(name)
        model.check(capability)
        body = model.check_relayed(body)
        async with model.lease("relay") as replica:
            answer = await replica.relay(path, body)
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            count_tokens(usage["total_tokens"])
            if isinstance(usage.get("completion_tokens"), int):
                self.telemetry.generated(model.spec.name, usage["completion_tokens"])
        return answer

    async def relay_stream(
        self, name: str, capability: Capability, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]:
        """Like `relay`, for a stream: the upstream's bytes as they arrive."""
        model = self.get(name)
        model.check(capability)
        body = model.check_relayed(body)
        started, meter = time.monotonic(), StreamMeter()
        try:
            async with model.lease("relay") as replica:
                chunks = replica.relay_stream(path, body)
                async with contextlib.aclosing(chunks):
                    async for chunk in chunks:
                        if meter.feed(chunk):
                            self.telemetry.first_token(model.spec.name, time.monotonic() - started)
                        yield chunk
        finally:  # a stream cut short (a client gone, a crash) still cost what it generated
            prompt_tokens, completion_tokens = meter.tokens
            self.telemetry.generated(model.spec.name, completion_tokens)
            count_tokens(prompt_tokens + completion_tokens)

    def log_request(self, name: str, route: str, status: int, seconds: float, tokens: int) -> None:
        """One answered request, into its model's log (the API's request hook)."""
        model = self._by_name.get(name)
        if model is not None:  # unregistered meanwhile: nothing to log into
            model.log.request(route, status, seconds, tokens)

    # ---- start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the models marked `preload`, as many as `max_loaded_models` allows;
        the rest load on their first request."""
        for model in self.preloaded():
            task = asyncio.create_task(self._preload(model))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._started = True
        self._sync_warm(loading=self.preloaded())

    def _changed(self) -> None:
        """A request ended, or a model unloaded or failed: loads waiting for room look again,
        and the warm workers follow which models may load next."""
        self._room_changed.set()
        self._sync_warm()

    def _sync_warm(self, loading: list[Model] | None = None) -> None:
        """Keep warm workers (fork servers, workers.warm) for the keys of the models not loaded
        or loading, the ones a load may come for. A loaded model needs none until it unloads
        again, so a server whose models all loaded cold holds none; one whose replicas it forked
        stays while they run, so a model swapped out and back forks again at once."""
        if self.warm is None or not self._started:
            return
        # A loading one too: its load may be forking from it right now.
        idle = (ModelState.UNLOADED, ModelState.FAILED, ModelState.LOADING)
        skip = loading or []
        self.warm.want(
            key
            for model in self.models.values()
            if model.state in idle and model not in skip
            for key in self._warm_keys.get(model.spec.name, [])
        )

    def preloaded(self) -> list[Model]:
        """The models loaded at start: those marked `preload`, up to max_loaded_models."""
        return [m for m in self.models.values() if m.spec.preload][
            : self.settings.max_loaded_models
        ]

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(m.close() for m in self.models.values()))
        if self.warm is not None:
            await self.warm.close()

    @staticmethod
    async def _preload(model: Model) -> None:
        with contextlib.suppress(MMServeError):  # recorded in the model's state and log
            await model.ensure_ready()

    # ---- room --------------------------------------------------------------------------------

    async def _make_room(self, incoming: Model) -> None:
        """Evict idle models until `incoming` fits; wait up to room_timeout for busy ones.

        Called by a model's load. Raises ModelUnavailable saying why there is no room.
        """
        if incoming.entry.in_cluster:
            await self._make_cluster_room(incoming)
            return
        max_models, max_memory = self.settings.max_loaded_models, self.settings.max_memory
        if max_models is None and max_memory is None:
            return
        need = incoming.estimated_bytes()
        if max_memory is not None and need > max_memory:
            raise ModelUnavailable(
                f"model {incoming.spec.name!r} needs about {need // MB} MB; "
                f"max_memory is {max_memory // MB} MB"
            )
        async with self._room_lock:
            held: list[Model] = []  # models holding their newer requests for this swap
            try:
                victims = await self._wait_for_room(incoming, need, held)
                await self._evict(victims, incoming)
            finally:
                for model in held:
                    model.release()

    async def _evict(self, victims: list[str], incoming: Model) -> None:
        for name in victims:
            victim = self.models[name]
            victim.log.event(f"evicted to make room for {incoming.spec.name!r}")
            self.evictions += 1
            self.telemetry.evicted(name)
            await victim.unload()

    # ---- room on a Ray cluster (placement: ray; the policy is engine.placement) --------------

    async def _make_cluster_room(self, incoming: Model) -> None:
        """Evict idle models of the cluster until `incoming`'s replicas fit on its nodes, as
        Ray last reported them; wait up to room_timeout for busy ones. The view comes from the
        replicas already there (their bridges' pongs): with none, nothing of ours holds room,
        and Ray places the actors or waits for room. Raises ModelUnavailable saying why."""
        resources = incoming.spec.resources
        demand = Demand(
            ray_demand(incoming.spec, incoming.estimated_bytes(1)),
            replicas=len(incoming.spec.devices),
            labels=resources.labels if resources else {},
        )
        async with self._room_lock:
            deadline = time.monotonic() + self.settings.room_timeout
            since, refreshed = time.time(), False
            while True:
                nodes = self._cluster_nodes()
                residents = [
                    self._cluster_resident(m)
                    for m in self.models.values()
                    if m.entry.in_cluster and m.replicas and m is not incoming
                ]
                victims = plan_cluster_eviction(nodes, residents, demand)
                if victims != [] and not refreshed:
                    # A view taken before this load may still count what was freed since
                    # (a model unloaded a moment ago): evict only on one taken after it.
                    await self._refresh_cluster_view(since)
                    refreshed = True
                    continue
                if victims is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelUnavailable(_no_cluster_room(incoming, demand, nodes, residents))
                self._room_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room_changed.wait(), remaining)
            await self._evict(victims, incoming)

    def _ray_replicas(self) -> list[RayReplica]:
        return [r for m in self.models.values() for r in m.replicas if isinstance(r, RayReplica)]

    def _cluster_nodes(self) -> list[NodeView]:
        """Ray's view of the nodes, from whichever replica's bridge reported last."""
        return self._cluster_view()[1]

    def _cluster_view(self) -> tuple[float, list[NodeView]]:
        views = [r.nodes_view() for r in self._ray_replicas()]
        return max(views, key=lambda view: view[0]) if views else (0.0, [])

    async def _refresh_cluster_view(self, since: float) -> None:
        """Ping a Ray replica until its bridge reports a view of the nodes taken after `since`
        (its bridge looks every 2 s), for at most FRESH_VIEW_WAIT s."""
        deadline = time.monotonic() + FRESH_VIEW_WAIT
        while self._cluster_view()[0] < since and time.monotonic() < deadline:
            replicas = self._ray_replicas()
            if not replicas:
                return
            await replicas[0].refresh()
            await asyncio.sleep(0.2)

    @staticmethod
    def _cluster_resident(model: Model) -> ClusterResident:
        holds = tuple(
            (r.node, r.reserved) for r in model.replicas if isinstance(r, RayReplica) and r.node
        )
        return ClusterResident(
            name=model.spec.name,
            last_used=model.last_used,
            busy=model.busy,
            pinned=model.spec.pinned,
            holds=holds,
        )

    async def _wait_for_room(self, incoming: Model, need: int, held: list[Model]) -> list[str]:
        """The models to evict for `incoming`, once they are idle. While it waits for busy
        ones, they go on serving what arrived up to max_swap_delay after it; what arrives
        later waits behind the swap (`Model.hold`; the caller releases `held`)."""
        started = time.monotonic()
        deadline = started + self.settings.room_timeout
        while True:
            residents = [
                self._resident(m) for m in self.models.values() if m.resident and m is not incoming
            ]
            # Warm workers (workers.warm) hold memory too, and those without children are the
            # first to go; the one this load forks from is part of its own need already.
            own = self._warm_keys.get(incoming.spec.name, [])
            warm = self.warm.resident_bytes(besides=own) if self.warm else 0
            victims = self._plan(residents, need + warm)
            if victims is None and self.warm is not None and warm:
                victims = self._plan(residents, need)
                if victims is not None:
                    await self.warm.drop_idle(keep=own)
            if victims is not None:
                return victims
            if not held:
                # Those it would evict were they idle: they serve their earlier requests, then
                # drain (a loading one serves those that waited for its load).
                idle = [dataclasses.replace(r, busy=False) for r in residents]
                for name in self._plan(idle, need) or []:
                    model = self.models[name]
                    model.hold(started + self.settings.max_swap_delay)
                    held.append(model)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelUnavailable(self._no_room(incoming, residents))
            # Woken when a request ends or a model unloads; then look again.
            self._room_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room_changed.wait(), remaining)

    def _plan(self, residents: list[Resident], need: int) -> list[str] | None:
        return plan_eviction(
            residents,
            max_models=self.settings.max_loaded_models,
            max_memory=self.settings.max_memory,
            incoming_memory=need,
        )

    @staticmethod
    def _resident(model: Model) -> Resident:
        return Resident(
            name=model.spec.name,
            last_used=model.last_used,
            busy=model.busy,
            pinned=model.spec.pinned,
            memory=model.resident_bytes(),
        )

    def _no_room(self, incoming: Model, residents: list[Resident]) -> str:
        held = (
            ", ".join(f"{r.name} ({'pinned' if r.pinned else 'busy'})" for r in residents) or "none"
        )
        limits = []
        if self.settings.max_loaded_models is not None:
            limits.append(f"max_loaded_models {self.settings.max_loaded_models}")
        if self.settings.max_memory is not None:
            limits.append(f"max_memory {self.settings.max_memory // MB} MB")
        return (
            f"no room to load model {incoming.spec.name!r} within {self.settings.room_timeout:g} s "
            f"({', '.join(limits)}); loaded models, none of them evictable: {held}"
        )

    # ---- status ------------------------------------------------------------------------------

    def status(self) -> ServerStatus:
        loaded = [m for m in self.models.values() if m.state is not ModelState.UNLOADED]
        return ServerStatus(
            loaded_models=len([m for m in loaded if m.resident]),
            max_loaded_models=self.settings.max_loaded_models,
            resident_bytes=sum(m.resident_bytes() for m in loaded) + self._warm_bytes(),
            max_memory=self.settings.max_memory,
            evictions=self.evictions,
            models=[m.status() for m in self.models.values()],
            engines={"llama.cpp": llama_cpp_version()},
            warm_workers=self.warm.status() if self.warm else [],
        )

    def _warm_bytes(self) -> int:
        return self.warm.resident_bytes() if self.warm else 0


def _no_cluster_room(
    incoming: Model, demand: Demand, nodes: list[NodeView], residents: list[ClusterResident]
) -> str:
    """Why model `incoming` found no room on the cluster: what it needs, what each node has."""
    needs = _amounts(demand.resources) + (
        f" on a node labelled {dict(demand.labels)}" if demand.labels else ""
    )
    free = "; ".join(f"node {n.node_id[:12]}: {_amounts(n.available)} free" for n in nodes)
    held = ", ".join(f"{r.name} ({'pinned' if r.pinned else 'busy'})" for r in residents) or "none"
    return (
        f"no room on the Ray cluster for model {incoming.spec.name!r} within "
        f"{incoming.settings.room_timeout:g} s: {demand.replicas} replica(s) of {needs}; "
        f"{free}; models on the cluster, none of them evictable: {held}"
    )


def _amounts(resources: Mapping[str, float]) -> str:
    """{'CPU': 1.0, 'memory': 2.5e8} -> 'CPU 1, memory 238 MB'."""
    parts = []
    for name, amount in sorted(resources.items()):
        if name == "memory" or name.endswith("memory"):
            parts.append(f"{name} {amount / MB:.0f} MB")
        elif not name.startswith("node:"):  # Ray's own per-node marker resources
            parts.append(f"{name} {amount:g}")
    return ", ".join(parts) or "nothing"
