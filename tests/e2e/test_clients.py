"""Clients people use, unchanged, against the real server with the real models: the official
`openai` packages for Python and Node, and LangChain's `OpenAIEmbeddings`.

Each parses the replies with its own types, so a key OpenAI's schema requires and mmserve left
out (or a null where a string belongs) fails here. Token arrays are MiniLM's own ids for
"hello world" (`[7592, 2088]`), which must embed as the string does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).parent / "node"
HELLO_WORLD = [7592, 2088]  # MiniLM's ids for "hello world", without [CLS] and [SEP]
CONFIG = """
models:
  - {name: smollm2, kind: llm, source: "catalog:smollm2", max_tokens: 16}
  - {name: minilm, kind: embedding, source: "catalog:minilm"}
"""


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("clients") / "config.yaml"
    config.write_text(CONFIG)
    server = server_factory(config)
    assert all(m["state"] == "ready" for m in server.wait_models(timeout=600))
    return server


@pytest.fixture(scope="module")
def client(server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_python_client_chat(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hello"}]
    reply = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8)
    assert reply.choices[0].message.content and reply.choices[0].message.refusal is None
    stream = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    assert len({c.created for c in chunks}) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8


def test_python_client_token_arrays(client: openai.OpenAI) -> None:
    text = client.embeddings.create(model="minilm", input="hello world").data[0].embedding
    for given in (HELLO_WORLD, [HELLO_WORLD, HELLO_WORLD]):
        for item in client.embeddings.create(model="minilm", input=given).data:
            assert np.allclose(item.embedding, text, atol=1e-6)
    with pytest.raises(openai.BadRequestError, match="token 100256 is not in the vocabulary"):
        client.embeddings.create(model="minilm", input=[[100256]])  # OpenAI's <|endoftext|>


def test_langchain_embeddings_send_the_text(server, client: openai.OpenAI) -> None:
    embeddings = OpenAIEmbeddings(
        model="minilm",
        base_url=f"{server.url}/v1",
        api_key="unused",
        check_embedding_ctx_length=False,  # the text itself, not OpenAI's token ids
    )
    texts = ["hello world", "The cat sat on the mat"]
    vectors = embeddings.embed_documents(texts)
    direct = client.embeddings.create(model="minilm", input=texts).data
    assert np.allclose(vectors, [d.embedding for d in direct], atol=1e-6)
    assert np.allclose(embeddings.embed_query("hello world"), direct[0].embedding, atol=1e-6)


@pytest.fixture(scope="module")
def node_client() -> Path:
    """Node's `openai` package, installed once into tests/e2e/node (package.json pins it)."""
    npm = shutil.which("npm")
    assert shutil.which("node") and npm, "the Node client test needs Node.js and npm"
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return NODE_DIR / "client.mjs"


def test_node_client(server, node_client: Path, client: openai.OpenAI) -> None:
    run = subprocess.run(
        ["node", str(node_client), f"{server.url}/v1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["message"]["role"] == "assistant" and seen["message"]["refusal"] is None
    assert seen["deltas"][0]["role"] == "assistant"
    assert all("role" not in delta for delta in seen["deltas"][1:])
    assert len(seen["created"]) == 1 and seen["lastUsage"]["total_tokens"] > 0
    assert np.allclose(seen["tokens"], seen["text"], atol=1e-6)
    text = client.embeddings.create(model="minilm", input="hello world").data[0].embedding
    assert np.allclose(seen["text"], text, atol=1e-6)
    assert seen["outOfVocabulary"]["status"] == 400
    assert "token 100256 is not in the vocabulary" in seen["outOfVocabulary"]["message"]
