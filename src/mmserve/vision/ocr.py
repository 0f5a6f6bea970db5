"""OCR with RapidOCR (PP-OCR detection, orientation and recognition models in ONNX, bundled in
its wheel). Images run one at a time: RapidOCR has no batch entry point.

Its default model choice is kept on purpose: asking for another language or version makes it
download models at load time, which fails offline.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from rapidocr import RapidOCR

from mmserve.vision.base import VisionTask

__all__ = ["RapidOcrModel"]


class RapidOcrModel:
    """Reads text: one result per image with its lines, their scores and boxes."""

    task: VisionTask = "ocr"
    batchable: bool = False  # RapidOCR has no batch entry point

    def __init__(self, *, threads: int) -> None:
        # RapidOCR ignores a count above os.cpu_count() (and then uses every core): clamp it.
        threads = min(threads, os.cpu_count() or 1)
        self._engine = RapidOCR(
            params={
                # Each of its three ONNX sessions gets this many intra-op threads.
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                # Its own logger writes to stderr past our logging and warns on every image
                # without text; errors are still shown.
                "Global.log_level": "error",
            }
        )
        # RapidOCR creates its sessions on first use; reading a word now loads all three, so the
        # load is paid here and a broken install fails the load, not the first request.
        self.run([_warm_up_image()])

    def run(self, images: list[Image.Image], top_k: int = 5) -> list[dict[str, Any]]:
        """OCR each image (blocks; about 0.5-1.5 s per image on 2 cores). top_k is unused."""
        return [self._read(image) for image in images]

    def _read(self, image: Image.Image) -> dict[str, Any]:
        result = self._engine(image)
        # With detection and recognition on, it returns RapidOCROutput; txts is None when the
        # image has no text (boxes/scores None too).
        texts = getattr(result, "txts", None) or ()
        scores = getattr(result, "scores", None) or ()
        boxes = getattr(result, "boxes", None)
        corners = boxes if boxes is not None else ()
        lines = [
            {"text": text, "score": float(score), "box": _points(box)}
            for text, score, box in zip(texts, scores, corners, strict=True)
        ]
        return {"text": "\n".join(line["text"] for line in lines), "lines": lines}


def _points(box: Any) -> list[list[float]]:
    """A (4, 2) float32 array of corners (clockwise from top left) as plain floats."""
    return [[float(x), float(y)] for x, y in box]


def _warm_up_image() -> Image.Image:
    image = Image.new("RGB", (160, 48), "white")
    ImageDraw.Draw(image).text((8, 8), "warm", fill="black", font=ImageFont.load_default(size=28))
    return image
