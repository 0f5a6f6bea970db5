"""Per-model log: what the model's process printed and its lifecycle events, in a bounded ring."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["LogRecord", "ModelLog"]


@dataclass(frozen=True)
class LogRecord:
    time: float
    source: str  # "stderr" (the model's process), "event" (load, unload, crash)
    message: str


class ModelLog:
    """A bounded ring of records for one model; older records fall off the end.

    Records are also passed to the `mmserve.model.<name>` logger at DEBUG (stderr lines) or
    INFO (events), so an operator can route them with the standard logging config.
    """

    def __init__(self, model: str, capacity: int = 1000) -> None:
        self.records: deque[LogRecord] = deque(maxlen=capacity)
        self._logger = logging.getLogger(f"mmserve.model.{model}")

    def stderr(self, line: str) -> None:
        self._add("stderr", line, logging.DEBUG)

    def event(self, message: str) -> None:
        self._add("event", message, logging.INFO)

    def tail(self, count: int = 20) -> list[str]:
        return [r.message for r in list(self.records)[-count:]]

    def _add(self, source: str, message: str, level: int) -> None:
        self.records.append(LogRecord(time.time(), source, message))
        self._logger.log(level, "%s", message)
