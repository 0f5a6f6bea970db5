"""Native management and health routes."""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

from mmserve.api import statuses
from mmserve.api.openai import manager_of
from mmserve.config import DEVICE_PATTERN

__all__ = ["health_router", "router"]

router = APIRouter(tags=["management"])
health_router = APIRouter(tags=["health"])  # open to all, even when API keys are on


class AddReplicaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(default="cpu", pattern=DEVICE_PATTERN, description="cpu or cuda:N")


@health_router.get("/health", responses=statuses.HEALTH)
async def health() -> dict[str, str]:
    """The process is alive and serving HTTP (says nothing about the models)."""
    return {"status": "ok"}


@health_router.get("/ready", responses=statuses.READY)
async def ready(request: Request) -> JSONResponse:
    """200 once every model loaded at start is ready; else 503 listing those that are not."""
    waiting = [m.status() for m in manager_of(request).preloaded() if not m.ready]
    if not waiting:
        return JSONResponse({"status": "ready"})
    not_ready = [{"name": m.name, "state": m.state, "last_error": m.last_error} for m in waiting]
    return JSONResponse({"status": "not ready", "not_ready": not_ready}, status_code=503)


@router.get("/metrics", response_class=PlainTextResponse, responses=statuses.LISTING)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics (text exposition format)."""
    registry = request.app.state.metrics.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/", responses=statuses.LISTING)
@router.get("/api/v1", include_in_schema=False)
async def status(request: Request) -> dict[str, Any]:
    """Every model: its state, its replicas (pid, device, memory...), its last error; the room."""
    return {"server": {"pid": os.getpid()}, **manager_of(request).status().to_json()}


@router.post("/api/v1/{model}/add", responses=statuses.MANAGEMENT)
async def add_replica(
    model: str, request: Request, body: AddReplicaRequest | None = None
) -> dict[str, Any]:
    """One more replica of `model` on a device (default cpu); loads the model if none runs."""
    device = (body or AddReplicaRequest()).device
    return (await manager_of(request).add_replica(model, device)).to_json()


@router.post("/api/v1/{model}/remove", responses=statuses.MANAGEMENT)
async def remove_replica(model: str, request: Request) -> dict[str, Any]:
    """One fewer replica: the least busy one, once its in-flight requests finish."""
    return (await manager_of(request).remove_replica(model)).to_json()


@router.post("/api/v1/{model}/activate", responses=statuses.MANAGEMENT)
async def activate(model: str, request: Request) -> dict[str, Any]:
    """Load `model` if no replica runs; otherwise nothing."""
    return (await manager_of(request).load(model)).to_json()


@router.get("/api/v1/{model}/logs", response_model=None, responses=statuses.LOGS_FOLLOWED)
async def logs(
    model: str, request: Request, since: int = 0, follow: bool = False
) -> list[dict[str, Any]] | StreamingResponse:
    """The model's log records newer than `since` (a record's `seq`); with `follow=true`, a
    stream of JSON lines that goes on with each new record until the client leaves."""
    log = manager_of(request).log_of(model)
    if not follow:
        return [r.to_json() for r in log.since(since)]
    lines = (json.dumps(r.to_json()) + "\n" async for r in log.follow(since))
    return StreamingResponse(lines, media_type="application/x-ndjson")


@router.delete("/api/v1/{model}/logs", responses=statuses.LOOKUP)
async def clear_logs(model: str, request: Request) -> dict[str, int]:
    """Forget the model's log records (a log file, if configured, is kept)."""
    return {"cleared": manager_of(request).log_of(model).clear()}
