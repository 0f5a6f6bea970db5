"""The llama.cpp backend on its real models (SmolLM2 chat, Gemma 3 base, SmolLM2 as an embedder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmserve.backends.base import BackendSpec
from mmserve.errors import ContextLengthExceeded, InvalidRequest
from mmserve.types import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    Sampling,
    TextDelta,
    TextDone,
    TextEvent,
)

pytestmark = pytest.mark.slow

llama_cpp_backend = pytest.importorskip("mmserve.backends.llama_cpp")


def never() -> bool:
    return False


def run(events: object) -> tuple[str, TextDone]:
    items: list[TextEvent] = list(events)
    assert isinstance(items[-1], TextDone)
    return "".join(e.text for e in items if isinstance(e, TextDelta)), items[-1]


@pytest.fixture(scope="module")
def smollm2() -> llama_cpp_backend.LlamaCppBackend:
    spec = BackendSpec(
        name="smollm2", kind="llm", backend="llama_cpp", source="catalog:smollm2", threads=2
    )
    return llama_cpp_backend.LlamaCppBackend(spec)


def chat(text: str, **sampling: object) -> ChatRequest:
    return ChatRequest(
        messages=[ChatMessage(role="user", content=text)],
        sampling=Sampling(temperature=0, seed=1, **sampling),
    )


def test_capabilities_come_from_the_gguf(smollm2: llama_cpp_backend.LlamaCppBackend) -> None:
    info = smollm2.info()
    assert info.capabilities == ["chat", "complete"] and info.context_length == 2048


def test_chat_answers_with_exact_usage(smollm2: llama_cpp_backend.LlamaCppBackend) -> None:
    text, done = run(smollm2.chat(chat("What is 2 + 2?", max_tokens=24), never))
    assert text.strip() and "<|im_end|>" not in text
    assert done.completion_tokens <= 24 and done.prompt_tokens > 10
    assert done.finish_reason in ("stop", "length")


def test_greedy_is_deterministic(smollm2: llama_cpp_backend.LlamaCppBackend) -> None:
    first = run(smollm2.chat(chat("Name three colors.", max_tokens=20), never))
    second = run(smollm2.chat(chat("Name three colors.", max_tokens=20), never))
    assert first == second


def test_max_tokens_and_stop(smollm2: llama_cpp_backend.LlamaCppBackend) -> None:
    _, done = run(smollm2.chat(chat("Write a long poem about the sea.", max_tokens=5), never))
    assert (done.finish_reason, done.completion_tokens) == ("length", 5)
    full, _ = run(smollm2.chat(chat("Write a long poem about the sea.", max_tokens=40), never))
    stop = full.split()[3]
    cut, done = run(
        smollm2.chat(chat("Write a long poem about the sea.", max_tokens=40, stop=[stop]), never)
    )
    assert done.finish_reason == "stop" and stop not in cut and full.startswith(cut)


def test_json_mode_gives_json(smollm2: llama_cpp_backend.LlamaCppBackend) -> None:
    text, _ = run(
        smollm2.chat(chat("Describe a cat as JSON.", max_tokens=60, json_mode=True), never)
    )
    try:
        assert isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        assert text.lstrip().startswith(
            "{"
        )  # cut by max_tokens, but still JSON from its first byte


def test_cancel_stops_between_tokens(smollm2: llama_cpp_backend.LlamaCppBackend) -> None:
    seen = []

    def cancelled() -> bool:
        return len(seen) >= 3

    for event in smollm2.chat(chat("Count to one hundred.", max_tokens=100), cancelled):
        seen.append(event)
    assert len(seen) == 3 and all(isinstance(e, TextDelta) for e in seen)


def test_prompt_longer_than_the_context(smollm2: llama_cpp_backend.LlamaCppBackend) -> None:
    with pytest.raises(ContextLengthExceeded, match="2048"):
        run(smollm2.chat(chat("hello " * 3000), never))


def test_gemma_base_model_completes_but_cannot_chat() -> None:
    spec = BackendSpec(
        name="g", kind="llm", backend="llama_cpp", source="catalog:gemma3-270m", threads=2
    )
    gemma = llama_cpp_backend.LlamaCppBackend(spec)
    assert gemma.info().capabilities == ["complete"]
    request = CompletionRequest(
        prompt="The capital of France is", sampling=Sampling(temperature=0, max_tokens=8)
    )
    text, done = run(gemma.complete(request, never))
    assert "Paris" in text or "paris" in text.lower() or done.completion_tokens == 8


@pytest.fixture(scope="module")
def embedder() -> llama_cpp_backend.LlamaCppBackend:
    spec = BackendSpec(
        name="e", kind="embedding", backend="llama_cpp", source="catalog:smollm2", threads=2
    )
    return llama_cpp_backend.LlamaCppBackend(spec)


def test_gguf_embeddings(embedder: llama_cpp_backend.LlamaCppBackend) -> None:
    info = embedder.info()
    assert info.capabilities == ["embed"] and info.dimensions == 576
    result = embedder.embed(EmbedRequest(inputs=["a cat", "a cat", "stock prices"]))
    vectors = np.array(result.vectors)
    assert vectors.shape == (3, 576) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert np.allclose(vectors[0], vectors[1]) and not np.allclose(vectors[0], vectors[2])
    assert result.prompt_tokens >= 5


def test_gguf_token_arrays_embed_as_their_text(
    embedder: llama_cpp_backend.LlamaCppBackend,
) -> None:
    texts = ["hello world", "a cat"]
    ids = [embedder.llm.tokenize(t.encode(), add_bos=False) for t in texts]
    assert ids[0] == [28120, 905]  # SmolLM2's own ids for "hello world"
    by_text = embedder.embed(EmbedRequest(inputs=texts))
    by_ids = embedder.embed(EmbedRequest(inputs=[ids[0], texts[1]]))
    assert np.allclose(by_ids.vectors, by_text.vectors, atol=1e-5)
    assert by_ids.input_tokens == by_text.input_tokens
    with pytest.raises(InvalidRequest, match=r"token 49152 is not in the vocabulary"):
        embedder.embed(EmbedRequest(inputs=[[49152]]))
