from __future__ import annotations

import pytest
from pydantic import ValidationError

from mmserve.workers.protocol import (
    Chunk,
    ErrorInfo,
    ErrorReply,
    Pong,
    Ready,
    Request,
    Result,
    WorkerInfo,
    decode_reply,
    decode_request,
    encode,
)


@pytest.mark.parametrize(
    "reply",
    [
        Ready(info=WorkerInfo(capabilities=["chat"], context_length=2048)),
        Chunk(id="1", data={"type": "delta", "text": "hi"}),
        Result(id="1", data={"vectors": [[0.5]], "prompt_tokens": 1}),
        ErrorReply(id="2", error=ErrorInfo(kind="context_length", message="too long")),
        ErrorReply(error=ErrorInfo(kind="load_failed", message="no file")),
        Pong(id="3"),
    ],
)
def test_replies_round_trip_as_one_line(reply: object) -> None:
    line = encode(reply)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_reply(line) == reply


def test_requests_round_trip() -> None:
    request = Request(op="chat", id="7", body={"messages": []})
    assert decode_request(encode(request)) == request


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    reply = decode_reply(b'{"type": "pong", "id": "1", "added_in_v2": true}')
    assert reply == Pong(id="1")


@pytest.mark.parametrize(
    "line",
    [b"not json", b'{"type": "nope"}', b'{"type": "chunk"}', b'{"id": "1"}'],
)
def test_malformed_replies_raise(line: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_reply(line)


def test_unknown_op_is_refused() -> None:
    with pytest.raises(ValidationError):
        decode_request(b'{"op": "format_disk", "id": "1"}')
