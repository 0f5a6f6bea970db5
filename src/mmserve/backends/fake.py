"""A deterministic fake model: product code for fast engine tests, never a real model's stand-in.

Chat answers "You said: <last user message>" word by word; completion continues the prompt with
numbered words; embeddings are stable pseudo-random unit vectors of the text's hash, and token
id i is the word "word<i>" (so the token array [1, 2] embeds as "word1 word2"). Options
(`options:` in the model spec): `delay` seconds per token, `dimensions`, `load_delay`,
`vocabulary` (ids a token array may use, default 1000).
A message or prompt that is exactly "crash" makes the process exit mid-request, and "boom"
raises inside the backend, so tests can drive the failure paths.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import numpy as np

from mmserve.backends.base import Backend, BackendSpec, Cancelled
from mmserve.backends.tokens import check_vocabulary, split_inputs
from mmserve.errors import ContextLengthExceeded
from mmserve.types import (
    ChatRequest,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    FinishReason,
    Sampling,
    TextDelta,
    TextDone,
    TextEvent,
    WorkerInfo,
)

__all__ = ["FakeBackend"]


class FakeBackend(Backend):
    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.delay = float(spec.options.get("delay", 0.0))
        self.dimensions = int(spec.options.get("dimensions", 8))
        self.vocabulary = int(spec.options.get("vocabulary", 1000))
        time.sleep(float(spec.options.get("load_delay", 0.0)))
        if spec.options.get("fail_load"):
            raise RuntimeError(str(spec.options["fail_load"]))

    def info(self) -> WorkerInfo:
        capabilities = ["embed"] if self.spec.kind == "embedding" else ["chat", "complete"]
        return WorkerInfo(
            capabilities=capabilities,
            context_length=self.spec.context_length,
            dimensions=self.dimensions if self.spec.kind == "embedding" else None,
        )

    def chat(self, request: ChatRequest, cancelled: Cancelled) -> Iterator[TextEvent]:
        last = request.messages[-1].content if request.messages else ""
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        return self._generate(
            last, f"You said: {last}".split(), prompt_words, request.sampling, cancelled
        )

    def complete(self, request: CompletionRequest, cancelled: Cancelled) -> Iterator[TextEvent]:
        words = [f"word{i}" for i in range(1, 1000)]
        return self._generate(
            request.prompt, words, len(request.prompt.split()), request.sampling, cancelled
        )

    def embed(self, request: EmbedRequest) -> EmbedResult:
        _, arrays = split_inputs(request.inputs)
        check_vocabulary(list(arrays.values()), self.vocabulary, self.spec.name)
        texts = [
            x if isinstance(x, str) else " ".join(f"word{i}" for i in x) for x in request.inputs
        ]
        vectors = [self._vector(text) for text in texts]
        counts = [len(t.split()) for t in texts]
        return EmbedResult(vectors=vectors, prompt_tokens=sum(counts), input_tokens=counts)

    def _generate(
        self,
        trigger: str,
        words: list[str],
        prompt_tokens: int,
        sampling: Sampling,
        cancelled: Cancelled,
    ) -> Iterator[TextEvent]:
        self._fail_on(trigger)
        if prompt_tokens > self.spec.context_length:
            raise ContextLengthExceeded(
                f"the prompt is {prompt_tokens} tokens; the context is {self.spec.context_length}"
            )
        limit = sampling.max_tokens if sampling.max_tokens is not None else 16
        for i, word in enumerate(words[:limit]):
            if cancelled():
                return
            time.sleep(self.delay)
            yield TextDelta(text=word if i == 0 else " " + word)
        sent = min(limit, len(words))
        finish: FinishReason = "length" if sent < len(words) else "stop"
        yield TextDone(finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=sent)

    def _vector(self, text: str) -> list[float]:
        self._fail_on(text)
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self.dimensions)
        return [float(x) for x in vector / np.linalg.norm(vector)]

    @staticmethod
    def _fail_on(text: str) -> None:
        if text == "crash":
            os._exit(3)  # as if the engine segfaulted mid-request
        if text == "boom":
            raise RuntimeError("the fake engine blew up")
