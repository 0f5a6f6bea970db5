from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
from pydantic import ValidationError

from mmserve.api import convert
from mmserve.api import protocol as wire
from mmserve.errors import InvalidRequest, UnsupportedCapability
from mmserve.types import EmbedResult, TextDelta, TextDone, TextEvent


def chat_body(**fields: object) -> wire.ChatCompletionRequest:
    return wire.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_sampling_fields_map_to_the_engine() -> None:
    body = chat_body(
        max_tokens=5, max_completion_tokens=7, temperature=0, top_p=0.5, stop="\n", seed=3,
        presence_penalty=0.1, frequency_penalty=0.2, response_format={"type": "json_object"},
    )  # fmt: skip
    s = convert.chat_request(body).sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.stop, s.seed) == (7, 0, 0.5, ["\n"], 3)
    assert (s.presence_penalty, s.frequency_penalty, s.json_mode) == (0.1, 0.2, True)


def test_text_parts_are_joined_and_images_refused_for_text_models() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = chat_body(messages=[{"role": "user", "content": parts}])
    assert convert.chat_request(body).messages[0].content == "a\nb"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(UnsupportedCapability) as info:
        convert.chat_request(chat_body(messages=[{"role": "user", "content": [image]}]))
    assert info.value.param == "messages[0].content"


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user"}]},  # content is required of users, systems and tools
        {"messages": [{"role": "system", "content": None}]},
        {"messages": [{"role": "tool", "content": "42"}]},  # and tool_call_id of tools
        {"messages": [{"role": "user", "content": []}]},
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
        {"temperature": 3},
        {"n": 0},
        {"stop": ["a"] * 17},
        {"tools": [{"type": "function"}]},
        {"max_tokens": 0},
    ],
)
def test_bad_chat_fields_fail_validation(fields: dict) -> None:
    with pytest.raises(ValidationError):
        chat_body(**fields)


def test_an_assistant_message_may_have_no_content() -> None:
    body = chat_body(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant"},
            {"role": "assistant", "content": None, "refusal": "I cannot"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No"}]},
        ]
    )
    assert [m.content for m in convert.chat_request(body).messages] == ["hi", "", "I cannot", "No"]


def test_completion_prompts_and_default_max_tokens() -> None:
    one = wire.CompletionRequest(model="m", prompt="x")
    many = wire.CompletionRequest(model="m", prompt=["x", "y"])
    assert one.prompts == ["x"] and many.prompts == ["x", "y"]
    assert convert.completion_request(one, "x").sampling.default_max_tokens == 16  # OpenAI's
    # An empty prompt is allowed, as OpenAI's schema has it (the model starts from its BOS).
    assert wire.CompletionRequest(model="m", prompt="").prompts == [""]
    assert wire.CompletionRequest(model="m", prompt=["x", ""]).prompts == ["x", ""]
    with pytest.raises(ValidationError):
        wire.CompletionRequest(model="m", prompt=[])


def test_lone_surrogates_are_refused_at_the_edge() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "\udfff"}]}
    with pytest.raises(InvalidRequest, match=r"'messages\[0\].content' contains a lone surrogate"):
        wire.parse(wire.ChatCompletionRequest, chat)
    with pytest.raises(InvalidRequest, match=r"'input\[1\]' contains a lone surrogate"):
        wire.parse(wire.EmbeddingRequest, {"model": "m", "input": ["fine", "\ud800"]})
    with pytest.raises(InvalidRequest, match="'stop' contains a lone surrogate"):
        wire.parse(wire.ChatCompletionRequest, {**chat, "messages": [], "stop": "\ud800"})


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("a", ["a"]),
        (["a", "b"], ["a", "b"]),
        ([7592, 2088], [[7592, 2088]]),  # one token array
        ([[7592, 2088], [0]], [[7592, 2088], [0]]),  # a list of them
    ],
)
def test_embedding_input_forms(given: object, inputs: list) -> None:
    assert wire.EmbeddingRequest.model_validate({"model": "m", "input": given}).inputs == inputs


@pytest.mark.parametrize("bad", [[], "", [""], [[]], [-1], [1.5], ["a", 1], [[1], "a"], True])
def test_bad_embedding_inputs_fail_validation(bad: object) -> None:
    with pytest.raises(ValidationError):
        wire.EmbeddingRequest.model_validate({"model": "m", "input": bad})


def test_base64_is_little_endian_float32_as_openai_encodes_it() -> None:
    vector = [0.25, -1.5, 3.0]
    decoded = np.frombuffer(base64.b64decode(convert.encode_base64(vector)), dtype="<f4")
    assert decoded.tolist() == vector


def test_embedding_response_shape() -> None:
    result = EmbedResult(vectors=[[1.0, 0.0], [0.0, 1.0]], prompt_tokens=4)
    out = convert.embedding_response(result, "m", "float").model_dump()
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # OpenAI's embedding usage


async def events(*items: TextEvent) -> AsyncIterator[TextEvent]:
    for item in items:
        yield item


DONE = TextDone(finish_reason="length", prompt_tokens=3, completion_tokens=2)


class FakeClock:
    """A clock that moves 0.3 s on every reading, from just before a second's end."""

    def __init__(self, start: float = 1_000.9) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 0.3
        return self.now - 0.3


def as_sent(chunk: wire.ChatCompletionChunk | wire.Completion) -> dict:
    """A chunk as the SSE frame carries it."""
    return json.loads(chunk.model_dump_json())


async def test_chat_chunks_follow_openais_sequence() -> None:
    stream = convert.chat_chunks(
        events(TextDelta(text="a"), TextDelta(text="b"), DONE), "m", True, FakeClock()
    )
    chunks = [as_sent(c) async for c in stream]
    deltas = [c["choices"][0]["delta"] for c in chunks[:4]]
    # The role comes once, in the first chunk; after it the key is left out, never null.
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "a"}, {"content": "b"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:4]] == [None, None, None, "length"]
    assert [c["usage"] for c in chunks[:4]] == [None] * 4  # include_usage: null until the last
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1


async def test_one_created_per_stream_across_a_second_boundary() -> None:
    clock = FakeClock(start=1_000.9)
    deltas = [TextDelta(text=str(i)) for i in range(5)]
    chat = [c async for c in convert.chat_chunks(events(*deltas, DONE), "m", True, clock)]
    assert {c.created for c in chat} == {1000}
    streams = [("p", events(*deltas, DONE)), ("q", events(DONE))]
    text = [
        c async for c in convert.completion_chunks(streams, "m", True, False, FakeClock(1_000.9))
    ]
    assert {c.created for c in text} == {1000}


async def test_completion_chunks_leave_usage_out_until_the_last() -> None:
    streams = [("p", events(TextDelta(text="a"), DONE)), ("q", events(DONE))]
    chunks = [as_sent(c) async for c in convert.completion_chunks(streams, "m", True, True)]
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["p", "a", "", "q", ""]
    assert [c["choices"][0]["index"] for c in chunks[:-1]] == [0, 0, 0, 1, 1]
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 2 * 5


def test_a_chat_reply_has_openais_keys() -> None:
    choice = wire.ChatChoice(
        index=0, message=wire.AssistantMessage(content="hi"), finish_reason="stop"
    )
    reply = wire.ChatCompletion(
        id="chatcmpl-1", model="m", choices=[choice], usage=convert.usage(1, 2)
    )
    sent = json.loads(reply.model_dump_json())
    assert sent["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "hi", "refusal": None},
        "finish_reason": "stop",
        "logprobs": None,
    }
    assert set(sent) == {"id", "object", "created", "model", "choices", "usage"}


async def test_collect_joins_the_text() -> None:
    text, done = await convert.collect(events(TextDelta(text="a"), TextDelta(text="b"), DONE))
    assert (text, done) == ("ab", DONE)
