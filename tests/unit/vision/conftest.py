"""Fixtures for the vision tests: scikit-image's sample photos (public domain, in its wheel)
and a guard that proves a model loads with no network access."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


def _skimage_data_dir() -> Path:
    # Found without importing skimage: only its files are needed.
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "scikit-image is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@pytest.fixture(scope="session")
def sample_photo() -> Callable[[str], Image.Image]:
    """Open one of scikit-image's sample photos (chelsea.png is a cat, coffee.png a cup)."""

    def open_photo(name: str) -> Image.Image:
        with Image.open(_skimage_data_dir() / name) as image:
            return image.convert("RGB")

    return open_photo


@contextmanager
def no_network() -> Iterator[None]:
    """Any socket connection inside this block fails: a model that downloads cannot load."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access is disabled while this model loads")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        yield


@pytest.fixture(scope="session")
def offline() -> Callable[[], Any]:
    """The `no_network` context manager, for module-scoped model fixtures."""
    return no_network
