"""Devices a replica can be placed on: `cpu`, and the GPUs this machine has."""

from __future__ import annotations

from pathlib import Path

from mmserve.errors import InvalidRequest

__all__ = ["check_device"]


def check_device(device: str, dev: Path = Path("/dev")) -> None:
    """InvalidRequest unless `device` is `cpu` or a GPU present here (its /dev/nvidiaN node)."""
    if device == "cpu":
        return
    index = device.removeprefix("cuda:")
    if not (dev / f"nvidia{index}").exists():
        raise InvalidRequest(
            f"device {device!r} is not on this machine (no {dev}/nvidia{index})", param="device"
        )
