"""The rapidocr backend on its real models: text drawn with Pillow comes back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from mmserve.vision import VisionModel, load_vision_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ocr(offline: Callable[[], Any]) -> VisionModel:
    with offline():
        return load_vision_model("rapidocr", {"threads": 2})


def text_image(lines: list[str]) -> Image.Image:
    image = Image.new("RGB", (800, 100 * len(lines) + 20), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=48)
    for row, line in enumerate(lines):
        draw.text((20, 20 + 100 * row), line, fill="black", font=font)
    return image


def test_it_is_an_ocr_model(ocr: VisionModel) -> None:
    assert ocr.task == "ocr" and ocr.batchable is False


def test_reads_drawn_text(ocr: VisionModel) -> None:
    [result] = ocr.run([text_image(["Hello mmserve", "Vision 2024"])])
    assert result["text"].split() == ["Hello", "mmserve", "Vision", "2024"]
    first, second = result["lines"]
    assert first["text"] == "Hello mmserve" and second["text"] == "Vision 2024"
    for line in (first, second):
        assert 0.5 <= line["score"] <= 1.0
        assert len(line["box"]) == 4
        assert all(isinstance(v, float) for point in line["box"] for v in point)
    # The first line's box lies above the second's, inside the image.
    assert max(y for _, y in first["box"]) < min(y for _, y in second["box"])
    assert all(0 <= x <= 800 for x, _ in first["box"])


def test_a_blank_image_has_no_lines(ocr: VisionModel) -> None:
    assert ocr.run([Image.new("RGB", (300, 200), "white")]) == [{"text": "", "lines": []}]


def test_several_images_give_results_in_order(ocr: VisionModel) -> None:
    results = ocr.run([text_image(["first"]), Image.new("RGB", (64, 64), "white")])
    assert [r["text"] for r in results] == ["first", ""]


def test_reads_a_scanned_page(ocr: VisionModel, sample_photo: Callable[[str], Image.Image]) -> None:
    [result] = ocr.run([sample_photo("page.png")])
    assert result["lines"][0]["text"] == "Region-based segmentation"
