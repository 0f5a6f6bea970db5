"""The docs follow the code: the configuration reference is generated from the schema, every
config field is described, and every route the app serves is in docs/api.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mmserve.api.app import create_app
from mmserve.config import ApiKey, ModelSpec, Settings, load_settings
from mmserve.config_reference import COMMAND, render

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_configuration_reference_is_generated_from_the_schema() -> None:
    written = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert written == render(), f"docs/configuration.md is out of date: regenerate with {COMMAND}"


def test_every_config_field_has_a_description() -> None:
    schemas: list[type[BaseModel]] = [Settings, ModelSpec, ApiKey]
    missing = [
        f"{schema.__name__}.{name}"
        for schema in schemas
        for name, field in schema.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, (
        "fields without a description (docs/configuration.md shows an empty cell): "
        + ", ".join(missing)
    )


def served_routes() -> list[tuple[str, str]]:
    """Every (method, path) the app answers, HEAD aside (it follows GET)."""
    app = create_app(load_settings(None, env={}))
    return sorted(
        {
            (method, path)
            for path, methods in _flatten(app.routes, "")
            for method in methods
            if method != "HEAD"
        }
    )


def _flatten(routes: list[Any], prefix: str) -> list[tuple[str, set[str]]]:
    found: list[tuple[str, set[str]]] = []
    for route in routes:
        if hasattr(route, "path"):
            found.append((prefix + route.path, set(getattr(route, "methods", None) or {"GET"})))
        elif hasattr(route, "original_router"):  # FastAPI >= 0.165 keeps included routers whole
            found += _flatten(route.original_router.routes, prefix + route.include_context.prefix)
    return found


def test_every_route_is_in_the_api_reference() -> None:
    routes = served_routes()
    assert ("POST", "/v1/chat/completions") in routes  # the walk found the included routers
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [f"{method} {path}" for method, path in routes if f"`{method} {path}`" not in text]
    assert not missing, f"routes the app serves but docs/api.md does not describe: {missing}"
