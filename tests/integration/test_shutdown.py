"""Stopping: SIGTERM drains in-flight requests, and no child outlives its server."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import psutil

CONFIG = """
models:
  - {name: slow, kind: llm, backend: fake, options: {delay: 0.02}}
  - {name: vec, kind: embedding, backend: fake}
  - {name: later, kind: llm, backend: fake, preload: false}
"""


def start(server_factory, tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    server = server_factory(config)
    server.wait_models()
    # `later` is not loaded: a warm worker waits for its load (workers.warm), a child too.
    server.wait_until(lambda: len(server.status()["warm_workers"]) == 1)
    return server


def children(server) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children(recursive=True)


def test_sigterm_lets_a_stream_finish_then_stops_the_children(
    server_factory, tmp_path: Path
) -> None:
    server = start(server_factory, tmp_path)
    # Two replicas and one warm worker, once the start-up's other fork servers (for the keys of
    # models that were loading) have exited: a fresh-clone run counted one still on its way out.
    server.wait_until(lambda: len(children(server)) == 3, timeout=10)
    kids = children(server)
    body = {"model": "slow", "prompt": "x", "max_tokens": 100, "stream": True}  # 2 s
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as stream:
        lines = (line for line in stream.iter_lines() if line)
        next(lines)
        server.proc.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert rest[-1] == "data: [DONE]"
    assert sum(1 for line in rest if '"text":"' in line and '"text":""' not in line) >= 99
    # uvicorn re-raises the SIGTERM once it has shut down cleanly, as a well-behaved process does.
    assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    _gone, alive = psutil.wait_procs(kids, timeout=10)
    assert alive == []


def test_no_orphans_when_the_server_is_killed(server_factory, tmp_path: Path) -> None:
    server = start(server_factory, tmp_path)
    server.post("/loadmodel", {"model": "later"})  # a child of the warm worker (a fork server)
    # Two replicas, one warm worker and the replica it forked (others from start-up gone).
    server.wait_until(lambda: len(children(server)) == 4, timeout=10)
    kids = children(server)
    (warm,) = server.status()["warm_workers"]
    assert [k.pid for k in kids if k.ppid() == warm["pid"]] == warm["children"]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    # The kernel's parent-death signal (and stdin EOF) ends each child.
    _gone, alive = psutil.wait_procs(kids, timeout=15)
    assert alive == []


def test_new_requests_are_refused_while_draining(server_factory, tmp_path: Path) -> None:
    server = start(server_factory, tmp_path)
    body = {"model": "slow", "prompt": "x", "max_tokens": 100}
    done: list[int] = []
    thread = threading.Thread(
        target=lambda: done.append(
            httpx.post(f"{server.url}/v1/completions", json=body, timeout=30).status_code
        )
    )
    thread.start()
    server.wait_until(lambda: server.model("slow")["in_flight"] == 1, timeout=10)
    server.proc.send_signal(signal.SIGTERM)
    server.wait_until(lambda: _refused(server.url), timeout=10)
    thread.join()
    assert done == [200]
    assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
    except httpx.TransportError:
        return True
    return False
