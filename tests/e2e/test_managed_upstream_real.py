"""A managed upstream serving a real model: the gateway starts a second `mmserve serve` with
SmolLM2 on the first request (one start under 8 concurrent requests), relays chat plain and
streamed, and stops the whole process tree after keep_alive."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import psutil
import pytest

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Count from one to ten in words."}]
ASK = {"messages": PROMPT, "max_tokens": 24, "temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def gateway(server_factory, tmp_path_factory: pytest.TempPathFactory):
    where = tmp_path_factory.mktemp("managed-real")
    (where / "inner.yaml").write_text(
        "models:\n  - {name: smollm2, kind: llm, source: 'catalog:smollm2', max_concurrency: 1}\n"
    )
    command = f"[{sys.executable}, -m, mmserve, serve, --port, '${{PORT}}', --config, inner.yaml]"
    (where / "config.yaml").write_text(
        f"models:\n  - {{name: managed, kind: http, command: {command}, cwd: '{where}',\n"
        "     upstream_model: smollm2, preload: false, keep_alive: 2, start_timeout: 300}\n"
    )
    server = server_factory(where / "config.yaml")
    server.wait_models()
    return server


@pytest.fixture(scope="module")
def client(gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="-", max_retries=0) as client:
        yield client


def test_started_once_on_demand_relays_and_stops_after_keep_alive(gateway, client) -> None:
    assert gateway.model("managed")["state"] == "unloaded"
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: client.chat.completions.create(model="managed", **ASK), range(8))
        )
    texts = {a.choices[0].message.content for a in answers}
    assert len(texts) == 1 and texts != {""}  # the same greedy answer for all eight
    status = gateway.model("managed")
    records = httpx.get(f"{gateway.url}/api/v1/managed/logs", timeout=10).json()
    assert status["loads"] == 1
    assert sum("started server" in r["message"] for r in records if r["source"] == "event") == 1
    assert any(r["source"] == "stderr" for r in records)  # the second mmserve's own lines
    (replica,) = status["replicas"]
    assert replica["resident_bytes"] > 100 * 2**20  # the server and its llama.cpp worker

    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model="managed", stream=True, **ASK)
        if chunk.choices
    )
    assert streamed == texts.pop()

    root = psutil.Process(replica["pid"])
    tree = [root.pid, *(p.pid for p in root.children(recursive=True))]
    gateway.wait_until(lambda: gateway.model("managed")["state"] == "unloaded", timeout=60)
    gateway.wait_until(lambda: not any(psutil.pid_exists(pid) for pid in tree), timeout=30)
