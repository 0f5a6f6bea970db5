from __future__ import annotations

from pathlib import Path

import pytest

FAKE_CONFIG = """
models:
  - name: echo
    aliases: [chat-alias]
    kind: llm
    backend: fake
    context_length: 64
    replicas: 2
    options: {delay: 0.002}
  - name: slow
    kind: llm
    backend: fake
    options: {delay: 0.05}
  - name: vec
    kind: embedding
    backend: fake
    options: {dimensions: 16}
  - name: broken
    kind: llm
    backend: fake
    options: {fail_load: "weights are corrupt"}
"""


@pytest.fixture(scope="session")
def fake_server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config: Path = tmp_path_factory.mktemp("config") / "fake.yaml"
    config.write_text(FAKE_CONFIG)
    server = server_factory(config)
    server.wait_models(timeout=60)
    return server
