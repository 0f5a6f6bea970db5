"""Remote models (`kind: http`): a gateway mmserve relaying to an upstream mmserve (fake
backend, behind an API key), the native call route, `predict`, and runtime registration."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-secret-1234"
WRONG_KEY = "sk-wrong-key-5678"
ECHO = f"{sys.executable} {ROOT}/examples/echo_model.py"


@pytest.fixture(scope="module")
def upstream(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("upstream") / "config.yaml"
    config.write_text(
        f"api_keys: [{UPSTREAM_KEY}]\nmodels:\n"
        "  - {name: echo, kind: llm, backend: fake, context_length: 64,\n"
        "     max_concurrency: 4, options: {delay: 0.05}}\n"
        "  - {name: slow, kind: llm, backend: fake, options: {delay: 2}}\n"
        "  - {name: vec, kind: embedding, backend: fake, options: {dimensions: 4}}\n"
        f"  - {{name: prog, kind: subprocess, command: [{sys.executable}, "
        f"{ROOT}/examples/echo_model.py]}}\n"
    )
    server = server_factory(config)
    server.api_key = UPSTREAM_KEY
    server.wait_models()
    return server


@pytest.fixture(scope="module")
def gateway(server_factory, upstream, tmp_path_factory: pytest.TempPathFactory):
    base = f"{upstream.url}/v1"
    config = tmp_path_factory.mktemp("gateway") / "config.yaml"
    config.write_text(
        f"allow_runtime_subprocess: ['{ECHO}']\n"
        f"model_dirs: [{tmp_path_factory.mktemp('models')}]\nmodels:\n"
        f"  - {{name: remote, kind: http, base_url: {base}, upstream_model: echo,\n"
        "     api_key_env: TEST_UPSTREAM_KEY}\n"
        f"  - {{name: remote-vec, kind: http, base_url: {base}, upstream_model: vec,\n"
        f"     api_key: {UPSTREAM_KEY}}}\n"
        f"  - {{name: remote-slow, kind: http, base_url: {base}, upstream_model: slow,\n"
        f"     api_key: {UPSTREAM_KEY}, timeout: 0.5}}\n"
        f"  - {{name: remote-missing, kind: http, base_url: {base}, upstream_model: nope,\n"
        f"     api_key: {UPSTREAM_KEY}}}\n"
        f"  - {{name: remote-badkey, kind: http, base_url: {base}, api_key: {WRONG_KEY}}}\n"
        f"  - {{name: remote-down, kind: http, base_url: 'http://127.0.0.1:{free_port()}/v1'}}\n"
        f"  - {{name: remote-json, kind: http, backend: json,\n"
        f"     base_url: {upstream.url}/api/v1/prog/call, api_key: {UPSTREAM_KEY}}}\n"
        "  - {name: local, kind: llm, backend: fake}\n"
        "  - {name: local-vec, kind: embedding, backend: fake, options: {dimensions: 3}}\n"
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        server = server_factory(config)
    server.wait_models()
    return server


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---- backend openai ------------------------------------------------------------------------


def test_chat_completions_and_embeddings_pass_through(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="remote", messages=ask("hello there"))
    assert reply.choices[0].message.content == "You said: hello there"
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    completion = client.completions.create(model="remote", prompt="Once", max_tokens=3)
    assert completion.choices[0].text == "word1 word2 word3"
    vectors = client.embeddings.create(model="remote-vec", input=["a", "b"])
    assert [len(d.embedding) for d in vectors.data] == [4, 4]


def test_a_stream_arrives_chunk_by_chunk(gateway) -> None:
    words = " ".join(f"w{i}" for i in range(20))  # 22 tokens at 50 ms each upstream
    body = {"model": "remote", "messages": ask(words), "stream": True, "max_tokens": 30}
    arrivals: list[tuple[float, str]] = []
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                arrivals.append((time.monotonic(), line))
    assert len(arrivals) >= 20
    # Not buffered: the first chunk came long before the last one was produced.
    assert arrivals[-1][0] - arrivals[0][0] > 0.5


def test_the_openai_client_streams_through(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="remote", messages=ask("a b c"), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "You said: a b c"
    )


def test_an_upstream_4xx_keeps_its_status_and_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="remote-missing", messages=ask("hi"))
    assert "'nope' does not exist" in missing.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="remote", messages=ask("x " * 100))
    assert too_long.value.code == "context_length_exceeded"


def test_an_upstream_5xx_is_a_502_naming_it(client: openai.OpenAI, upstream) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="remote", messages=ask("boom"))
    assert failed.value.status_code == 502
    assert f"upstream {upstream.url}/v1 failed with 500" in failed.value.message


def test_unreachable_is_502_and_slow_is_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as down:
        client.chat.completions.create(model="remote-down", messages=ask("hi"))
    assert down.value.status_code == 502 and "is unreachable" in down.value.message
    with pytest.raises(openai.APIStatusError) as slow:
        client.chat.completions.create(model="remote-slow", messages=ask("hi"))
    assert slow.value.status_code == 504 and "did not answer within 0.5 s" in slow.value.message


def test_the_upstream_key_never_leaks(gateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(model="remote-badkey", messages=ask("hi"))
    assert WRONG_KEY not in str(refused.value.body)
    status = httpx.get(f"{gateway.url}/api/v1/").text + httpx.get(f"{gateway.url}/metrics").text
    for key in (UPSTREAM_KEY, WRONG_KEY):
        assert key not in status
        assert key not in gateway.log()


def test_http_models_take_no_room(gateway) -> None:
    status = gateway.status()
    remote = next(m for m in status["models"] if m["name"] == "remote")
    assert remote["state"] == "ready" and remote["capabilities"] == [
        "chat",
        "complete",
        "embed",
        "relay",
    ]
    assert status["loaded_models"] == 2  # the two local fakes only


# ---- the call route and predict ------------------------------------------------------------


def test_call_on_a_json_endpoint_and_predict(gateway) -> None:
    answer = gateway.post("/api/v1/remote-json/call", {"a": 1, "b": [2]})
    assert answer.status_code == 200
    assert answer.json() == {"echo": {"a": 1, "b": [2]}, "keys": 2}
    assert gateway.post("/post/predict?id=remote-json", {"x": "y"}).json()["echo"] == {"x": "y"}
    got = httpx.get(f"{gateway.url}/get/predict", params={"id": "remote-json", "q": "1"})
    assert got.json()["echo"] == {"q": "1"}


def test_call_on_chat_completion_and_embedding_models(gateway) -> None:
    for model in ("local", "remote"):
        chat = gateway.post(f"/api/v1/{model}/call", {"messages": ask("hi"), "temperature": 0.7})
        assert chat.status_code == 200, chat.text
        assert chat.json()["text"] == "You said: hi"
        assert chat.json()["finish_reason"] == "stop"
    completion = gateway.post("/api/v1/local/call", {"prompt": "x", "max_tokens": 2}).json()
    assert completion["text"] == "word1 word2"
    vectors = gateway.post("/api/v1/local-vec/call", {"input": ["a", "b"]}).json()
    assert vectors["dimensions"] == 3 and len(vectors["embeddings"]) == 2


def test_a_call_body_the_model_cannot_take_is_a_400(gateway) -> None:
    wrong = gateway.post("/api/v1/local-vec/call", {"messages": ask("hi")})
    assert wrong.status_code == 400
    assert "{'input': '...'}" in wrong.json()["error"]["message"]
    bad = gateway.post("/api/v1/local/call", {"messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    not_object = httpx.post(f"{gateway.url}/api/v1/local/call", json=[1, 2])
    assert not_object.status_code == 400


def test_upstream_down_during_a_call_is_a_502(gateway) -> None:
    down = gateway.post("/api/v1/remote-down/call", {"messages": ask("hi")})
    assert down.status_code == 502


# ---- runtime registration ------------------------------------------------------------------


def test_register_an_http_model_use_it_and_remove_it(gateway, upstream) -> None:
    spec = {
        "name": "added",
        "kind": "http",
        "base_url": f"{upstream.url}/v1",
        "upstream_model": "echo",
        "api_key": UPSTREAM_KEY,
    }
    created = gateway.post("/api/v1/models", spec)
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "ready"
    assert UPSTREAM_KEY not in created.text
    assert gateway.post("/api/v1/models", spec).status_code == 409
    chat = gateway.post("/api/v1/added/call", {"messages": ask("yo")})
    assert chat.json()["text"] == "You said: yo"
    assert httpx.delete(f"{gateway.url}/api/v1/added").json() == {"removed": "added"}
    assert httpx.get(f"{gateway.url}/api/v1/added").status_code == 404


def test_register_an_allowed_program_and_refuse_others(gateway) -> None:
    allowed = {"name": "prog2", "kind": "subprocess", "command": ECHO.split()}
    created = gateway.post("/api/v1/models", allowed)
    assert created.status_code == 201, created.text
    assert gateway.post("/api/v1/prog2/call", {"k": 1}).json() == {"echo": {"k": 1}, "keys": 1}
    httpx.delete(f"{gateway.url}/api/v1/prog2")
    for command in (["sh", "-c", "echo pwned"], [sys.executable, "-c", "print(1)"]):
        refused = gateway.post(
            "/api/v1/models", {"name": "evil", "kind": "subprocess", "command": command}
        )
        assert refused.status_code == 403
        assert "allow_runtime_subprocess" in refused.json()["error"]["message"]
    compat = gateway.post("/post/addmodel?id=evil&type=subprocessmodel&dest=sh -c id")
    assert compat.status_code == 403


def test_registration_refuses_what_the_operator_did_not_allow(gateway, upstream) -> None:
    off = upstream.post("/api/v1/models", {"name": "p", "kind": "subprocess", "command": ["ls"]})
    assert off.status_code == 403 and "is off" in off.json()["error"]["message"]
    env_key = {"name": "k", "kind": "http", "base_url": "http://x/v1", "api_key_env": "HOME"}
    assert gateway.post("/api/v1/models", env_key).status_code == 403
    outside = {"name": "f", "kind": "llm", "source": "/etc/passwd"}
    assert gateway.post("/api/v1/models", outside).status_code == 403
    invalid = gateway.post("/api/v1/models", {"name": "h", "kind": "http"})
    assert invalid.status_code == 400 and "base_url" in invalid.json()["error"]["message"]


def test_addmodel_compat_registers_an_http_json_model(gateway, upstream) -> None:
    dest = f"{upstream.url}/api/v1/prog/call"
    added = gateway.post(
        f"/post/addmodel?id=compat-json&type=httpmodel&dest={dest}", {"api_key": UPSTREAM_KEY}
    )
    assert added.status_code == 201, added.text
    assert gateway.post("/post/predict?id=compat-json", {"z": 0}).json()["echo"] == {"z": 0}
    wrong = gateway.post("/post/addmodel?id=x&type=dockermodel&dest=y")
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "type"


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "q", "kind": "subprocess", "command": 'python3 "unclosed'},
        {"name": "q", "kind": "llm", "source": "/tmp/a\u0000b"},
        {"name": "q", "kind": "http", "base_url": "http://[::1"},
        {"name": "q/x", "kind": "http", "base_url": "http://h/v1"},
    ],
)
def test_a_malformed_spec_is_a_400(gateway, spec: dict) -> None:
    answer = gateway.post("/api/v1/models", spec)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_malformed_compat_forms_are_400s(gateway) -> None:
    unclosed = gateway.post('/post/addmodel?id=q&type=subprocessmodel&dest=python3 "x')
    assert unclosed.status_code == 400 and unclosed.json()["error"]["param"] == "dest"
    not_json = httpx.post(f"{gateway.url}/post/predict?id=local", content=b"{nope")
    assert not_json.status_code == 400
    a_list = httpx.post(f"{gateway.url}/post/predict?id=local", json=[1])
    assert a_list.status_code == 400
