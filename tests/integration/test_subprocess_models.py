"""Models that are user programs in any language (`kind: subprocess`), spoken to over the worker
protocol: the two shipped examples, and a program that crashes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Says ready, then dies at its first request.
CRASHER = (
    "import sys, json; print(json.dumps({'type': 'ready', 'info': {'capabilities': ['chat']}}),"
    " flush=True); sys.stdin.readline(); sys.exit(7)"
)


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    node = shutil.which("node")
    assert node, "the JavaScript example needs Node.js"
    config = tmp_path_factory.mktemp("subprocess") / "config.yaml"
    python, examples = sys.executable, ROOT / "examples"
    config.write_text(
        "ping_interval: 0.2\nping_timeout: 2\nmodels:\n"
        f"  - {{name: py-echo, kind: subprocess, command: [{python}, {examples}/echo_model.py]}}\n"
        f"  - {{name: js-echo, kind: subprocess, command: [{node}, {examples}/echo_model.js]}}\n"
        "  - {name: crasher, kind: subprocess, preload: false,\n"
        f'     command: [{python}, "-c", "{CRASHER}"]}}\n'
    )
    server = server_factory(config)
    server.wait_models()
    return server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize(
    ("model", "answer", "vector"),
    [("py-echo", "hello big world", [5.0, 2.0]), ("js-echo", "world big hello", [5.0, 1.0])],
)
def test_the_examples_answer(
    client: openai.OpenAI, model: str, answer: str, vector: list[float]
) -> None:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello big world"}]
    )
    assert reply.choices[0].message.content == answer
    streamed = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello big world"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer
    assert (
        client.embeddings.create(model=model, input="hello", encoding_format="float")
        .data[0]
        .embedding
        == vector
    )


def test_they_run_as_their_own_processes_and_answer_pings(server) -> None:
    import time

    time.sleep(1)  # several ping intervals: a program that did not answer would be restarted
    for name in ("py-echo", "js-echo"):
        model = server.model(name)
        assert model["state"] == "ready" and model["restarts"] == 0
        assert model["replicas"][0]["pid"] != server.status()["server"]["pid"]


def test_a_program_that_crashes_is_a_503_with_a_crash_record(client: openai.OpenAI, server) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="crasher", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 503 and info.value.code == "worker_crashed"
    assert any("exited with code 7" in line for line in server.model("crasher")["log"])
    with pytest.raises(openai.BadRequestError, match="does not support embeddings"):
        client.embeddings.create(model="crasher", input="x")
