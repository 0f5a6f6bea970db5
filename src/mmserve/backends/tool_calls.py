"""mmserve's tool-call layer above llama.cpp's server: what small models need to call tools.

llama-server (`--jinja`) renders `tools` into the model's chat template and parses the calls a
model writes between its template's markers. Small models often do not write the markers:
Qwen2.5-Coder-0.5B answers `{"name": "get_weather", "arguments": {...}}` as bare (or fenced)
JSON, which llama-server leaves in `content`, and with `tool_choice: required` it may write no
call at all. So, per request (chat with `tools`, `tool_choice` not `none`):

    required, or a named function
        decoding is constrained by a JSON schema built here (`call_schema`: an object whose
        `name` is one of the allowed tools and whose `arguments` follow that tool's parameter
        schema; an array of them when parallel calls are allowed), through llama-server's
        json_schema support; the JSON it writes becomes `tool_calls` (`calls_from_json`). The
        arguments always parse and validate.
    auto
        llama-server's own parser first; if it found no call, a reply whose whole content is a
        call object naming one of the tools (bare, fenced, or between <tool_call> markers) is
        taken as a call (`find_calls`); anything else stays content. When the model would only
        repeat calls whose results the conversation already holds (small models loop so), it
        is asked once more with calls ruled out, and answers in words.
    none
        calls ruled out for real (`without_calls`): no tools offered, and a grammar that keeps
        the reply from opening as a call.

Replies are shaped as OpenAI shapes them: `message.tool_calls` (ids, `type: function`,
arguments as a JSON string), `content: null`, `finish_reason: "tool_calls"`. A stream is made
from the finished reply (`stream_chunks`): the role, then per call its name and id, then its
arguments in fragments, then the finish reason (the decision needs the whole text).

`unenforced_keywords` lists the JSON Schema keywords of a schema that llama.cpp's grammar
cannot enforce, so that they are refused by name rather than silently relaxed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = [
    "NO_CALL_GRAMMAR",
    "answered_calls",
    "call_key",
    "call_schema",
    "calls_from_json",
    "find_calls",
    "opening_call",
    "shape_tool_calls",
    "stream_chunks",
    "unenforced_keywords",
    "without_calls",
]

# Keywords llama.cpp's json-schema-to-grammar turns into grammar rules, and annotations that
# constrain nothing; any other keyword would be silently ignored by it.
_ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions", "pattern", "format", "minLength", "maxLength", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum",
})  # fmt: skip
_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "nullable", "strict",
})  # fmt: skip
# Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_SUBSCHEMA = frozenset({"items", "additionalProperties"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions"})
# A reply that does not open as a call (bare, fenced, marked or listed JSON) does: text.
NO_CALL_GRAMMAR = r"root ::= [^{<\[` \t\n] [^\x00]*"
_FRAGMENT = 24  # characters of arguments per streamed fragment
_FENCED = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_MARKED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def unenforced_keywords(schema: Any, path: str) -> list[str]:
    """The locations (`path.properties.tags.uniqueItems`) of keywords in `schema` that
    llama.cpp cannot enforce."""
    if not isinstance(schema, dict):
        return []
    found = []
    for key, value in schema.items():
        where = f"{path}.{key}"
        if key not in _ENFORCED and key not in _ANNOTATIONS:
            found.append(where)
        elif key in _SUBSCHEMA:
            found += unenforced_keywords(value, where)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            for i, item in enumerate(value):
                found += unenforced_keywords(item, f"{where}[{i}]")
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, item in value.items():
                found += unenforced_keywords(item, f"{where}.{name}")
    return found


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    schema = tool["function"].get("parameters")
    return schema if schema is not None else {"type": "object", "properties": {}}


def call_schema(tools: list[dict[str, Any]], choice: Any, parallel: bool) -> dict[str, Any]:
    """The schema of the JSON a model must write to call one of `tools` (`choice`: required,
    or a named function): {"name", "arguments"}, or an array of those when `parallel`."""
    if isinstance(choice, dict):
        allowed = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
        parallel = False  # a named function: that one call
    else:
        allowed = tools
    forms = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "arguments": _parameters(t)},
            "required": ["name", "arguments"],
        }
        for t in allowed
    ]
    one = forms[0] if len(forms) == 1 else {"anyOf": forms}
    if not parallel:
        return one
    return {"type": "array", "items": one, "minItems": 1, "maxItems": len(allowed)}


def calls_from_json(text: str) -> list[dict[str, Any]] | None:
    """The calls of a constrained reply (an object or an array of them), or None if the text is
    not one (cut short by max_tokens)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call(item) for item in items]
    return None if not calls or None in calls else [c for c in calls if c is not None]


def find_calls(content: str, names: set[str]) -> list[dict[str, Any]] | None:
    """The calls a reply's whole content makes, bare, fenced or between <tool_call> markers,
    when each names one of `names`; None when the content is anything else (text, or JSON that
    is not a call of these tools)."""
    text = content.strip()
    if fenced := _FENCED.match(text):
        text = fenced.group(1)
    if "<tool_call>" in text:
        pieces = _MARKED.findall(text)
        if _MARKED.sub("", text).strip():
            return None  # text beside the calls: an answer that mentions them
    else:
        pieces = [text]
    calls = []
    for piece in pieces:
        values = _json_values(piece)
        if values is None:
            return None
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                call = _call(item)
                if call is None or call["name"] not in names:
                    return None
                calls.append(call)
    return calls or None


def opening_call(content: str) -> str | None:
    """The `call_key` of the call a reply opens with (bare, fenced or marked), if it does."""
    text = content.strip().removeprefix("```json").removeprefix("```").strip()
    text = text.removeprefix("<tool_call>").strip()
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    call = _call(value[0] if isinstance(value, list) and value else value)
    return call_key(call["name"], call["arguments"]) if call else None


def _json_values(text: str) -> list[Any] | None:
    """The JSON values `text` is made of, one after the other (one per line, say), or None
    if anything else is in it."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            return None
        values.append(value)
    return values or None


def _call(item: Any) -> dict[str, Any] | None:
    """{"name", "arguments" (an object)} of a call object; some models write "parameters"."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):  # already a JSON text
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": item["name"], "arguments": arguments}


def without_calls(body: dict[str, Any]) -> dict[str, Any]:
    """A chat request with tool calls ruled out: no tools offered, and decoding held to a reply
    that does not open as a call (`tool_choice: none`; and the answer after a tool's result
    when the model would only repeat its calls). The history keeps its calls and results."""
    dropped = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
    return {**{k: v for k, v in body.items() if k not in dropped}, "grammar": NO_CALL_GRAMMAR}


def call_key(name: str, arguments: str | dict[str, Any]) -> str:
    """One call, comparable: its name and its arguments' canonical JSON."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return f"{name}:{arguments}"
    return f"{name}:{json.dumps(arguments, sort_keys=True)}"


def answered_calls(messages: list[dict[str, Any]]) -> set[str]:
    """The calls (`call_key`) of a conversation's assistant messages that a `tool` message
    answered."""
    answered_ids = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    return {
        call_key(call["function"]["name"], call["function"].get("arguments", "{}"))
        for m in messages
        if m.get("role") == "assistant"
        for call in m.get("tool_calls") or ()
        if call.get("id") in answered_ids
    }


def shape_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's `tool_calls`: an id each, `type: function`, the arguments as a JSON text."""
    return [
        {
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
        }
        for c in calls
    ]


def stream_chunks(answer: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
    """A finished chat reply as the chunks OpenAI streams: per choice the role, the content or
    each call (its id and name, then its arguments in fragments), the finish reason; then the
    usage when asked for."""
    head = {
        "id": answer.get("id"),
        "object": "chat.completion.chunk",
        "created": answer.get("created"),
        "model": answer.get("model"),
    }

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice]}

    for choice in answer.get("choices") or ():
        index, message = choice.get("index", 0), choice.get("message") or {}
        yield chunk(index, {"role": "assistant", "content": "" if message.get("content") else None})
        if message.get("content"):
            yield chunk(index, {"content": message["content"]})
        for n, call in enumerate(message.get("tool_calls") or ()):
            function = call["function"]
            opening = {"index": n, "id": call["id"], "type": "function",
                       "function": {"name": function["name"], "arguments": ""}}  # fmt: skip
            yield chunk(index, {"tool_calls": [opening]})
            arguments = function["arguments"]
            for start in range(0, len(arguments), _FRAGMENT):
                piece = {
                    "index": n,
                    "function": {"arguments": arguments[start : start + _FRAGMENT]},
                }
                yield chunk(index, {"tool_calls": [piece]})
        yield chunk(index, {}, choice.get("finish_reason"))
    if include_usage:
        yield {**head, "choices": [], "usage": answer.get("usage")}
