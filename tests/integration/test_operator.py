"""What an operator reaches for first: metrics, readiness, request ids, JSON logs, the catalog."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

CONFIG = """
models:
  - {name: echo, kind: llm, backend: fake}
  - {name: vec, kind: embedding, backend: fake}
  - {name: sleepy, kind: llm, backend: fake, options: {load_delay: 3}}
"""


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("operator") / "config.yaml"
    config.write_text(CONFIG)
    return server_factory(config, "--log-format", "json")


def samples(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_ready_waits_for_the_preloaded_models(server) -> None:
    early = httpx.get(f"{server.url}/ready")
    assert early.status_code == 503
    assert "sleepy" in [m["name"] for m in early.json()["not_ready"]]
    server.wait_until(lambda: httpx.get(f"{server.url}/ready").status_code == 200, timeout=30)
    assert httpx.get(f"{server.url}/ready").json() == {"status": "ready"}


def test_metrics_move_with_requests(server) -> None:
    server.wait_models()
    before = samples(server)
    chat = {"model": "echo", "messages": [{"role": "user", "content": "one two"}]}
    for _ in range(2):
        assert server.post("/v1/chat/completions", chat).status_code == 200
    streamed = {**chat, "stream": True}
    assert "[DONE]" in server.post("/v1/chat/completions", streamed).text
    assert (
        server.post("/v1/embeddings", {"model": "vec", "input": ["a", "b", "c"]}).status_code == 200
    )
    assert server.post("/v1/embeddings", {"model": "nope", "input": "a"}).status_code == 404
    after = samples(server)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/chat/completions"
    assert grew("mmserve_requests_total", model="echo", route=route, status="200") == 3
    assert grew("mmserve_request_seconds_count", model="echo", route=route) == 3
    assert grew("mmserve_time_to_first_token_seconds_count", model="echo") == 3
    assert grew("mmserve_generated_tokens_total", model="echo") == 3 * 4  # "You said: one two"
    assert grew("mmserve_embedding_inputs_total", model="vec") == 3
    assert grew("mmserve_requests_total", model="", route="/embeddings", status="404") == 1
    assert value(after, "mmserve_replicas", model="echo") == 1
    assert value(after, "mmserve_model_state", model="echo", state="ready") == 1
    assert value(after, "mmserve_queue_depth", model="echo") == 0
    assert value(after, "mmserve_replica_resident_bytes", model="echo", replica="0") > 10 * 2**20
    assert value(after, "mmserve_replica_load_seconds_count", model="echo") == 1
    labels = {dict(labels).get("route") for (_, labels) in after}
    assert all(r is None or r.startswith("/") for r in labels), (
        "routes are templates, not raw paths"
    )


def test_request_ids(server) -> None:
    given = httpx.get(f"{server.url}/health", headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    fresh = httpx.get(f"{server.url}/health")
    assert len(fresh.headers["x-request-id"]) == 32
    odd = httpx.get(f"{server.url}/health", headers={"x-request-id": "has spaces\tand tabs"})
    assert odd.headers["x-request-id"] != "has spaces\tand tabs"
    error = httpx.post(f"{server.url}/v1/embeddings", json={}, headers={"x-request-id": "bad-1"})
    assert error.status_code == 400 and error.headers["x-request-id"] == "bad-1"


def test_json_logs_parse_and_carry_the_request_id(server) -> None:
    # A model request: its line in the model's log is the one written for every request by
    # default (uvicorn's access log is off unless `access_log: true`).
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-request-id": "find-me-7"}
    httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers)
    server.wait_until(lambda: "find-me-7" in server.log_path.read_text(), timeout=5)
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    assert any(
        r["request_id"] == "find-me-7" and "/chat/completions 200" in r["message"] for r in records
    )
    assert any("mmserve 0.1.0 on http://" in r["message"] for r in records)  # the banner


def test_catalog_listing() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mmserve", "models"], capture_output=True, text=True, check=True
    )
    header, *rows = out.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "KIND", "SIZE", "PACKAGE"]
    assert {row.split()[0] for row in rows} == {"smollm2", "gemma3-270m", "qwen2.5-0.5b", "minilm"}
    assert all(" yes " in row for row in rows)


def test_a_missing_catalog_model_says_how_to_pull_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    from mmserve import catalog, cli

    ghost = catalog.CatalogEntry(
        "ghost",
        "llm",
        "llama_server",
        "ghost-weights",
        "ghost_weights_module",
        1,
        "not installed",
        lambda: tmp_path,
    )
    monkeypatch.setitem(catalog.CATALOG, "ghost", ghost)
    config = tmp_path / "c.yaml"
    config.write_text('models:\n  - {name: g, kind: llm, source: "catalog:ghost"}\n')
    assert cli.main(["serve", "--config", str(config)]) == 2
    message = capsys.readouterr().err
    assert (
        "`mmserve pull ghost`" in message
        and "ghost-weights" in message
        and "Traceback" not in message
    )

    pulled: list[str] = []

    def fake_pull(args) -> None:  # stands in for pip: "installs" the entry
        pulled.extend(args.names)
        installed = dataclasses.replace(ghost, module="json")  # any importable module will do
        monkeypatch.setitem(catalog.CATALOG, "ghost", installed)

    monkeypatch.setattr(cli, "pull", fake_pull)
    args = cli.build_parser().parse_args(["serve", "--config", str(config), "--install-missing"])
    settings = cli._settings_installing(args)
    assert pulled == ["ghost"] and settings.models[0].source == "catalog:ghost"
