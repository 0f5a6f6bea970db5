"""The `Replica` protocol: one running copy of a model, whatever runs it.

Every kind (a worker process, a model in this process, a remote server, a user's program)
shares the bookkeeping here (requests in flight, draining, status) and the request methods,
each of which raises `UnsupportedCapability` unless the kind implements it:

    method                      implemented by
    generate(op, request)       ProcessReplica (llm, subprocess)
    embed(request)              ProcessReplica (embedding, llm, subprocess)
    see(item)                   InProcessReplica (vision)
    call(body)                  ProcessReplica (subprocess), RemoteReplica (backend json)
    relay / relay_stream        RemoteReplica (backend openai: OpenAI requests passed as sent),
                                ServerReplica (the same, to a server program it started),
                                LlamaServerReplica (to its llama-server, GGUF text: with
                                mmserve's tool layer and OpenAI's reply shapes)

A RayReplica (placement: ray) is a ProcessReplica whose child is a bridge to a Ray actor.

Which capabilities a kind and backend offer is declared once, in `mmserve.registry`; the engine
leases a replica for a capability and calls its method, never asking what kind it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from mmserve.config import ClusterSpec
from mmserve.errors import UnsupportedCapability
from mmserve.logs import ModelLog
from mmserve.types import (
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    ReplicaStatus,
    TextEvent,
    VisionItem,
    WorkerInfo,
)
from mmserve.workers.warm import WarmPool

__all__ = ["Replica", "ReplicaHooks", "TextOp"]

TextOp = Literal["chat", "complete"]


@dataclass(frozen=True)
class ReplicaHooks:
    """What a replica is given by its model: where it logs, whom it tells when its process exits
    on its own (called on the event loop's thread), the batch sizes it runs, its heartbeat, the
    warm workers it may start from."""

    log: ModelLog
    on_exit: Callable[[Replica], None] = field(default=lambda _: None)
    on_batch: Callable[[int], None] | None = None
    heartbeat: tuple[float, float] | None = None  # (interval, timeout) of worker pings
    # placement: ray only (replicas.ray): the cluster to place the replica on, and the bytes its
    # actor reserves there when the spec names none (the model's last measurement, or estimate).
    cluster: ClusterSpec | None = None
    memory: int | None = None
    # The server's pool of started, pre-imported workers (workers.warm); a replica that runs
    # mmserve's own worker takes one from it. None: every start spawns a new process.
    warm: WarmPool | None = None


class Replica:
    """What every replica kind shares: the count of requests in flight, and waiting for it.

    `in_flight` counts requests leased to it and not yet finished (see `Model.lease`); the model
    reads it to pick the least busy replica and to drain before a stop. Only the event loop's
    thread touches it, so it needs no lock. Subclasses start, stop and serve.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.in_flight = 0
        self.requests_served = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.loaded_at: float | None = None
        self.load_seconds: float | None = None

    @property
    def info(self) -> WorkerInfo:
        """What the loaded model can do (valid once started)."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None

    @property
    def alive(self) -> bool:
        return self.loaded_at is not None

    @property
    def returncode(self) -> int | None:
        """How its process ended, for a kind that has one of its own."""
        return None

    async def start(self, timeout: float) -> None:
        started = time.monotonic()
        await self._start(timeout)
        self.load_seconds = time.monotonic() - started
        self.loaded_at = time.time()

    async def _start(self, timeout: float) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def resident_bytes(self) -> int | None:
        return None

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            pid=self.pid,
            device=self.device,
            in_flight=self.in_flight,
            requests_served=self.requests_served,
            resident_bytes=self.resident_bytes(),
            loaded_at=self.loaded_at,
            load_seconds=self.load_seconds,
            details=self._details(),
        )

    def _details(self) -> dict[str, Any]:
        """What this kind adds to its status (batches, task...)."""
        return {}

    def acquire(self) -> None:
        """Count one more request; the model's lease calls this and `release`."""
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        self.requests_served += 1
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight (at most `timeout` s); True if it drained."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- requests: what a kind cannot do is UnsupportedCapability (a 400) ---------------------

    def generate(
        self, op: TextOp, request: ChatRequest | CompletionRequest
    ) -> AsyncGenerator[TextEvent, None]:
        """Stream one generation: TextDelta events, then one TextDone."""
        raise self._unsupported("text generation")

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        raise self._unsupported("embeddings")

    async def see(self, item: VisionItem) -> list[dict[str, Any]]:
        """One result per image of `item`, in order."""
        raise self._unsupported("images")

    async def call(self, body: dict[str, Any]) -> Any:
        """The model's own operation: JSON in, JSON out."""
        raise self._unsupported("its own calls")

    async def relay(self, path: str, body: dict[str, Any]) -> Any:
        """An OpenAI request passed on as it came (`path` under the upstream's base URL)."""
        raise self._unsupported("relayed requests")

    def relay_stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        raise self._unsupported("relayed requests")

    def _unsupported(self, what: str) -> UnsupportedCapability:
        return UnsupportedCapability(f"a {type(self).__name__} does not serve {what}")
