"""Validation errors in the user's words: which field, and what it accepts.

Pydantic reports a value that fits none of a union's forms once per form, each at a location
that names the form (`input.list[int].0`): library internals, and several messages for one
mistake. `invalid_fields` turns that list into one message per field, located as the user wrote
the JSON (`messages[0].content`):

- a union whose forms all fail at its own level (the value has none of the shapes it takes) is
  one problem: "'input' must be a string, a list of strings, ...", from `ACCEPTS`;
- a union where one form got further into the value than the others (a list of token arrays
  with a string inside) is that form's problem, at its depth ("'input[0][1]' must be an
  integer");
- every other error is worded from its type and context (`_words`), never from pydantic's text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mmserve.errors import InvalidRequest

__all__ = ["ACCEPTS", "invalid_fields", "json_numbers", "object_body", "parse"]

# What each field that takes several forms accepts, by field name (the wire models' unions;
# tests/unit/test_validation.py checks that every union field has its entry).
ACCEPTS: dict[str, str] = {
    "input": "a string, a list of strings, a token array (a list of integers) or a list of "
    "token arrays",
    "prompt": "a string, a list of strings, a token array (a list of integers) or a list of "
    "token arrays",
    "stop": "a string or a list of strings",
    "tool_choice": "'none', 'auto', 'required' or a named function ({\"type\": \"function\", "
    '"function": {"name": ...}})',
    "content": "a string or a list of content parts",
    "command": "a command line or a list of strings (the program and its arguments)",
    "keep_alive": "a number of seconds (0 or more), or -1 for never",
}

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class _Error:
    """One pydantic error, located in the user's JSON: `path` is where, `forms` the union
    forms pydantic tried on the way there, each as (its depth in `path`, its name)."""

    path: Path
    forms: tuple[tuple[int, str], ...]
    detail: dict[str, Any]

    def past_first_form(self) -> _Error:
        return _Error(self.path, self.forms[1:], self.detail)

    @property
    def is_type_error(self) -> bool:
        """The value is not of the type asked (rather than of it, but out of bounds)."""
        kind = str(self.detail["type"])
        return kind.endswith(("_type", "_parsing")) or kind == "int_from_float"

    @property
    def words(self) -> str:
        return _words(self.detail)


def invalid_fields(errors: Sequence[Any], body: Any = None) -> InvalidRequest:
    """The 400 for pydantic `errors` on `body` (the JSON as sent): one message per bad field,
    `param` naming the first."""
    if errors and errors[0]["type"] == "json_invalid":
        reason = errors[0].get("ctx", {}).get("error")
        return InvalidRequest(
            "the request body is not valid JSON" + (f": {reason}" if reason else "")
        )
    problems = _problems([_locate(e, body) for e in errors])
    message = "; ".join(
        f"'{_show(path)}' {words}" if path else _whole_body(words) for path, words in problems
    )
    first = problems[0][0] if problems else ()
    return InvalidRequest(message or "the request body is invalid", param=_show(first) or None)


def _whole_body(words: str) -> str:
    """A problem with the body itself: missing, or not an object; or a check of several fields
    at once, whose words stand alone."""
    if words == _FIXED["missing"]:
        return "the request body is required: a JSON object"
    if words == _FIXED["model_type"]:
        return "the request body must be a JSON object"
    return words


def _locate(error: Any, body: Any) -> _Error:
    """Walk `body` along the error's location: a part that is a key or index of the JSON is on
    the user's path; any other is the name of a union form pydantic tried. (A query or path
    parameter's location is its name.)"""
    parts = list(error["loc"])
    if parts[:1] in (["query"], ["path"], ["header"]):
        return _Error(tuple(parts[1:]), (), error)
    if parts[:1] == ["body"]:
        parts = parts[1:]
    path: list[str | int] = []
    forms: list[tuple[int, str]] = []
    value = body
    for i, part in enumerate(parts):
        if _has(value, part):
            value = value[part]
        elif not (i == len(parts) - 1 and error["type"] == "missing"):
            forms.append((len(path), str(part)))
            continue
        path.append(part)
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        path.append(str(error.get("ctx", {}).get("discriminator", "")).strip("'"))
    return _Error(tuple(path), tuple(forms), error)


def _has(value: Any, part: str | int) -> bool:
    """Whether `part` is a key of the JSON object `value`, or an index of the JSON list."""
    if isinstance(value, dict):
        return isinstance(part, str) and part in value
    return isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)


def _problems(errors: list[_Error]) -> list[tuple[Path, str]]:
    """One (path, words) per field, in the order pydantic found them."""
    groups: dict[tuple[bool, Path], list[_Error]] = {}
    for error in errors:
        key = (True, error.path[: error.forms[0][0]]) if error.forms else (False, error.path)
        groups.setdefault(key, []).append(error)
    found: dict[Path, str] = {}
    for (union, path), group in groups.items():
        for where, words in _union_problems(path, group) if union else [(path, group[0].words)]:
            found.setdefault(where, words)
    return list(found.items())


def _union_problems(field: Path, tried: list[_Error]) -> list[tuple[Path, str]]:
    """A union at `field` that none of its forms accepted. The form that got furthest into
    the value (deepest, and past its type checks) is the one the user meant: its problems are
    the answer, and so are the problems several such forms agree on. Otherwise the value has
    none of the field's shapes: say what it accepts."""
    reach: dict[str, tuple[int, bool]] = {}
    for error in tried:
        form = error.forms[0][1]
        reach[form] = max(reach.get(form, (0, False)), (len(error.path), not error.is_type_error))
    best = max(reach.values())
    answers = [
        _problems([e.past_first_form() for e in tried if e.forms[0][1] == form])
        for form, score in reach.items()
        if score == best
    ]
    if all(answer == answers[0] for answer in answers) or (best[0] > len(field) and best[1]):
        return answers[0]
    name = next((p for p in reversed(field) if isinstance(p, str)), "")
    return [(field, f"must be {ACCEPTS[name]}")] if name in ACCEPTS else answers[0]


def _words(error: dict[str, Any]) -> str:
    """What is wrong, from the error's type and context (see the module doc)."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in _FIXED:
        return _FIXED[kind]
    if kind in _BOUNDS:
        key, relation = _BOUNDS[kind]
        bound = ctx[key]
        return f"must be {relation} {int(bound) if bound == int(bound) else bound}"
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must have at least {least} {_unit(kind)}"
    if kind in ("too_long", "string_too_long"):
        most = ctx.get("max_length", 0)
        return "is not supported" if most == 0 else f"must have at most {most} {_unit(kind)}"
    if kind in ("literal_error", "enum"):
        return f"must be {_json_words(ctx.get('expected', ''))}"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags', '')}"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern', '')}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))  # the words of our own validators
    return f"is invalid: {error['msg']}"


def _unit(kind: str) -> str:
    return "characters" if kind.startswith("string") else "items"


def _json_words(expected: str) -> str:
    """Pydantic spells literals as Python does: say them as JSON does."""
    return {"True": "true", "False": "false", "None": "null"}.get(expected, expected)


_FIXED = {
    "missing": "is required",
    "union_tag_not_found": "is required",
    "extra_forbidden": "is not a field of this request",
    "none_required": "is not supported",
    "string_type": "must be a string",
    "string_unicode": "contains a lone surrogate (\\ud800-\\udfff), which is not valid text",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "greater than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def _show(path: Path) -> str:
    """`messages[0].content`, as OpenAI names a field inside a request."""
    shown = ""
    for part in path:
        shown += f"[{part}]" if isinstance(part, int) else f".{part}" if shown else part
    return shown


M = TypeVar("M", bound=BaseModel)


def json_numbers(value: Any) -> Any:
    """`value` with each integral float an int, as JSON Schema reads numbers (`2.0` is an
    integer). For a model's before-validator: strict types refuse `true` and `"2"` for an
    integer, and would refuse `2.0` too; a float field takes the int as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [json_numbers(item) for item in value]
    if isinstance(value, dict):
        return {key: json_numbers(item) for key, item in value.items()}
    return value


def parse(model: type[M], data: Any) -> M:
    """Validate `data` as `model` in a route's body (a 400 naming the field, as at the edge)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_fields(exc.errors(), data) from None


def object_body(raw: bytes) -> dict[str, Any]:
    """A body read by hand (the compatibility routes left out of the schema): a JSON object,
    or {} when empty."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body
