"""What the engine reports as it works, for whoever measures it (the API's Prometheus metrics).

The engine calls these hooks and knows nothing of Prometheus; `NullTelemetry` is the default.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

__all__ = ["REQUEST_TALLY", "NullTelemetry", "Tally", "Telemetry"]


@dataclass
class Tally:
    """What one HTTP request cost in tokens; the engine adds to it, the request log reads it."""

    tokens: int = 0


# Set by the HTTP layer for each request. A mutable object, so that additions made in a child
# task (a streamed response runs in one) are seen by the task that set it.
REQUEST_TALLY: ContextVar[Tally | None] = ContextVar("request_tally", default=None)


def count_tokens(tokens: int) -> None:
    if (tally := REQUEST_TALLY.get()) is not None:
        tally.tokens += tokens


class Telemetry(Protocol):
    def first_token(self, model: str, seconds: float) -> None: ...

    def generated(self, model: str, tokens: int) -> None: ...

    def embedded(self, model: str, inputs: int) -> None: ...

    def loaded(self, model: str, seconds: float) -> None: ...

    def evicted(self, model: str) -> None: ...

    def restarted(self, model: str) -> None: ...

    def batched(self, model: str, size: int) -> None: ...


class NullTelemetry:
    def first_token(self, model: str, seconds: float) -> None:
        pass

    def generated(self, model: str, tokens: int) -> None:
        pass

    def embedded(self, model: str, inputs: int) -> None:
        pass

    def loaded(self, model: str, seconds: float) -> None:
        pass

    def evicted(self, model: str) -> None:
        pass

    def restarted(self, model: str) -> None:
        pass

    def batched(self, model: str, size: int) -> None:
        pass
