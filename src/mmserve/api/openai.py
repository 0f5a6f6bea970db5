"""The OpenAI-compatible routes: translate the request, call the engine, render the answer.

Mounted twice by `api.app`: under `/v1` and at the root, as OpenAI clients use both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import orjson
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from mmserve.api import convert, statuses, vision
from mmserve.api import protocol as wire
from mmserve.api.cancel import cancel_on_disconnect
from mmserve.api.sse import event_stream, relayed_stream
from mmserve.engine.manager import ModelManager
from mmserve.engine.model import Model
from mmserve.errors import InvalidRequest
from mmserve.types import Capability, EmbedRequest, TextEvent

__all__ = ["engines_router", "router"]

router = APIRouter(tags=["openai"])
engines_router = APIRouter(tags=["openai"])

T = TypeVar("T")


def manager_of(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def resolve(request: Request, name: str) -> Model:
    """Model `name` (404 if none), which labels the request's metrics: a configured model's
    name, never raw input, keeps the metrics' label values bounded."""
    model = manager_of(request).get(name)
    request.state.model = model.spec.name
    return model


async def relay(
    request: Request,
    validated: wire.ChatCompletionRequest | wire.CompletionRequest | wire.EmbeddingRequest,
    capability: Capability,
    path: str,
    stream: bool,
) -> Response:
    """Pass an OpenAI request on to a model that relays (an upstream, llama-server), so that any
    field the upstream knows works; its answer comes back as the upstream gave it.

    The fields mmserve knows go as it validated them (`validated`: token ids as integers, no
    explicit nulls, no stray keys inside a message); the others as the client sent them."""
    name = validated.model
    fields = type(validated).model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    raw = await request.json()
    given = validated.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)
    body = {**{k: v for k, v in raw.items() if k not in known}, **given, "model": name}
    manager = manager_of(request)
    if stream:
        return relayed_stream(await prime(manager.relay_stream(name, capability, path, body)))
    answer = await cancel_on_disconnect(request, manager.relay(name, capability, path, body))
    try:
        # orjson, not the stdlib encoder of Starlette's JSONResponse: 2 against 8 µs for a short
        # chat answer (parsed once by the replica, to count its tokens and reshape it).
        return Response(orjson.dumps(answer), media_type="application/json")
    except TypeError:  # an integer beyond 64 bits, which only the stdlib writes
        return JSONResponse(answer)


async def prime(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """Pull the first item now, so that an unknown model, a failed load or a prompt that is too
    long answers with its own status code before a stream's headers go out."""
    first = await anext(items)

    async def chain() -> AsyncIterator[T]:
        yield first
        async for item in items:
            yield item

    return chain()


def refuse_relay_only(
    model: Model, body: wire.ChatCompletionRequest | wire.CompletionRequest
) -> None:
    """A 400 naming the fields only relaying engines serve (llama-server, an upstream), when
    `model` runs on an engine of our own that does not (one choice, no logprobs, text prompts)."""
    given = ["n"] if body.n > 1 else []
    if isinstance(body, wire.ChatCompletionRequest):
        given += ["logprobs"] if body.logprobs else []
        given += ["top_logprobs"] if body.top_logprobs is not None else []
        given += ["tools"] if body.calls_tools else []
        given += ["response_format"] if _json_schema(body) else []
    else:
        given += ["logprobs"] if body.logprobs is not None else []
        given += ["prompt"] if any(not isinstance(p, str) for p in body.prompts) else []
    if given:
        names = ", ".join(f"'{name}'" for name in given)
        raise InvalidRequest(
            f"model {model.spec.name!r} (backend {model.spec.backend}) does not serve {names} "
            "(n > 1, logprobs, tools, JSON schemas and token-array prompts are served by "
            "llama-server and relayed models)",
            param=given[0],
        )


def _json_schema(body: wire.ChatCompletionRequest) -> bool:
    return body.response_format is not None and body.response_format.type == "json_schema"


def _texts(body: wire.CompletionRequest) -> list[str]:
    """The prompts as text (refuse_relay_only has refused token arrays)."""
    return [p for p in body.prompts if isinstance(p, str)]


def _complete(
    manager: ModelManager, body: wire.CompletionRequest, prompt: str
) -> AsyncIterator[TextEvent]:
    return manager.generate(body.model, "complete", convert.completion_request(body, prompt))


@router.post(
    "/chat/completions",
    response_model=wire.ChatCompletion,
    responses=statuses.STREAMING_INFERENCE,
)
async def chat_completions(
    body: wire.ChatCompletionRequest, request: Request
) -> Response | wire.ChatCompletion:
    return await answer_chat(body, request)


async def answer_chat(
    body: wire.ChatCompletionRequest, request: Request
) -> Response | wire.ChatCompletion:
    """A chat request answered (the route's work, also the call route's)."""
    # An unknown model is a 404 before anything else is judged.
    model = resolve(request, body.model)
    if model.can("relay"):
        return await relay(request, body, "chat", "/chat/completions", body.stream)
    refuse_relay_only(model, body)
    manager = manager_of(request)
    if model.can("vision"):
        events = vision.chat_events(manager, model, body)
    else:
        events = manager.generate(body.model, "chat", convert.chat_request(body))
    if body.stream:
        chunks = convert.chat_chunks(await prime(events), body.model, body.include_usage)
        return event_stream(chunks)
    text, done = await cancel_on_disconnect(request, convert.collect(events))
    choice = wire.ChatChoice(
        index=0, message=wire.AssistantMessage(content=text), finish_reason=done.finish_reason
    )
    return wire.ChatCompletion(
        id=wire.new_id("chatcmpl"),
        model=body.model,
        choices=[choice],
        usage=convert.usage(done.prompt_tokens, done.completion_tokens),
    )


@router.post("/completions", response_model=wire.Completion, responses=statuses.STREAMING_INFERENCE)
async def completions(body: wire.CompletionRequest, request: Request) -> Response | wire.Completion:
    return await answer_completions(body, request)


async def answer_completions(
    body: wire.CompletionRequest, request: Request
) -> Response | wire.Completion:
    """A completion request answered (the route's work, also the call route's)."""
    model = resolve(request, body.model)
    if model.can("relay"):
        return await relay(request, body, "complete", "/completions", body.stream)
    refuse_relay_only(model, body)
    manager = manager_of(request)
    if body.stream:
        streams = [(p, _complete(manager, body, p)) for p in _texts(body)]
        streams[0] = (streams[0][0], await prime(streams[0][1]))
        return event_stream(
            convert.completion_chunks(streams, body.model, body.include_usage, body.echo)
        )
    return await cancel_on_disconnect(request, _complete_all(manager, body))


async def _complete_all(manager: ModelManager, body: wire.CompletionRequest) -> wire.Completion:
    # One prompt after the other: a request holds one place in the model's queue at a time.
    prompts = _texts(body)
    results = [await convert.collect(_complete(manager, body, p)) for p in prompts]
    choices = [
        wire.CompletionChoice(
            index=i, text=(p if body.echo else "") + text, finish_reason=done.finish_reason
        )
        for i, (p, (text, done)) in enumerate(zip(prompts, results, strict=True))
    ]
    prompt_tokens = sum(done.prompt_tokens for _, done in results)
    completion_tokens = sum(done.completion_tokens for _, done in results)
    return wire.Completion(
        id=wire.new_id("cmpl"),
        model=body.model,
        choices=choices,
        usage=convert.usage(prompt_tokens, completion_tokens),
    )


@router.post("/embeddings", response_model=wire.EmbeddingResponse, responses=statuses.INFERENCE)
async def embeddings(
    body: wire.EmbeddingRequest, request: Request
) -> Response | wire.EmbeddingResponse:
    return await answer_embeddings(body, request)


async def answer_embeddings(
    body: wire.EmbeddingRequest, request: Request
) -> Response | wire.EmbeddingResponse:
    """An embedding request answered (the route's work, also the call route's)."""
    if resolve(request, body.model).can("relay"):
        return await relay(request, body, "embed", "/embeddings", stream=False)
    work = manager_of(request).embed(body.model, EmbedRequest(inputs=body.inputs), body.dimensions)
    result = await cancel_on_disconnect(request, work)
    return convert.embedding_response(result, body.model, body.encoding_format)


class EngineEmbeddingRequest(wire.EmbeddingRequest):
    model: str = ""  # the path names the model


@engines_router.post(
    "/engines/{model}/embeddings",
    response_model=wire.EmbeddingResponse,
    responses=statuses.INFERENCE,
)
async def engine_embeddings(
    model: str, body: EngineEmbeddingRequest, request: Request
) -> Response | wire.EmbeddingResponse:
    return await answer_embeddings(body.model_copy(update={"model": model}), request)


@router.get("/models", response_model=wire.ModelList, responses=statuses.LISTING)
async def list_models(request: Request) -> wire.ModelList:
    manager = manager_of(request)
    return wire.ModelList(data=[_card(manager, name) for name in manager.models])


@router.get("/models/{model_id}", response_model=wire.ModelCard, responses=statuses.LOOKUP)
async def get_model(model_id: str, request: Request) -> wire.ModelCard:
    return _card(manager_of(request), model_id)


def _card(manager: ModelManager, name: str) -> wire.ModelCard:
    model = manager.get(name)
    return wire.ModelCard(
        id=model.spec.name,
        created=int(model.replicas[0].loaded_at or 0) if model.replicas else 0,
        kind=model.kind,
        state=model.state.value,
        aliases=model.spec.aliases,
        capabilities=list(model.capabilities),
    )
