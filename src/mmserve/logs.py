"""Per-model log: what the model's process printed, its lifecycle events, and one record per
request, in a bounded ring (and optionally a file)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LogRecord", "ModelLog"]


@dataclass(frozen=True)
class LogRecord:
    seq: int  # increasing for the life of the server: `since` and `follow` use it
    time: float
    source: str  # "stderr" (the model's process), "event" (load, unload, crash), "request"
    message: str
    request: dict[str, Any] | None = field(default=None)  # route, status, latency_ms, tokens

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class ModelLog:
    """A bounded ring of records for one model; older records fall off the end.

    Records are also passed to the `mmserve.model.<name>` logger (stderr lines at DEBUG, the rest
    at INFO) and, when `path` is given, appended to that file as JSON lines.
    """

    def __init__(self, model: str, capacity: int = 1000, path: Path | None = None) -> None:
        self.records: deque[LogRecord] = deque(maxlen=capacity)
        self.path = path
        self._logger = logging.getLogger(f"mmserve.model.{model}")
        self._seq = 0
        self._added = asyncio.Event()  # set when a record arrives; followers wait on it

    def stderr(self, line: str) -> None:
        self._add("stderr", line, logging.DEBUG)

    def event(self, message: str) -> None:
        self._add("event", message, logging.INFO)

    def request(self, route: str, status: int, latency: float, tokens: int) -> None:
        details = {
            "route": route,
            "status": status,
            "latency_ms": round(latency * 1000, 1),
            "tokens": tokens,
        }
        self._add("request", f"{route} {status} {latency * 1000:.0f} ms", logging.INFO, details)

    def tail(self, count: int = 20) -> list[str]:
        return [r.message for r in list(self.records)[-count:]]

    def since(self, seq: int = 0) -> list[LogRecord]:
        """The records newer than `seq` (all of them for 0)."""
        return [r for r in self.records if r.seq > seq]

    async def follow(self, seq: int = 0) -> AsyncIterator[LogRecord]:
        """The records newer than `seq`, then each new one as it arrives, until cancelled."""
        while True:
            for record in self.since(seq):
                seq = record.seq
                yield record
            self._added.clear()
            await self._added.wait()

    def clear(self) -> int:
        cleared = len(self.records)
        self.records.clear()
        return cleared

    def _add(
        self, source: str, message: str, level: int, request: dict[str, Any] | None = None
    ) -> None:
        self._seq += 1
        record = LogRecord(self._seq, time.time(), source, message, request)
        self.records.append(record)
        self._added.set()
        self._logger.log(level, "%s", message)
        if self.path is not None:
            with self.path.open("a") as file:  # a line per record, so `tail -f` works
                file.write(json.dumps(record.to_json()) + "\n")
