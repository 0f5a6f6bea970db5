"""Managed upstreams (`kind: http` with a `command`): a gateway mmserve that starts real server
programs itself (bench/upstream.py, and a second `mmserve serve` with a fake model), relays to
them through the openai client, and stops them: on unload, keep-alive, eviction and a crash."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import openai
import psutil
import pytest
from tests.conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
UPSTREAM = f"[{PY}, {ROOT}/bench/upstream.py, --port, '${{PORT}}']"
INNER_CONFIG = """
models:
  - {name: echo, kind: llm, backend: fake, max_concurrency: 4, options: {delay: 0.02}}
"""


def managed(name: str, command: str = UPSTREAM, **fields: object) -> str:
    extra = "".join(f", {key}: {json.dumps(value)}" for key, value in fields.items())
    return f"  - {{name: {name}, kind: http, command: {command}, preload: false{extra}}}\n"


@pytest.fixture(scope="module")
def gateway(server_factory, tmp_path_factory: pytest.TempPathFactory):
    where = tmp_path_factory.mktemp("managed")
    (where / "inner.yaml").write_text(INNER_CONFIG)
    inner = f"[{PY}, -m, mmserve, serve, --port, '${{PORT}}', --config, {where}/inner.yaml]"
    quick_exit = f"[{PY}, -c, 'import sys; print(\"bad flag --nope\", file=sys.stderr); exit(3)']"
    config = where / "config.yaml"
    config.write_text(
        f"allow_runtime_subprocess: ['{PY} {ROOT}/bench/upstream.py']\nmodels:\n"
        + managed("tiny", upstream_model="tiny", stop_timeout=5)
        + managed("brief", upstream_model="tiny", keep_alive=2)
        + managed("inner", inner, upstream_model="echo", start_timeout=120)
        + managed("dies", quick_exit)
        + managed("never", f"[{PY}, -c, 'import time; time.sleep(60)']", start_timeout=1)
        + managed("pair-a", upstream_model="tiny", group="pair")
        + managed("pair-b", upstream_model="tiny", group="pair")
    )
    server = server_factory(config)
    server.wait_models()
    return server


@pytest.fixture(scope="module")
def client(gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def replica_pid(server, model: str) -> int:
    (replica,) = server.model(model)["replicas"]
    return int(replica["pid"])


def group_gone(pid: int) -> bool:
    """No process is left of the process group `pid` led (nor the leader itself)."""
    for process in psutil.process_iter():
        try:
            member = process.pid == pid or os.getpgid(process.pid) == pid
            if member and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except (psutil.Error, ProcessLookupError):
            continue
    return True


def unload(server, model: str) -> None:
    answer = server.post("/unloadmodel", {"model": model})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "unloaded"


def test_the_first_requests_start_one_server_and_chat_plain_and_streamed(gateway, client) -> None:
    assert gateway.model("tiny")["state"] == "unloaded"
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda i: client.chat.completions.create(model="tiny", messages=ask(f"{i}")),
                     range(8))
        )  # fmt: skip
    assert {r.choices[0].message.content for r in replies} == {"Hello from upstream."}
    status = gateway.model("tiny")
    assert status["state"] == "ready" and status["loads"] == 1
    assert sum("started server pid" in line for line in status["log"]) == 1
    (replica,) = status["replicas"]
    assert replica["resident_bytes"] > 10 * 2**20 and status["resident_bytes"] > 0
    assert replica["details"]["program"] == Path(PY).name
    assert psutil.Process(replica["pid"]).cmdline()[-1] == str(replica["details"]["port"])
    stream = client.chat.completions.create(model="tiny", messages=ask("hi"), stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello from upstream."


def test_unload_stops_the_process_group(gateway, client) -> None:
    client.chat.completions.create(model="tiny", messages=ask("hi"))
    pid = replica_pid(gateway, "tiny")
    unload(gateway, "tiny")
    assert group_gone(pid)
    assert not gateway.model("tiny")["replicas"]
    client.chat.completions.create(model="tiny", messages=ask("again"))  # started anew
    assert replica_pid(gateway, "tiny") != pid


def test_keep_alive_expiry_stops_it(gateway, client) -> None:
    client.chat.completions.create(model="brief", messages=ask("hi"))
    pid = replica_pid(gateway, "brief")
    gateway.wait_until(lambda: gateway.model("brief")["state"] == "unloaded", timeout=30)
    assert group_gone(pid)
    assert any("keep_alive" in line for line in gateway.model("brief")["log"])


def test_a_mmserve_upstream_logs_into_the_models_log_and_stops_with_its_workers(
    gateway, client
) -> None:
    reply = client.chat.completions.create(model="inner", messages=ask("hello there"))
    assert reply.choices[0].message.content == "You said: hello there"
    stream = client.chat.completions.create(model="inner", messages=ask("a b"), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "You said: a b"
    records = httpx.get(f"{gateway.url}/api/v1/inner/logs", timeout=10).json()
    assert any(r["source"] == "stderr" for r in records)  # the inner server's own lines
    pid = replica_pid(gateway, "inner")
    tree = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    assert len(tree) > 1  # the inner server and its model's worker
    unload(gateway, "inner")
    gateway.wait_until(lambda: not any(psutil.pid_exists(p) for p in tree), timeout=30)


def test_a_killed_upstream_fails_its_requests_and_is_restarted(gateway, client) -> None:
    client.chat.completions.create(model="inner", messages=ask("warm"))
    before = gateway.model("inner")
    pid = replica_pid(gateway, "inner")
    failed: list[Exception] = []

    def long_request() -> None:
        try:
            client.chat.completions.create(model="inner", messages=ask(" ".join(["w"] * 300)),
                                           max_tokens=300)  # fmt: skip
        except openai.APIStatusError as exc:
            failed.append(exc)

    request = threading.Thread(target=long_request)
    request.start()
    time.sleep(1.5)  # the request is being answered (300 tokens at 0.02 s)
    os.kill(pid, signal.SIGKILL)
    request.join(timeout=30)
    assert len(failed) == 1 and failed[0].status_code in (502, 503)
    gateway.wait_until(
        lambda: (
            gateway.model("inner")["restarts"] == before["restarts"] + 1
            and gateway.model("inner")["state"] == "ready"
        ),
        timeout=120,
    )
    assert replica_pid(gateway, "inner") != pid and group_gone(pid)
    reply = client.chat.completions.create(model="inner", messages=ask("back"))
    assert reply.choices[0].message.content == "You said: back"
    assert any("exited with code -9" in line for line in gateway.model("inner")["log"])


def test_a_command_that_exits_at_once_fails_with_its_last_lines(gateway, client) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="dies", messages=ask("hi"))
    assert failed.value.status_code == 503
    assert "exited with code 3 while starting: bad flag --nope" in failed.value.message
    status = gateway.model("dies")
    assert status["state"] == "failed" and "bad flag --nope" in status["last_error"]
    assert "bad flag --nope" in status["log"]


def test_a_command_that_never_becomes_healthy_times_out(gateway, client) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="never", messages=ask("hi"))
    assert failed.value.status_code == 503
    assert "/health with 200 within 1 s (start_timeout)" in failed.value.message
    assert time.monotonic() - started < 20
    assert gateway.model("never")["state"] == "failed"


def test_a_group_shares_one_server_until_the_last_model_goes(gateway, client) -> None:
    client.chat.completions.create(model="pair-a", messages=ask("hi"))
    client.chat.completions.create(model="pair-b", messages=ask("hi"))
    pid = replica_pid(gateway, "pair-a")
    assert replica_pid(gateway, "pair-b") == pid
    details = gateway.model("pair-a")["replicas"][0]["details"]
    assert details["group"] == "pair" and details["group_models"] == 2
    unload(gateway, "pair-a")
    assert psutil.pid_exists(pid)
    assert client.chat.completions.create(model="pair-b", messages=ask("still")).choices
    unload(gateway, "pair-b")
    assert group_gone(pid)


def test_runtime_registration_of_a_command(gateway) -> None:
    command = [PY, "-c", "print(1)"]
    # The request schema of kind http has no command: refused before anything runs.
    refused = gateway.post("/api/v1/models", {"name": "rt", "kind": "http", "command": command})
    assert refused.status_code == 400, refused.text
    # The compatibility form takes any field: the command must be one the operator allows.
    base = quote("http://127.0.0.1:${PORT}/v1", safe="")
    form = f"/post/addmodel?id=rt&type=httpmodel&backend=openai&dest={base}"
    not_allowed = gateway.post(form, {"command": command})
    assert not_allowed.status_code == 403, not_allowed.text
    assert "allow_runtime_subprocess" in not_allowed.json()["error"]["message"]
    upstream = [PY, f"{ROOT}/bench/upstream.py", "--port", "${PORT}"]
    with_env = gateway.post(form, {"command": upstream, "env": {"LD_PRELOAD": "/tmp/x.so"}})
    assert with_env.status_code == 403 and with_env.json()["error"]["param"] == "env"
    allowed = gateway.post(form, {"command": upstream, "upstream_model": "tiny"})
    assert allowed.status_code == 201, allowed.text
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "rt", "messages":
                       ask("hi")}, timeout=30)  # fmt: skip
    assert reply.status_code == 200 and "upstream" in reply.text
    pid = replica_pid(gateway, "rt")
    assert httpx.delete(f"{gateway.url}/api/v1/rt", timeout=30).status_code == 200
    assert group_gone(pid)


@pytest.fixture(scope="module")
def tight(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("tight") / "config.yaml"
    config.write_text(
        "max_loaded_models: 1\nmodels:\n"
        + managed("first", upstream_model="tiny")
        + managed("second", upstream_model="tiny")
    )
    server = server_factory(config)
    server.wait_models()
    return server


def test_eviction_by_max_loaded_models_stops_it(tight) -> None:
    with openai.OpenAI(base_url=f"{tight.url}/v1", api_key="unused", max_retries=0) as client:
        client.chat.completions.create(model="first", messages=ask("hi"))
        pid = replica_pid(tight, "first")
        client.chat.completions.create(model="second", messages=ask("hi"))
    assert tight.model("first")["state"] == "unloaded" and group_gone(pid)
    assert tight.status()["loaded_models"] == 1


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_upstream_goes_with_mmserve(how: signal.Signals, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("models:\n" + managed("up", upstream_model="tiny").replace("false", "true"))
    server = ServerProcess(config, tmp_path / "server.log")
    try:
        server.wait_healthy()
        server.wait_until(lambda: server.model("up")["state"] == "ready", timeout=60)
        pid = replica_pid(server, "up")
        server.proc.send_signal(how)  # SIGKILL: mmserve cannot stop it; the kernel does
        server.proc.wait(timeout=60)
        server.wait_until(lambda: group_gone(pid), timeout=30)
    finally:
        server.stop()
