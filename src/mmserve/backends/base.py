"""The contract every backend meets, and the spec it is built from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mmserve.catalog import resolve_source
from mmserve.errors import UnsupportedCapability
from mmserve.types import (
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    TextEvent,
    WorkerInfo,
)

__all__ = ["Backend", "BackendSpec", "Cancelled"]

# Polled by a backend between tokens; True once the request was cancelled.
Cancelled = Callable[[], bool]


class BackendSpec(BaseModel):
    """Everything a backend needs to load one replica of one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: str
    backend: str
    source: str | None = None
    context_length: int = 2048
    gpu_layers: int = 0
    threads: int = 1
    device: str = "cpu"
    options: dict[str, Any] = Field(default_factory=dict)

    def path(self) -> Path:
        """The model's file or directory (resolves `catalog:` sources; may be slow)."""
        if self.source is None:
            raise ValueError(f"model {self.name!r} has no source")
        return resolve_source(self.source)


class Backend:
    """A loaded model. Methods block; the worker calls them from one thread at a time.

    Subclasses load the model in `__init__` and override what their model can do; the rest
    answer UnsupportedCapability. A backend raises `mmserve.errors.MMServeError` subclasses for
    the caller's mistakes (a prompt too long...) and lets anything else propagate: the worker
    reports it as a backend error.
    """

    def __init__(self, spec: BackendSpec) -> None:
        """Load `spec`'s model (blocks)."""
        self.spec = spec

    @classmethod
    def prepare(cls) -> None:
        """Before any model: what a process's first load costs beyond its weights (imports a
        library makes lazily, tables it builds once). A fork server runs it once, so that each
        child it forks starts past it; it must start no thread. The default does nothing."""

    def info(self) -> WorkerInfo:
        raise NotImplementedError

    def chat(self, request: ChatRequest, cancelled: Cancelled) -> Iterator[TextEvent]:
        raise UnsupportedCapability("this model cannot chat")

    def complete(self, request: CompletionRequest, cancelled: Cancelled) -> Iterator[TextEvent]:
        raise UnsupportedCapability("this model cannot complete text")

    def embed(self, request: EmbedRequest) -> EmbedResult:
        raise UnsupportedCapability("this model cannot embed text")

    def call(self, body: dict[str, Any]) -> dict[str, Any]:
        """The model's own operation (`call`): free-form JSON in and out."""
        raise UnsupportedCapability("this model has no call operation")

    def close(self) -> None:
        """Release the model; the default leaves it to the process exit."""
