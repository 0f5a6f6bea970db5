"""The cluster's room policy as a table: which idle models to unload so one more fits a node."""

from __future__ import annotations

import pytest

from mmserve.engine.placement import ClusterResident, Demand, fits, plan_cluster_eviction
from mmserve.replicas.ray import NodeView

GB = 2**30


def node(node_id: str, cpus: float, memory: float = 8 * GB, **labels: str) -> NodeView:
    return NodeView(node_id, labels, {"CPU": 4, "memory": 8 * GB}, {"CPU": cpus, "memory": memory})


def model(
    name: str, used: float, *holds: tuple[str, float], busy: bool = False, pinned: bool = False
):
    return ClusterResident(name, used, busy, pinned, tuple((n, {"CPU": cpus}) for n, cpus in holds))


ONE_CPU = Demand({"CPU": 1})

A0 = [node("a", 0)]
CASES = [
    # (what, nodes, residents, demand, victims)
    ("free room on a node", [node("a", 1)], [], ONE_CPU, []),
    ("no view yet: Ray decides", [], [model("x", 1, ("a", 4))], ONE_CPU, []),
    (
        "oldest idle goes first",
        A0,
        [model("new", 2, ("a", 1)), model("old", 1, ("a", 1))],
        ONE_CPU,
        ["old"],
    ),
    (
        "busy and pinned stay",
        A0,
        [
            model("b", 1, ("a", 1), busy=True),
            model("p", 2, ("a", 1), pinned=True),
            model("i", 3, ("a", 1)),
        ],
        ONE_CPU,
        ["i"],
    ),
    ("nothing evictable", A0, [model("b", 1, ("a", 1), busy=True)], ONE_CPU, None),
    (
        "freeing the wrong node does not help",
        [node("a", 0, zone="x"), node("b", 0, zone="y")],
        [model("on-b", 1, ("b", 1)), model("on-a", 2, ("a", 1))],
        Demand({"CPU": 1}, labels={"zone": "x"}),
        ["on-a"],
    ),
    ("no node has the label", [node("a", 4)], [], Demand({"CPU": 1}, labels={"zone": "x"}), None),
    ("a model on a lost node frees nothing", A0, [model("ghost", 1, ("gone", 4))], ONE_CPU, None),
    (
        "two replicas need two slots",
        [node("a", 1), node("b", 0)],
        [model("x", 1, ("b", 1))],
        Demand({"CPU": 1}, replicas=2),
        ["x"],
    ),
    (
        "memory counts too",
        [node("a", 4, memory=1 * GB)],
        [],
        Demand({"CPU": 1, "memory": 2 * GB}),
        None,
    ),
    ("fractions with slack", [node("a", 0.30000000000000004)], [], Demand({"CPU": 0.3}), []),
]


@pytest.mark.parametrize(
    ("nodes", "residents", "demand", "victims"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan(nodes, residents, demand, victims) -> None:
    assert plan_cluster_eviction(nodes, residents, demand) == victims


def test_replicas_spread_over_nodes_with_room() -> None:
    nodes = [node("a", 1), node("b", 1)]
    free = {n.node_id: n.available for n in nodes}
    assert fits(nodes, free, Demand({"CPU": 1}, replicas=2))
    assert not fits(nodes, free, Demand({"CPU": 1}, replicas=3))
