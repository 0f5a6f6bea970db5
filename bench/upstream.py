"""A tiny, fast OpenAI-shaped server on loopback: the upstream of the gateway benchmark.

It answers at once, with fixed content and no model behind it, so that what a request costs
through a gateway in front of it is the gateway's own work:

  POST /v1/chat/completions   a fixed short reply ("stream": true: three content chunks, the
                              usage when `stream_options.include_usage`, then `[DONE]`)
  POST /v1/completions        the same as a text completion
  POST /v1/embeddings         one fixed 8-dimension vector per input
  GET  /v1/models, /health

Starlette on uvicorn, one process, no access log. Run from the repository root:

    .venv/bin/python bench/upstream.py --port 8100 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

MODEL = "tiny"
REPLY = ["Hello", " from", " upstream."]
USAGE = {"prompt_tokens": 5, "completion_tokens": len(REPLY), "total_tokens": 5 + len(REPLY)}


def envelope(kind: str, body: dict[str, Any], choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "tiny-1",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model", MODEL),
        "choices": choices,
    }


async def chat(request: Request) -> JSONResponse | StreamingResponse:
    body = await request.json()
    if body.get("stream"):
        return sse(body, chat_chunks(body))
    message = {"role": "assistant", "content": "".join(REPLY)}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return JSONResponse({**envelope("chat.completion", body, [choice]), "usage": USAGE})


def chat_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    chunks = [
        envelope(
            "chat.completion.chunk", body, [{"index": 0, "delta": delta, "finish_reason": None}]
        )
        for delta in [{"role": "assistant", "content": ""}, *({"content": p} for p in REPLY)]
    ]
    last = {"index": 0, "delta": {}, "finish_reason": "stop"}
    chunks.append(envelope("chat.completion.chunk", body, [last]))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**envelope("chat.completion.chunk", body, []), "usage": USAGE})
    return chunks


async def completion(request: Request) -> JSONResponse | StreamingResponse:
    body = await request.json()
    if body.get("stream"):
        chunks = [
            envelope("text_completion", body, [{"index": 0, "text": p, "finish_reason": None}])
            for p in REPLY
        ]
        return sse(body, chunks)
    choice = {"index": 0, "text": "".join(REPLY), "finish_reason": "stop"}
    return JSONResponse({**envelope("text_completion", body, [choice]), "usage": USAGE})


async def embeddings(request: Request) -> JSONResponse:
    body = await request.json()
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) else 1
    data = [{"object": "embedding", "index": i, "embedding": [0.125] * 8} for i in range(count)]
    usage = {"prompt_tokens": count, "total_tokens": count}
    return JSONResponse({"object": "list", "data": data, "model": MODEL, "usage": usage})


def sse(body: dict[str, Any], chunks: list[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request) -> JSONResponse:
    entry = {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}
    return JSONResponse({"object": "list", "data": [entry]})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completion, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models),
        Route("/health", health),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
