"""The sentence-transformers backend on its real model, all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from mmserve.backends.base import BackendSpec
from mmserve.errors import InvalidRequest
from mmserve.types import EmbedRequest

pytestmark = pytest.mark.slow

st_backend = pytest.importorskip("mmserve.backends.sentence_transformers")


@pytest.fixture(scope="module")
def minilm() -> st_backend.SentenceTransformersBackend:
    spec = BackendSpec(
        name="minilm",
        kind="embedding",
        backend="sentence_transformers",
        source="catalog:minilm",
        threads=2,
    )
    return st_backend.SentenceTransformersBackend(spec)


def test_info(minilm: st_backend.SentenceTransformersBackend) -> None:
    info = minilm.info()
    assert info.capabilities == ["embed"] and info.dimensions == 384


def test_embeddings_mean_something(minilm: st_backend.SentenceTransformersBackend) -> None:
    result = minilm.embed(
        EmbedRequest(
            inputs=[
                "The cat sat on the mat",
                "A cat was sitting on a mat",
                "Stock prices fell sharply",
            ]
        )
    )
    a, b, c = (np.array(v) for v in result.vectors)
    assert a @ b > a @ c + 0.3
    assert result.prompt_tokens > 15  # word pieces plus [CLS] and [SEP] for each input


def test_token_arrays_embed_as_their_text(minilm: st_backend.SentenceTransformersBackend) -> None:
    # The ids MiniLM's own tokenizer gives "hello world" and "a cat", without [CLS] and [SEP].
    hello, cat = [7592, 2088], [1037, 4937]
    texts = minilm.embed(EmbedRequest(inputs=["hello world", "a cat", "stock prices"]))
    mixed = minilm.embed(EmbedRequest(inputs=[hello, "a cat", [4518, 7597]]))
    assert np.allclose(mixed.vectors, texts.vectors, atol=1e-6)
    assert mixed.input_tokens == texts.input_tokens == [4, 4, 4]  # [CLS] ... [SEP] counted
    assert np.allclose(minilm.embed(EmbedRequest(inputs=[cat])).vectors, texts.vectors[1:2])


def test_a_long_token_array_is_cut_as_a_long_text_is(
    minilm: st_backend.SentenceTransformersBackend,
) -> None:
    text = minilm.embed(EmbedRequest(inputs=["hello " * 400]))
    ids = minilm.embed(EmbedRequest(inputs=[[7592] * 400]))
    assert ids.input_tokens == text.input_tokens == [256]
    assert np.allclose(ids.vectors, text.vectors, atol=1e-6)


def test_an_id_outside_the_vocabulary_is_the_clients_mistake(
    minilm: st_backend.SentenceTransformersBackend,
) -> None:
    with pytest.raises(InvalidRequest, match=r"token 100256 is not in the vocabulary") as info:
        minilm.embed(EmbedRequest(inputs=[[9906, 1917], [100256]]))  # OpenAI's cl100k ids
    assert "check_embedding_ctx_length=False" in info.value.message
