"""The eviction policy as a table: residents and limits in, victims out."""

from __future__ import annotations

import pytest

from mmserve.engine.eviction import Resident, plan_eviction

MB = 2**20


def r(
    name: str, last_used: float, *, busy: bool = False, pinned: bool = False, mb: int = 100
) -> Resident:
    return Resident(name=name, last_used=last_used, busy=busy, pinned=pinned, memory=mb * MB)


CASES = [
    # (residents, max_models, max_memory_mb, incoming_mb, expected victims)
    ([], 1, None, 100, []),
    ([r("a", 1)], None, None, 100, []),
    ([r("a", 1)], 2, None, 100, []),
    ([r("a", 1)], 1, None, 100, ["a"]),
    ([r("a", 2), r("b", 1)], 2, None, 100, ["b"]),  # least recently used goes first
    ([r("a", 2), r("b", 1)], 1, None, 100, ["b", "a"]),
    ([r("a", 2), r("b", 1, busy=True)], 2, None, 100, ["a"]),  # busy: skipped, never evicted
    ([r("a", 2), r("b", 1, pinned=True)], 2, None, 100, ["a"]),  # pinned likewise
    ([r("a", 1, busy=True)], 1, None, 100, None),  # no room until a finishes
    ([r("a", 1, pinned=True)], 1, None, 100, None),
    ([r("a", 1, mb=300), r("b", 2, mb=300)], None, 1000, 300, []),
    ([r("a", 1, mb=300), r("b", 2, mb=300)], None, 800, 300, ["a"]),
    ([r("a", 1, mb=300), r("b", 2, mb=300)], None, 500, 300, ["a", "b"]),
    ([r("a", 1, mb=300), r("b", 2, mb=300, busy=True)], None, 500, 300, None),
    (
        [r("a", 1, mb=50), r("b", 2, mb=500)],
        None,
        700,
        300,
        ["a", "b"],
    ),  # oldest first, even if small
    ([r("a", 1), r("b", 2)], 3, 250, 100, ["a"]),  # both limits must hold
    ([], None, 100, 300, None),  # never fits
]


@pytest.mark.parametrize(("residents", "max_models", "max_mb", "incoming_mb", "expected"), CASES)
def test_plan_eviction(
    residents: list[Resident],
    max_models: int | None,
    max_mb: int | None,
    incoming_mb: int,
    expected: list[str] | None,
) -> None:
    got = plan_eviction(
        residents,
        max_models=max_models,
        max_memory=None if max_mb is None else max_mb * MB,
        incoming_memory=incoming_mb * MB,
    )
    assert got == expected
