"""Model files named in requests: the operator's allow-list and what a file must look like."""

from __future__ import annotations

from pathlib import Path

from mmserve.errors import InvalidRequest, ModelFileNotFound, PermissionDenied

__all__ = ["GGUF_MAGIC", "checked_model_path"]

GGUF_MAGIC = b"GGUF"


def checked_model_path(raw: str, model_dirs: list[Path], *, gguf: bool) -> Path:
    """The real path of a model file a request names, once it passes every check.

    PermissionDenied (403) unless it lies inside one of `model_dirs` (after resolving symlinks
    and `..`, so neither can escape); ModelFileNotFound (404) if it does not exist;
    InvalidRequest (400) if `gguf` and the file is not a GGUF.
    """
    if not model_dirs:
        raise PermissionDenied("loading models by path is off: the operator has set no model_dirs")
    try:
        path = Path(raw).expanduser().resolve()
    except (ValueError, RuntimeError) as exc:  # a NUL byte; a symlink loop
        raise InvalidRequest(f"not a usable path: {exc}") from None
    if not any(path.is_relative_to(d) for d in model_dirs):
        allowed = ", ".join(str(d) for d in model_dirs)
        raise PermissionDenied(
            f"{raw} is outside the model directories this server allows: {allowed}"
        )
    if not path.exists():
        raise ModelFileNotFound(f"no such model file: {path}")
    if gguf and (not path.is_file() or _magic(path) != GGUF_MAGIC):
        raise InvalidRequest(f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    return path


def _magic(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(len(GGUF_MAGIC))
