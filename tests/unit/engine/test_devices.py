from __future__ import annotations

from pathlib import Path

import pytest

from mmserve.engine.devices import check_device
from mmserve.errors import InvalidRequest


def test_devices_must_be_present(tmp_path: Path) -> None:
    check_device("cpu", dev=tmp_path)
    with pytest.raises(InvalidRequest, match="not on this machine"):
        check_device("cuda:0", dev=tmp_path)
    (tmp_path / "nvidia0").touch()
    check_device("cuda:0", dev=tmp_path)
