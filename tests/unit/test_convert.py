from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import numpy as np
import pytest
from pydantic import ValidationError

from mmserve.api import convert
from mmserve.api import protocol as wire
from mmserve.engine.types import EmbedResult, TextDelta, TextDone, TextEvent
from mmserve.errors import UnsupportedCapability


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
    assert info.value.param == "messages.0.content"


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"temperature": 3},
        {"n": 2},
        {"stop": ["a"] * 17},
        {"tools": [{"type": "function"}]},
        {"max_tokens": 0},
    ],
)
def test_bad_chat_fields_fail_validation(fields: dict) -> None:
    with pytest.raises(ValidationError):
        chat_body(**fields)


def test_completion_prompts_and_default_max_tokens() -> None:
    one = wire.CompletionRequest(model="m", prompt="x")
    many = wire.CompletionRequest(model="m", prompt=["x", "y"])
    assert one.prompts == ["x"] and many.prompts == ["x", "y"]
    assert convert.completion_request(one, "x").sampling.default_max_tokens == 16  # OpenAI's
    with pytest.raises(ValidationError, match="empty"):
        wire.CompletionRequest(model="m", prompt=["x", ""])


def test_lone_surrogates_are_refused_at_the_edge() -> None:
    with pytest.raises(ValidationError, match="lone surrogate"):
        chat_body(messages=[{"role": "user", "content": "\udfff"}])
    with pytest.raises(ValidationError, match="lone surrogate"):
        wire.EmbeddingRequest(model="m", input=["fine", "\ud800"])
    with pytest.raises(ValidationError, match="lone surrogate"):
        chat_body(stop="\ud800")


def test_embedding_input_forms() -> None:
    assert wire.EmbeddingRequest(model="m", input="a").inputs == ["a"]
    assert wire.EmbeddingRequest(model="m", input=["a", "b"]).inputs == ["a", "b"]
    for bad in ([], [""], [1, 2]):
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
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}


async def events(*items: TextEvent) -> AsyncIterator[TextEvent]:
    for item in items:
        yield item


DONE = TextDone(finish_reason="length", prompt_tokens=3, completion_tokens=2)


async def test_chat_chunks_follow_openais_sequence() -> None:
    chunks = [
        c
        async for c in convert.chat_chunks(
            events(TextDelta(text="a"), TextDelta(text="b"), DONE), "m", True
        )
    ]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:3]] == ["a", "b"]
    assert chunks[3].choices[0].finish_reason == "length"
    assert (
        chunks[4].choices == []
        and chunks[4].usage is not None
        and chunks[4].usage.total_tokens == 5
    )
    assert len({c.id for c in chunks}) == 1


async def test_collect_joins_the_text() -> None:
    text, done = await convert.collect(events(TextDelta(text="a"), TextDelta(text="b"), DONE))
    assert (text, done) == ("ab", DONE)
