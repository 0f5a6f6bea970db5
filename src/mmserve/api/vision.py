"""Vision requests: images out of a call body or a chat's `image_url` parts, into a vision
model, and its results back as JSON (the call route) or as chat text (any OpenAI client).

Images are decoded here, before the request takes a place in the model's queue, so a bad image
is a 400 that costs the model nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from mmserve.api import protocol as wire
from mmserve.config import Settings
from mmserve.engine.manager import ModelManager
from mmserve.engine.model import Model
from mmserve.errors import InvalidRequest
from mmserve.types import TextDelta, TextDone, TextEvent, VisionItem

if TYPE_CHECKING:
    from mmserve.vision.images import ImageLimits

__all__ = ["call", "chat_events", "describe"]

MAX_TOP_K = 1000  # ImageNet's classes; a classifier with fewer answers with all it has
DEFAULT_TOP_K = 5


def limits(settings: Settings) -> ImageLimits:
    from mmserve.vision.images import ImageLimits  # pillow: only when images come

    return ImageLimits(
        max_pixels=settings.max_image_pixels,
        allow_remote=settings.allow_remote_images,
        max_bytes=settings.max_image_bytes,
        fetch_timeout=settings.image_fetch_timeout,
    )


async def call(manager: ModelManager, model: Model, body: dict[str, Any]) -> Any:
    """`{"image": ...}` -> one result; `{"images": [...]}` -> a list of them."""
    one = "image" in body
    refs = [body["image"]] if one else body.get("images")
    param = "image" if one else "images"
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise InvalidRequest(
            f"{param} must be a data URL or base64 string"
            + ("" if one else ", in a non-empty list"),
            param=param,
        )
    top_k = body.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequest(f"top_k must be an integer from 1 to {MAX_TOP_K}", param="top_k")
    model.check_inputs(len(refs))
    images = await _load(refs, manager.settings, "image" if one else "images.{}")
    results = await manager.see(model.spec.name, VisionItem(images, top_k))
    return results[0] if one else results


async def chat_events(
    manager: ModelManager, model: Model, body: wire.ChatCompletionRequest
) -> AsyncIterator[TextEvent]:
    """A chat with images, answered in text: what OCR read, or a classifier's top labels."""
    refs = _image_parts(body, model)
    model.check_inputs(len(refs))
    images = await _load(refs, manager.settings, "messages")  # the part is in a message
    results = await manager.see(model.spec.name, VisionItem(images, DEFAULT_TOP_K))
    yield TextDelta(text="\n\n".join(describe(r) for r in results))
    yield TextDone(finish_reason="stop", prompt_tokens=0, completion_tokens=0)


def describe(result: dict[str, Any]) -> str:
    """One image's result as text: the lines read, or `label: score` lines, best first."""
    if "labels" in result:
        return "\n".join(f"{x['label']}: {x['score']:.3f}" for x in result["labels"])
    return str(result.get("text", ""))


def _image_parts(body: wire.ChatCompletionRequest, model: Model) -> list[str]:
    """The images of the last user message that has any."""
    for message in reversed(body.messages):
        if message.role == "user" and isinstance(message.content, list):
            refs = [p.image_url.url for p in message.content if isinstance(p, wire.ImagePart)]
            if refs:
                return refs
    raise InvalidRequest(
        f"model {model.spec.name!r} reads images: send them as image_url content parts of a "
        "user message",
        param="messages",
    )


async def _load(refs: list[str], settings: Settings, param: str) -> list[Any]:
    """Every image decoded (in threads, at once); the first bad one is the 400, its `param`
    formatted with its index."""
    bounds = limits(settings)
    from mmserve.vision.images import load_image  # pillow: only when images come

    loads = (load_image(r, bounds, param.format(i)) for i, r in enumerate(refs))
    return list(await asyncio.gather(*loads))
