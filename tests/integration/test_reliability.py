"""Holding up under load, faults and hostile input: keys, backpressure, cancellation, crashes,
hung workers and size limits, on a real server with fake models."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from mmserve.api.app import create_app
from mmserve.api.middleware import PROBES, is_open
from mmserve.config import load_settings

ADMIN, INFERENCE = "k-admin-0123456789", "k-inference-0123456789"
CONFIG = f"""
ping_interval: 0.3
ping_timeout: 1
max_body_bytes: 4000
api_keys:
  - {{key: {ADMIN}, name: ops}}
  - {{key: {INFERENCE}, scopes: [inference]}}
models:
  - {{name: one, kind: llm, backend: fake, max_queue: 2, options: {{delay: 0.05}}}}
  - {{name: patient, kind: llm, backend: fake, queue_timeout: 0.5, options: {{delay: 0.05}}}}
  - {{name: hang, kind: llm, backend: fake}}
  - {{name: capped, kind: llm, backend: fake, max_tokens: 5}}
  - {{name: vec, kind: embedding, backend: fake, max_inputs: 3}}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reliability") / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def server(server_factory, config: Path):
    server = server_factory(config)
    server.api_key = ADMIN
    server.wait_models()
    return server


def call(
    server, path: str, body: dict | None = None, key: str | None = ADMIN, timeout: float = 30
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=timeout)


def complete(model: str, tokens: int) -> dict:
    return {"model": model, "prompt": "x", "max_tokens": tokens}


# ---- API keys --------------------------------------------------------------------------------


def routes(config: Path) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, path parameters filled in."""
    app = create_app(load_settings(config, env={}))
    return [
        (method, path.replace("{model}", "one").replace("{model_id}", "one"))
        for path, methods in _flatten(app.routes, "")
        for method in sorted(methods)
        if method != "HEAD"
    ]


def _flatten(routes: list, prefix: str) -> list[tuple[str, set[str]]]:
    found = []
    for route in routes:
        if hasattr(route, "path"):
            found.append((prefix + route.path, getattr(route, "methods", None) or {"GET"}))
        elif hasattr(route, "original_router"):  # newer FastAPI keeps included routers whole
            found += _flatten(route.original_router.routes, prefix + route.include_context.prefix)
    return found


def test_every_route_but_the_probes_needs_a_key(server, config: Path) -> None:
    checked = routes(config)
    assert len(checked) > 20
    for method, path in checked:
        response = httpx.request(method, f"{server.url}{path}", timeout=30)
        if path in PROBES:  # /health and /ready
            assert response.status_code in (200, 503)
            continue
        if is_open(path):  # the dashboard's page and files: no data, the page asks for a key
            assert response.status_code in (200, 303, 404), (method, path)
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.request(
            method, f"{server.url}{path}", headers={"x-api-key": "nope"}, timeout=30
        )
        assert wrong.status_code == 401, (method, path)


def test_keys_are_accepted_both_ways_and_scoped(server) -> None:
    body = {"model": "one", "messages": [{"role": "user", "content": "hi"}]}
    assert call(server, "/v1/chat/completions", body, key=INFERENCE).status_code == 200
    by_header = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"x-api-key": INFERENCE}
    )
    assert by_header.status_code == 200
    denied = httpx.get(f"{server.url}/api/v1/", headers={"x-api-key": INFERENCE})
    assert denied.status_code == 403 and "admin" in denied.json()["error"]["message"]
    assert call(server, "/unloadmodel", {"model": "capped"}, key=INFERENCE).status_code == 403
    assert httpx.get(f"{server.url}/api/v1/", headers={"x-api-key": ADMIN}).status_code == 200


def test_keys_never_reach_the_log(server) -> None:
    assert ADMIN not in server.log() and INFERENCE not in server.log()


# ---- backpressure ------------------------------------------------------------------------------


def in_background(target, *args) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(target(*args)), daemon=True)
    thread.start()
    return thread, out


def test_a_full_queue_answers_429_with_retry_after(server) -> None:
    # `one`: one replica, one request at a time, max_queue 2; 100 tokens take 5 s.
    busy = [in_background(call, server, "/v1/completions", complete("one", 100)) for _ in range(3)]
    server.wait_until(lambda: server.model("one")["waiting"] == 2, timeout=10)
    response = call(server, "/v1/completions", complete("one", 1))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["type"] == "rate_limit_error"
    for thread, out in busy:
        thread.join()
        assert out[0].status_code == 200  # the queued ones were served, in turn


def test_a_request_that_waits_past_queue_timeout_gets_503(server) -> None:
    running = in_background(call, server, "/v1/completions", complete("patient", 40))  # 2 s
    server.wait_until(lambda: server.model("patient")["in_flight"] == 1, timeout=10)
    response = call(server, "/v1/completions", complete("patient", 1))
    assert response.status_code == 503 and "queue_timeout" in response.json()["error"]["message"]
    running[0].join()


# ---- cancellation --------------------------------------------------------------------------------


def test_a_client_that_gives_up_frees_the_model(server) -> None:
    with pytest.raises(httpx.ReadTimeout):
        call(server, "/v1/completions", complete("one", 200), timeout=1)  # 10 s of work
    server.wait_until(lambda: server.model("one")["in_flight"] == 0, timeout=3)
    started = time.monotonic()
    assert call(server, "/v1/completions", complete("one", 2)).status_code == 200
    assert time.monotonic() - started < 5


def test_a_queued_client_that_leaves_is_taken_off_the_queue(server) -> None:
    running = in_background(call, server, "/v1/completions", complete("one", 40))
    server.wait_until(lambda: server.model("one")["in_flight"] == 1, timeout=10)
    with pytest.raises(httpx.ReadTimeout):
        call(server, "/v1/completions", complete("one", 2), timeout=0.5)
    server.wait_until(lambda: server.model("one")["waiting"] == 0, timeout=3)
    running[0].join()


# ---- crashes and hangs ---------------------------------------------------------------------


def test_sigkill_mid_stream_ends_the_stream_with_an_error_and_the_model_comes_back(server) -> None:
    pid = server.model("one")["replicas"][0]["pid"]
    restarts = server.model("one")["restarts"]
    body = {**complete("one", 100), "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers=server.headers, timeout=30
    ) as stream:
        lines = (line for line in stream.iter_lines() if line)
        next(lines)
        os.kill(pid, signal.SIGKILL)
        rest = list(lines)
    assert rest and rest[-1] != "data: [DONE]"
    error = json.loads(rest[-1].removeprefix("data: "))["error"]
    assert error["code"] == "worker_crashed"
    assert call(server, "/v1/completions", complete("one", 2)).status_code == 200
    one = server.model("one")
    assert one["restarts"] == restarts + 1 and one["replicas"][0]["pid"] != pid


def test_a_hung_worker_is_killed_and_restarted(server) -> None:
    pid = server.model("hang")["replicas"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
    server.wait_until(
        lambda: [r["pid"] for r in server.model("hang")["replicas"]] not in ([], [pid]), timeout=15
    )
    assert call(server, "/v1/completions", complete("hang", 2)).status_code == 200
    assert "did not answer a ping" in server.log()


# ---- limits --------------------------------------------------------------------------------


def test_limits(server) -> None:
    huge = {"model": "one", "messages": [{"role": "user", "content": "x" * 5000}]}
    too_big = call(server, "/v1/chat/completions", huge)
    assert too_big.status_code == 413 and "4000 bytes" in too_big.json()["error"]["message"]
    over_cap = call(server, "/v1/completions", complete("capped", 50))
    assert over_cap.status_code == 400 and "allows 5" in over_cap.json()["error"]["message"]
    default = call(
        server, "/v1/completions", {"model": "capped", "prompt": "x", "max_tokens": None}
    )
    assert default.json()["usage"]["completion_tokens"] == 5
    many = call(server, "/v1/embeddings", {"model": "vec", "input": ["a", "b", "c", "d"]})
    assert many.status_code == 400 and "at most 3" in many.json()["error"]["message"]
