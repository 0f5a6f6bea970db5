"""Validation errors in the user's words: one message per field, located as the JSON is."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from mmserve.api import protocol as wire
from mmserve.api.compat import LoadModelRequest
from mmserve.api.runtime_models import RuntimeModel
from mmserve.api.validation import ACCEPTS, invalid_fields, parse
from mmserve.errors import InvalidRequest

HI = [{"role": "user", "content": "hi"}]
INPUT_FORMS = (
    "'input' must be a string, a list of strings, a token array (a list of integers) or a list "
    "of token arrays"
)


def chat(**fields: object) -> dict[str, Any]:
    return {"model": "m", "messages": HI, **fields}


def error(model: type[BaseModel], body: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(model, body)
    return info.value


@pytest.mark.parametrize(
    ("model", "body", "message", "param"),
    [
        # A value with none of a union's forms: what the field accepts, once.
        (wire.EmbeddingRequest, {"model": "m", "input": [1.5]}, INPUT_FORMS, "input"),
        (wire.EmbeddingRequest, {"model": "m", "input": {"a": 1}}, INPUT_FORMS, "input"),
        # One form got further than the others: its own problem, where it is.
        (wire.EmbeddingRequest, {"model": "m", "input": [["x"]]},
         "'input[0][0]' must be an integer", "input[0][0]"),
        (wire.EmbeddingRequest, {"model": "m", "input": [5, -2]},
         "'input[1]' must be at least 0", "input[1]"),
        (wire.EmbeddingRequest, {"model": "m", "input": [""]},
         "'input[0]' must not be empty", "input[0]"),
        (wire.EmbeddingRequest, {"model": "m", "input": []}, "'input' must not be empty", "input"),
        (wire.EmbeddingRequest, {"model": "m"}, "'input' is required", "input"),
        (wire.ChatCompletionRequest, chat(messages=[{"role": "user"}]),
         "'messages[0].content' is required", "messages[0].content"),
        (wire.ChatCompletionRequest, chat(messages=[{"role": "user", "content": 5}]),
         "'messages[0].content' must be a string or a list of content parts",
         "messages[0].content"),
        (wire.ChatCompletionRequest, chat(messages=[{"role": "robot", "content": "x"}]),
         "'messages[0].role' must be one of 'system', 'developer', 'user', 'assistant', 'tool'",
         "messages[0].role"),
        (wire.ChatCompletionRequest, chat(messages=[{"content": "x"}]),
         "'messages[0].role' is required", "messages[0].role"),
        (wire.ChatCompletionRequest,
         chat(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
         "'messages[0].content[0].type' must be one of 'text', 'image_url'",
         "messages[0].content[0].type"),
        (wire.ChatCompletionRequest, chat(messages=[5]), "'messages[0]' must be an object",
         "messages[0]"),
        # Several bad fields: one message each, in the order of the request model.
        (wire.ChatCompletionRequest, chat(temperature=3, n=0, stop=7),
         "'temperature' must be at most 2; 'n' must be at least 1; "
         "'stop' must be a string or a list of strings", "temperature"),
        (wire.ChatCompletionRequest, chat(stop=["a"] * 17), "'stop' must have at most 16 items",
         "stop"),
        (wire.ChatCompletionRequest, chat(tools=[{"type": "function"}]),
         "'tools[0].function' is required", "tools[0].function"),
        (wire.ChatCompletionRequest, chat(tool_choice="required"), "tool_choice needs tools", None),
        (wire.ChatCompletionRequest, chat(top_logprobs=2), "'top_logprobs' goes with logprobs: "
         "true", "top_logprobs"),
        (wire.ChatCompletionRequest, chat(n=129), "'n' must be at most 128", "n"),
        (wire.CompletionRequest, {"model": "m", "prompt": [[1, 2], "x"]}, "'prompt' must be a "
         "string, a list of strings, a token array (a list of integers) or a list of token arrays",
         "prompt"),
        (wire.CompletionRequest, {"model": "m", "prompt": [[-1]]},
         "'prompt[0][0]' must be at least 0", "prompt[0][0]"),
        (wire.ChatCompletionRequest, chat(max_tokens="many"), "'max_tokens' must be an integer",
         "max_tokens"),
        (wire.ChatCompletionRequest, [1, 2], "the request body must be a JSON object", None),
        (wire.CompletionRequest, {"model": "m", "prompt": "x", "suffix": "y"},
         "'suffix' is not supported", "suffix"),
        # A check of the whole body speaks for itself.
        (LoadModelRequest, {}, "give `model` (a configured model) or `llama_model_path`", None),
        (LoadModelRequest, {"model": "a", "surprise": 1},
         "'surprise' is not a field of this request", "surprise"),
        (TypeAdapter(RuntimeModel), {"name": "x", "kind": "robot"},
         "'kind' must be one of 'llm', 'embedding', 'vision', 'http', 'subprocess'", "kind"),
        (TypeAdapter(RuntimeModel), {"name": "x", "kind": "http"}, "'base_url' is required",
         "base_url"),
    ],
)  # fmt: skip
def test_errors_are_worded_for_users(
    model: Any, body: object, message: str, param: str | None
) -> None:
    if isinstance(model, TypeAdapter):
        with pytest.raises(InvalidRequest) as info:
            parse_adapter(model, body)
        problem = info.value
    else:
        problem = error(model, body)
    assert problem.message.startswith(message), problem.message
    assert problem.param == param
    assert "pydantic" not in problem.message and "Input should" not in problem.message


def parse_adapter(adapter: TypeAdapter[Any], body: object) -> object:
    try:
        return adapter.validate_python(body)
    except ValidationError as exc:
        raise invalid_fields(exc.errors(), body) from None


def union_fields(schema: dict[str, Any]) -> set[str]:
    """Every property, anywhere in `schema`, that takes more than one form (null aside)."""
    found: set[str] = set()
    objects = [schema, *schema.get("$defs", {}).values()]
    for obj in objects:
        for name, prop in obj.get("properties", {}).items():
            forms = [f for f in prop.get("anyOf", []) if f.get("type") != "null"]
            if len(forms) > 1:
                found.add(name)
    return found


@pytest.mark.parametrize(
    "schema",
    [
        wire.ChatCompletionRequest.model_json_schema(),
        wire.CompletionRequest.model_json_schema(),
        wire.EmbeddingRequest.model_json_schema(),
        TypeAdapter(RuntimeModel).json_schema(),
        LoadModelRequest.model_json_schema(),
    ],
)
def test_every_field_with_several_forms_says_what_it_accepts(schema: dict[str, Any]) -> None:
    assert union_fields(schema) <= set(ACCEPTS)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": True}, "'max_tokens' must be an integer"),
        ({"max_tokens": "5"}, "'max_tokens' must be an integer"),
        ({"n": True}, "'n' must be an integer"),
        ({"logprobs": 0}, "'logprobs' must be true or false"),
        ({"stream": 1}, "'stream' must be true or false"),
        ({"temperature": "0.5"}, "'temperature' must be a number"),
    ],
)
def test_fields_take_jsons_types(fields: dict[str, Any], message: str) -> None:
    assert error(wire.ChatCompletionRequest, chat(**fields)).message == message


def test_an_integral_float_is_an_integer_as_json_schema_reads_it() -> None:
    body = parse(wire.ChatCompletionRequest, chat(max_tokens=5.0, temperature=1))
    assert body.max_tokens == 5 and isinstance(body.max_tokens, int) and body.temperature == 1
    tokens = parse(wire.EmbeddingRequest, {"model": "m", "input": [[7592.0, 2088]]})
    assert tokens.inputs == [[7592, 2088]]
