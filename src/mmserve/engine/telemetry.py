"""What the engine reports as it works, for whoever measures it (the API's Prometheus metrics).

The engine calls these hooks and knows nothing of Prometheus; `NullTelemetry` is the default.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["REQUEST_TALLY", "NullTelemetry", "StreamMeter", "Tally", "Telemetry"]


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

    def served_ahead_of_swap(self, model: str) -> None: ...

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

    def served_ahead_of_swap(self, model: str) -> None:
        pass

    def batched(self, model: str, size: int) -> None:
        pass


class StreamMeter:
    """Reads a relayed OpenAI event stream as it passes, in whatever pieces it comes: whether a
    token has come yet, and how many tokens the stream cost (its `usage` when the upstream sends
    one, else llama-server's `timings`, else one per content delta, which is what llama-server
    and OpenAI send). The bytes themselves pass on untouched."""

    def __init__(self) -> None:
        self._pending = b""
        self.deltas = 0
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None

    def feed(self, chunk: bytes) -> bool:
        """Take the next piece; True when it carried the stream's first token."""
        before = self.deltas
        *events, self._pending = (self._pending + chunk).split(b"\n")
        for line in events:
            if line.startswith(b"data:") and (event := _json(line[5:])) is not None:
                self._read(event)
        return before == 0 and self.deltas > 0

    @property
    def tokens(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens), 0 where unknown."""
        if self.usage is not None:
            return _int(self.usage.get("prompt_tokens")), _int(self.usage.get("completion_tokens"))
        if self.timings is not None:
            # prompt_n counts only the tokens not found in its prompt cache (cache_n).
            prompt = _int(self.timings.get("prompt_n")) + _int(self.timings.get("cache_n"))
            return prompt, _int(self.timings.get("predicted_n"))
        return 0, self.deltas

    def _read(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self.timings = event["timings"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            if choice.get("text") or delta.get("content") or delta.get("tool_calls"):
                self.deltas += 1


def _json(data: bytes) -> dict[str, Any] | None:
    data = data.strip()
    if not data.startswith(b"{"):
        return None  # [DONE], or not ours to read
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
