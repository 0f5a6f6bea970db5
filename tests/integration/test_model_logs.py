"""Per-model logs: what the process printed, lifecycle events, one record per request."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("logs")
    (root / "config.yaml").write_text(
        "log_capacity: 50\nlog_dir: logs\nmodels:\n  - {name: echo, kind: llm, backend: fake}\n"
    )
    server = server_factory(root / "config.yaml")
    server.wait_models()
    server.root = root
    return server


def chat(server, text: str = "hi") -> httpx.Response:
    return server.post(
        "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": text}]}
    )


def test_records_of_every_kind(server) -> None:
    assert chat(server, "one two").status_code == 200
    records = httpx.get(f"{server.url}/api/v1/echo/logs").json()
    sources = {r["source"] for r in records}
    assert {"event", "request"} <= sources
    request = [r for r in records if r["source"] == "request"][-1]["request"]
    assert request["route"] == "/chat/completions" and request["status"] == 200
    assert request["tokens"] == 2 + 4 and request["latency_ms"] > 0  # prompt + completion
    assert any("ready" in r["message"] for r in records if r["source"] == "event")
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs)


def test_since_follow_and_clear(server) -> None:
    last = httpx.get(f"{server.url}/api/v1/echo/logs").json()[-1]["seq"]
    assert httpx.get(f"{server.url}/api/v1/echo/logs", params={"since": last}).json() == []
    seen: list[dict] = []

    def follow() -> None:
        params = {"since": last, "follow": "true"}
        with httpx.stream(
            "GET", f"{server.url}/api/v1/echo/logs", params=params, timeout=10
        ) as stream:
            for line in stream.iter_lines():
                seen.append(json.loads(line))
                return

    reader = threading.Thread(target=follow)
    reader.start()
    chat(server)
    reader.join(timeout=10)
    assert seen and seen[0]["seq"] > last
    assert httpx.delete(f"{server.url}/api/v1/echo/logs").json()["cleared"] > 0
    assert httpx.get(f"{server.url}/api/v1/echo/logs").json() == []


def test_compat_routes_and_the_log_file(server) -> None:
    chat(server)
    assert (
        httpx.get(f"{server.url}/get/getlogs", params={"id": "echo"}).json()[-1]["source"]
        == "request"
    )
    assert httpx.post(f"{server.url}/post/cleanlogs", params={"id": "echo"}).json()["cleared"] >= 1
    assert httpx.get(f"{server.url}/get/getlogs", params={"id": "nope"}).status_code == 404
    lines = (Path(server.root) / "logs" / "echo.log").read_text().splitlines()
    assert any(json.loads(line)["source"] == "request" for line in lines)  # kept after a clear


@pytest.mark.parametrize("access_log", [False, True])
def test_one_line_per_request_on_stderr_and_uvicorns_when_asked(
    server_factory, tmp_path: Path, access_log: bool
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"access_log: {str(access_log).lower()}\n"
        "models:\n  - {name: echo, kind: llm, backend: fake}\n"
    )
    started = server_factory(config)
    started.wait_models()
    assert chat(started, "marker").status_code == 200
    assert httpx.get(f"{started.url}/v1/models").status_code == 200
    started.stop()
    lines = started.log_path.read_text().splitlines()
    # The model's own line (its log, at INFO) is there either way; uvicorn's only when asked.
    assert any("mmserve.model.echo" in line and "/chat/completions 200" in line for line in lines)
    uvicorn_lines = [line for line in lines if '"GET /v1/models HTTP/1.1" 200' in line]
    assert bool(uvicorn_lines) == access_log
