"""How a model turns the max_tokens asked (or not) into the max_tokens run."""

from __future__ import annotations

import pytest

from mmserve.config import ModelSpec, Settings
from mmserve.engine.model import Model
from mmserve.engine.telemetry import NullTelemetry
from mmserve.errors import InvalidRequest
from mmserve.types import Sampling


async def no_room(_: Model) -> None:
    pass


def model(cap: int | None) -> Model:
    spec = ModelSpec(name="m", kind="llm", backend="fake", max_tokens=cap)
    return Model(
        spec, Settings(), telemetry=NullTelemetry(), make_room=no_room, on_change=lambda: None
    )


@pytest.mark.parametrize(
    ("cap", "asked", "default", "runs"),
    [
        (None, None, None, None),  # until the context or a stop
        (None, None, 16, 16),  # completions: OpenAI's default
        (8, None, 16, 8),  # ... kept within the cap
        (32, None, 16, 16),
        (8, None, None, 8),  # chat with no max_tokens: the cap
        (8, 5, 16, 5),
        (None, 500, 16, 500),
    ],
)
def test_max_tokens_run(
    cap: int | None, asked: int | None, default: int | None, runs: int | None
) -> None:
    sampling = Sampling(max_tokens=asked, default_max_tokens=default)
    assert model(cap).check_sampling(sampling).max_tokens == runs


def test_asking_above_the_cap_is_a_400() -> None:
    with pytest.raises(InvalidRequest, match="allows 8"):
        model(8).check_sampling(Sampling(max_tokens=9))
