"""The child entry point spoken to directly, line by line, as any protocol peer would."""

from __future__ import annotations

import subprocess
import sys

from mmserve.workers.protocol import ErrorReply, Pong, Ready, Result, decode_reply

SPEC = '{"name": "vec", "kind": "embedding", "backend": "fake"}'


def converse(*lines: str) -> list:
    out = subprocess.run(
        [sys.executable, "-m", "mmserve.workers.main", SPEC],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [decode_reply(line) for line in out.stdout.splitlines()]


def test_a_session() -> None:
    replies = converse(
        '{"op": "ping", "id": "p"}',
        '{"op": "embed", "id": "1", "body": {"inputs": ["a", "b"]}}',
        '{"op": "shutdown"}',
    )
    assert isinstance(replies[0], Ready) and replies[0].info.capabilities == ["embed"]
    assert replies[1] == Pong(id="p")
    assert isinstance(replies[2], Result) and len(replies[2].data["vectors"]) == 2


def test_bad_requests_are_answered_with_their_id() -> None:
    replies = converse(
        '{"op": "teleport", "id": "u"}',  # an op this child does not know
        '{"op": "chat", "id": "c", "body": {"messages": []}}',  # not a capability of the model
        '{"op": "embed", "id": "e", "body": {"inputs": "not a list"}}',
        "not json at all",
        '{"op": "shutdown"}',
    )
    errors = {r.id: r.error.kind for r in replies if isinstance(r, ErrorReply)}
    assert errors == {
        "u": "invalid_request",
        "c": "unsupported",
        "e": "invalid_request",
        None: "invalid_request",
    }
    assert all("pydantic.dev" not in r.error.message for r in replies if isinstance(r, ErrorReply))


def test_a_failed_load_says_why_and_exits() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmserve.workers.main",
            '{"name": "x", "kind": "llm", "backend": "fake", "options": {"fail_load": "no"}}',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    (reply,) = [decode_reply(line) for line in out.stdout.splitlines()]
    assert isinstance(reply, ErrorReply) and reply.id is None and reply.error.kind == "load_failed"
