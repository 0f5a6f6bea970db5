"""Through Ray Client (`address: ray://HOST:PORT`), where the front need not be a node: it has
no streaming generators, so streams are polled (workers.ray_bridge); the same API answers."""

from __future__ import annotations

import httpx
import pytest
from tests.cluster.conftest import states

pytestmark = pytest.mark.slow

CONFIG = """
ping_interval: 0.5
cluster: {{address: "ray://127.0.0.1:{port}", connect_timeout: 60}}
models:
  - {{name: echo, kind: llm, backend: fake, options: {{delay: 0.05}}}}
  - {{name: vec, kind: embedding, backend: fake}}
"""


@pytest.fixture(scope="module")
def server(server_factory, ray_client_cluster, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("ray-client") / "config.yaml"
    config.write_text(CONFIG.format(port=ray_client_cluster.client_port))
    server = server_factory(config)
    models = server.wait_models(timeout=180)
    assert [m["state"] for m in models] == ["ready", "ready"], states(models)
    return server


def test_chat_stream_and_embeddings_through_ray_client(server, ray_client_cluster) -> None:
    replica = server.model("echo")["replicas"][0]
    assert replica["node"] in (ray_client_cluster.node_a, ray_client_cluster.node_b)
    body = {"model": "echo", "messages": [{"role": "user", "content": "over the client"}]}
    answer = server.post("/v1/chat/completions", body).json()
    assert answer["choices"][0]["message"]["content"] == "You said: over the client"
    stream = {**body, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=stream) as reply:
        frames = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]" and len(frames) > 4
    vectors = server.post("/v1/embeddings", {"model": "vec", "input": ["a", "b"]}).json()
    assert [len(item["embedding"]) for item in vectors["data"]] == [8, 8]


def test_a_cancelled_polled_stream_stops_on_the_actor(server) -> None:
    before = server.model("echo")["replicas"][0]["cancelled"]
    body = {"model": "echo", "prompt": "go", "max_tokens": 500, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as reply:
        for count, _ in enumerate(reply.iter_lines()):
            if count == 4:
                break
    server.wait_until(
        lambda: (
            (r := server.model("echo")["replicas"][0])["cancelled"] == before + 1
            and r["active"] == 0
        ),
        timeout=10,
    )
