"""Runtime model management on a real server with fake models: fast tests of the engine logic."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import psutil
import pytest

CONFIG = """
max_loaded_models: 2
room_timeout: 20
model_dirs: [{models}]
models:
  - {{name: a, kind: llm, backend: fake, preload: false, keep_alive: -1, options: {{delay: 0.01}}}}
  - {{name: b, kind: llm, backend: fake, preload: false, keep_alive: -1, options: {{delay: 0.02}}}}
  - {{name: c, kind: embedding, backend: fake, preload: false, keep_alive: -1}}
  - {{name: brief, kind: llm, backend: fake, preload: false, keep_alive: 1}}
  - {{name: once, kind: llm, backend: fake, preload: false, keep_alive: 0}}
"""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models")
    (path / "notes.txt").write_text("not a model")
    return path


@pytest.fixture(scope="module")
def server(server_factory, models_dir: Path):
    config = models_dir.parent / "managed.yaml"
    config.write_text(CONFIG.format(models=models_dir))
    return server_factory(config)


def chat(server, name: str, text: str = "hi", max_tokens: int = 4) -> httpx.Response:
    body = {
        "model": name,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
    }
    return server.post("/v1/chat/completions", body)


def test_nothing_is_loaded_until_asked(server) -> None:
    assert {m["state"] for m in server.status()["models"]} == {"unloaded"}


def test_on_demand_load_happens_once_for_concurrent_requests(server) -> None:
    async def burst() -> list[int]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="x", max_retries=0
        ) as client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="a", messages=[{"role": "user", "content": f"n{i}"}]
                    )
                    for i in range(8)
                )
            )
        return [len(r.choices) for r in replies]

    assert asyncio.run(burst()) == [1] * 8
    a = server.model("a")
    assert a["state"] == "ready" and a["loads"] == 1


def test_load_unload_and_the_pid_is_gone(server) -> None:
    loaded = server.post("/loadmodel", {"model": "c"}).json()
    assert loaded["state"] == "ready"
    pid = loaded["replicas"][0]["pid"]
    assert psutil.pid_exists(pid)
    unloaded = server.post("/unloadmodel", {"model": "c"}).json()
    assert unloaded["state"] == "unloaded" and unloaded["replicas"] == []
    server.wait_until(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    )


def test_add_and_remove_replicas(server) -> None:
    server.post("/api/v1/a/activate")
    added = server.post("/api/v1/a/add", {"device": "cpu"}).json()
    pids = [r["pid"] for r in added["replicas"]]
    assert len(set(pids)) == 2
    before = {r["pid"]: r["requests_served"] for r in added["replicas"]}
    threads = [threading.Thread(target=chat, args=(server, "a", "x", 30)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = {r["pid"]: r["requests_served"] for r in server.model("a")["replicas"]}
    assert all(after[p] > before[p] for p in pids), "requests should spread over both replicas"
    removed = server.post("/api/v1/a/remove").json()
    assert len(removed["replicas"]) == 1 and removed["state"] == "ready"


def test_eviction_takes_the_least_recently_used_idle_model(server) -> None:
    server.post("/unloadmodel", {"model": "brief"})
    assert chat(server, "a").status_code == 200
    assert chat(server, "b").status_code == 200  # two loaded: the limit
    chat(server, "a")  # a is now the most recently used
    evictions = server.status()["evictions"]
    assert server.post("/v1/embeddings", {"model": "c", "input": "x"}).status_code == 200
    assert server.model("b")["state"] == "unloaded"
    assert server.model("a")["state"] == "ready"
    assert server.status()["evictions"] == evictions + 1


def test_a_model_with_an_open_stream_is_not_evicted(server) -> None:
    server.post("/unloadmodel", {"model": "c"})
    chat(server, "b")  # loaded: a and b
    # 150 tokens at 50 tokens/s: the stream stays open for 3 s.
    body = {"model": "b", "stream": True, "max_tokens": 150, "prompt": "x"}
    loaded_c: list[int] = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as stream:
        lines = (line for line in stream.iter_lines() if line)
        next(lines)
        chat(server, "a")  # a is now more recent than b, but b is busy streaming
        waiter = threading.Thread(
            target=lambda: loaded_c.append(server.post("/loadmodel", {"model": "c"}).status_code)
        )
        waiter.start()
        server.wait_until(lambda: server.model("c")["state"] == "loading" or not waiter.is_alive())
        assert server.model("b")["state"] == "ready", "the streaming model must not be evicted"
        text = "".join(lines)
    waiter.join()
    assert loaded_c == [200]
    assert "[DONE]" in text
    assert server.model("a")["state"] == "unloaded"  # the idle one made room


def test_keep_alive_unloads_an_idle_model(server) -> None:
    assert chat(server, "brief").status_code == 200
    assert server.model("brief")["state"] == "ready"
    server.wait_until(lambda: server.model("brief")["state"] == "unloaded", timeout=10)


def test_keep_alive_zero_unloads_after_each_request(server) -> None:
    assert chat(server, "once").status_code == 200
    server.wait_until(lambda: server.model("once")["state"] == "unloaded", timeout=5)


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/loadmodel", {}, 400, "llama_model_path"),
        ("/loadmodel", {"model": "nope"}, 404, "does not exist"),
        ("/loadmodel", {"llama_model_path": "/etc/passwd"}, 403, "outside the model directories"),
        ("/loadmodel", {"llama_model_path": "{models}/absent.gguf"}, 404, "no such model file"),
        ("/loadmodel", {"llama_model_path": "{models}/notes.txt"}, 400, "not a GGUF"),
        ("/loadmodel", {"llama_model_path": "x.gguf", "model_type": "robot"}, 400, "model_type"),
        ("/loadmodel", {"llama_model_path": "x.gguf", "ctx_len": 0}, 400, "ctx_len"),
        ("/loadmodel", {"model": "a", "surprise": 1}, 400, "surprise"),
        ("/unloadmodel", {"model": "nope"}, 404, "does not exist"),
        ("/unloadmodel", {}, 400, "model"),
        ("/api/v1/nope/add", None, 404, "does not exist"),
        ("/api/v1/a/add", {"device": "gpu0"}, 400, "device"),
        ("/api/v1/once/remove", None, 409, "no replica"),
    ],
)
def test_bad_management_requests(
    server, models_dir: Path, path: str, body: dict | None, status: int, words: str
) -> None:
    if body and "llama_model_path" in body:
        body = {
            **body,
            "llama_model_path": body["llama_model_path"].replace("{models}", str(models_dir)),
        }
    response = server.post(path, body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"] + str(response.json()["error"]["param"])


def test_cli_ps_load_unload(server) -> None:
    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "mmserve", *args, "--url", server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "c: ready" in cli("load", "c")
    table = cli("ps")
    assert table.splitlines()[0].split()[:3] == ["MODEL", "KIND", "STATE"]
    assert any(line.split()[:3] == ["c", "embedding", "ready"] for line in table.splitlines())
    assert "c: unloaded" in cli("unload", "c")
    failed = subprocess.run(
        [sys.executable, "-m", "mmserve", "unload", "nope", "--url", server.url],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0 and "does not exist" in failed.stderr
