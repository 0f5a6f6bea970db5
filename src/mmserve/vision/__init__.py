"""Vision models served in-process: OCR and image classification, and the decoding of the
images a request sends.

    images    request image (data URL, base64, http(s) URL) -> PIL RGB image, with limits
    fetch     remote image fetch (only when the operator allows it)
    base      VisionModel contract, load_vision_model
    ocr       rapidocr backend (task "ocr")
    classify  efficientnet_lite0 backend (task "classify", ImageNet-1k)
    nsfw      open_nsfw backend (task "classify", moderation)

Importing this package imports PIL and httpx only; a backend's runtime (torch, onnxruntime)
is imported when a model of that backend loads.
"""

from __future__ import annotations

from mmserve.vision.base import (
    VisionModel,
    VisionTask,
    default_threads,
    load_vision_model,
)
from mmserve.vision.images import ACCEPTED_FORMATS, ImageLimits, decode_image, load_image

__all__ = [
    "ACCEPTED_FORMATS",
    "ImageLimits",
    "VisionModel",
    "VisionTask",
    "decode_image",
    "default_threads",
    "load_image",
    "load_vision_model",
]
