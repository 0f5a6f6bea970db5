"""sentence-transformers backend: text embeddings on PyTorch."""

from __future__ import annotations

import importlib
from typing import Any, cast

import torch
from sentence_transformers import SentenceTransformer

from mmserve.backends.base import Backend, BackendSpec
from mmserve.backends.tokens import SpecialTokens, check_vocabulary, split_inputs
from mmserve.types import EmbedRequest, EmbedResult, WorkerInfo

__all__ = ["SentenceTransformersBackend"]


class SentenceTransformersBackend(Backend):
    @classmethod
    def prepare(cls) -> None:
        """What transformers does lazily at a process's first `from_pretrained`, whatever the
        model: import its generation module (every PreTrainedModel's base; about 280 ms here)
        and build its table of checkpoint conversions (about 70 ms, a thousand regular
        expressions). Measured, MiniLM's load in a forked child: 590 -> 106 ms."""
        importlib.import_module("transformers.generation.utils")
        importlib.import_module("transformers.modeling_layers")
        try:  # the table's builder is internal: a transformers that moves it just loads slower
            conversions = importlib.import_module("transformers.conversion_mapping")
            conversions.get_checkpoint_conversion_mapping("bert")
        except (ImportError, AttributeError):
            pass

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        torch.set_num_threads(spec.threads)  # the model's thread budget (OMP_NUM_THREADS too)
        options: dict[str, Any] = dict(spec.options)
        self.batch_size = int(options.pop("batch_size", 32))
        # The child sees only its own GPU (CUDA_VISIBLE_DEVICES), so "cuda" means that one.
        device = "cpu" if spec.device == "cpu" else "cuda"
        self.model = SentenceTransformer(
            str(spec.path()), device=device, local_files_only=True, **options
        )
        tokenizer = self.model.tokenizer
        self.special = SpecialTokens.around(
            tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
        )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            capabilities=["embed"],
            context_length=self.model.max_seq_length,
            dimensions=self.model.get_embedding_dimension(),
        )

    def embed(self, request: EmbedRequest) -> EmbedResult:
        """Texts through `encode`; token arrays through the same modules, from their ids (see
        mmserve.backends.tokens): both give the same vector for the same text."""
        texts, arrays = split_inputs(request.inputs)
        check_vocabulary(list(arrays.values()), len(self.model.tokenizer), self.spec.name)
        found: dict[int, tuple[list[float], int]] = {}
        with torch.inference_mode():
            if texts:
                found |= zip(texts, self._embed_texts(list(texts.values())), strict=True)
            if arrays:
                found |= zip(arrays, self._embed_ids(list(arrays.values())), strict=True)
        vectors, counts = zip(*(found[i] for i in range(len(request.inputs))), strict=True)
        return EmbedResult(
            vectors=list(vectors), prompt_tokens=sum(counts), input_tokens=list(counts)
        )

    def _embed_texts(self, texts: list[str]) -> list[tuple[list[float], int]]:
        # output_value=None: each input's outputs, its attention mask among them, so the token
        # counts come from the tokenization `encode` did rather than from a second one (2% of a
        # one-sentence request's time, 7% under load: docs/benchmarks.md). The vector is the
        # same `sentence_embedding` as encode's default output.
        # A list of texts gives a list of dicts (the stubs' overloads pick the single-input one).
        items = cast(
            list[dict[str, Any]],
            self.model.encode(texts, batch_size=self.batch_size, output_value=None),
        )
        if not all("attention_mask" in item for item in items):  # a model without a tokenizer's
            vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True)
            counts = self.model.preprocess(texts)["attention_mask"].sum(dim=1).tolist()
            return list(zip(vectors.tolist(), counts, strict=True))
        stacked = torch.stack([item["sentence_embedding"] for item in items]).float().cpu()
        counts = [int(item["attention_mask"].sum()) for item in items]
        return list(zip(stacked.numpy().tolist(), counts, strict=True))

    def _embed_ids(self, arrays: list[list[int]]) -> list[tuple[list[float], int]]:
        """The model's modules (transformer, pooling, normalization) on the ids, each wrapped
        in the special tokens and cut to max_seq_length, as `encode` does with a text."""
        limit = self.model.max_seq_length or self.model.tokenizer.model_max_length
        sequences = [self.special.wrap(ids, limit) for ids in arrays]
        features = self.model.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
        features = {key: value.to(self.model.device) for key, value in features.items()}
        vectors = self.model(features)["sentence_embedding"].cpu().numpy()
        return list(zip(vectors.tolist(), map(len, sequences), strict=True))
