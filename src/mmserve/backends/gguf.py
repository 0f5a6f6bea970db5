"""Read a GGUF file's metadata (its key/value header) without loading the model.

The server asks this of a model file before it starts llama-server for it: whether it has a
chat template of its own (a base model has none, so it serves completions only), its trained
context length. Arrays (the vocabulary) are skipped, not read. Format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

__all__ = ["GgufError", "read_metadata"]

# Value types: the fixed-size scalars by their struct format; 8 is a string, 9 an array.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """Not a GGUF file, or one cut short."""


def read_metadata(path: str | Path) -> dict[str, str | int | float | bool]:
    """The scalar and string entries of a GGUF file's header (arrays left out)."""
    with Path(path).open("rb") as file:
        if file.read(4) != b"GGUF":
            raise GgufError(f"{path} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", _read(file, 20))
        if version < 2:
            raise GgufError(f"{path}: GGUF version {version} is too old")
        metadata: dict[str, str | int | float | bool] = {}
        for _ in range(count):
            key = _string(file)
            (kind,) = struct.unpack("<I", _read(file, 4))
            if kind == _ARRAY:
                _skip_array(file)
            else:
                metadata[key] = _value(file, kind)
        return metadata


def _read(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise GgufError("the GGUF header is cut short")
    return data


def _string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read(file, 8))
    return _read(file, length).decode(errors="replace")


def _value(file: BinaryIO, kind: int) -> str | int | float | bool:
    if kind == _STRING:
        return _string(file)
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise GgufError(f"unknown GGUF value type {kind}")
    value: str | int | float | bool = struct.unpack("<" + fmt, _read(file, struct.calcsize(fmt)))[0]
    return value


def _skip_array(file: BinaryIO) -> None:
    kind, length = struct.unpack("<IQ", _read(file, 12))
    if kind == _STRING:
        for _ in range(length):
            (size,) = struct.unpack("<Q", _read(file, 8))
            file.seek(size, 1)
    elif kind == _ARRAY:
        for _ in range(length):
            _skip_array(file)
    elif (fmt := _SCALARS.get(kind)) is not None:
        file.seek(struct.calcsize(fmt) * length, 1)
    else:
        raise GgufError(f"unknown GGUF value type {kind}")
