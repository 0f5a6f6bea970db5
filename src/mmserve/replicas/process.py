"""ProcessReplica: a child process on one device (llm, embedding, subprocess), spoken to with
the worker protocol (see `workers.supervisor`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator
from typing import Any

import psutil

from mmserve.backends.base import BackendSpec
from mmserve.config import ModelSpec
from mmserve.errors import BackendError
from mmserve.registry import Entry, missing_packages
from mmserve.replicas.base import Replica, ReplicaHooks, TextOp
from mmserve.replicas.batcher import Batcher
from mmserve.types import (
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    TextDelta,
    TextDone,
    TextEvent,
    WorkerInfo,
)
from mmserve.workers.protocol import VECTORS_ENCODING, Chunk, Result, embed_result_of
from mmserve.workers.supervisor import WorkerProcess
from mmserve.workers.warm import WarmKey

__all__ = ["ProcessReplica", "backend_spec", "default_threads", "warm_keys"]


def _spread(total: int, count: int) -> list[int]:
    """`total` tokens over `count` inputs, as evenly as whole numbers allow (for a program that
    does not count each input's tokens)."""
    share, extra = divmod(total, count)
    return [share + (i < extra) for i in range(count)]


def default_threads() -> int:
    """Half the logical CPUs, as llama.cpp chooses by default: with OMP_WAIT_POLICY=PASSIVE a
    small model decodes faster on 1 thread than on 2 of a 2-core machine (docs/benchmarks.md),
    and the other half is left to the server and to other models."""
    return max(1, (os.cpu_count() or 2) // 2)


def backend_spec(spec: ModelSpec, device: str) -> BackendSpec:
    """The spec one replica's backend loads from: the model's spec placed on one device."""
    gpu_layers = spec.gpu_layers if spec.gpu_layers is not None else (0 if device == "cpu" else -1)
    return BackendSpec(
        name=spec.name,
        kind=spec.kind,
        backend=spec.backend or "",
        source=spec.source,
        context_length=spec.context_length,
        gpu_layers=gpu_layers,
        threads=spec.threads or default_threads(),
        device=device,
        options=spec.options,
    )


def warm_keys(spec: ModelSpec, found: Entry) -> list[WarmKey]:
    """The warm-worker keys (workers.warm) of a model's replicas, one per device: for a model
    whose replicas run mmserve's own worker here with installed packages; none for anything else
    (a program's own `command`, llama-server, remote, managed, in-process, Ray)."""
    own_worker = found.replica == f"{__name__}:{ProcessReplica.__name__}"
    if not own_worker or found.implementation is None or spec.command:
        return []
    if missing_packages(found) is not None:  # its load fails with the reason; no use warming
        return []
    return list(dict.fromkeys(WarmKey.of(backend_spec(spec, d)) for d in spec.devices))


class ProcessReplica(Replica):
    """One replica of an llm, embedding or subprocess model: its own child process on one
    device, spoken to with the worker protocol."""

    def __init__(self, spec: ModelSpec, device: str, hooks: ReplicaHooks) -> None:
        super().__init__(device)
        # Concurrent embedding requests become one `embed` op (see replicas.batcher).
        self.embedder = Batcher(
            self._embed_batch,
            max_batch_size=spec.max_batch_size,
            max_wait=spec.batch_wait,
            on_batch=hooks.on_batch,
            ahead=True,  # the worker runs what it is sent in order, one at a time
        )
        self.worker = WorkerProcess(
            backend_spec(spec, device),
            hooks.log,
            on_exit=lambda _: hooks.on_exit(self),
            command=self._command(spec, device, hooks),
            heartbeat=hooks.heartbeat,
            warm=hooks.warm,  # used only for mmserve's own worker (no command)
        )

    def _command(self, spec: ModelSpec, device: str, hooks: ReplicaHooks) -> list[str] | None:
        """The child to run: a user's program (kind: subprocess), else (None) mmserve's worker.
        A Ray replica runs its bridge to the cluster here instead (replicas.ray)."""
        return spec.command

    @property
    def info(self) -> WorkerInfo:
        return self.worker.info

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    @property
    def alive(self) -> bool:
        return self.loaded_at is not None and not self.worker.exited.is_set()

    @property
    def returncode(self) -> int | None:
        return self.worker.returncode

    async def _start(self, timeout: float) -> None:
        await self.worker.start(timeout)

    async def stop(self) -> None:
        await self.embedder.close("the model was unloaded while the request waited")
        await self.worker.stop()

    def _details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"batches": self.embedder.stats.to_json()}
        if self.worker.load is not None:  # where its start's time went (workers.supervisor)
            details["load"] = self.worker.load.to_json()
        return details

    def resident_bytes(self) -> int | None:
        with contextlib.suppress(psutil.Error, TypeError):
            return int(psutil.Process(self.pid).memory_info().rss)
        return None

    async def generate(
        self, op: TextOp, request: ChatRequest | CompletionRequest
    ) -> AsyncGenerator[TextEvent, None]:
        """Stream one generation: TextDelta events, then one TextDone."""
        replies = self.worker.request(op, request.model_dump())
        async with contextlib.aclosing(replies):
            async for reply in replies:
                if isinstance(reply, Chunk):
                    yield TextDelta.model_validate(reply.data)
                else:
                    yield TextDone.model_validate(reply.data)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        return await self.embedder.submit(request)

    async def _embed_batch(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        """Several requests' inputs as one `embed` op; each gets its vectors and its tokens."""
        if len(requests) == 1:
            return [await self._embed(requests[0])]
        inputs = [text for request in requests for text in request.inputs]
        merged = await self._embed(EmbedRequest(inputs=inputs))
        counts = merged.input_tokens or _spread(merged.prompt_tokens, len(inputs))
        results, start = [], 0
        for request in requests:
            end = start + len(request.inputs)
            tokens = counts[start:end]
            results.append(
                EmbedResult(
                    vectors=merged.vectors[start:end],
                    prompt_tokens=sum(tokens),
                    input_tokens=tokens,
                )
            )
            start = end
        return results

    async def _embed(self, request: EmbedRequest) -> EmbedResult:
        body = {**request.model_dump(), VECTORS_ENCODING: "base64"}  # see workers.protocol
        replies = self.worker.request("embed", body)
        async with contextlib.aclosing(replies):
            async for reply in replies:
                if isinstance(reply, Result):
                    return embed_result_of(reply.data)  # its vectors as floats or as bytes
        raise BackendError("the worker ended an embedding request without a result")

    async def call(self, body: dict[str, Any]) -> Any:
        """A program's own operation (`call`): JSON in, JSON out."""
        replies = self.worker.request("call", body)
        async with contextlib.aclosing(replies):
            async for reply in replies:
                if isinstance(reply, Result):
                    return reply.data
        raise BackendError("the worker ended a call without a result")
