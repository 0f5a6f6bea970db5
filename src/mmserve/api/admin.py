"""Native management and health routes."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request

from mmserve.api.openai import manager_of

__all__ = ["router"]

router = APIRouter(tags=["admin"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive and serving HTTP (says nothing about the models)."""
    return {"status": "ok"}


@router.get("/api/v1/")
@router.get("/api/v1", include_in_schema=False)
async def status(request: Request) -> dict[str, Any]:
    """Every configured model: its state, its replicas (pid, device, memory...), its last error."""
    return {"server": {"pid": os.getpid()}, "models": manager_of(request).status()}
