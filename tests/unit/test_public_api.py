from __future__ import annotations

import mmserve


def test_public_api_is_pinned() -> None:
    assert mmserve.__all__ == ["__version__", "create_app", "load_settings"]
    assert callable(mmserve.create_app)
    assert callable(mmserve.load_settings)


def test_importing_mmserve_does_not_import_the_web_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mmserve.workers.main; print('fastapi' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
