"""RemoteReplica against httpx's MockTransport: what is sent upstream, and how each kind of
upstream failure is told to the client (never with the key)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mmserve.config import ModelSpec
from mmserve.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from mmserve.logs import ModelLog
from mmserve.replicas.base import ReplicaHooks
from mmserve.replicas.remote import RemoteReplica

KEY = "sk-live-abcdef123456"


def spec(**fields: Any) -> ModelSpec:
    base = {"name": "r", "kind": "http", "base_url": "https://api.example/v1"}
    return ModelSpec.model_validate({**base, "api_key": KEY, **fields})


async def replica(handler: Any, **fields: Any) -> RemoteReplica:
    remote = RemoteReplica(
        spec(**fields), "cpu", ReplicaHooks(ModelLog("r", 10)), httpx.MockTransport(handler)
    )
    await remote.start(1)
    return remote


async def test_sends_the_key_and_renames_the_model_for_openai() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    remote = await replica(handler, upstream_model="big")
    assert await remote.relay("/chat/completions", {"model": "r", "x": 1}) == {"ok": True}
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(seen[0].content) == {"model": "big", "x": 1}
    assert seen[0].url.path == "/v1/chat/completions"

    json_remote = await replica(handler, backend="json")
    await json_remote.relay("", {"model": "mine"})
    assert json.loads(seen[1].content) == {"model": "mine"}  # a JSON endpoint's body is its own
    assert json_remote.info.capabilities == ["call"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": f"Incorrect API key provided: {KEY}", "code": "bad_key"}}, "***"),
        ({"detail": "nope"}, '"nope"'),
        ("plain words", "plain words"),
    ],
)
async def test_a_4xx_keeps_its_status_and_message_without_the_key(body: Any, message: str) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(404, text=body)
        return httpx.Response(404, json=body)

    remote = await replica(handler)
    with pytest.raises(UpstreamRejected) as rejected:
        await remote.relay("/chat/completions", {})
    assert rejected.value.status == 404  # one the relaying routes document: see errors.py
    assert message in rejected.value.message and KEY not in rejected.value.message


async def test_5xx_not_json_unreachable_and_timeout() -> None:
    answers = iter([httpx.Response(500, text="oops"), httpx.Response(200, text="<html>")])
    remote = await replica(lambda _: next(answers), base_url="https://u:pw@api.example/v1?t=1")
    with pytest.raises(UpstreamError) as failed:
        await remote.relay("/x", {})
    assert failed.value.status == 502
    # The upstream is named by its address: never its user info or query string.
    assert failed.value.message == "upstream https://api.example/v1 failed with 500: oops"
    with pytest.raises(UpstreamError, match="not JSON"):
        await remote.relay("/x", {})

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(UpstreamError, match="is unreachable") as down:
        await (await replica(refuse)).relay("/x", {})
    assert down.value.status == 502
    with pytest.raises(UpstreamTimeout) as late:
        await (await replica(hang, timeout=3)).relay("/x", {})
    assert late.value.status == 504 and "within 3 s" in late.value.message


async def test_a_stream_yields_the_upstreams_bytes_and_checks_its_status() -> None:
    frames = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("fail"):
            return httpx.Response(400, json={"error": {"message": "bad", "param": "fail"}})
        return httpx.Response(200, stream=httpx.ByteStream(b"".join(frames)))

    remote = await replica(handler)
    got = b"".join([chunk async for chunk in remote.relay_stream("/c", {})])
    assert got == b"".join(frames)
    with pytest.raises(UpstreamRejected) as rejected:
        _ = [chunk async for chunk in remote.relay_stream("/c", {"fail": True})]
    assert rejected.value.status == 400 and rejected.value.param == "fail"
