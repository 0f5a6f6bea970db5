"""Pure helpers for text generation backends: stop strings over a token stream."""

from __future__ import annotations

__all__ = ["StopMatcher"]


class StopMatcher:
    """Cuts streamed text at the first stop string, across token boundaries.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is one, so a stop string never leaks to the client half-sent.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add a piece; return (text safe to send now, whether a stop string was reached)."""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        hold = self._held_back()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        """What is still held back, once the generation ended without a stop string."""
        out, self._pending = self._pending, ""
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:size]):
                    best = size
                    break
        return best
