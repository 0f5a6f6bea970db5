"""Backends: plain blocking classes that load one model and run it.

They know nothing of HTTP, processes or batching. Each is found by name and imported lazily,
so a server that never serves an embedding model never imports torch.
"""

from __future__ import annotations

import importlib

from mmserve.backends.base import Backend, BackendSpec

__all__ = ["BACKENDS", "Backend", "BackendSpec", "create_backend"]

# name -> "module:Class". Resolved only when a model of that backend loads.
BACKENDS: dict[str, str] = {
    "llama_cpp": "mmserve.backends.llama_cpp:LlamaCppBackend",
    "sentence_transformers": "mmserve.backends.sentence_transformers:SentenceTransformersBackend",
    "fake": "mmserve.backends.fake:FakeBackend",
}


def create_backend(spec: BackendSpec) -> Backend:
    """Import the backend class named by `spec.backend` and load the model (blocks)."""
    module_name, _, class_name = BACKENDS[spec.backend].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = backend_class(spec)
    return backend
