"""Schemathesis hooks for tests/e2e/test_fuzz.py: what only this server's models can tell.

The OpenAPI document states everything a request's fields must be on their own. What depends
on the model a request names cannot be in it: which models exist and what each can do, their
max_tokens cap, their vocabulary, their embedding size, the devices of this machine. A case
schemathesis generates as *valid* (positive) must be valid for the model it reaches, or the
`positive_data_acceptance` check would blame the schema for the model's answer; so
`map_case` fits each positive case to a real model of the fuzz config (test_fuzz.CONFIG).
Negative cases go as generated: they must be refused by their schema violation alone.

Management calls are undone after they succeed (`after_call`), so the run stays bounded: a
model the fuzzer registers is removed again, a replica it adds too. A model the fuzzer
unloads comes back on its next request. No case unregisters a configured model.

`no_server_error_in_a_stream` adds what `not_a_server_error` cannot see: a stream answers
200 before it runs, so a failure while it runs is an error frame inside it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from pydantic import BaseModel, ValidationError

from mmserve.api import protocol as wire

CAP = 8  # every model's max_tokens in the fuzz config
SLOTS = 4  # the llm models' parallel slots (the default): at most this many choices, `n`
MAX_INPUTS = 64
VOCABULARY = 30_000  # MiniLM's (30522), rounded down
PROMPT_CHARS = 400  # far within a 2048-token context, whatever the characters
CHAT, COMPLETE, EMBED = ["smollm2"], ["smollm2", "gemma3-270m"], ["minilm"]
MODELS = ["smollm2", "gemma3-270m", "minilm"]
NO_SUCH_MODEL = "no-such-model"  # a body no model here takes: the 404 is the right answer
SERVER = os.environ.get("MMSERVE_FUZZ_URL", "")

Fitter = Callable[[schemathesis.Case, Any], None]


def pick(names: list[str], seed: object) -> str:
    """One of `names`, chosen by the case's own data (so a run is reproducible)."""
    return names[len(json.dumps(seed, default=str)) % len(names)]


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def capped(body: dict[str, Any]) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if is_number(value) and value > CAP:
            body[key] = 1 + int(value) % CAP
    if is_number(body.get("n")) and body["n"] > SLOTS:
        body["n"] = 1 + int(body["n"]) % SLOTS


def short(text: Any) -> Any:
    return text[:PROMPT_CHARS] if isinstance(text, str) else text


def fit_message(message: Any) -> Any:
    """A message with text only (no model here reads images), not too long."""
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") != "image_url"]
        for part in parts:
            if "text" in part:
                part["text"] = short(part["text"])
        return {**message, "content": parts or "hello"}
    return {**message, "content": short(content)}


def fit_chat(body: dict[str, Any]) -> None:
    capped(body)
    # A rule across two fields, which the schema cannot state (OpenAI's too): top_logprobs
    # goes with logprobs: true.
    if body.get("top_logprobs") is not None:
        body["logprobs"] = True
    # No model of the fuzz config calls tools (SmolLM2's template has none: a 400 saying so),
    # and a made-up JSON schema may hold keywords llama.cpp cannot enforce (a 400 naming them).
    for key in ("tools", "tool_choice", "parallel_tool_calls"):
        body.pop(key, None)
    for message in body.get("messages") or ():  # nor a history of calls it never could make
        if isinstance(message, dict) and message.get("role") == "assistant":
            message.pop("tool_calls", None)
    if isinstance(body.get("response_format"), dict) and "json_schema" in body["response_format"]:
        body["response_format"] = {"type": "json_object"}
    if isinstance(body.get("messages"), list):
        body["messages"] = [fit_message(m) for m in body["messages"][:8]]


def fit_completion(body: dict[str, Any]) -> None:
    capped(body)
    if "max_tokens" not in body or body["max_tokens"] is None:
        body["max_tokens"] = CAP  # the default, 16, is over the cap
    prompt = body.get("prompt")
    # Token ids in the model's vocabulary; texts not too long.
    body["prompt"] = in_vocabulary(prompt)


def fit_embedding(body: dict[str, Any]) -> None:
    body.pop("dimensions", None)  # only the model's own is allowed
    inputs = body.get("input")
    if isinstance(inputs, list):
        body["input"] = [in_vocabulary(item) for item in inputs[:MAX_INPUTS]]


def in_vocabulary(item: Any) -> Any:
    if is_number(item):
        return int(item) % VOCABULARY
    if isinstance(item, list):
        return [in_vocabulary(i) for i in item]
    return short(item)


def body_of(case: schemathesis.Case) -> dict[str, Any] | None:
    return case.body if isinstance(case.body, dict) else None


def fit_openai(models: list[str], fit: Callable[[dict[str, Any]], None]) -> Fitter:
    def fitter(case: schemathesis.Case, body: Any) -> None:
        if body is not None:
            body["model"] = pick(models, body)
            fit(body)
        if case.path_parameters and "model" in case.path_parameters:
            case.path_parameters["model"] = pick(models, body)

    return fitter


CALL_FORMS: list[tuple[type[BaseModel], list[str], Callable[[dict[str, Any]], None]]] = [
    (wire.ChatCall, CHAT, fit_chat),
    (wire.CompletionCall, COMPLETE, fit_completion),
    (wire.EmbeddingCall, EMBED, fit_embedding),
]


def fit_call(case: schemathesis.Case, body: Any) -> None:
    """The model a call body's form is for; a form none of them takes (an image, a program's
    own body) goes to no model."""
    name = NO_SUCH_MODEL
    for form, models, fit in CALL_FORMS:
        try:
            form.model_validate(body)
        except ValidationError:
            continue
        name = pick(models, body)
        fit(body)
        break
    case.path_parameters = {**(case.path_parameters or {}), "model": name}


def fit_registration(case: schemathesis.Case, body: Any) -> None:
    """Registered, not loaded: a spec the fuzzer made up (a million threads...) would take the
    machine down loading, and that is the operator's business, not the API's."""
    if body is not None:
        body["preload"] = False
        if "devices" in body:
            body["devices"] = ["cpu"]


def fit_replica(case: schemathesis.Case, body: Any) -> None:
    case.path_parameters = {**(case.path_parameters or {}), "model": pick(MODELS, body)}
    if body is not None and "device" in body:
        body["device"] = "cpu"  # the only device this machine surely has


def fit_named(case: schemathesis.Case, body: Any) -> None:
    """A body or path that names a model names a real one, half the time."""
    if body is not None and isinstance(body.get("model"), str) and len(body["model"]) % 2:
        body["model"] = pick(MODELS, body)
    params = case.path_parameters or {}
    key = next((k for k in ("model", "model_id") if k in params), None)
    if key is not None and len(str(params[key])) % 2:
        params[key] = pick(MODELS, params)


FITTERS: dict[tuple[str, str], Fitter] = {
    ("POST", "/v1/chat/completions"): fit_openai(CHAT, fit_chat),
    ("POST", "/v1/completions"): fit_openai(COMPLETE, fit_completion),
    ("POST", "/v1/embeddings"): fit_openai(EMBED, fit_embedding),
    ("POST", "/engines/{model}/embeddings"): fit_openai(EMBED, fit_embedding),
    ("POST", "/api/v1/{model}/call"): fit_call,
    ("POST", "/api/v1/models"): fit_registration,
    ("POST", "/api/v1/{model}/add"): fit_replica,
    # Never a configured model: unregistering one would end the run for its routes.
    ("DELETE", "/api/v1/{model}"): lambda case, body: None,
}


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """Not a log that is followed: `follow=true` (or any other word FastAPI reads as true)
    streams until the client leaves, by design (tests/integration/test_model_logs.py covers
    it); here it would only wait out the timeout."""
    follow = (case.query or {}).get("follow", False)
    return case.path != "/api/v1/{model}/logs" or str(follow).lower() in ("false", "0", "off", "no")


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    FITTERS.get((case.method, case.path), fit_named)(case, body_of(case))
    return case


@schemathesis.hook
def after_call(
    context: schemathesis.HookContext, case: schemathesis.Case, response: schemathesis.Response
) -> None:
    """Undo what a successful management call changed (see the module doc)."""
    if case.method != "POST" or response.status_code not in (200, 201):
        return
    if case.path == "/api/v1/models" and isinstance(case.body, dict):
        httpx.delete(f"{SERVER}/api/v1/{case.body['name']}", timeout=120)
    elif case.path == "/api/v1/{model}/add" and case.path_parameters:
        httpx.post(f"{SERVER}/api/v1/{case.path_parameters['model']}/remove", timeout=120)


ERROR_FRAME = re.compile(r"^data: (\{.*\"error\".*\})$", re.MULTILINE)


@schemathesis.check
def no_server_error_in_a_stream(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    for frame in ERROR_FRAME.findall(response.text):
        error = json.loads(frame)["error"]
        if error.get("type") in ("internal_error", "service_unavailable", "upstream_error"):
            raise AssertionError(f"the stream ended with a server error: {error}")
    return None
