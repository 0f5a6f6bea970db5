"""The open_nsfw backend on its real model (safe photos only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from mmserve.vision import VisionModel, load_vision_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nsfw(offline: Callable[[], Any]) -> VisionModel:
    with offline():
        return load_vision_model("open_nsfw", {"threads": 2})


def test_a_cat_and_a_coffee_are_safe(
    nsfw: VisionModel, sample_photo: Callable[[str], Image.Image]
) -> None:
    assert nsfw.task == "classify" and nsfw.batchable is True
    results = nsfw.run([sample_photo("chelsea.png"), sample_photo("coffee.png")])
    for result in results:
        safe, unsafe = result["labels"]
        assert safe["label"] == "sfw" and unsafe["label"] == "nsfw"
        assert unsafe["score"] < 0.2  # Yahoo's "safe" band
        assert safe["score"] + unsafe["score"] == pytest.approx(1.0)


def test_a_batch_matches_each_image_alone(
    nsfw: VisionModel, sample_photo: Callable[[str], Image.Image]
) -> None:
    photos = [sample_photo("chelsea.png"), sample_photo("astronaut.png")]
    together = nsfw.run(photos)
    alone = [nsfw.run([photo])[0] for photo in photos]
    for batched, single in zip(together, alone, strict=True):
        assert batched["labels"][0]["label"] == single["labels"][0]["label"]
        assert batched["labels"][0]["score"] == pytest.approx(
            single["labels"][0]["score"], abs=1e-5
        )


def test_top_k_is_clamped_to_two_labels(nsfw: VisionModel) -> None:
    [result] = nsfw.run([Image.new("RGB", (64, 64), "white")], top_k=5)
    assert len(result["labels"]) == 2
    [result] = nsfw.run([Image.new("RGB", (64, 64), "white")], top_k=1)
    assert len(result["labels"]) == 1
