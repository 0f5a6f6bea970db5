"""sentence-transformers backend: text embeddings on PyTorch."""

from __future__ import annotations

from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from mmserve.backends.base import Backend, BackendSpec
from mmserve.engine.types import EmbedRequest, EmbedResult
from mmserve.workers.protocol import WorkerInfo

__all__ = ["SentenceTransformersBackend"]


class SentenceTransformersBackend(Backend):
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

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            capabilities=["embed"],
            context_length=self.model.max_seq_length,
            dimensions=self.model.get_embedding_dimension(),
        )

    def embed(self, request: EmbedRequest) -> EmbedResult:
        with torch.inference_mode():
            vectors = self.model.encode(
                request.inputs, batch_size=self.batch_size, convert_to_numpy=True
            )
        features = self.model.tokenize(request.inputs)
        counts = [int(n) for n in features["attention_mask"].sum(dim=1)]
        return EmbedResult(vectors=vectors.tolist(), prompt_tokens=sum(counts), input_tokens=counts)
