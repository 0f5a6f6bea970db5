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


PREPARED = """
import sys
from pathlib import Path
from mmserve.backends.sentence_transformers import SentenceTransformersBackend
from mmserve.backends.base import BackendSpec
SentenceTransformersBackend.prepare()
threads = len(list(Path("/proc/self/task").iterdir()))
before = set(sys.modules)
SentenceTransformersBackend(BackendSpec(name="m", kind="embedding",
    backend="sentence_transformers", source="catalog:minilm", threads=1))
new = sorted(m for m in set(sys.modules) - before if m.startswith("transformers"))
print(threads, " ".join(new))
"""


def test_prepare_does_a_first_loads_imports_and_starts_no_thread() -> None:
    """What a fork server runs before forking (workers.forkserver), in its environment:
    afterwards a load imports only its architecture's modules, and the process still has one
    thread to fork."""
    import subprocess
    import sys

    from mmserve.workers.warm import WarmKey

    env = WarmKey(backend="sentence_transformers", kind="embedding", device="cpu", threads=1).env()
    run = subprocess.run([sys.executable, "-c", PREPARED], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    threads, *imported = run.stdout.split()
    assert threads == "1"
    # Only model families' own modules (bert's, and align's, which reuses bert's tokenizer).
    assert any(m.startswith("transformers.models.bert") for m in imported), imported
    assert all(m.startswith("transformers.models.") for m in imported), imported
