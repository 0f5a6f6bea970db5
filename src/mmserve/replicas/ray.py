"""RayReplica: one replica of a `placement: ray` model, a Ray actor on a node of the cluster.

    server ── worker protocol (pipe) ── bridge (Ray driver) ── Ray ── ReplicaActor (backend)
    this module                          workers.ray_bridge           workers.ray_actor

The actor runs the same backend code a worker process runs (llama-cpp-python, sentence-
transformers, the fake), on whatever node Ray places it. Between it and the server stands one
bridge process per replica, which speaks the worker protocol: so this class *is* a
ProcessReplica whose child is the bridge, and everything a worker's replica does (batching
embeddings, streams, cancel, pings and the hung-child kill, crash restarts with backoff, stop)
holds as is. Why a bridge and not Ray in the server's own process: Ray's core worker ends the
process that holds it once the cluster's GCS has been gone a minute; here that ends a bridge,
and the model fails or restarts while the server serves everything else (workers.ray_bridge).

Placement. The actor is created with `actor_options`: what its spec's `resources` ask (CPUs:
default its threads, which are also its thread budget; GPUs; custom resources; node labels,
required or preferred), plus `memory`, Ray's reservation of bytes on the node: by default what
this model's replica measured at its last unload (else weights plus overhead), which the engine
hands over in `hooks.memory`. Ray places it on a node with all of that free. The engine's room
check for the cluster (engine.placement) reads the same demand (`ray_demand`) and Ray's view of
the nodes, which each bridge reports in its pongs (`nodes_view`).

Status: `pid` is the bridge's (a process of this machine, as every replica's pid is); the
details add the actor's node, its id and pid there, what it reserved, its measured memory
(`resident_bytes`, the actor's RSS on its node), and its counters (generations running,
cancelled). Nothing here imports Ray: only the bridge and the actor do.
"""

from __future__ import annotations

import math
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from mmserve.backends.base import BackendSpec
from mmserve.config import ClusterSpec, ModelSpec, RayResources
from mmserve.errors import ModelUnavailable
from mmserve.replicas.base import ReplicaHooks
from mmserve.replicas.process import ProcessReplica, backend_spec
from mmserve.workers.main import PARENT_PID_ENV
from mmserve.workers.ray_bridge import RayLaunch
from mmserve.workers.supervisor import child_env

__all__ = ["NodeView", "RayReplica", "actor_options", "ray_demand", "ray_launch"]

REFRESH_TIMEOUT = 2.0  # seconds a refresh waits for the bridge's pong
# Shown in the status as they come from the bridge (the node view is kept apart: it is big).
_SHOWN = ("node", "node_ip", "actor_id", "actor_pid", "actor_name", "active", "cancelled",
          "served", "deltas")  # fmt: skip


@dataclass(frozen=True)
class NodeView:
    """One live node as Ray sees it: its labels, and its total and free resources (Ray's
    names: CPU, GPU, memory in bytes, custom ones)."""

    node_id: str
    labels: dict[str, str]
    total: dict[str, float]
    available: dict[str, float]


def _resources(spec: ModelSpec) -> RayResources:
    return spec.resources or RayResources.model_validate({})


def actor_threads(spec: ModelSpec) -> int:
    """The backend's threads: the spec's, else as many as the CPUs it reserves (at least 1)."""
    cpus = _resources(spec).num_cpus
    return spec.threads or max(1, math.floor(cpus or 1))


def ray_demand(spec: ModelSpec, memory: int | None) -> dict[str, float]:
    """What one replica's actor reserves on its node, in Ray's resource names."""
    resources = _resources(spec)
    cpus = resources.num_cpus if resources.num_cpus is not None else float(actor_threads(spec))
    reserved = resources.memory if resources.memory is not None else memory
    demand = {"CPU": cpus, "GPU": resources.num_gpus, "memory": float(reserved or 0)}
    demand.update(resources.custom)
    return {name: amount for name, amount in demand.items() if amount > 0}


def actor_options(spec: ModelSpec, memory: int | None, backend: BackendSpec) -> dict[str, Any]:
    """The Ray options one replica's actor is created with."""
    resources = _resources(spec)
    demand = ray_demand(spec, memory)
    options: dict[str, Any] = {
        "name": f"mmserve.{spec.name}.{uuid.uuid4().hex[:8]}",  # `ray list actors` tells whose
        "num_cpus": demand.get("CPU", 0.0),
        "num_gpus": demand.get("GPU", 0.0),
        "max_restarts": 0,  # the engine restarts a replica, where Ray places the new one
        # The worker's thread budget and passive OpenMP waiting, on the node too (Ray sets
        # CUDA_VISIBLE_DEVICES to the GPUs it gave the actor).
        "runtime_env": {"env_vars": _thread_env(backend)},
    }
    if demand.get("memory"):
        options["memory"] = int(demand["memory"])
    if resources.custom:
        options["resources"] = dict(resources.custom)
    if resources.prefer_labels:
        # Ray tries the label selector first, then each fallback in turn: here the required
        # labels alone, so a replica whose preferred node is gone or full goes elsewhere.
        options["label_selector"] = {**resources.labels, **resources.prefer_labels}
        options["fallback_strategy"] = [{"label_selector": dict(resources.labels)}]
    elif resources.labels:
        options["label_selector"] = dict(resources.labels)
    return options


def _thread_env(backend: BackendSpec) -> dict[str, str]:
    env = child_env(backend, base={})
    return {k: v for k, v in env.items() if k not in ("CUDA_VISIBLE_DEVICES", PARENT_PID_ENV)}


def ray_launch(spec: ModelSpec, cluster: ClusterSpec, memory: int | None) -> RayLaunch:
    """What one replica's bridge starts: the backend spec as the node loads it (its GPU is the
    one Ray gives the actor, which sees it as cuda:0), the cluster, the actor's options."""
    device = "cuda:0" if _resources(spec).num_gpus > 0 else "cpu"
    backend = backend_spec(spec, device).model_copy(update={"threads": actor_threads(spec)})
    return RayLaunch(
        backend=backend,
        address=cluster.address,
        namespace=cluster.namespace,
        connect_timeout=cluster.connect_timeout,
        actor=actor_options(spec, memory, backend),
    )


class RayReplica(ProcessReplica):
    """One replica of a model with `placement: ray` (see the module doc)."""

    def __init__(self, spec: ModelSpec, device: str, hooks: ReplicaHooks) -> None:
        super().__init__(spec, device, hooks)
        self.reserved = ray_demand(spec, hooks.memory)

    def _command(self, spec: ModelSpec, device: str, hooks: ReplicaHooks) -> list[str] | None:
        if hooks.cluster is None:  # the config refuses placement: ray without a cluster
            raise ModelUnavailable(f"model {spec.name!r} has placement: ray but no cluster")
        launch = ray_launch(spec, hooks.cluster, hooks.memory)
        return [sys.executable, "-m", "mmserve.workers.ray_bridge", launch.model_dump_json()]

    @property
    def node(self) -> str | None:
        """The id of the node its actor runs on (known once started)."""
        node = self.worker.details.get("node")
        return node if isinstance(node, str) else None

    def resident_bytes(self) -> int | None:
        """The actor's resident memory on its node, as its last report measured it."""
        measured = self.worker.details.get("resident_bytes")
        return measured if isinstance(measured, int) and self.alive else None

    async def refresh(self) -> None:
        """Ping the bridge now: its pong brings its latest view of the nodes."""
        await self.worker.ping(REFRESH_TIMEOUT)

    def nodes_view(self) -> tuple[float, list[NodeView]]:
        """Ray's view of the nodes at the bridge's last report: (when, the nodes)."""
        details = self.worker.details
        nodes = [
            NodeView(n["node_id"], n["labels"], n["total"], n["available"])
            for n in details.get("nodes") or []
        ]
        return float(details.get("nodes_at") or 0.0), nodes

    def _details(self) -> dict[str, Any]:
        reported = {k: self.worker.details[k] for k in _SHOWN if k in self.worker.details}
        return {**super()._details(), "placement": "ray", **reported, "reserved": self.reserved}
