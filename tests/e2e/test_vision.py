"""Vision models in the server process, on real images: OCR reads drawn text, the ImageNet
classifier sees the cat in scikit-image's chelsea.png; through the call route and through the
openai client's chat with image parts; bad images; batching; load, unload and replicas."""

from __future__ import annotations

import base64
import importlib.util
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont

pytestmark = pytest.mark.slow

CATS = {"tabby cat", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
CONFIG = """
max_image_pixels: 2000000
models:
  - {name: ocr, kind: vision, backend: rapidocr}
  - {name: imagenet, kind: vision, backend: efficientnet_lite0, max_batch_size: 8,
     batch_wait: 0.02}
  - {name: text, kind: llm, backend: fake}
"""


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def cat() -> Image.Image:
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "chelsea.png"
    return Image.open(path).convert("RGB")


def words(text: str) -> Image.Image:
    image = Image.new("RGB", (900, 140), "white")
    ImageDraw.Draw(image).text((20, 40), text, fill="black", font=ImageFont.load_default(48))
    return image


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("vision") / "config.yaml"
    config.write_text(CONFIG)
    server = server_factory(config)
    assert all(m["state"] == "ready" for m in server.wait_models()), server.log()
    return server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)


def ask_with(image_url: str, text: str = "What is in this image?") -> list[dict]:
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
    return [{"role": "user", "content": parts}]


def test_ocr_reads_drawn_text_by_call_and_by_chat(server, client: openai.OpenAI) -> None:
    answer = server.post("/api/v1/ocr/call", {"image": data_url(words("HELLO MMSERVE 42"))})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert "HELLO" in result["text"] and "MMSERVE" in result["text"] and "42" in result["text"]
    line = result["lines"][0]
    assert 0 < line["score"] <= 1 and len(line["box"]) == 4
    reply = client.chat.completions.create(
        model="ocr", messages=ask_with(data_url(words("OPEN THE DOOR"), "JPEG"))
    )
    assert "OPEN THE DOOR" in (reply.choices[0].message.content or "")


def test_the_classifier_sees_the_cat(server, client: openai.OpenAI) -> None:
    bare_base64 = data_url(cat()).split(",", 1)[1]
    answer = server.post("/api/v1/imagenet/call", {"image": bare_base64, "top_k": 5}).json()
    assert len(answer["labels"]) == 5
    assert CATS & {x["label"] for x in answer["labels"]}
    assert answer["labels"][0]["score"] >= answer["labels"][-1]["score"]
    several = server.post("/api/v1/imagenet/call", {"images": [bare_base64] * 2, "top_k": 2})
    assert [len(r["labels"]) for r in several.json()] == [2, 2]
    stream = client.chat.completions.create(
        model="imagenet", messages=ask_with(data_url(cat())), stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert any(name in text for name in CATS), text


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"image": "not base64 at all!"}, "image", "base64"),
        ({"image": base64.b64encode(b"just some text, not pixels").decode()}, "image", "image"),
        ({"image": data_url(Image.new("RGB", (2000, 1500)))}, "image", "pixels"),
        ({"image": "https://example.com/cat.png"}, "image", "allow_remote_images"),
        ({"images": []}, "images", "non-empty"),
        ({"image": data_url(Image.new("RGB", (8, 8))), "top_k": 0}, "top_k", "top_k"),
        ({"text": "no image here"}, None, "'image'"),
    ],
)
def test_bad_images_are_400s_that_say_which(server, body: dict, param: str | None, says: str):
    answer = server.post("/api/v1/imagenet/call", body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and says in error["message"]


def test_chat_without_an_image_and_images_to_a_text_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="reads images"):
        client.chat.completions.create(model="ocr", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="cannot read images") as refused:
        client.chat.completions.create(model="text", messages=ask_with(data_url(cat())))
    assert refused.value.code == "unsupported_capability"


def test_concurrent_requests_are_batched(server) -> None:
    before = server.model("imagenet")["replicas"][0]["batches"]
    body = {"image": data_url(cat()), "top_k": 3}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: server.post("/api/v1/imagenet/call", body), range(16)))
    assert all(a.status_code == 200 for a in answers)
    labels = {tuple(x["label"] for x in a.json()["labels"]) for a in answers}
    assert len(labels) == 1  # batched or not, the same image gets the same answer
    after = server.model("imagenet")["replicas"][0]["batches"]
    assert after["items"] - before["items"] == 16
    assert after["calls"] - before["calls"] < 16
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'mmserve_batch_size_count{model="imagenet"}' in metrics


def test_unload_load_and_add_a_replica(server) -> None:
    assert server.post("/unloadmodel", {"model": "imagenet"}).json()["state"] == "unloaded"
    body = {"image": data_url(cat()), "top_k": 1}
    assert server.post("/api/v1/imagenet/call", body).status_code == 200  # loads on demand
    added = server.post("/api/v1/imagenet/add", {"device": "cpu"}).json()
    assert len(added["replicas"]) == 2 and added["state"] == "ready"
    assert server.post("/api/v1/imagenet/remove").json()["replicas"].__len__() == 1
    assert server.post("/api/v1/imagenet/add", {"device": "cuda:0"}).status_code == 400
