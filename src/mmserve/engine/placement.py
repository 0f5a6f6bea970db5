"""Room on a Ray cluster: which idle models to unload so that one more fits on some node.

A pure policy, no I/O, as `engine.eviction` is for this machine. The room is the nodes': each
node's free resources as Ray last reported them (`NodeView.available`: CPU, GPU, memory in
bytes, custom ones), what each replica of the incoming model reserves (`Demand`), and what the
replicas of the models already on the cluster hold (`ClusterResident`), freed by unloading them.
The manager gathers these facts, asks `plan_cluster_eviction`, and carries out the answer.

Replicas are placed greedily, each on the first node (in the order given) that has its labels
and its resources free; a node's preferred labels are Ray's business, not a constraint here.
Victims are taken least recently used first among the idle models holding something on a node
the incoming model may run on (freeing another node would not help it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mmserve.replicas.ray import NodeView

__all__ = ["ClusterResident", "Demand", "fits", "plan_cluster_eviction"]

EPSILON = 1e-9  # Ray's amounts are floats (fractional CPUs): compare with a little slack


@dataclass(frozen=True)
class Demand:
    """What each replica of the incoming model reserves, and on which nodes it may run."""

    resources: Mapping[str, float]
    replicas: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)  # the node must have them


@dataclass(frozen=True)
class ClusterResident:
    """A model with replicas on the cluster, and what each holds on which node."""

    name: str
    last_used: float  # smaller is older
    busy: bool  # requests in flight, or loading/unloading: never evicted
    pinned: bool
    holds: tuple[tuple[str, Mapping[str, float]], ...]  # (node id, resources) per replica


def fits(
    nodes: Sequence[NodeView], free: Mapping[str, Mapping[str, float]], demand: Demand
) -> bool:
    """Whether every replica of `demand` finds a node, with `free` resources per node id."""
    left = {node.node_id: dict(free.get(node.node_id, {})) for node in nodes}
    for _ in range(demand.replicas):
        node = next((n for n in nodes if _takes(n, left[n.node_id], demand)), None)
        if node is None:
            return False
        for name, amount in demand.resources.items():
            left[node.node_id][name] = left[node.node_id].get(name, 0.0) - amount
    return True


def _takes(node: NodeView, free: Mapping[str, float], demand: Demand) -> bool:
    if any(node.labels.get(key) != value for key, value in demand.labels.items()):
        return False
    return all(free.get(name, 0.0) + EPSILON >= amount for name, amount in demand.resources.items())


def plan_cluster_eviction(
    nodes: Sequence[NodeView], residents: Sequence[ClusterResident], demand: Demand
) -> list[str] | None:
    """The names to unload, least recently used first, so that `demand` fits on the nodes.

    `[]` when it fits already, or when there is no view of the nodes yet (nothing of ours is on
    the cluster, so nothing to evict: Ray places it, or waits for room). None when it does not
    fit even with every idle, unpinned model unloaded.
    """
    if not nodes:
        return []
    free = {node.node_id: dict(node.available) for node in nodes}
    # Only a node the incoming model may run on is worth freeing.
    usable = {
        n.node_id for n in nodes if all(n.labels.get(k) == v for k, v in demand.labels.items())
    }
    victims: list[str] = []
    for resident in sorted(residents, key=lambda r: r.last_used):
        if fits(nodes, free, demand):
            break
        if resident.busy or resident.pinned or not any(n in usable for n, _ in resident.holds):
            continue
        victims.append(resident.name)
        for node_id, held in resident.holds:
            if node_id in free:  # a node gone since: nothing of it to free
                for name, amount in held.items():
                    free[node_id][name] = free[node_id].get(name, 0.0) + amount
    return victims if fits(nodes, free, demand) else None
