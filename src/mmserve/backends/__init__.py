"""Backends: plain blocking classes that load one model and run it.

They know nothing of HTTP, processes or batching. Each is found by name and imported lazily,
so a server that never serves an embedding model never imports torch.
"""

from __future__ import annotations

from mmserve.backends.base import Backend, BackendSpec
from mmserve.errors import ConfigError
from mmserve.registry import entry, import_object

__all__ = ["Backend", "BackendSpec", "backend_class", "create_backend"]


def backend_class(kind: str, backend: str) -> type[Backend]:
    """Import the backend class that `mmserve.registry` names (no model yet)."""
    target = entry(kind, backend).implementation
    if target is None:
        raise ConfigError(f"backend {backend!r} runs no code of mmserve's in a worker")
    found: type[Backend] = import_object(target)
    return found


def create_backend(spec: BackendSpec) -> Backend:
    """Load the spec's model with its backend's class (blocks)."""
    return backend_class(spec.kind, spec.backend)(spec)
