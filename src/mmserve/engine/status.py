"""Typed status: what the engine reports about a model and the room, for the API, the CLI (as
JSON) and the metrics. Read-only snapshots, taken on the event loop's thread."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmserve.types import Capability, ReplicaStatus

__all__ = ["ModelStatus", "ReplicaStatus", "ServerStatus"]  # ReplicaStatus: from mmserve.types


@dataclass(frozen=True)
class ModelStatus:
    name: str
    aliases: list[str]
    kind: str
    backend: str | None
    state: str
    capabilities: list[Capability]
    in_flight: int
    waiting: int
    restarts: int
    loads: int
    pinned: bool
    keep_alive: float
    last_error: str | None
    log: list[str]
    last_used: float | None
    resident_bytes: int
    replicas: list[ReplicaStatus]
    starting: list[ReplicaStatus]  # replicas a load or restart is starting now
    stopping: list[ReplicaStatus]  # replicas an unload or a removal is stopping now

    def to_json(self) -> dict[str, Any]:
        lists = ("replicas", "starting", "stopping")
        body = {k: v for k, v in vars(self).items() if k not in lists}
        return {**body, **{k: [r.to_json() for r in getattr(self, k)] for k in lists}}


@dataclass(frozen=True)
class ServerStatus:
    """Every model, and the room they share."""

    loaded_models: int
    max_loaded_models: int | None
    resident_bytes: int
    max_memory: int | None
    evictions: int
    models: list[ModelStatus]
    engines: dict[str, str | None]  # the versions of what serves the models (llama.cpp's)
    # Warm workers (fork servers, workers.warm): key, pid, ready, children, unique_bytes (its
    # own memory, in resident_bytes too).
    warm_workers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body = {k: v for k, v in vars(self).items() if k != "models"}
        return {**body, "models": [m.to_json() for m in self.models]}
