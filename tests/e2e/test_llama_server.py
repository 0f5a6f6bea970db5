"""GGUF text models on llama.cpp's own server (backend llama_server): real SmolLM2 and Gemma,
real llama-server processes behind a real `mmserve serve`, driven by the official openai client.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import psutil
import pytest
from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

SLOTS = 8
PROMPTS = [f"Write one sentence about the number {i}." for i in range(SLOTS)]


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    config = tmp_path_factory.mktemp("llama") / "mmserve.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: smollm2, kind: llm, source: 'catalog:smollm2', parallel: {SLOTS},"
        " context_length: 1024}\n"
        "  - {name: gemma, kind: llm, source: 'catalog:gemma3-270m', parallel: 2}\n"
    )
    server = server_factory(config)
    models = server.wait_models(timeout=300)
    assert all(m["state"] == "ready" for m in models), models
    return server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def long_completion(client: openai.OpenAI) -> object:
    """A stream that runs for seconds: SmolLM2 goes on counting to its max_tokens."""
    return client.completions.create(
        model="smollm2", prompt="1, 2, 3, 4, 5, 6, 7, 8,", max_tokens=400, temperature=0,
        stream=True,
    )  # fmt: skip


def replica(server: ServerProcess, name: str = "smollm2") -> dict:
    (only,) = server.model(name)["replicas"]
    return only


def slots_processing(server: ServerProcess) -> int:
    """How many of llama-server's own slots are working, from its /slots endpoint."""
    port = replica(server)["details"]["port"]
    return sum(s["is_processing"] for s in httpx.get(f"http://127.0.0.1:{port}/slots").json())


def test_the_replica_is_a_llama_server_with_its_slots(server: ServerProcess) -> None:
    status = server.status()
    assert status["engines"]["llama.cpp"], status["engines"]
    details = replica(server)["details"]
    assert details["program"] == "llama-server"
    assert details["slots"] == {"total": SLOTS, "busy": 0, "free": SLOTS}
    assert psutil.Process(replica(server)["pid"]).name() == "llama-server"
    assert server.model("smollm2")["capabilities"] == ["chat", "complete", "relay"]
    # Gemma's GGUF has no chat template: completions only.
    assert server.model("gemma")["capabilities"] == ["complete", "relay"]


def test_ps_shows_the_slots(server: ServerProcess) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mmserve", "ps", "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    header, *rows = out.stdout.splitlines()
    column = header.split().index("SLOTS")
    slots = {row.split()[0]: row.split()[column] for row in rows}
    assert slots == {"smollm2": f"0/{SLOTS}", "gemma": "0/2"}


def test_eight_streams_decode_at_once_and_match_their_solo_texts(client: openai.OpenAI) -> None:
    def run(prompt: str, stream: bool) -> object:
        return client.chat.completions.create(
            model="smollm2", messages=ask(prompt), temperature=0, seed=11, max_tokens=24,
            stream=stream,
        )  # fmt: skip

    alone = [run(p, stream=False).choices[0].message.content for p in PROMPTS]  # type: ignore[attr-defined]
    firsts: list[float] = [math.inf] * SLOTS
    ends: list[float] = [math.inf] * SLOTS
    texts = [""] * SLOTS
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        try:
            for chunk in run(PROMPTS[i], stream=True):  # type: ignore[attr-defined]
                if chunk.choices and chunk.choices[0].delta.content:
                    firsts[i] = min(firsts[i], time.monotonic())
                    texts[i] += chunk.choices[0].delta.content
            ends[i] = time.monotonic()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(SLOTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    assert all(t < math.inf for t in ends), "every stream finishes"
    # Interleaved: every stream had its first token before the first stream ended.
    assert max(firsts) < min(ends), (firsts, ends)
    assert texts == alone


def test_a_cancelled_stream_frees_its_slot_while_the_others_go_on(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    def long_stream() -> object:
        return long_completion(client)

    stays = long_stream()
    leaves = long_stream()
    next(iter(stays))  # type: ignore[call-overload]
    next(iter(leaves))  # type: ignore[call-overload]
    server.wait_until(lambda: replica(server)["details"]["slots"]["busy"] == 2)
    server.wait_until(lambda: slots_processing(server) == 2)
    leaves.close()  # type: ignore[attr-defined]
    # mmserve's count and llama-server's own slots both show the slot free again...
    server.wait_until(lambda: replica(server)["details"]["slots"]["busy"] == 1)
    server.wait_until(lambda: slots_processing(server) == 1)
    # ...while the other stream goes on to its end.
    rest = "".join(c.choices[0].text for c in stays if c.choices)  # type: ignore[attr-defined]
    assert rest
    server.wait_until(lambda: slots_processing(server) == 0)


def test_n_gives_several_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=ask("Name a colour."), n=3, max_tokens=8, temperature=1, seed=5
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content for c in reply.choices)
    completion = client.completions.create(
        model="gemma", prompt="The sky is", n=2, max_tokens=4, temperature=1, seed=5
    )
    assert len(completion.choices) == 2


def test_logprobs_of_the_chosen_token_are_its_top_entry_at_temperature_0(
    client: openai.OpenAI,
) -> None:
    reply = client.chat.completions.create(
        model="smollm2", messages=ask("Say hello."), max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    for entry in logprobs.content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    assert "".join(e.token for e in logprobs.content) == reply.choices[0].message.content


def test_completion_logprobs_are_shaped_as_openai_shapes_them(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="gemma", prompt="One, two, three,", max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]
    assert logprobs.top_logprobs is not None
    assert all(len(top) <= 2 and top for top in logprobs.top_logprobs)


def test_the_same_seed_reproduces_across_unrelated_requests(client: openai.OpenAI) -> None:
    def sample() -> str:
        reply = client.chat.completions.create(
            model="smollm2", messages=ask("Tell me a very short story."), max_tokens=24,
            temperature=1, seed=1234,
        )  # fmt: skip
        return reply.choices[0].message.content or ""

    first = sample()
    # Unrelated work on the same replica, before and beside the second sample.
    background = [
        threading.Thread(
            target=client.chat.completions.create,
            kwargs={"model": "smollm2", "messages": ask(f"Topic {i}"), "max_tokens": 16},
        )
        for i in range(3)
    ]
    for thread in background:
        thread.start()
    second = sample()
    for thread in background:
        thread.join()
    other = client.chat.completions.create(
        model="smollm2", messages=ask("Tell me a very short story."), max_tokens=24,
        temperature=1, seed=99,
    )  # fmt: skip
    assert first == second
    assert other.choices[0].message.content != first


def test_a_token_array_prompt_gives_the_text_of_the_string_it_encodes(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    prompt = "The capital of France is"
    port = replica(server, "gemma")["details"]["port"]
    tokens = httpx.post(
        f"http://127.0.0.1:{port}/tokenize", json={"content": prompt, "add_special": True}
    ).json()
    tokens = tokens["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)

    def complete(p: str | list[int] | list[list[int]]) -> list[str]:
        reply = client.completions.create(model="gemma", prompt=p, max_tokens=8, temperature=0)
        return [c.text for c in reply.choices]

    assert complete(tokens) == complete(prompt)
    assert complete([tokens, tokens]) == complete(prompt) * 2


def test_json_mode_and_stop(client: openai.OpenAI) -> None:
    import json

    reply = client.chat.completions.create(
        model="smollm2", messages=ask("Give a JSON object with a key 'city'."), max_tokens=40,
        temperature=0, response_format={"type": "json_object"},
    )  # fmt: skip
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    stopped = client.completions.create(
        model="gemma", prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 6"]
    )
    assert " 6" not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"


def test_errors_are_mmservers_own(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="smollm2", messages=ask("word " * 2000))
    assert too_long.value.code == "context_length_exceeded"
    assert "smollm2" in too_long.value.message
    with pytest.raises(openai.BadRequestError) as no_chat:
        client.chat.completions.create(model="gemma", messages=ask("hi"))
    assert "does not support chat" in no_chat.value.message


def test_a_killed_llama_server_fails_its_stream_and_the_next_request_is_served(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    before = replica(server)
    chunks = iter(long_completion(client))  # type: ignore[call-overload]
    next(chunks)
    os.kill(before["pid"], signal.SIGKILL)
    with pytest.raises(openai.APIError) as failed:
        for _ in chunks:
            pass
    assert "smollm2" in str(failed.value) or "upstream" in str(failed.value)
    server.wait_until(lambda: server.model("smollm2")["state"] == "ready", timeout=120)
    reply = client.chat.completions.create(model="smollm2", messages=ask("hi"), max_tokens=4)
    assert reply.choices[0].message.content
    after = replica(server)
    assert after["pid"] != before["pid"]
    assert server.model("smollm2")["restarts"] >= 1


def test_unload_leaves_no_process_behind(server: ServerProcess, client: openai.OpenAI) -> None:
    pid = replica(server, "gemma")["pid"]
    assert server.post("/unloadmodel", {"model": "gemma"}).status_code == 200
    server.wait_until(lambda: server.model("gemma")["state"] == "unloaded")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert pid not in [c.pid for c in children]
    # On demand again: the next request loads it.
    again = client.completions.create(model="gemma", prompt="Hello", max_tokens=2)
    assert again.choices[0].text is not None


def test_the_model_log_has_llama_servers_own_lines(server: ServerProcess) -> None:
    lines = httpx.get(f"{server.url}/api/v1/smollm2/logs", timeout=10).text
    assert "started server pid" in lines
    assert "llama_server" in lines or "srv" in lines  # llama-server's own output


def test_completion_defaults_are_openais(client: openai.OpenAI) -> None:
    # No max_tokens: 16, as OpenAI's (llama-server's own default is no limit). An empty prompt
    # starts from the model's start token (llama-server leaves "" unanswered).
    for prompt in ("", ["", "Once upon a time"]):
        reply = client.completions.create(model="gemma", prompt=prompt, temperature=0)
        assert all(c.text for c in reply.choices)
        assert reply.usage is not None and reply.usage.completion_tokens <= 16 * len(reply.choices)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="gemma", prompt=[[10**9]], max_tokens=2)
    assert refused.value.param == "prompt" and "vocabulary" in refused.value.message
