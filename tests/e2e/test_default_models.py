"""The real server with its built-in default models, driven by the official openai client."""

from __future__ import annotations

import base64
import re

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def server(server_factory):
    server = server_factory(None)  # no config: the built-in defaults
    models = server.wait_models(timeout=600)
    lazy = {"nsfw", "qwen2.5-0.5b"}  # preload: false
    assert all(m["state"] == "ready" for m in models if m["name"] not in lazy), models
    return server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_the_defaults_are_served(client: openai.OpenAI) -> None:
    names = ["smollm2", "gemma3-270m", "qwen2.5-0.5b", "minilm", "ocr", "imagenet", "nsfw"]
    assert [m.id for m in client.models.list()] == names


def test_chat_and_the_same_answer_streamed(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, seed=7, max_tokens=40
    )
    text = plain.choices[0].message.content or ""
    assert text.strip() and plain.usage is not None and plain.usage.completion_tokens <= 40
    stream = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, seed=7, max_tokens=40, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert len(chunks) > 5, "the answer should arrive in many chunks"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )


def test_completions_on_gemma(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="gemma3-270m", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.choices[0].text.strip() and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens >= 5


def test_gemma_cannot_chat_and_says_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="text completion"):
        client.chat.completions.create(model="gemma3-270m", messages=QUESTION)


def test_embeddings_float_and_base64(client: openai.OpenAI, server) -> None:
    texts = ["The cat sat on the mat", "A cat was sitting on a mat", "Stock prices fell sharply"]
    floats = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    raw = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": "minilm", "input": texts, "encoding_format": "base64"},
        timeout=60,
    ).json()
    for item, want in zip(raw["data"], floats.data, strict=True):
        got = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert got.shape == (384,) and np.allclose(got, want.embedding, atol=1e-6)
    # A quality guard a broken model cannot pass.
    cat, cat2, stocks = (np.array(d.embedding) for d in floats.data)
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cosine(cat, cat2) > cosine(cat, stocks)


def test_each_text_model_runs_in_its_own_process(server) -> None:
    status = server.status()
    models = {m["name"]: m for m in status["models"]}
    pids = [r["pid"] for n in ("smollm2", "gemma3-270m", "minilm") for r in models[n]["replicas"]]
    assert len(pids) == 3 and len(set(pids)) == 3 and status["server"]["pid"] not in pids
    # Vision models run inside the server process.
    assert {r["pid"] for n in ("ocr", "imagenet") for r in models[n]["replicas"]} == {
        status["server"]["pid"]
    }


def test_errors_with_real_models(client: openai.OpenAI) -> None:
    with pytest.raises(
        openai.NotFoundError,
        match=re.escape(
            "available models: gemma3-270m, imagenet, minilm, nsfw, ocr, qwen2.5-0.5b, smollm2"
        ),
    ):
        client.chat.completions.create(model="llama-70b", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        client.chat.completions.create(model="minilm", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "word " * 3000}]
        )
    assert info.value.code == "context_length_exceeded"
