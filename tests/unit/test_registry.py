"""The registry of kinds and backends: every name it holds resolves to real code, and it says
which extra a missing package comes in."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from mmserve import registry
from mmserve.errors import ConfigError, UnsupportedCapability
from mmserve.registry import Entry, backends_of, entry, import_object, missing_packages
from mmserve.replicas.base import Replica

ALL = [(e.kind, e.backend) for e in registry._ENTRIES]


@pytest.mark.parametrize(("kind", "backend"), ALL)
def test_every_entry_names_a_replica_class_that_exists(kind: str, backend: str) -> None:
    found = entry(kind, backend)
    assert issubclass(import_object(found.replica), Replica)
    assert found.capabilities <= set(registry.KNOWN_CAPABILITIES)


@pytest.mark.parametrize(("kind", "backend"), [k for k in ALL if entry(*k).implementation])
def test_every_implementation_path_names_a_module_attribute(kind: str, backend: str) -> None:
    # Checked without importing the heavy module: the file and the name are there.
    found = entry(kind, backend)
    assert found.implementation is not None
    module, _, name = found.implementation.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    assert re.search(rf"^class {name}\b", Path(spec.origin).read_text(encoding="utf-8"), re.M)


def test_each_kind_has_its_default_backend() -> None:
    for kind in ("llm", "embedding", "subprocess", "http"):
        default = registry.default_backend(kind)
        assert default in backends_of(kind)
    assert registry.default_backend("vision") is None  # a vision model names its backend


def test_an_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"kind 'llm' has no backend 'vllm'; known: fake, llama"):
        entry("llm", "vllm")


def test_a_missing_package_names_the_extra() -> None:
    ghost = Entry("llm", "ghost", "x:Y", None, frozenset(), ("no_such_pkg_here",), "models")
    assert missing_packages(ghost) == (
        "backend 'ghost' needs no_such_pkg_here, which is not installed: "
        "pip install 'mmserve[models]'"
    )
    assert missing_packages(entry("llm", "fake")) is None


def test_only_local_kinds_hold_memory_and_only_vision_runs_in_process() -> None:
    assert not entry("http", "openai").holds_memory
    assert entry("llm", "llama_cpp").holds_memory
    assert entry("vision", "rapidocr").in_process and not entry("llm", "fake").in_process


async def test_a_capability_a_replica_lacks_is_unsupported() -> None:
    replica = Replica("cpu")
    with pytest.raises(UnsupportedCapability, match="does not serve images"):
        await replica.see(None)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedCapability, match="relayed requests"):
        replica.relay_stream("/x", {})
