"""llama-cpp-python backend: GGUF chat, completions and embeddings.

Generation runs our own loop over `Llama.generate` rather than `create_completion`: it yields
one token at a time, so we can count tokens exactly (usage in streams too), poll for
cancellation between tokens, cut stop strings without leaking them, and decode UTF-8 that is
split across tokens. One `Llama` runs one sequence at a time; the worker serializes calls.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Iterator
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from mmserve.backends.base import Backend, BackendSpec, Cancelled
from mmserve.backends.text import StopMatcher
from mmserve.backends.tokens import SpecialTokens, check_vocabulary, split_inputs
from mmserve.errors import ContextLengthExceeded, InvalidRequest
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

__all__ = ["LlamaCppBackend"]

DEFAULT_TEMPERATURE = 0.8  # llama.cpp's default; OpenAI's is 1.0, too wild for small models


class LlamaCppBackend(Backend):
    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.embedding = spec.kind == "embedding"
        options: dict[str, Any] = {"verbose": False, **spec.options}
        if self.embedding:
            options.setdefault("pooling_type", llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        self.llm = llama_cpp.Llama(
            model_path=str(spec.path()),
            n_ctx=spec.context_length,
            n_threads=spec.threads,
            n_threads_batch=spec.threads,
            n_gpu_layers=spec.gpu_layers,
            embedding=self.embedding,
            **options,
        )
        self.eos_text = self._special_text(self.llm.token_eos())
        self.formatter = self._chat_formatter()
        self._json_grammar: LlamaGrammar | None = None
        self.special = SpecialTokens.around(
            self.llm.tokenize(b"a", add_bos=False), self.llm.tokenize(b"a", add_bos=True)
        )

    def _special_text(self, token: int) -> str:
        return (
            self.llm.detokenize([token], special=True).decode(errors="replace")
            if token >= 0
            else ""
        )

    def _chat_formatter(self) -> Jinja2ChatFormatter | None:
        """The GGUF's own chat template, if it has one (a base model has none: no chat)."""
        template = self.llm.metadata.get("tokenizer.chat_template")
        if self.embedding or not template:
            return None
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self.eos_text,
            bos_token=self._special_text(self.llm.token_bos()),
        )

    def info(self) -> WorkerInfo:
        capabilities = ["embed"]
        if not self.embedding:
            capabilities = ["chat", "complete"] if self.formatter else ["complete"]
        return WorkerInfo(
            capabilities=capabilities,
            context_length=self.llm.n_ctx(),
            dimensions=self.llm.n_embd() if self.embedding else None,
        )

    def chat(self, request: ChatRequest, cancelled: Cancelled) -> Iterator[TextEvent]:
        assert self.formatter is not None  # the server checks capabilities first
        messages: Any = [m.model_dump() for m in request.messages]
        try:
            prompt = self.formatter(messages=messages).prompt
        except Exception as exc:  # jinja templates raise on message orders they refuse
            raise InvalidRequest(
                f"the model's chat template refused these messages: {exc}"
            ) from None
        tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        # Small models sometimes spell their end-of-turn marker out as text: stop on it too.
        return self._generate(
            tokens, request.sampling, [self.eos_text, *request.sampling.stop], cancelled
        )

    def complete(self, request: CompletionRequest, cancelled: Cancelled) -> Iterator[TextEvent]:
        tokens = self.llm.tokenize(request.prompt.encode(), add_bos=True, special=False)
        if not tokens:  # an empty prompt on a model that adds no BOS: start from the BOS anyway
            bos = self.llm.token_bos()
            if bos < 0:
                raise InvalidRequest("the prompt is empty and this model has no start token")
            tokens = [bos]
        return self._generate(tokens, request.sampling, request.sampling.stop, cancelled)

    def embed(self, request: EmbedRequest) -> EmbedResult:
        """Texts through `Llama.embed`; token arrays from their ids (see
        mmserve.backends.tokens), which give the vector of their text."""
        texts, arrays = split_inputs(request.inputs)
        check_vocabulary(list(arrays.values()), self.llm.n_vocab(), self.spec.name)
        found: dict[int, tuple[list[float], int]] = {}
        if texts:
            found |= zip(texts, self._embed_texts(list(texts.values())), strict=True)
        for index, ids in arrays.items():
            found[index] = self._embed_ids(ids)
        vectors, counts = zip(*(found[i] for i in range(len(request.inputs))), strict=True)
        return EmbedResult(
            vectors=list(vectors), prompt_tokens=sum(counts), input_tokens=list(counts)
        )

    def _embed_texts(self, texts: list[str]) -> list[tuple[list[float], int]]:
        vectors = self.llm.embed(texts, normalize=True, truncate=True)
        counts = [len(self.llm.tokenize(t.encode(), add_bos=True)) for t in texts]
        return list(zip(vectors, counts, strict=True))

    def _embed_ids(self, ids: list[int]) -> tuple[list[float], int]:
        """What `Llama.embed` does with one text's tokens (it takes text only): one sequence,
        wrapped in the model's special tokens and cut to n_batch as it cuts a text."""
        tokens = self.special.wrap(ids, self.llm.n_batch)
        # No public API embeds tokens: its internals, untyped, as `embed` itself uses them.
        batch: Any = self.llm._batch
        context: Any = self.llm._ctx
        batch.reset()
        batch.add_sequence(tokens, 0, True)
        context.kv_cache_clear()
        context.decode(batch)
        batch.reset()
        vector = np.array(llama_cpp.llama_get_embeddings_seq(context.ctx, 0)[: self.llm.n_embd()])
        return (vector / np.linalg.norm(vector)).tolist(), len(tokens)

    def _generate(
        self, prompt: list[int], sampling: Sampling, stops: list[str], cancelled: Cancelled
    ) -> Iterator[TextEvent]:
        room = self.llm.n_ctx() - len(prompt)
        if room < 1:
            raise ContextLengthExceeded(
                f"the prompt is {len(prompt)} tokens; model {self.spec.name!r} has a context of "
                f"{self.llm.n_ctx()} tokens, and needs room for at least one more"
            )
        limit = min(sampling.max_tokens or room, room)
        self.llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopMatcher(stops)
        generated = 0
        finish: FinishReason = "length"
        for token in self.llm.generate(prompt, **self._sampler_args(sampling)):
            if cancelled():
                return
            if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):  # no public API for it
                finish = "stop"
                break
            generated += 1
            text, stopped = matcher.feed(decoder.decode(self.llm.detokenize([token])))
            if text:
                yield TextDelta(text=text)
            if stopped:
                finish = "stop"
                break
            if generated >= limit:
                break
        # After a stop string the matcher holds nothing; otherwise release what it held back.
        tail = matcher.flush() + decoder.decode(b"", final=True)
        if tail:
            yield TextDelta(text=tail)
        yield TextDone(finish_reason=finish, prompt_tokens=len(prompt), completion_tokens=generated)

    def _sampler_args(self, sampling: Sampling) -> dict[str, Any]:
        args: dict[str, Any] = {
            "temp": DEFAULT_TEMPERATURE if sampling.temperature is None else sampling.temperature,
            "top_p": 0.95 if sampling.top_p is None else sampling.top_p,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
        }
        if sampling.json_mode:
            args["grammar"] = self._json()
        return args

    def _json(self) -> LlamaGrammar:
        if self._json_grammar is None:  # built on first use: parsing the grammar costs a little
            self._json_grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return self._json_grammar
