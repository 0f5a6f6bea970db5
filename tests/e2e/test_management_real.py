"""Runtime model management with the real models, in real processes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from mmserve.catalog import resolve_source

pytestmark = pytest.mark.slow

GGUF = resolve_source("catalog:smollm2")
CONFIG = f"""
max_loaded_models: 1
room_timeout: 120
model_dirs: [{GGUF.parent}]
models:
  - {{name: smollm2, kind: llm, source: "catalog:smollm2", preload: false, keep_alive: -1}}
  - {{name: minilm, kind: embedding, source: "catalog:minilm", preload: false, keep_alive: 2}}
"""


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("real-managed") / "config.yaml"
    config.write_text(CONFIG)
    return server_factory(config)


def chat(server, name: str, max_tokens: int = 8) -> int:
    body = {
        "model": name,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    return server.post("/v1/chat/completions", body).status_code


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_on_demand_load_once_under_eight_concurrent_requests(server) -> None:
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: chat(server, "smollm2"), range(8)))
    assert statuses == [200] * 8
    smollm2 = server.model("smollm2")
    assert smollm2["state"] == "ready" and smollm2["loads"] == 1


def test_load_a_file_by_path_evicts_the_idle_model(server) -> None:
    old_pid = server.model("smollm2")["replicas"][0]["pid"]
    body = {
        "llama_model_path": str(GGUF),
        "model_alias": "smol-file",
        "ctx_len": 1024,
        "model_type": "llm",
    }
    loaded = server.post("/loadmodel", body).json()
    assert loaded["state"] == "ready" and loaded["name"] == "smol-file"
    assert server.model("smollm2")["state"] == "unloaded"
    server.wait_until(lambda: gone(old_pid))
    assert chat(server, "smol-file") == 200


def test_two_replicas_share_the_requests(server) -> None:
    added = server.post("/api/v1/smol-file/add", {"device": "cpu"}).json()
    pids = [r["pid"] for r in added["replicas"]]
    assert len(set(pids)) == 2
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: chat(server, "smol-file", 24), range(4))) == [200] * 4
    served = [r["requests_served"] for r in server.model("smol-file")["replicas"]]
    assert all(n > 0 for n in served), served


def test_a_streaming_model_is_not_evicted_and_keep_alive_unloads(server) -> None:
    body = {
        "model": "smol-file",
        "stream": True,
        "max_tokens": 200,
        "temperature": 1.0,
        "prompt": "Once upon a time",
    }
    result: list[int] = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as stream:
        lines = (line for line in stream.iter_lines() if line)
        next(lines)
        waiter = threading.Thread(
            target=lambda: result.append(
                server.post("/v1/embeddings", {"model": "minilm", "input": "x"}).status_code
            )
        )
        waiter.start()
        time.sleep(1)
        assert server.model("smol-file")["state"] == "ready"
        assert server.model("minilm")["state"] == "loading"  # waiting for room
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    waiter.join()
    assert result == [200]
    assert server.model("smol-file")["state"] == "unloaded"
    # minilm has keep_alive: 2 s.
    server.wait_until(lambda: server.model("minilm")["state"] == "unloaded", timeout=20)


def test_unload_ends_the_process(server) -> None:
    loaded = server.post("/loadmodel", {"model": "smollm2"}).json()
    pid = loaded["replicas"][0]["pid"]
    assert server.post("/unloadmodel", {"model": "smollm2"}).json()["state"] == "unloaded"
    server.wait_until(lambda: gone(pid))


def test_memory_does_not_grow_over_load_unload_cycles(server_factory, tmp_path: Path) -> None:
    config = tmp_path / "cycles.yaml"
    config.write_text(
        'models:\n  - {name: smollm2, kind: llm, source: "catalog:smollm2", preload: false}\n'
    )
    server = server_factory(config)
    process = psutil.Process(server.proc.pid)

    def total() -> int:
        return process.memory_info().rss + sum(
            c.memory_info().rss for c in process.children(recursive=True)
        )

    server.post("/loadmodel", {"model": "smollm2"})  # warm up the code paths once
    server.post("/unloadmodel", {"model": "smollm2"})
    baseline = total()
    for _ in range(20):
        assert server.post("/loadmodel", {"model": "smollm2"}).json()["state"] == "ready"
        assert server.post("/unloadmodel", {"model": "smollm2"}).json()["state"] == "unloaded"
    assert process.children(recursive=True) == []
    growth = total() - baseline
    assert growth < 50 * 2**20, f"grew by {growth / 2**20:.1f} MB over 20 cycles"
