"""create_app(settings): the ASGI application, its lifespan and its error rendering."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import compile_path

from mmserve import __version__
from mmserve.api import admin, calls, compat, openai, registration, statuses, ui
from mmserve.api.metrics import Metrics
from mmserve.api.middleware import Front
from mmserve.api.protocol import invalid_fields
from mmserve.config import Settings
from mmserve.engine.manager import ModelManager
from mmserve.errors import MMServeError, PermissionDenied

__all__ = ["create_app"]

log = logging.getLogger("mmserve.api")
# FastAPI's native OpenTelemetry asks the global providers on every request whether one is set
# and wraps the app in its own layers: measured in-process, a relayed request cost the app about
# 700 µs of CPU with it, 580 without. mmserve's metrics are Prometheus' (/metrics).
NO_OTEL: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings) -> FastAPI:
    """The server for `settings`. Models start loading when the app starts (its lifespan)."""
    app = FastAPI(title="mmserve", version=__version__, lifespan=lifespan, telemetry=NO_OTEL)
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    app.state.manager = ModelManager(settings, telemetry=metrics)
    metrics.watch(app.state.manager)
    # Without keys nobody has scopes to check: no dependency at all, which FastAPI would
    # otherwise solve on every request.
    inference = [Depends(require_scope("inference"))] if settings.api_keys else []
    admin_only = [Depends(require_scope("admin"))] if settings.api_keys else []
    app.include_router(openai.router, prefix="/v1", dependencies=inference)
    # The same routes without /v1, as some clients call them.
    app.include_router(openai.router, include_in_schema=False, dependencies=inference)
    app.include_router(openai.engines_router, dependencies=inference)
    app.include_router(admin.health_router)
    app.include_router(admin.router, dependencies=admin_only)
    app.include_router(registration.router, dependencies=admin_only)
    app.include_router(calls.router, dependencies=inference)
    app.include_router(compat.router, dependencies=admin_only)
    app.include_router(ui.router)  # the page is open; its data calls carry the key
    # Request id, then metrics (401s count too), keys, body limit: one layer (see Front).
    app.add_middleware(
        Front,
        metrics=metrics,
        limit=settings.max_body_bytes,
        keys=settings.api_keys,
        on_request=app.state.manager.log_request,
    )
    app.add_exception_handler(MMServeError, on_mmserve_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected_error)
    app.openapi = statuses.finished(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    manager: ModelManager = app.state.manager
    manager.start()
    banner(app.state.settings, manager)
    try:
        yield
    finally:
        await manager.stop()


def banner(settings: Settings, manager: ModelManager) -> None:
    """A few lines at start: where to reach the server, what it serves, how it is guarded."""
    keys = f"on ({len(settings.api_keys)})" if settings.api_keys else "off"
    preloaded = manager.preloaded()
    models = ", ".join(
        f"{m.spec.name} ({m.kind}, {'loading' if m in preloaded else 'loads on first use'})"
        for m in manager.models.values()
    )
    log.info(
        "mmserve %s on http://%s:%d  API keys: %s", __version__, settings.host, settings.port, keys
    )
    log.info("models: %s", models or "none configured")
    log.info("logs: stderr as %s; each model's log and state: GET /api/v1/", settings.log_format)


def require_scope(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: the request's API key must carry `scope` (when keys are on)."""

    # async, though it awaits nothing: FastAPI runs a plain `def` dependency in its thread
    # pool, a hop to another thread and back on every request (a quarter of a relayed
    # request's CPU in the server, docs/benchmarks.md).
    async def check(request: Request) -> None:
        scopes = getattr(request.state, "scopes", None)
        if scopes is not None and scope not in scopes:
            raise PermissionDenied(f"this API key does not have the {scope!r} scope")

    return check


def error_response(exc: MMServeError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)


async def on_mmserve_error(_: Request, exc: MMServeError) -> JSONResponse:
    return error_response(exc)


async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(invalid_fields(exc.errors(), exc.body))


async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (no such route, a method the route does not take), in OpenAI's
    envelope."""
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    body = {
        "error": {
            "message": str(exc.detail),
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found" if exc.status_code == 404 else None,
        }
    }
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods of the path the request's URL matches. Starlette's own 405 names those of
    the first route it tried, where one path may have a route per method (GET and DELETE of
    `/api/v1/{model}`)."""
    path = request.scope["path"]
    routes = [
        (route.path, getattr(route.original_route, "methods", None) or set())
        for route in iter_route_contexts(request.app.routes)
        if route.path and compile_path(route.path)[0].match(path)
    ]
    if not routes:
        return []
    template = routes[0][0]  # the route Starlette would have tried first
    return sorted({m for route_path, methods in routes if route_path == template for m in methods})


async def on_unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return error_response(MMServeError("internal server error; see the server log"))
