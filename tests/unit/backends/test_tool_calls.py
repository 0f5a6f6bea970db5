"""The tool-call layer's pure parts, as tables of recorded model outputs."""

from __future__ import annotations

import json

import jsonschema
import pytest

from mmserve.backends import tool_calls

NAMES = {"get_weather", "get_time"}
WEATHER = {"name": "get_weather", "arguments": {"city": "Paris"}}
TIME = {"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}


@pytest.mark.parametrize(
    ("content", "calls"),
    [
        # What Qwen2.5-Coder-0.5B writes: a bare object...
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', [WEATHER]),
        # ...fenced...
        ('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', [WEATHER]),
        # ...between its template's markers, one or several...
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
         [WEATHER]),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
         '<tool_call>{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}</tool_call>',
         [WEATHER, TIME]),
        # ...one per line, or as a list...
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
         '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}', [WEATHER, TIME]),
        ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', [WEATHER]),
        # ...with "parameters" for "arguments", or the arguments as a JSON text.
        ('{"name": "get_weather", "parameters": {"city": "Paris"}}', [WEATHER]),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', [WEATHER]),
        # Not calls: text, malformed JSON, a JSON answer, a tool it was not given, text beside.
        ("The weather in Paris is sunny.", None),
        ('{"name": "get_weather", "arguments": {"city": "Par', None),
        ('{"city": "Paris", "temperature": 18}', None),
        ('{"name": "Paris", "population": 2100000}', None),
        ('{"name": "delete_files", "arguments": {}}', None),
        ('I will call <tool_call>{"name": "get_weather", "arguments": {}}</tool_call> now', None),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"temp_c": 18}', None),
        ("", None),
    ],
)  # fmt: skip
def test_find_calls(content: str, calls: list | None) -> None:
    assert tool_calls.find_calls(content, NAMES) == calls


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}},  # no parameters
]  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "parallel", "good", "bad"),
    [
        ("required", False, WEATHER, {"name": "get_weather", "arguments": {}}),
        ("required", False, {"name": "get_time", "arguments": {}}, {"name": "x", "arguments": {}}),
        ("required", True, [WEATHER, {"name": "get_time", "arguments": {}}], []),
        ({"type": "function", "function": {"name": "get_time"}}, True,
         {"name": "get_time", "arguments": {}}, WEATHER),
    ],
)  # fmt: skip
def test_the_call_schema_admits_calls_of_the_allowed_tools_only(
    choice: object, parallel: bool, good: object, bad: object
) -> None:
    schema = tool_calls.call_schema(TOOLS, choice, parallel)
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_constrained_json_becomes_calls_and_a_cut_reply_does_not() -> None:
    assert tool_calls.calls_from_json(json.dumps([WEATHER, TIME])) == [WEATHER, TIME]
    assert tool_calls.calls_from_json('{"name": "get_weather", "arguments": {"ci') is None


def test_unenforced_keywords_are_found_where_they_are() -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "n": {"anyOf": [{"type": "integer", "multipleOf": 2}, {"type": "null"}]},
            "ok": {"type": "string", "description": "annotations are fine", "maxLength": 4},
        },
        "patternProperties": {"^x": {}},
    }
    assert tool_calls.unenforced_keywords(schema, "s") == [
        "s.properties.tags.uniqueItems",
        "s.properties.n.anyOf[0].multipleOf",
        "s.patternProperties",
    ]


def test_answered_calls_and_the_call_a_reply_opens_with() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "b", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "a", "content": "18"},  # b has no result yet
    ]  # fmt: skip
    answered = tool_calls.answered_calls(messages)
    assert answered == {tool_calls.call_key("get_weather", {"city": "Paris"})}
    repeat = '{"name": "get_weather", "arguments": {"city":"Paris"}}\n{"temp_c": 18}'
    assert tool_calls.opening_call(repeat) in answered
    assert tool_calls.opening_call("It is 18 degrees.") is None


def test_a_reply_streams_as_openai_streams_calls() -> None:
    calls = tool_calls.shape_tool_calls([WEATHER])
    answer = {
        "id": "chatcmpl-1", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": calls}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }  # fmt: skip
    chunks = list(tool_calls.stream_chunks(answer, include_usage=True))
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[0] == {"role": "assistant", "content": None}
    assert deltas[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    fragments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:-1])
    assert json.loads(fragments) == WEATHER["arguments"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
