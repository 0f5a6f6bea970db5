"""The body of `POST /api/v1/models`: a model spec, with one schema per kind.

A config file's `models` entry (`ModelSpec`) checks most of what depends on the kind after
reading all of it (http needs base_url; only http takes it...). A request body must say that in
its schema, so that the OpenAPI document tells a client what it may send: each kind is its own
model here, with exactly the fields that kind takes and those it needs marked required. Each
field is `ModelSpec`'s own (its default, bounds and description, through `spec_field`); the
spec is then built by `ModelSpec` itself, which stays the one judge of a spec.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticUndefined

from mmserve.api.validation import json_numbers
from mmserve.catalog import CATALOG, CATALOG_PREFIX
from mmserve.config import DEVICE_PATTERN, ModelSpec

__all__ = [
    "NAME_PATTERN",
    "EmbeddingModel",
    "HttpModel",
    "LlmModel",
    "RuntimeModel",
    "SubprocessModel",
    "VisionModel",
    "given",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"  # a model's name or alias, as config checks it


def spec_field(name: str, *, required: bool = False, bounds: bool = True) -> Any:
    """ModelSpec's field `name`: its default (unless `required`), its bounds (unless the type
    here states them) and its description."""
    field = copy.copy(ModelSpec.model_fields[name])
    if required:
        field.default = PydanticUndefined
    if not bounds:
        field.metadata = []
    return field


def source_pattern(kind: str) -> str:
    """A source: one of the catalog's models of `kind`, or an absolute path (a file inside the
    operator's model_dirs; a relative one would depend on the server's working directory)."""
    # Names are letters, digits, '-' and '.': only '.' needs escaping (in ECMA and Python).
    names = "|".join(e.name.replace(".", r"\.") for e in CATALOG.values() if e.kind == kind)
    return f"^({CATALOG_PREFIX}({names})$|[/~])"


Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
KeepAlive = Literal[-1] | Annotated[float, Field(ge=0)]
# An http(s) URL whose host and port an HTTP client reads.
HttpUrl = Annotated[
    str,
    Field(
        pattern=r"^https?://([A-Za-z0-9._~%-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
        r"([/?#]\S*)?$",
        max_length=2000,
    ),
]
CommandLine = Annotated[str, Field(pattern=r"\S")]
Argument = Annotated[str, Field(min_length=1)]
Command = CommandLine | Annotated[list[Argument], Field(min_length=1)]


class _Runtime(BaseModel):
    """What every kind takes."""

    # Strict: JSON's types, as the schema states them (`false` is not 0).
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        return json_numbers(data)

    name: Name = spec_field("name")
    aliases: list[Name] = spec_field("aliases")
    keep_alive: KeepAlive = spec_field("keep_alive", bounds=False)
    pinned: bool = spec_field("pinned")
    preload: bool = spec_field("preload")
    max_concurrency: int = spec_field("max_concurrency")
    max_queue: int = spec_field("max_queue")
    queue_timeout: float = spec_field("queue_timeout")


class _Local(_Runtime):
    """A model this machine runs in its own processes."""

    threads: int | None = spec_field("threads")
    devices: Annotated[list[Device], Field(min_length=1)] = spec_field("devices")
    options: dict[str, Any] = spec_field("options")


class _Batched(BaseModel):
    max_inputs: int = spec_field("max_inputs")
    max_batch_size: int = spec_field("max_batch_size")
    batch_wait: float = spec_field("batch_wait")


class LlmModel(_Local):
    kind: Literal["llm"]
    backend: Literal["llama_server", "llama_cpp", "fake"] = Field(
        "llama_server", description="engine: llama.cpp's server, llama-cpp-python, or fake"
    )
    source: str = Field(pattern=source_pattern("llm"), description="catalog:NAME or a file")
    context_length: int = spec_field("context_length")
    gpu_layers: int | None = spec_field("gpu_layers")
    max_tokens: int | None = spec_field("max_tokens")


class EmbeddingModel(_Local, _Batched):
    kind: Literal["embedding"]
    backend: Literal["sentence_transformers", "llama_cpp", "fake"] = Field(
        "sentence_transformers", description="engine"
    )
    source: str = Field(
        pattern=source_pattern("embedding"), description="catalog:NAME, a file or a directory"
    )
    context_length: int = spec_field("context_length")
    gpu_layers: int | None = spec_field("gpu_layers")


class VisionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        return json_numbers(data)

    threads: int | None = Field(None, ge=1, description="its runtime's; default: half the cores")


class VisionModel(_Runtime, _Batched):
    kind: Literal["vision"]
    backend: Literal["rapidocr", "efficientnet_lite0", "open_nsfw"]
    devices: Annotated[list[Literal["cpu"]], Field(min_length=1)] = Field(
        ["cpu"], description="in the server process: cpu only"
    )
    options: VisionOptions = Field(default_factory=lambda: VisionOptions(threads=None))


def given(field: str) -> dict[str, Any]:
    """A JSON schema: `field` is there, and not null (for an object that needs one of two)."""
    return {"required": [field], "properties": {field: {"not": {"type": "null"}}}}


class HttpModel(_Runtime, _Batched):
    """A remote server at base_url. (A server mmserve runs itself, from a command, is for the
    config file and the compatibility form `POST /post/addmodel`.)"""

    kind: Literal["http"]
    backend: Literal["openai", "json"] = Field("openai", description="the upstream's API")
    base_url: HttpUrl = spec_field("base_url", required=True)
    api_key: str | None = spec_field("api_key")
    api_key_env: str | None = Field(
        None, description="refused here (403): only a config file may name an environment variable"
    )
    upstream_model: str | None = spec_field("upstream_model")
    timeout: float = spec_field("timeout")
    connect_timeout: float = spec_field("connect_timeout")
    max_tokens: int | None = spec_field("max_tokens")


class SubprocessModel(_Local):
    kind: Literal["subprocess"]
    command: Command = Field(
        description="the program and its arguments (a list, or one line split as a shell "
        "would); it must match an entry of the operator's allow_runtime_subprocess"
    )
    max_tokens: int | None = spec_field("max_tokens")
    max_inputs: int = spec_field("max_inputs")


RuntimeModel = Annotated[
    LlmModel | EmbeddingModel | VisionModel | HttpModel | SubprocessModel,
    Field(discriminator="kind"),
]
