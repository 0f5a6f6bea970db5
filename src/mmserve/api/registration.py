"""Runtime registration: models added and removed while the server runs (admin routes).

A request may not make the server do what the operator has not allowed: a command (of
`kind: subprocess`, or of a managed `kind: http` server) must match an entry of
`allow_runtime_subprocess` (none: 403) and takes no `env` or `cwd`, a model file must lie in
`model_dirs` (as for `/loadmodel`), and `api_key_env` is refused, since it would let a request
choose which of the server's environment variables is sent to a URL of its choosing.
"""

from __future__ import annotations

import shlex
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from mmserve.api import protocol as wire
from mmserve.api import statuses
from mmserve.api.openai import manager_of
from mmserve.api.runtime_models import RuntimeModel
from mmserve.catalog import is_catalog_source
from mmserve.config import ModelSpec, Settings
from mmserve.engine.sources import checked_model_path
from mmserve.errors import InvalidRequest, MMServeError, PermissionDenied

__all__ = ["router", "runtime_spec"]

router = APIRouter(tags=["management"])

# The compatibility form's `type` -> the spec it stands for.
_COMPAT_TYPES = ("httpmodel", "subprocessmodel")


@router.post("/api/v1/models", status_code=201, responses=statuses.MANAGEMENT)
async def register(request: Request, body: RuntimeModel) -> JSONResponse:
    """Add a model from a spec (the fields of a config file's `models` entry); it loads now
    unless `preload: false`. A load that fails removes it again and answers why."""
    return await _register(request, body.model_dump(exclude_unset=True, exclude_none=True))


@router.get("/api/v1/{model}", responses=statuses.LOOKUP)
async def model_status(model: str, request: Request) -> dict[str, Any]:
    """One model's state, replicas and recent log (as in `GET /api/v1/`)."""
    return manager_of(request).get(model).status().to_json()


@router.delete("/api/v1/{model}", responses=statuses.LOOKUP)
async def unregister(model: str, request: Request) -> dict[str, Any]:
    """Unload a model and forget it; its name is free again."""
    manager = manager_of(request)
    name = manager.get(model).spec.name
    await manager.unregister(name)
    return {"removed": name}


@router.post("/post/addmodel", include_in_schema=False)
async def add_model_compat(
    id: str, type: str, dest: str, request: Request, backend: str | None = None
) -> JSONResponse:
    """The older servers' form: `type=httpmodel` (dest: a URL; backend json unless
    `backend=openai`) or `type=subprocessmodel` (dest: a command line). A JSON body may add
    more spec fields."""
    extra = wire.object_body(await request.body())
    fields: dict[str, Any]
    if type == "httpmodel":
        fields = {"kind": "http", "backend": backend or "json", "base_url": dest}
    elif type == "subprocessmodel":
        fields = {"kind": "subprocess", "command": _split(dest, "dest")}
    else:
        raise InvalidRequest(f"type must be one of {', '.join(_COMPAT_TYPES)}", param="type")
    return await _register(request, {**extra, **fields, "name": id})


async def _register(request: Request, fields: dict[str, Any]) -> JSONResponse:
    manager = manager_of(request)
    model = manager.register(runtime_spec(fields, manager.settings))
    if model.spec.preload:
        try:
            await model.ensure_ready()
        except MMServeError:
            await manager.unregister(model.spec.name)
            raise
    model.log.event("registered at runtime")
    return JSONResponse(model.status().to_json(), status_code=201)


def runtime_spec(fields: dict[str, Any], settings: Settings) -> ModelSpec:
    """A spec sent by a request, once it passes what the operator allows (see the module doc)."""
    fields = dict(fields)
    if "api_key_env" in fields:
        raise PermissionDenied(
            "api_key_env is read only from the config file; send api_key itself", param="api_key"
        )
    if fields.get("kind") == "subprocess" or "command" in fields:
        fields["command"] = _allowed_command(fields.get("command"), settings)
    for key in ("env", "cwd"):  # either would let an allowed program run other code
        if key in fields:
            raise PermissionDenied(f"{key} is read only from the config file", param=key)
    source = fields.get("source")
    if isinstance(source, str) and not is_catalog_source(source):
        gguf = fields.get("kind") == "llm" and fields.get("backend", "llama_server") != "fake"
        fields["source"] = str(checked_model_path(source, settings.model_dirs, gguf=gguf))
    return wire.parse(ModelSpec, fields)


def _split(line: str, param: str) -> list[str]:
    """A command line split as a shell would (without running one)."""
    try:
        return shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise InvalidRequest(f"cannot read the command line: {exc}", param=param) from None


def _allowed_command(command: object, settings: Settings) -> list[str]:
    """The program a request asks to start, as a list, if the operator allows it."""
    allowed = settings.allow_runtime_subprocess
    if not allowed:
        raise PermissionDenied(
            "starting programs at runtime is off: the operator has not set "
            "allow_runtime_subprocess",
            param="command",
        )
    if isinstance(command, str):
        command = _split(command, "command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise InvalidRequest(
            "kind: subprocess needs command, a list of strings (the program and its arguments)",
            param="command",
        )
    for entry in allowed:
        prefix = shlex.split(entry)
        if prefix and command[: len(prefix)] == prefix:
            return command
    raise PermissionDenied(
        f"the command {shlex.join(command)!r} is not one that allow_runtime_subprocess allows",
        param="command",
    )
