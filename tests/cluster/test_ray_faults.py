"""Faults and room on a real two-node Ray cluster, with the fake backend in the actors (fast):
an actor that crashes or is killed mid-stream, and a node too full for one more model."""

from __future__ import annotations

import json
import os
import signal

import httpx
import psutil
import pytest
from tests.cluster.conftest import eventually, states

pytestmark = pytest.mark.slow

LABEL = "mmserve-test/node"
CONFIG = """
ping_interval: 0.5
room_timeout: 3
cluster: {{address: "{address}", connect_timeout: 10}}
models:
  - name: slow
    kind: llm
    backend: fake
    options: {{delay: 0.05}}
    keep_alive: -1
    resources: {{labels: {{{label}: b}}}}
  - name: other
    kind: llm
    backend: fake
    preload: false
    resources: {{labels: {{{label}: b}}}}
  - name: broken
    kind: llm
    backend: fake
    preload: false
    options: {{fail_load: "weights are corrupt"}}
  - name: nowhere
    kind: embedding
    backend: fake
    preload: false
    resources: {{labels: {{{label}: c}}}}
"""


@pytest.fixture(scope="module")
def server(server_factory, ray_cluster, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("ray-faults") / "config.yaml"
    config.write_text(CONFIG.format(address=ray_cluster.address, label=LABEL))
    server = server_factory(config)
    models = server.wait_models(timeout=120)
    assert models[0]["state"] == "ready", states(models)
    return server


def chat(server, content: str) -> httpx.Response:
    body = {"model": "slow", "messages": [{"role": "user", "content": content}]}
    return server.post("/v1/chat/completions", body)


def restarted(server, count: int) -> bool:
    model = server.model("slow")
    return model["restarts"] == count and model["state"] == "ready"


def test_an_actor_that_crashes_fails_its_request_and_is_restarted(server) -> None:
    pid = server.model("slow")["replicas"][0]["actor_pid"]
    crashed = chat(server, "crash")  # the fake backend exits its process mid-request
    assert crashed.status_code == 503, crashed.text
    assert crashed.json()["error"]["code"] == "worker_crashed"
    server.wait_until(lambda: restarted(server, 1), timeout=60)
    assert server.model("slow")["replicas"][0]["actor_pid"] != pid
    assert chat(server, "hello").json()["choices"][0]["message"]["content"] == "You said: hello"


def test_an_actor_killed_mid_stream_ends_the_stream_with_an_error(server) -> None:
    pid = server.model("slow")["replicas"][0]["actor_pid"]
    body = {"model": "slow", "prompt": "go", "max_tokens": 400, "stream": True}
    frames = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                frames.append(json.loads(line[6:]))
                if len(frames) == 3:
                    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    assert frames[-1]["error"]["code"] == "worker_crashed", frames[-1]
    assert len(frames) < 100  # it ended there, not after 400 tokens
    server.wait_until(lambda: restarted(server, 2), timeout=60)


def test_a_full_node_makes_room_by_evicting_the_idle_model(server, ray_cluster) -> None:
    # Node B has one CPU, which `slow` holds; `other` must run there too.
    loaded = server.post("/loadmodel", {"model": "other"})
    assert loaded.status_code == 200, loaded.text
    assert server.model("slow")["state"] == "unloaded"
    assert [r["node"] for r in server.model("other")["replicas"]] == [ray_cluster.node_b]
    assert server.status()["evictions"] == 1


def test_no_node_with_the_labels_is_a_503_that_says_what_it_needs(server) -> None:
    response = server.post("/v1/embeddings", {"model": "nowhere", "input": ["x"]})
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "no room on the Ray cluster for model 'nowhere'" in message
    assert "labelled {'mmserve-test/node': 'c'}" in message
    assert server.model("other")["state"] == "ready"  # nothing was evicted for nothing


def test_a_model_that_fails_to_load_on_its_node_says_why(server) -> None:
    body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}]}
    response = server.post("/v1/chat/completions", body)
    assert response.status_code == 503
    assert "weights are corrupt" in response.json()["error"]["message"]
    assert server.model("broken")["state"] == "failed"


def test_a_killed_server_takes_its_actors_with_it(server_factory, ray_cluster, tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f'cluster: {{address: "{ray_cluster.address}"}}\n'
        "models:\n  - {name: lone, kind: llm, backend: fake}\n"
    )
    doomed = server_factory(config)
    replica = doomed.wait_models(timeout=120)[0]["replicas"][0]
    bridge, actor = replica["pid"], replica["actor_pid"]
    doomed.proc.kill()  # no shutdown: its bridges get their parent-death signal
    doomed.proc.wait()
    eventually(
        lambda: not psutil.pid_exists(bridge) and not psutil.pid_exists(actor),
        timeout=30,
        describe=lambda: f"bridge {bridge} or actor {actor} outlived the server",
    )
