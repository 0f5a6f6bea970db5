"""The efficientnet_lite0 backend on its real model and real photos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from mmserve.vision import VisionModel, load_vision_model
from mmserve.vision.labels import imagenet_labels

pytestmark = pytest.mark.slow

CATS = set(imagenet_labels()[281:286])  # tabby, tiger, Persian, Siamese, Egyptian


@pytest.fixture(scope="module")
def classifier(offline: Callable[[], Any]) -> VisionModel:
    with offline():
        return load_vision_model("efficientnet_lite0", {"threads": 2})


def names(result: dict[str, Any]) -> list[str]:
    return [entry["label"] for entry in result["labels"]]


def test_it_is_a_batchable_classifier(classifier: VisionModel) -> None:
    assert classifier.task == "classify" and classifier.batchable is True


def test_the_cat_is_a_cat(
    classifier: VisionModel, sample_photo: Callable[[str], Image.Image]
) -> None:
    [result] = classifier.run([sample_photo("chelsea.png")], top_k=5)
    assert len(result["labels"]) == 5
    assert names(result)[0] in CATS  # measured: tiger cat 0.38, Egyptian cat 0.37, tabby 0.17
    assert sum(e["score"] for e in result["labels"] if e["label"] in CATS) > 0.8


def test_the_coffee_is_espresso(
    classifier: VisionModel, sample_photo: Callable[[str], Image.Image]
) -> None:
    [result] = classifier.run([sample_photo("coffee.png")], top_k=5)
    top = result["labels"][0]
    assert top["label"] == "espresso" and top["score"] > 0.5  # measured: 0.95
    assert "cup" in names(result)
    scores = [e["score"] for e in result["labels"]]
    assert scores == sorted(scores, reverse=True)


def test_a_batch_matches_each_image_alone(
    classifier: VisionModel, sample_photo: Callable[[str], Image.Image]
) -> None:
    cat, coffee = sample_photo("chelsea.png"), sample_photo("coffee.png")
    together = classifier.run([cat, coffee], top_k=10)
    alone = classifier.run([cat], top_k=10) + classifier.run([coffee], top_k=10)
    assert len(together) == 2
    for batched, single in zip(together, alone, strict=True):
        assert names(batched) == names(single)
        for a, b in zip(batched["labels"], single["labels"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_top_k_is_clamped_to_the_classes(classifier: VisionModel) -> None:
    [result] = classifier.run([Image.new("RGB", (50, 80), "gray")], top_k=5000)
    assert len(result["labels"]) == 1000
    assert sum(e["score"] for e in result["labels"]) == pytest.approx(1.0, abs=1e-4)


def test_no_images_no_results(classifier: VisionModel) -> None:
    assert classifier.run([]) == []
