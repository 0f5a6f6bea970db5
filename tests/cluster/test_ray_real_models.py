"""SmolLM2 and MiniLM as Ray actors on a real two-node cluster, behind a real `mmserve serve`.

One cluster and one server for the module; the tests run in order, each leaving the cluster as
the next expects: SmolLM2 on node A (a required label), MiniLM on node B (a preferred one),
a local fake model beside them. The last two take node B, then the whole cluster, away.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import psutil
import pytest
from tests.cluster.conftest import eventually, states

pytestmark = pytest.mark.slow

LABEL = "mmserve-test/node"
CONFIG = """
ping_interval: 0.5
room_timeout: 5
cluster: {{address: "{address}", connect_timeout: 10}}
models:
  - name: smollm2
    kind: llm
    source: catalog:smollm2
    max_concurrency: 1
    resources: {{labels: {{{label}: a}}}}
  - name: minilm
    kind: embedding
    source: catalog:minilm
    resources: {{prefer_labels: {{{label}: b}}}}
  - name: echo
    kind: llm
    backend: fake
    placement: local
"""


@pytest.fixture(scope="module")
def server(server_factory, ray_cluster, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("ray-real") / "config.yaml"
    config.write_text(CONFIG.format(address=ray_cluster.address, label=LABEL))
    server = server_factory(config)
    models = {m["name"]: m for m in server.wait_models(timeout=240)}
    ready = [models[n]["state"] for n in ("smollm2", "minilm", "echo")]
    assert ready == ["ready"] * 3, states(list(models.values()))
    return server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def replicas(server, name: str) -> list[dict[str, Any]]:
    return server.model(name)["replicas"]


def nodes_of(server, name: str) -> list[str]:
    return sorted(r["node"] for r in replicas(server, name))


def embed(server, texts: list[str]) -> list[list[float]]:
    response = server.post("/v1/embeddings", {"model": "minilm", "input": texts})
    assert response.status_code == 200, response.text
    return [item["embedding"] for item in response.json()["data"]]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_each_model_runs_on_its_node_and_the_status_says_which(server, ray_cluster) -> None:
    assert nodes_of(server, "smollm2") == [ray_cluster.node_a]
    assert nodes_of(server, "minilm") == [ray_cluster.node_b]
    replica = replicas(server, "smollm2")[0]
    assert replica["placement"] == "ray" and replica["node_ip"] == "127.0.0.1"
    assert replica["reserved"]["CPU"] == 1
    # Its memory is the actor's, measured on its node (a process of this machine here).
    actor = psutil.Process(replica["actor_pid"])
    assert actor.is_running() and replica["resident_bytes"] > 100 * 2**20
    assert server.model("echo")["replicas"][0].get("placement") is None


def test_chat_plain_and_streamed(client) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    answer = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=24)
    assert answer.choices[0].message.content and answer.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=24, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces).strip()


def test_embeddings_from_the_actor_on_node_b(server) -> None:
    cat, kitten, market = embed(server, ["a cat", "a kitten", "the stock market fell"])
    assert len(cat) == 384
    assert cosine(cat, kitten) > cosine(cat, market) + 0.2


def test_a_cancelled_stream_stops_on_the_remote_actor(server) -> None:
    server.wait_until(lambda: replicas(server, "smollm2")[0]["active"] == 0)  # reports settle
    before = replicas(server, "smollm2")[0]
    body = {
        "model": "smollm2",
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",  # it counts on: far more than we read
        "max_tokens": 1500,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        chunks = 0
        for line in reply.iter_lines():
            chunks += line.startswith("data: {")
            if chunks == 5:
                break  # the client leaves mid-stream
    # The actor's own report says the generation ended, within seconds, where 1500 tokens
    # would take far longer on this machine; and that it ended cancelled.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = replicas(server, "smollm2")[0]
        if now["served"] > before["served"] and now["active"] == 0:
            break
        time.sleep(0.1)
    seen = {k: (before[k], now[k]) for k in ("active", "cancelled", "served", "deltas")}
    seen["log"] = server.model("smollm2")["log"]
    assert now["active"] == 0 and now["cancelled"] == before["cancelled"] + 1, seen
    stopped = now["deltas"]
    assert stopped - before["deltas"] < 1000, seen
    time.sleep(1.5)  # three reports later: nothing more was generated
    assert replicas(server, "smollm2")[0]["deltas"] == stopped


def test_two_replicas_on_two_nodes_share_requests(server, ray_cluster) -> None:
    # Node B has one CPU, taken by the first replica: the preferred node is full, so Ray
    # places the second on node A.
    added = server.post("/api/v1/minilm/add", {})
    assert added.status_code == 200, added.text
    assert nodes_of(server, "minilm") == sorted([ray_cluster.node_a, ray_cluster.node_b])
    served = {r["node"]: r["requests_served"] for r in replicas(server, "minilm")}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: embed(server, [f"sentence number {i}"] * 4), range(32)))
    after = {r["node"]: r["requests_served"] for r in replicas(server, "minilm")}
    assert all(after[node] > served[node] for node in served), after


def test_unload_ends_the_actors_and_a_request_loads_the_model_again(server, ray_cluster) -> None:
    pids = [r["actor_pid"] for r in replicas(server, "minilm")]
    unloaded = server.post("/unloadmodel", {"model": "minilm"})
    assert unloaded.status_code == 200, unloaded.text
    assert server.model("minilm")["state"] == "unloaded"
    # Ray has them dead when the unload answers; their processes end a moment later.
    server.wait_until(lambda: all(gone(pid) for pid in pids), timeout=10)
    embed(server, ["loaded again on demand"])
    minilm = server.model("minilm")
    assert minilm["state"] == "ready" and minilm["loads"] == 2
    assert nodes_of(server, "minilm") == [ray_cluster.node_b]  # its preferred node is free


def test_a_lost_node_has_its_replica_restarted_on_another(server, ray_cluster) -> None:
    embed(server, ["loaded"])  # whatever the tests before left
    assert nodes_of(server, "minilm") == [ray_cluster.node_b]
    old = replicas(server, "minilm")[0]
    ray_cluster.kill_node_b()
    server.wait_until(
        lambda: (
            server.model("minilm")["restarts"] == 1
            and nodes_of(server, "minilm") == [ray_cluster.node_a]
        ),
        timeout=60,
    )
    assert replicas(server, "minilm")[0]["actor_pid"] != old["actor_pid"]
    assert len(embed(server, ["still answering"])[0]) == 384
    smollm2 = server.model("smollm2")  # untouched
    assert smollm2["restarts"] == 0 and nodes_of(server, "smollm2") == [ray_cluster.node_a], states(
        [smollm2]
    )


def test_a_lost_cluster_fails_its_models_and_the_rest_keep_serving(server, ray_cluster) -> None:
    ray_cluster.stop()
    eventually(
        lambda: all(server.model(n)["state"] == "failed" for n in ("smollm2", "minilm")),
        timeout=90,
        describe=lambda: states([server.model("smollm2"), server.model("minilm")]),
    )
    reason = server.model("minilm")["last_error"]
    assert "Ray cluster" in reason, reason
    response = server.post("/v1/embeddings", {"model": "minilm", "input": ["x"]})
    assert response.status_code == 503
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    echoed = server.post("/v1/chat/completions", body)
    assert echoed.status_code == 200 and echoed.json()["choices"][0]["message"]["content"]
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
