"""Backends: plain blocking classes that load one model and run it.

They know nothing of HTTP, processes or batching. Each is found by name and imported lazily,
so a server that never serves an embedding model never imports torch.
"""

from __future__ import annotations

from mmserve.backends.base import Backend, BackendSpec
from mmserve.errors import ConfigError
from mmserve.registry import entry, import_object

__all__ = ["Backend", "BackendSpec", "create_backend"]


def create_backend(spec: BackendSpec) -> Backend:
    """Import the backend class that `mmserve.registry` names for the spec and load the model
    (blocks)."""
    target = entry(spec.kind, spec.backend).implementation
    if target is None:
        raise ConfigError(f"backend {spec.backend!r} runs no code of mmserve's in a worker")
    backend: Backend = import_object(target)(spec)
    return backend
