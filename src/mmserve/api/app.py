"""create_app(settings): the ASGI application, its lifespan and its error rendering."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from mmserve import __version__
from mmserve.api import admin, compat, openai
from mmserve.config import Settings
from mmserve.engine.manager import ModelManager
from mmserve.errors import InvalidRequest, MMServeError

__all__ = ["create_app"]

log = logging.getLogger("mmserve.api")


def create_app(settings: Settings) -> FastAPI:
    """The server for `settings`. Models start loading when the app starts (its lifespan)."""
    app = FastAPI(title="mmserve", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.manager = ModelManager(settings)
    app.include_router(openai.router, prefix="/v1")
    app.include_router(openai.router, include_in_schema=False)  # the same routes without /v1
    app.include_router(openai.engines_router)
    app.include_router(admin.router)
    app.include_router(compat.router)
    app.add_exception_handler(MMServeError, on_mmserve_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected_error)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    manager: ModelManager = app.state.manager
    manager.start()
    try:
        yield
    finally:
        await manager.stop()


def error_response(exc: MMServeError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)


async def on_mmserve_error(_: Request, exc: MMServeError) -> JSONResponse:
    return error_response(exc)


async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(describe_validation_error(exc))


def describe_validation_error(exc: RequestValidationError) -> InvalidRequest:
    """The first problem, as OpenAI words it: which field, and what is wrong with it."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"] if part != "body"]
    if err["type"] == "json_invalid":
        return InvalidRequest(
            f"the request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}"
        )
    if not loc:
        return InvalidRequest(f"the request body is invalid: {err['msg']}")
    field = ".".join(loc)
    return InvalidRequest(f"invalid value for '{field}': {err['msg']}", param=loc[0])


async def on_http_error(_: Request, exc: HTTPException) -> JSONResponse:
    kind = "not_found" if exc.status_code == 404 else None
    body = {
        "error": {
            "message": str(exc.detail),
            "type": "invalid_request_error",
            "param": None,
            "code": kind,
        }
    }
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def on_unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return error_response(MMServeError("internal server error; see the server log"))
