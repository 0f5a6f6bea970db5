"""Fetching a remote image over http(s), only where the operator allows it, within a byte cap
and a deadline. httpx's exceptions are translated here into `InvalidRequest`: the URL came from
the request, so a URL that cannot be fetched is the request's problem.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from mmserve.errors import InvalidRequest

if TYPE_CHECKING:  # images.py imports this module
    from mmserve.vision.images import ImageLimits

__all__ = ["fetch_image_bytes"]

_MAX_REDIRECTS = 5


async def fetch_image_bytes(
    url: str, limits: ImageLimits, param: str = "image", *, client: httpx.AsyncClient | None = None
) -> bytes:
    """GET `url` and return its body; stops reading past `limits.max_bytes`.

    `limits.fetch_timeout` bounds the whole fetch (connect, headers and body together), so a
    server trickling bytes cannot hold a request forever.
    """
    if not limits.allow_remote:
        raise InvalidRequest(
            "image URLs are not fetched by this server: send the image as a data URL or base64 "
            "(the operator must enable allow_remote_images to allow http(s) URLs)",
            param=param,
        )
    try:
        async with asyncio.timeout(limits.fetch_timeout):
            if client is not None:
                return await _get(client, url, limits, param)
            async with httpx.AsyncClient(
                follow_redirects=True, max_redirects=_MAX_REDIRECTS
            ) as own_client:
                return await _get(own_client, url, limits, param)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise InvalidRequest(
            f"fetching the image URL timed out after {limits.fetch_timeout:g} s", param=param
        ) from exc
    except httpx.HTTPError as exc:  # connection refused, bad TLS, too many redirects...
        raise InvalidRequest(
            f"could not fetch the image URL: {type(exc).__name__}: {exc}", param=param
        ) from exc


async def _get(client: httpx.AsyncClient, url: str, limits: ImageLimits, param: str) -> bytes:
    async with client.stream("GET", url, timeout=limits.fetch_timeout) as response:
        if response.status_code >= 400:
            raise InvalidRequest(
                f"could not fetch the image URL: HTTP {response.status_code}", param=param
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise _too_large(limits, param)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limits.max_bytes:  # the header may lie or be absent
                raise _too_large(limits, param)
        return bytes(body)


def _too_large(limits: ImageLimits, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"the image at the URL is larger than the limit of {limits.max_bytes} bytes", param=param
    )
