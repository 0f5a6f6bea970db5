"""LoadPhases: where a start's time went, from the child's clock and the parent's."""

from __future__ import annotations

import pytest

from mmserve.workers.protocol import LoadTimes
from mmserve.workers.supervisor import LoadPhases

TIMES = LoadTimes(started=10.5, imported=13.0, weights_s=2.0)


@pytest.mark.parametrize(
    ("began", "spawned", "process_s", "imports_s", "saved_s"),
    [
        (10.0, None, 0.5, 2.5, None),  # cold: spawned at 10, main() at 10.5, imported at 13
        (20.0, 9.0, 0.0, 0.0, 4.0),  # warm, taken long after its imports: all of them saved
        (12.0, 10.0, 0.0, 1.0, 2.0),  # warm, taken mid-import: what was left of it
        (10.2, 10.0, 0.3, 2.5, 0.2),  # warm, taken before its main() ran
    ],
)  # fmt: skip
def test_phases_from_the_child_times(
    began: float, spawned: float | None, process_s: float, imports_s: float, saved_s: float | None
) -> None:
    phases = LoadPhases.measure(TIMES, began, ready=began + 5.0, spawned=spawned)
    assert (phases.process_s, phases.imports_s, phases.saved_s) == (process_s, imports_s, saved_s)
    assert phases.weights_s == 2.0 and phases.warmup_s == 0.0 and phases.total_s == 5.0
    assert phases.warm is (spawned is not None)


def test_a_child_that_reports_no_times_has_only_its_total() -> None:
    phases = LoadPhases.measure(None, 1.0, ready=3.5)
    assert phases.to_json() == {
        "total_s": 2.5,
        "warm": False,
        "process_s": None,
        "imports_s": None,
        "weights_s": None,
        "warmup_s": None,
    }
