"""The contract every vision model meets, the registry of vision backends, and the loader.

A backend is named in `mmserve.registry` as "module:Class" and imported only when a model of
that backend loads, so importing `mmserve.vision` never imports torch or onnxruntime.

Options every backend takes (from the model's config; unknown keys are refused):
    threads: int   intra-op threads for the model's runtime (default: half the cores, >= 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mmserve.errors import ConfigError
from mmserve.registry import entry, import_object, missing_packages, vision_threads

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "VisionModel",
    "VisionTask",
    "default_threads",
    "load_vision_model",
    "top_labels",
]

VisionTask = Literal["ocr", "classify"]


class VisionModel(Protocol):
    """A loaded vision model.

    `run` blocks (call it from a worker thread) and may be called from several threads, but
    calls in parallel compete for the same cores: run one at a time per model and batch
    instead. It returns one dict per image, in order:
        ocr:      {"text": str, "lines": [{"text": str, "score": float, "box": [[x, y] * 4]}]}
        classify: {"labels": [{"label": str, "score": float}, ...]}  (best first, <= top_k)
    """

    task: VisionTask
    batchable: bool  # True when run() on N images is one batched forward pass

    def run(self, images: list[Image], top_k: int = 5) -> list[dict[str, Any]]: ...


def load_vision_model(backend: str, options: dict[str, Any]) -> VisionModel:
    """Import the backend and load its model (blocks; seconds). Loads with no network access.

    Raises ConfigError for an unknown backend or bad options (before importing anything), or
    when the backend's packages are not installed.
    """
    found = entry("vision", backend)
    threads = vision_threads(options, backend)
    if (missing := missing_packages(found)) is not None:
        raise ConfigError(missing)
    assert found.implementation is not None  # every vision backend names its class
    model: VisionModel = import_object(found.implementation)(threads=threads)
    return model


def default_threads() -> int:
    """Half the cores this process may use, at least 1: leaves room for the server and others."""
    return vision_threads({}, "any")


def top_labels(scores: Sequence[float], names: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The `top_k` best (label, score) pairs, best first; top_k is clamped to [1, classes]."""
    k = min(max(top_k, 1), len(names))
    best = sorted(range(len(names)), key=lambda i: scores[i], reverse=True)[:k]
    return [{"label": names[i], "score": float(scores[i])} for i in best]
