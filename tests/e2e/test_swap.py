"""Swaps with room for one model: real SmolLM2 and Gemma on llama.cpp's own llama-server, behind
a real `mmserve serve` with `max_loaded_models: 1`, driven by the official openai client. Every
request for the other model stops one llama-server and starts the other's."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import openai
import psutil
import pytest
from tests.conftest import ServerProcess
from tests.processes import gone

pytestmark = pytest.mark.slow

MODELS = ("smollm2", "gemma")
SWAPS = 6
MB = 2**20


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    config = tmp_path_factory.mktemp("swap") / "mmserve.yaml"
    config.write_text(
        "max_loaded_models: 1\n"
        "models:\n"
        "  - {name: smollm2, kind: llm, source: 'catalog:smollm2', preload: false}\n"
        "  - {name: gemma, kind: llm, source: 'catalog:gemma3-270m', preload: false}\n"
    )
    server = server_factory(config)
    models = server.wait_models(timeout=60)
    assert all(m["state"] == "unloaded" for m in models), models
    return server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def complete(client: openai.OpenAI, model: str) -> str:
    reply = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    return reply.choices[0].text


def chat(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    return reply.choices[0].message.content or ""


def resident(server: ServerProcess) -> int:
    """The resident memory of the server and of every process under it."""
    root = psutil.Process(server.proc.pid)
    total = root.memory_info().rss
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


def loaded(server: ServerProcess) -> dict[str, int]:
    """The loaded models and each one's llama-server pid; the status' own count agrees."""
    status = server.status()
    ready = {m["name"]: m for m in status["models"] if m["state"] == "ready"}
    assert status["loaded_models"] == len(ready), status
    pids = {}
    for name, model in ready.items():
        (replica,) = model["replicas"]
        assert psutil.Process(replica["pid"]).name() == "llama-server"
        pids[name] = replica["pid"]
    return pids


def unload_all(server: ServerProcess) -> None:
    for name in MODELS:
        assert server.post("/unloadmodel", {"model": name}).status_code in (200, 404)
    server.wait_until(lambda: server.status()["loaded_models"] == 0, timeout=60)


def test_an_unload_gives_the_memory_back(server: ServerProcess, client: openai.OpenAI) -> None:
    unload_all(server)
    before = resident(server)
    assert "Paris" in complete(client, "smollm2")
    assert resident(server) > before + 50 * MB  # the model is in memory now
    unload_all(server)
    assert resident(server) - before < 50 * MB


def test_alternating_requests_swap_every_time_and_all_answer_right(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    unload_all(server)
    before = resident(server)
    evictions = server.status()["evictions"]
    # The first answer of each model, from a start without a swap before it; at temperature 0
    # every later one (each from a llama-server just started) must be the same.
    first = {"smollm2": complete(client, "smollm2")}
    assert "Paris" in first["smollm2"]
    previous = loaded(server)
    assert list(previous) == ["smollm2"]
    first["gemma"] = complete(client, "gemma")
    assert first["gemma"].strip()
    first["chat"] = chat(client)  # SmolLM2's chat answer is not about Paris: only the same
    assert first["chat"].strip()
    for swap in range(SWAPS):  # smollm2 is loaded: gemma, smollm2, gemma...
        model = MODELS[(swap + 1) % 2]
        assert complete(client, model) == first[model]
        if model == "smollm2":
            assert chat(client) == first["chat"]
        now = loaded(server)
        assert list(now) == [model], now  # only the model just asked for
        (old,) = previous.values()
        assert gone(old), f"llama-server pid {old} still running after the swap"
        previous = now
    # Each swap evicted the other model: gemma's first request, the chat, and the loop's.
    assert server.status()["evictions"] - evictions == 2 + SWAPS
    unload_all(server)
    assert not any(psutil.pid_exists(p) and not gone(p) for p in previous.values())
    assert resident(server) - before < 50 * MB


def test_a_cold_load_whose_only_client_left_is_stopped(server: ServerProcess) -> None:
    unload_all(server)

    def gemma() -> dict:
        return next(m for m in server.status()["models"] if m["name"] == "gemma")

    body = json.dumps({"model": "gemma", "prompt": "The capital of France is", "max_tokens": 4})
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        # Its llama-server has started loading: now the client leaves.
        server.wait_until(lambda: any("started server pid" in line for line in gemma()["log"]))
    server.wait_until(lambda: any("load stopped" in line for line in gemma()["log"]), timeout=60)
    server.wait_until(lambda: gemma()["state"] == "unloaded", timeout=30)
    assert gemma()["replicas"] == [] and gemma()["starting"] == []
    servers = [
        p for p in psutil.Process(server.proc.pid).children(recursive=True) if not gone(p.pid)
    ]
    assert not any("gemma" in " ".join(p.cmdline()) for p in servers)
    assert server.status()["loaded_models"] == 0


def test_the_loaded_model_serves_what_came_within_the_bound_before_the_swap(
    server: ServerProcess,
) -> None:
    unload_all(server)
    body = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    url = f"{server.url}/v1/completions"
    assert httpx.post(url, json={**body, "model": "smollm2"}, timeout=120).status_code == 200
    bound = 2.0  # max_swap_delay's default
    log: list[tuple[float, float]] = []  # smollm2's (arrival, finish)
    until = time.monotonic() + 6.0

    def smollm2_client() -> None:
        while time.monotonic() < until:
            arrived = time.monotonic()
            reply = httpx.post(url, json={**body, "model": "smollm2"}, timeout=120)
            assert reply.status_code == 200, reply.text
            log.append((arrived, time.monotonic()))

    # Three times its 4 slots: some always wait, so smollm2 is never idle on its own (an idle
    # model is evicted at once: the bound keeps what waits, not what may come).
    clients = [threading.Thread(target=smollm2_client) for _ in range(12)]
    for client in clients:
        client.start()
    time.sleep(0.5)
    swap_at = time.monotonic()
    reply = httpx.post(url, json={**body, "model": "gemma"}, timeout=120)
    gemma_done = time.monotonic()
    for client in clients:
        client.join()
    assert reply.status_code == 200, reply.text

    # Margins: the bound counts from when the swap's load began, a few ms after swap_at. Once
    # past it every client soon waits at the door, so the late ones arrive just after it.
    before = [done for arrived, done in log if swap_at < arrived < swap_at + bound - 0.3]
    late = [(arrived, done) for arrived, done in log if arrived > swap_at + bound + 0.15]
    assert before, (swap_at, gemma_done, log)  # else the test proves nothing
    assert any(arrived < gemma_done for arrived, _ in late), (swap_at, gemma_done, log)
    assert all(done < gemma_done for done in before)  # same-model requests first...
    assert all(done > gemma_done for _, done in late)  # ...up to the bound, then the swap
    assert gemma_done - (swap_at + bound) < 10.0  # drain, load and answer: not much past it
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'mmserve_swaps_avoided_total{model="smollm2"}' in metrics
