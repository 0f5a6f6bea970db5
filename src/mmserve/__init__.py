"""mmserve: one light Python server for many AI models behind an OpenAI-compatible API."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_app", "load_settings"]


def __getattr__(name: str) -> object:
    # Lazy, so that `import mmserve` (and every worker child) does not import FastAPI.
    if name == "create_app":
        from mmserve.api.app import create_app

        return create_app
    if name == "load_settings":
        from mmserve.config import load_settings

        return load_settings
    raise AttributeError(name)
