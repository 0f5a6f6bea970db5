"""Compatibility routes for clients of the servers mmserve replaces: thin aliases onto the engine.

`POST /loadmodel` and `POST /unloadmodel` keep the body fields those clients send
(`llama_model_path`, `model_alias`, `ctx_len`, `ngl`, `model_type`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmserve.api import statuses
from mmserve.api.openai import manager_of
from mmserve.api.runtime_models import NAME_PATTERN, given
from mmserve.api.validation import json_numbers, parse
from mmserve.config import ModelSpec
from mmserve.engine.manager import ModelManager
from mmserve.engine.model import Model
from mmserve.engine.sources import checked_model_path
from mmserve.errors import Conflict

__all__ = ["LoadModelRequest", "UnloadModelRequest", "router"]

router = APIRouter(tags=["management"])


class LoadModelRequest(BaseModel):
    """A configured model by name, or a model file to serve (then `model` is left out)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"anyOf": [given("model"), given("llama_model_path")]},
    )

    model: str | None = Field(
        None, min_length=1, description="a configured model to load, by name or alias"
    )
    llama_model_path: str | None = Field(
        None, description="a GGUF file inside model_dirs (vision models do not load from files)"
    )
    model_alias: str | None = Field(
        None, pattern=NAME_PATTERN, description="the name to serve it under (default: its stem)"
    )
    ctx_len: int | None = Field(None, gt=0, description="context length in tokens")
    ngl: int | None = Field(None, ge=-1, description="layers offloaded to the GPU (-1: all)")
    model_type: Literal["llm", "embedding"] = "llm"

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        return json_numbers(data)

    @model_validator(mode="after")
    def _one_of(self) -> LoadModelRequest:
        if self.model is None and self.llama_model_path is None:
            raise ValueError("give `model` (a configured model) or `llama_model_path` (a file)")
        return self


class UnloadModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str


@router.post("/loadmodel", responses=statuses.MANAGEMENT)
async def load_model(body: LoadModelRequest, request: Request) -> dict[str, Any]:
    """Load a configured model, or register and load a model file; reply with its status."""
    manager = manager_of(request)
    model = manager.get(body.model) if body.model is not None else _register(manager, body)
    await model.ensure_ready()
    return model.status().to_json()


@router.post("/unloadmodel", responses=statuses.MANAGEMENT)
async def unload_model(body: UnloadModelRequest, request: Request) -> dict[str, Any]:
    """Stop every replica of a model (each child exits); it stays configured, unloaded."""
    model = manager_of(request).get(body.model)
    await model.unload()
    return model.status().to_json()


def _register(manager: ModelManager, body: LoadModelRequest) -> Model:
    """The model a path names: the one already registered from that file, or a new one."""
    assert body.llama_model_path is not None  # the request names a model or a file
    settings = manager.settings
    path = checked_model_path(body.llama_model_path, settings.model_dirs, gguf=True)
    name = body.model_alias or path.stem
    existing = manager.models.get(name)
    if existing is not None:
        if existing.spec.source != str(path):
            raise Conflict(
                f"model {name!r} already serves {existing.spec.source}; choose another model_alias"
            )
        return existing
    return manager.register(_spec(name, path, body))


def _spec(name: str, path: Path, body: LoadModelRequest) -> ModelSpec:
    fields: dict[str, Any] = {
        "name": name,
        "kind": body.model_type,
        "backend": "llama_server",
        "source": str(path),
    }
    if body.ctx_len is not None:
        fields["context_length"] = body.ctx_len
    if body.ngl is not None:
        fields["gpu_layers"] = body.ngl
    return parse(ModelSpec, fields)


# The older servers' form `/{post|get}/{operation}?id=MODEL`, as explicit routes; left out of
# the OpenAPI schema, where the native routes describe the same thing.
@router.api_route("/get/getlogs", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/post/getlogs", methods=["GET", "POST"], include_in_schema=False)
async def get_logs(id: str, request: Request) -> list[dict[str, Any]]:
    """Every log record of model `id`."""
    return [r.to_json() for r in manager_of(request).get(id).log.since(0)]


@router.api_route("/get/cleanlogs", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/post/cleanlogs", methods=["GET", "POST"], include_in_schema=False)
async def clean_logs(id: str, request: Request) -> dict[str, int]:
    """Forget the log records of model `id`."""
    return {"cleared": manager_of(request).get(id).log.clear()}
