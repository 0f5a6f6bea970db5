"""Fuzz the real server against its own OpenAPI schema: no input may get a 5xx.

A bounded schemathesis run over every operation in `/openapi.json` (the OpenAI routes, the
status and health routes and the management routes), with the three built-in models really
loaded. Each model has `max_tokens: 8`, so fuzzed generations stay short (asking for more is a
400), and `max_inputs: 64`.

Phases: coverage (the boundary values of each field: a few hundred requests, most answered at
once with a 4xx), then random generation (positive and negative), EXAMPLES per operation, no
shrinking. A body or path parameter that names a model names a real one most of the time (a
hook swaps it in, and brings a too-large max_tokens under the cap), so the fuzzing reaches the
models and not only the 404 for an unknown name. Management calls may unload a model or add a
replica: the on-demand load brings a model back, and a replica the fuzzer added is removed
again so the run stays bounded.

The property: no response has a status >= 500, whatever the input. A 503 saying a model is
unavailable counts too: with the real models loaded there should be none. A failure prints the
request as a curl command and the server's log lines written while it ran.

Hypothesis never generates lone surrogates (which JSON can carry as `\\ud800`), so a few
hand-picked inputs go in a second test with the same property.

`MMSERVE_FUZZ_SEED=N` changes the seed (default: fixed, so a run is reproducible) and
`MMSERVE_FUZZ_EXAMPLES=N` the number of random examples per operation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from mmserve.api.app import create_app
from mmserve.config import Settings

pytestmark = pytest.mark.slow

MODELS = ("smollm2", "gemma3-270m", "minilm")
CAP = 8  # max_tokens of every model below
CONFIG = f"""
model_dirs: []
models:
  - {{name: smollm2, kind: llm, source: "catalog:smollm2", max_tokens: {CAP}, max_inputs: 64}}
  - {{name: gemma3-270m, kind: llm, source: "catalog:gemma3-270m", max_tokens: {CAP},
      max_inputs: 64}}
  - {{name: minilm, kind: embedding, source: "catalog:minilm", max_tokens: {CAP}, max_inputs: 64}}
"""
SEED = int(os.environ.get("MMSERVE_FUZZ_SEED", "20261123"))
EXAMPLES = int(os.environ.get("MMSERVE_FUZZ_EXAMPLES", "25"))
TIMEOUT = 120  # seconds for one request: a cold load of minilm takes about 10 s on 2 cores


@pytest.fixture(scope="module")
def fuzz_server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    config.write_text(CONFIG)
    server = server_factory(config)
    models = server.wait_models(timeout=600)
    assert all(m["state"] == "ready" for m in models), models
    return server


def served_schema() -> dict[str, Any]:
    """The OpenAPI schema the server builds for CONFIG (a test below checks that the running
    server serves exactly this). Built here, without starting anything, because schemathesis
    must know the operations when pytest collects the test: its lazy `from_fixture` loader
    does not work with pytest 9 (it sets `Function._nodeid`, which pytest 9 no longer has)."""
    return create_app(Settings.model_validate(yaml.safe_load(CONFIG))).openapi()


# The models that can serve each route; a real name drawn for it is one of these most times.
SERVES = {
    "/v1/chat/completions": ["smollm2"],
    "/v1/completions": ["smollm2", "gemma3-270m"],
    "/v1/embeddings": ["minilm"],
    "/engines/{model}/embeddings": ["minilm"],
}


def real_model(path: str) -> st.SearchStrategy[str]:
    return st.sampled_from(SERVES.get(path, []) * 4 + list(MODELS))


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@st.composite
def real_model_body(draw: st.DrawFn, body: dict[str, Any], path: str) -> dict[str, Any]:
    """`body` naming a real model, its max_tokens (if a number) under the cap."""
    body = {**body, "model": draw(real_model(path))}
    for key in ("max_tokens", "max_completion_tokens"):
        if is_number(body.get(key)) and body[key] > CAP:
            body[key] = draw(st.integers(1, CAP))
    if path == "/v1/completions" and "max_tokens" not in body:
        body["max_tokens"] = draw(st.integers(1, CAP))  # the default, 16, is over the cap
    if (
        path == "/v1/chat/completions"
        and isinstance(body.get("messages"), list)
        and draw(st.booleans())
    ):
        # Generated messages often carry images, which no model here reads (a 400).
        body["messages"] = [without_images(m) for m in body["messages"]]
    return body


def without_images(message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        parts = [p for p in message["content"] if not (isinstance(p, dict) and "image_url" in p)]
        return {**message, "content": parts}
    return message


def make_schema() -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": EXAMPLES, "no-shrink": True, "database": "none"},
            "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
            # Else the curl command of a failure shows max_tokens as "[Filtered]" (a "token").
            "output": {"sanitization": {"enabled": False}},
        }
    )
    schema = schemathesis.openapi.from_dict(served_schema(), config=config)

    @schema.hook
    def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
        """Three times in four, a body that names a model names a real one."""
        if not (isinstance(body, dict) and isinstance(body.get("model"), str)):
            return st.just(body)
        path = context.operation.path if context.operation else ""
        return st.sampled_from([True, True, True, False]).flatmap(
            lambda real: real_model_body(body, path) if real else st.just(body)
        )

    @schema.hook
    def flatmap_path_parameters(
        context: schemathesis.HookContext, params: dict[str, Any] | None
    ) -> st.SearchStrategy[dict[str, Any] | None]:
        """Half the time, `{model}` or `{model_id}` in the path is a real model."""
        names = ("model", "model_id")
        key = next((k for k in names if isinstance((params or {}).get(k), str)), None)
        if key is None:
            return st.just(params)
        path = context.operation.path if context.operation else ""
        return st.one_of(st.just(params), real_model(path).map(lambda n: {**params, key: n}))

    return schema


schema = make_schema()


def server_error(status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong, if the answer is a server error: a 5xx status, or a stream (status 200,
    its headers already sent) that carries an error frame of a 5xx type."""
    if status >= 500:
        return f"status {status}"
    if content_type.startswith("text/event-stream"):
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("data: {") and '"error"' in line:
                error = json.loads(line.removeprefix("data: "))["error"]
                if error.get("type") in ("internal_error", "service_unavailable"):
                    return f"status {status}, then an error in the stream: {error}"
    return None


def log_since(server: Any, start: int) -> str:
    """What the server logged after byte `start` of its log (the last 6000 characters)."""
    with Path(server.log_path).open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")[-6000:]


@schema.parametrize()
@settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each step is a real request
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_input_gets_a_5xx(case: schemathesis.Case, fuzz_server) -> None:
    log_start = fuzz_server.log_path.stat().st_size
    if case.path == "/api/v1/{model}/logs" and case.query and "follow" in case.query:
        # `follow=true` streams until the client leaves, by design (tests/integration/
        # test_model_logs.py covers it): here it would only wait out the timeout.
        case.query["follow"] = "false"
    response = case.call(base_url=fuzz_server.url, timeout=TIMEOUT)
    content_type = response.headers.get("content-type", [""])[0]
    problem = server_error(response.status_code, content_type, response.content)
    if problem is not None:
        pytest.fail(
            f"{case.method} {case.formatted_path}: {problem}\n"
            f"request: {case.as_curl_command(base_url=fuzz_server.url)}\n"
            f"response: {response.content[:2000].decode(errors='replace')}\n"
            f"server log while it ran:\n{log_since(fuzz_server, log_start)}"
        )
    if case.path == "/api/v1/{model}/add" and response.status_code == 200:
        # Keep the run bounded: take the replica the fuzzer just added away again.
        model = response.json()["name"]
        undo = httpx.post(f"{fuzz_server.url}/api/v1/{model}/remove", timeout=TIMEOUT)
        assert undo.status_code == 200, undo.text


def test_the_fuzzed_schema_is_the_servers_own(fuzz_server) -> None:
    served = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).json()
    assert served == served_schema()


# Raw JSON bodies: `\ud800` is a lone surrogate, valid JSON that Hypothesis never generates.
HAND_PICKED = {
    "surrogate in a completion prompt": (
        "/v1/completions",
        r'{"model": "gemma3-270m", "prompt": "\ud800", "max_tokens": 8}',
    ),
    "surrogate in a streamed completion prompt": (
        "/v1/completions",
        r'{"model": "gemma3-270m", "prompt": "a\ud800", "max_tokens": 8, "stream": true}',
    ),
    "surrogate in a chat message": (
        "/v1/chat/completions",
        r'{"model": "smollm2", "messages": [{"role": "user", "content": "\udfff"}],'
        r' "max_tokens": 8}',
    ),
    "surrogate in a stop string": (
        "/v1/chat/completions",
        r'{"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],'
        r' "stop": "\ud800", "max_tokens": 8}',
    ),
    "surrogate in an embedding input": (
        "/v1/embeddings",
        r'{"model": "minilm", "input": ["fine", "\ud800"]}',
    ),
    "an empty prompt in a list, to a model with no BOS token": (
        "/v1/completions",
        r'{"model": "smollm2", "prompt": [""], "max_tokens": 8}',
    ),
    "an empty prompt in a list, streamed": (
        "/v1/completions",
        r'{"model": "smollm2", "prompt": ["Hi", ""], "max_tokens": 8, "stream": true}',
    ),
    "a replica on a device this machine does not have": (
        "/api/v1/minilm/add",
        r'{"device": "cuda:99"}',
    ),
}


@pytest.mark.parametrize(("path", "body"), HAND_PICKED.values(), ids=HAND_PICKED.keys())
def test_hand_picked_inputs_get_no_5xx(fuzz_server, path: str, body: str) -> None:
    log_start = fuzz_server.log_path.stat().st_size
    response = httpx.post(
        f"{fuzz_server.url}{path}",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    if response.status_code == 200 and path.endswith("/add"):
        httpx.post(f"{fuzz_server.url}{path.removesuffix('/add')}/remove", timeout=TIMEOUT)
    problem = server_error(
        response.status_code, response.headers.get("content-type", ""), response.content
    )
    assert problem is None, (
        f"POST {path} {body}: {problem}\nresponse: {response.text[-2000:]}\n"
        f"server log while it ran:\n{log_since(fuzz_server, log_start)}"
    )
