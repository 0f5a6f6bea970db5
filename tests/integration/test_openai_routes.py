"""The OpenAI routes on a real server process with fake models, driven by the official client."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest


@pytest.fixture(scope="module")
def client(fake_server) -> Iterator[openai.OpenAI]:
    # Closed at the end: an open client's pooled sockets would be reported as unraisable.
    with openai.OpenAI(base_url=f"{fake_server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def ask(client: openai.OpenAI, content: str, **kwargs: object) -> str:
    reply = client.chat.completions.create(
        model=kwargs.pop("model", "echo"),
        messages=[{"role": "user", "content": content}],
        **kwargs,
    )
    return reply.choices[0].message.content or ""


def test_chat(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello world"}]
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "You said: hello world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4


def test_alias_and_unprefixed_route(fake_server) -> None:
    body = {"model": "chat-alias", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{fake_server.url}/chat/completions", json=body).json()
    assert reply["choices"][0]["message"]["content"] == "You said: hi"


def test_max_tokens_gives_finish_reason_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="echo",
        max_completion_tokens=2,
        messages=[{"role": "user", "content": "one two three"}],
    )
    assert reply.choices[0].message.content == "You said:"
    assert reply.choices[0].finish_reason == "length"


def test_stream_equals_plain_and_reports_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask(client, "stream me please")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5  # "You said: stream me please"


def test_completions_with_several_prompts(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="echo", prompt=["a b", "c"], max_tokens=3)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.text == "word1 word2 word3" and c.finish_reason == "length" for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 6


def test_streamed_completions(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="echo", prompt="x", max_tokens=2, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "word1 word2"


def test_embeddings_float_and_base64_agree(client: openai.OpenAI, fake_server) -> None:
    floats = client.embeddings.create(model="vec", input=["a", "b"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 16
    raw = httpx.post(
        f"{fake_server.url}/v1/embeddings",
        json={"model": "vec", "input": ["a", "b"], "encoding_format": "base64"},
    ).json()
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]]
    for got, want in zip(decoded, floats.data, strict=True):
        assert np.allclose(got, want.embedding, atol=1e-6)
    # The client asks for base64 by default and decodes it itself.
    assert np.allclose(
        client.embeddings.create(model="vec", input="a").data[0].embedding, floats.data[0].embedding
    )


def test_engines_embeddings_route(fake_server) -> None:
    reply = httpx.post(f"{fake_server.url}/engines/vec/embeddings", json={"input": "a"})
    assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == 16


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["echo", "slow", "vec", "broken"]
    assert client.models.retrieve("chat-alias").id == "echo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_each_replica_is_its_own_process(fake_server) -> None:
    status = fake_server.status()
    pids = [r["pid"] for m in status["models"] for r in m["replicas"]]
    echo = next(m for m in status["models"] if m["name"] == "echo")
    assert len(echo["replicas"]) == 2
    assert len(set(pids)) == len(pids) and status["server"]["pid"] not in pids


def test_concurrent_embedding_requests_are_batched(fake_server) -> None:
    """16 concurrent single-sentence requests reach the child in fewer calls, and each gets
    its own vector and its own token count."""
    client = openai.OpenAI(base_url=f"{fake_server.url}/v1", api_key="-", max_retries=0)
    before = fake_server.model("vec")["replicas"][0]["batches"]
    texts = [f"sentence number {i}" + " word" * i for i in range(16)]
    alone = [client.embeddings.create(model="vec", input=t).data[0].embedding for t in texts[:2]]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda t: client.embeddings.create(model="vec", input=t), texts))
    after = fake_server.model("vec")["replicas"][0]["batches"]
    calls, items = after["calls"] - before["calls"] - 2, after["items"] - before["items"] - 2
    assert items == 16 and calls < 16
    assert after["largest"] > 1
    assert [r.data[0].embedding for r in replies[:2]] == alone
    assert [r.usage.prompt_tokens for r in replies] == [len(t.split()) for t in texts]


def sse_payloads(response: httpx.Response) -> list[dict]:
    """The JSON of each `data:` frame of a stream, up to `[DONE]`."""
    frames = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert frames[-1] == "[DONE]"
    return [json.loads(frame) for frame in frames[:-1]]


def test_replies_have_the_keys_openais_schema_gives_them(fake_server) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(f"{fake_server.url}/v1/chat/completions", json=body).json()
    assert reply["choices"][0]["message"] == {
        "role": "assistant",
        "content": "You said: hi",
        "refusal": None,
    }
    streamed = httpx.post(f"{fake_server.url}/v1/chat/completions", json={**body, "stream": True})
    chunks = sse_payloads(streamed)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert len({c["created"] for c in chunks}) == 1 and len({c["id"] for c in chunks}) == 1
    vectors = httpx.post(f"{fake_server.url}/v1/embeddings", json={"model": "vec", "input": "a"})
    assert vectors.json()["usage"] == {"prompt_tokens": 1, "total_tokens": 1}


def test_an_empty_prompt_is_a_prompt(client: openai.OpenAI) -> None:
    assert client.completions.create(model="echo", prompt="", max_tokens=1).choices[0].text


def test_token_arrays_embed(client: openai.OpenAI) -> None:
    # The fake model reads token i as the word "word<i>" (its vocabulary is 1000 words).
    tokens = client.embeddings.create(model="vec", input=[[1, 2], [3]], encoding_format="float")
    words = client.embeddings.create(
        model="vec", input=["word1 word2", "word3"], encoding_format="float"
    )
    assert [d.embedding for d in tokens.data] == [d.embedding for d in words.data]
    one = client.embeddings.create(model="vec", input=[1, 2], encoding_format="float")
    assert one.data[0].embedding == words.data[0].embedding
