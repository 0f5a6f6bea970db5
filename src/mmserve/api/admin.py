"""Native management and health routes."""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse

from mmserve.api.openai import manager_of
from mmserve.config import DEVICE_PATTERN
from mmserve.engine.devices import check_device

__all__ = ["health_router", "router"]

router = APIRouter(tags=["management"])
health_router = APIRouter(tags=["health"])  # open to all, even when API keys are on


class AddReplicaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(default="cpu", pattern=DEVICE_PATTERN, description="cpu or cuda:N")


@health_router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive and serving HTTP (says nothing about the models)."""
    return {"status": "ok"}


@health_router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once every model loaded at start is ready; else 503 listing those that are not."""
    waiting = [m.status() for m in manager_of(request).preloaded() if not m.ready]
    if not waiting:
        return JSONResponse({"status": "ready"})
    not_ready = [{k: m[k] for k in ("name", "state", "last_error")} for m in waiting]
    return JSONResponse({"status": "not ready", "not_ready": not_ready}, status_code=503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics (text exposition format)."""
    registry = request.app.state.metrics.registry
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/")
@router.get("/api/v1", include_in_schema=False)
async def status(request: Request) -> dict[str, Any]:
    """Every model: its state, its replicas (pid, device, memory...), its last error; the room."""
    return {"server": {"pid": os.getpid()}, **manager_of(request).status()}


@router.post("/api/v1/{model}/add")
async def add_replica(
    model: str, request: Request, body: AddReplicaRequest | None = None
) -> dict[str, Any]:
    """One more replica of `model` on a device (default cpu); loads the model if none runs."""
    target = manager_of(request).get(model)
    device = (body or AddReplicaRequest()).device
    check_device(device)
    await target.add_replica(device)
    return target.status()


@router.post("/api/v1/{model}/remove")
async def remove_replica(model: str, request: Request) -> dict[str, Any]:
    """One fewer replica: the least busy one, once its in-flight requests finish."""
    target = manager_of(request).get(model)
    await target.remove_replica()
    return target.status()


@router.post("/api/v1/{model}/activate")
async def activate(model: str, request: Request) -> dict[str, Any]:
    """Load `model` if no replica runs; otherwise nothing."""
    target = manager_of(request).get(model)
    await target.ensure_ready()
    return target.status()


@router.get("/api/v1/{model}/logs", response_model=None)
async def logs(
    model: str, request: Request, since: int = 0, follow: bool = False
) -> list[dict[str, Any]] | StreamingResponse:
    """The model's log records newer than `since` (a record's `seq`); with `follow=true`, a
    stream of JSON lines that goes on with each new record until the client leaves."""
    log = manager_of(request).get(model).log
    if not follow:
        return [r.to_json() for r in log.since(since)]
    lines = (json.dumps(r.to_json()) + "\n" async for r in log.follow(since))
    return StreamingResponse(lines, media_type="application/x-ndjson")


@router.delete("/api/v1/{model}/logs")
async def clear_logs(model: str, request: Request) -> dict[str, int]:
    """Forget the model's log records (a log file, if configured, is kept)."""
    return {"cleared": manager_of(request).get(model).log.clear()}
