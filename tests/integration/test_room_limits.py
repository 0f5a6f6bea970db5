"""When no room can be made, the request gets a 503 that says why."""

from __future__ import annotations

from pathlib import Path

import httpx


def start(server_factory, tmp_path: Path, config: str):
    path = tmp_path / "config.yaml"
    path.write_text(config)
    server = server_factory(path)
    server.wait_models()
    return server


def chat(server, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)


def test_a_pinned_model_is_never_evicted(server_factory, tmp_path: Path) -> None:
    server = start(
        server_factory,
        tmp_path,
        "max_loaded_models: 1\nroom_timeout: 0.5\nmodels:\n"
        "  - {name: p, kind: llm, backend: fake, pinned: true}\n"
        "  - {name: q, kind: llm, backend: fake, preload: false}\n",
    )
    response = chat(server, "q")
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "no room to load model 'q'" in message and "p (pinned)" in message
    assert chat(server, "p").status_code == 200


def test_a_model_bigger_than_max_memory(server_factory, tmp_path: Path) -> None:
    server = start(
        server_factory,
        tmp_path,
        "max_memory: 100MB\nmodels:\n  - {name: r, kind: llm, backend: fake, preload: false}\n",
    )
    response = chat(server, "r")
    assert response.status_code == 503
    assert "needs about" in response.json()["error"]["message"]


def test_a_model_on_an_absent_gpu_fails_with_the_reason(server_factory, tmp_path: Path) -> None:
    server = start(
        server_factory,
        tmp_path,
        "models:\n  - {name: g, kind: llm, backend: fake, devices: [cuda:7], preload: false}\n",
    )
    response = chat(server, "g")
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "cuda:7" in message and "not on this machine" in message
    assert message.count("model 'g'") == 1  # said once, not wrapped twice
    assert server.model("g")["state"] == "failed"
