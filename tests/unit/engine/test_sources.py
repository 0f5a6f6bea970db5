from __future__ import annotations

from pathlib import Path

import pytest

from mmserve.engine.sources import checked_model_path
from mmserve.errors import InvalidRequest, ModelFileNotFound, PermissionDenied


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    (root / "good.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    (root / "notes.txt").write_text("not a model")
    (tmp_path / "secret.gguf").write_bytes(b"GGUF")
    (root / "escape.gguf").symlink_to(tmp_path / "secret.gguf")
    return root


def test_a_gguf_inside_model_dirs(models: Path) -> None:
    assert (
        checked_model_path(str(models / "good.gguf"), [models], gguf=True) == models / "good.gguf"
    )


def test_off_without_model_dirs(models: Path) -> None:
    with pytest.raises(PermissionDenied, match="no model_dirs"):
        checked_model_path(str(models / "good.gguf"), [], gguf=True)


@pytest.mark.parametrize("name", ["../secret.gguf", "escape.gguf", "/etc/passwd"])
def test_nothing_escapes_model_dirs(models: Path, name: str) -> None:
    with pytest.raises(PermissionDenied, match="outside the model directories"):
        checked_model_path(str(models / name), [models], gguf=True)


def test_missing_file_is_404(models: Path) -> None:
    with pytest.raises(ModelFileNotFound):
        checked_model_path(str(models / "absent.gguf"), [models], gguf=True)


def test_not_a_gguf_is_400(models: Path) -> None:
    with pytest.raises(InvalidRequest, match="not a GGUF"):
        checked_model_path(str(models / "notes.txt"), [models], gguf=True)
    with pytest.raises(InvalidRequest, match="not a GGUF"):
        checked_model_path(str(models), [models], gguf=True)
