"""The operator's dashboard: `GET /ui` serves a static page that drives the public API.

The page and its assets (package data in `mmserve/ui/`: plain HTML, CSS and JavaScript, no build
step, no external requests) are open to anyone, as a login page is: they hold no data. Every data
call the page makes (`/api/v1/`, `/metrics`, the logs, the playground's routes) sends the API key
the operator typed, and the usual scopes apply to it (see middleware.OPEN_PATHS).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@router.get("/ui")
async def page() -> Response:
    """The dashboard."""
    return asset_response("index.html")


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    """One of the page's files, by name (only the files shipped in the package)."""
    return asset_response(name)


@router.get("/")
async def root(request: Request) -> Response:
    """A browser asking for the server's address lands on the dashboard; other clients get the
    404 they always got (nothing is served at `/`)."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("ui", status_code=303)  # relative: works behind a path prefix
    raise HTTPException(404, "Not Found")


def asset_response(name: str) -> Response:
    body = assets().get(name)
    if body is None:
        raise HTTPException(404, f"no dashboard file {name!r}")
    media_type = MEDIA_TYPES[name[name.rindex(".") :]]
    # no-cache: the browser revalidates, so an upgraded server never runs yesterday's script.
    return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})


@cache
def assets() -> dict[str, bytes]:
    """The shipped files by name, read once. Looking names up here (never joining a path from
    the request) is what keeps `/ui/../x` out of the filesystem."""
    folder = files("mmserve") / "ui"
    return {
        entry.name: entry.read_bytes()
        for entry in folder.iterdir()
        if entry.is_file() and any(entry.name.endswith(ext) for ext in MEDIA_TYPES)
    }
