"""Which idle models to unload to make room for one more: a pure policy, no I/O.

The manager gathers the facts (`Resident`), asks `plan_eviction`, and carries out the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Resident", "plan_eviction"]


@dataclass(frozen=True)
class Resident:
    """A model that holds memory now: loaded, loading or unloading."""

    name: str
    last_used: float  # when its last request ended (or it loaded); smaller is older
    busy: bool  # requests in flight, or in the middle of a load or unload: never evicted
    pinned: bool  # the operator asked never to evict it
    memory: int  # resident bytes of all its replicas


def plan_eviction(
    residents: Sequence[Resident],
    *,
    max_models: int | None,
    max_memory: int | None,
    incoming_memory: int,
) -> list[str] | None:
    """The names to unload, least recently used first, so that one more model fits.

    `[]` when it fits already; None when it cannot fit even after unloading every idle,
    unpinned model (the caller waits for a busy one to finish, or gives up).
    """
    count = len(residents)
    memory = sum(r.memory for r in residents)

    def fits() -> bool:
        return (max_models is None or count + 1 <= max_models) and (
            max_memory is None or memory + incoming_memory <= max_memory
        )

    victims: list[str] = []
    for resident in sorted(residents, key=lambda r: r.last_used):
        if fits():
            break
        if resident.busy or resident.pinned:
            continue
        victims.append(resident.name)
        count -= 1
        memory -= resident.memory
    return victims if fits() else None
