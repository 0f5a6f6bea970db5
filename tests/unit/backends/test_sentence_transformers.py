"""The sentence-transformers backend on its real model, all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from mmserve.backends.base import BackendSpec
from mmserve.engine.types import EmbedRequest

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
