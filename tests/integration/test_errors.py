"""Every user mistake is a 4xx in OpenAI's envelope; engine failures never take the server down."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(fake_server) -> Iterator[openai.OpenAI]:
    # Closed at the end: an open client's pooled sockets would be reported as unraisable.
    with openai.OpenAI(base_url=f"{fake_server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def envelope(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def chat(client: openai.OpenAI, model: str, content: str = "hi", **kwargs: object) -> object:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_unknown_model_is_404_naming_the_available_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, "gpt-9")
    assert info.value.code == "model_not_found"
    assert "'gpt-9'" in info.value.message and "echo, slow, vec" in info.value.message


def test_unknown_model_when_streaming_is_still_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        chat(client, "gpt-9", stream=True)


def test_embedding_model_asked_to_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "vec")
    assert "embeddings" in info.value.message


def test_chat_model_asked_to_embed(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="echo", input="x")
    assert "does not support embeddings" in info.value.message


def test_failed_load_is_503_with_the_reason(client: openai.OpenAI, fake_server) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        chat(client, "broken")
    assert info.value.status_code == 503
    assert "weights are corrupt" in info.value.message
    broken = fake_server.model("broken")
    assert broken["state"] == "failed" and "weights are corrupt" in broken["last_error"]
    # Asked again at once, it answers from the recorded failure: no load in a tight loop.
    with pytest.raises(openai.InternalServerError):
        chat(client, "broken")
    assert fake_server.model("broken")["loads"] == broken["loads"]


def test_prompt_longer_than_the_context(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "echo", " ".join(["word"] * 100))
    assert info.value.code == "context_length_exceeded"
    assert "100" in info.value.message and "64" in info.value.message
    with pytest.raises(openai.BadRequestError):
        chat(client, "echo", " ".join(["word"] * 100), stream=True)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "echo"}, "messages", "messages"),
        (
            {"model": "echo", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "'messages[0].content' must be a string or a list of content parts",
        ),
        (
            {"model": "echo", "messages": [{"role": "user"}]},
            "messages[0].content",
            "'messages[0].content' is required",
        ),
        (
            {"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            "temperature",
            "temperature",
        ),
        ({"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n", "n"),
        (  # an engine of our own that cannot call tools says so
            {
                "model": "echo",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            "tools",
            "does not serve 'tools'",
        ),
        (
            {"model": "echo", "messages": [{"role": "user", "content": "x"}], "stop": 7},
            "stop",
            "stop",
        ),
        (
            {"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
            "max_tokens",
            "max_tokens",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "model"),
    ],
)
def test_bad_chat_fields_are_400_naming_the_field(
    fake_server, body: dict, param: str, words: str
) -> None:
    response = httpx.post(f"{fake_server.url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = envelope(response)
    assert error["param"] == param and words in error["message"]


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/embeddings", b""),
        ("/v1/completions", b"[1, 2]"),
    ],
)
def test_malformed_bodies_are_400(fake_server, path: str, content: bytes) -> None:
    response = httpx.post(
        f"{fake_server.url}{path}", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert envelope(response)["type"] == "invalid_request_error"


def test_unknown_route_is_404_in_the_envelope(fake_server) -> None:
    assert envelope(httpx.get(f"{fake_server.url}/v1/nothing-here"))["code"] == "not_found"


def test_a_crashed_worker_is_503_and_the_next_request_succeeds(
    client: openai.OpenAI, fake_server
) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        chat(client, "slow", "crash")
    assert info.value.status_code == 503 and info.value.code == "worker_crashed"
    reply = client.chat.completions.create(
        model="slow", max_tokens=2, messages=[{"role": "user", "content": "again"}]
    )
    assert reply.choices[0].message.content == "You said:"
    assert httpx.get(f"{fake_server.url}/health").status_code == 200


def test_a_crash_mid_stream_ends_with_an_error_event(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        for _ in chat(client, "slow", "crash", stream=True):
            pass


def test_engine_error_is_reported_without_a_traceback(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        chat(client, "echo", "boom")
    assert "the fake engine blew up" in info.value.message
    assert "Traceback" not in info.value.message


def test_a_405_names_every_method_of_its_path(fake_server) -> None:
    response = httpx.patch(f"{fake_server.url}/api/v1/echo")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"
    assert envelope(response)["type"] == "invalid_request_error"
    assert httpx.put(f"{fake_server.url}/api/v1/models").headers["allow"] == "POST"


def test_validation_errors_say_what_a_field_accepts(fake_server) -> None:
    response = httpx.post(
        f"{fake_server.url}/v1/embeddings", json={"model": "vec", "input": [{"text": "a"}]}
    )
    assert response.status_code == 400
    assert envelope(response) == {
        "message": "'input' must be a string, a list of strings, a token array (a list of "
        "integers) or a list of token arrays",
        "type": "invalid_request_error",
        "param": "input",
        "code": None,
    }


def test_an_out_of_vocabulary_token_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="vec", input=[[1, 2], [5000]])
    assert "token 5000 is not in the vocabulary of model 'vec'" in info.value.message
    assert "check_embedding_ctx_length=False" in info.value.message
