"""What the engine reports as it works, for whoever measures it (the API's Prometheus metrics).

The engine calls these hooks and knows nothing of Prometheus; `NullTelemetry` is the default.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NullTelemetry", "Telemetry"]


class Telemetry(Protocol):
    def first_token(self, model: str, seconds: float) -> None: ...

    def generated(self, model: str, tokens: int) -> None: ...

    def embedded(self, model: str, inputs: int) -> None: ...

    def loaded(self, model: str, seconds: float) -> None: ...

    def evicted(self, model: str) -> None: ...

    def restarted(self, model: str) -> None: ...


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
