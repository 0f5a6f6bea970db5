"""The native call route, `POST /api/v1/{model}/call`: one JSON shape per kind of model.

    the model serves          body                      answer
    its own calls             anything                  what the program or endpoint answered
    chat (local or upstream)  {"messages": [...], ...}  {"text", "finish_reason", "usage"}
    text completion           {"prompt": "...", ...}    the same ("texts" for a list of prompts)
    embeddings                {"input": str | [str]}    {"embeddings", "dimensions", "usage"}
    vision: OCR               {"image": ...}            {"text", "lines": [{text, score, box}]}
    vision: a classifier      {"image": ..., "top_k"}   {"labels": [{"label", "score"}]}
    either, several images    {"images": [...]}         a list of those

Sampling fields (temperature, max_tokens, ...) are those of the OpenAI routes, which these
answers are built from; the compatibility form `/{post|get}/predict?id=MODEL` lands here too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from mmserve.api import openai, statuses, vision
from mmserve.api import protocol as wire
from mmserve.api.cancel import cancel_on_disconnect
from mmserve.engine.model import Model
from mmserve.errors import InvalidRequest
from mmserve.types import Capability

__all__ = ["call_model", "router"]

router = APIRouter(tags=["models"])

# What a call body must hold for each capability, in the order they are tried.
_SHAPES: tuple[tuple[str, Capability, str], ...] = (
    ("messages", "chat", "{'messages': [...]}"),
    ("prompt", "complete", "{'prompt': '...'}"),
    ("input", "embed", "{'input': '...'}"),
)


@router.post("/api/v1/{model}/call", responses=statuses.CALLS)
async def call(model: str, request: Request, body: Annotated[wire.CallBody, Body()]) -> Any:
    """Run `model` on a JSON body (see the module doc for each kind's shape)."""
    return await call_model(request, model, body)


@router.api_route("/get/predict", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/post/predict", methods=["GET", "POST"], include_in_schema=False)
async def predict(id: str, request: Request) -> Any:
    """Model `id`'s call (`POST /api/v1/{model}/call`) on the JSON body; with GET, on the query
    parameters other than `id`."""
    if request.method == "GET":
        body = {k: v for k, v in request.query_params.items() if k != "id"}
    else:
        body = wire.object_body(await request.body())
    return await call_model(request, id, body)


async def call_model(request: Request, name: str, body: dict[str, Any]) -> Any:
    model = openai.resolve(request, name)
    await model.ensure_ready()  # what it can do is known once it is loaded
    manager = openai.manager_of(request)
    if "call" in model.capabilities:
        return await cancel_on_disconnect(request, manager.call(name, body))
    if "vision" in model.capabilities:
        if "image" not in body and "images" not in body:
            raise InvalidRequest(
                f"model {model.spec.name!r} takes a call body of the form {{'image': '<data URL "
                "or base64>'}} or {'images': [...]}, with top_k for a classifier"
            )
        return await cancel_on_disconnect(request, vision.call(manager, model, body))
    for key, capability, _ in _SHAPES:
        if key in body and capability in model.capabilities:
            answer = await _openai_answer(request, model, capability, {**body, "model": name})
            return _EXTRACT[capability](answer, body)
    takes = [shape for _, c, shape in _SHAPES if c in model.capabilities]
    raise InvalidRequest(
        f"model {model.spec.name!r} takes a call body of the form {' or '.join(takes)}"
        if takes
        else f"model {model.spec.name!r} takes no calls"
    )


async def _openai_answer(
    request: Request, model: Model, capability: Capability, body: dict[str, Any]
) -> dict[str, Any]:
    """The answer the OpenAI route would give, as JSON: the same validation and engine path."""
    body["stream"] = False
    if capability == "embed":
        body.pop("stream")
    path = {"chat": "/chat/completions", "complete": "/completions", "embed": "/embeddings"}
    if model.can("relay"):
        work = openai.manager_of(request).relay(model.spec.name, capability, path[capability], body)
        answer: dict[str, Any] = await cancel_on_disconnect(request, work)
        return answer
    local: Any
    if capability == "chat":
        local = await openai.answer_chat(wire.parse(wire.ChatCompletionRequest, body), request)
    elif capability == "complete":
        local = await openai.answer_completions(wire.parse(wire.CompletionRequest, body), request)
    else:
        local = await openai.answer_embeddings(wire.parse(wire.EmbeddingRequest, body), request)
    return dict(local.model_dump())


def _text_answer(answer: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices") or [{}]
    texts = [c.get("message", {}).get("content") or c.get("text", "") for c in choices]
    one = not isinstance(body.get("prompt"), list)
    return {
        **({"text": texts[0]} if one else {"texts": texts}),
        "finish_reason": choices[0].get("finish_reason"),
        "usage": answer.get("usage"),
    }


def _vectors(answer: dict[str, Any], _: dict[str, Any]) -> dict[str, Any]:
    vectors = [item.get("embedding") for item in answer.get("data", [])]
    first = vectors[0] if vectors else None
    return {
        "embeddings": vectors,
        "dimensions": len(first) if isinstance(first, list) else None,
        "usage": answer.get("usage"),
    }


_EXTRACT = {"chat": _text_answer, "complete": _text_answer, "embed": _vectors}
