"""Swaps with room for one model: real SmolLM2 and Gemma on llama.cpp's own llama-server, behind
a real `mmserve serve` with `max_loaded_models: 1`, driven by the official openai client. Every
request for the other model stops one llama-server and starts the other's."""

from __future__ import annotations

import contextlib

import httpx
import openai
import psutil
import pytest
from tests.conftest import ServerProcess

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


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


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
    body = {"model": "gemma", "prompt": "The capital of France is", "max_tokens": 4}
    with pytest.raises(httpx.TimeoutException):  # the client gives up while gemma loads
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.3)

    def gemma() -> dict:
        return next(m for m in server.status()["models"] if m["name"] == "gemma")

    server.wait_until(lambda: any("load stopped" in line for line in gemma()["log"]), timeout=60)
    server.wait_until(lambda: gemma()["state"] == "unloaded", timeout=30)
    assert gemma()["replicas"] == [] and gemma()["starting"] == []
    assert any("started server pid" in line for line in gemma()["log"])  # it had begun
    servers = [
        p for p in psutil.Process(server.proc.pid).children(recursive=True) if not gone(p.pid)
    ]
    assert not any("gemma" in " ".join(p.cmdline()) for p in servers)
    assert server.status()["loaded_models"] == 0
