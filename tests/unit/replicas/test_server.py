"""Managed upstreams: the config of `kind: http` with a command, the registry entry, how a
`Launch` is filled in, and `ServerReplica` on small real programs (Python's http.server): the
whole process group stopped, SIGKILL after stop_timeout, exits reported, groups shared."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from mmserve.config import ModelSpec, load_settings, select_models
from mmserve.errors import ConfigError, ModelUnavailable
from mmserve.logs import ModelLog
from mmserve.registry import entry, import_object
from mmserve.replicas.base import Replica, ReplicaHooks
from mmserve.replicas.server import Launch, ServerReplica

PY = sys.executable
# Serves the files of its cwd (GET / answers 200) on the port it is given.
HTTP_SERVER = [PY, "-m", "http.server", "--bind", "127.0.0.1", "${PORT}"]


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "kind": "http", **fields})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ---- config --------------------------------------------------------------------------------


def test_a_command_makes_an_http_model_managed_with_defaults() -> None:
    managed = spec(command=["srv", "--port", "${PORT}"])
    assert managed.managed and managed.backend == "openai"
    assert managed.base_url == "http://127.0.0.1:${PORT}/v1"
    assert managed.health == "/health" and managed.stop_signal == "SIGTERM"
    assert managed.max_concurrency == 64 and managed.start_timeout is None
    assert not spec(base_url="http://h/v1").managed
    assert spec(command=["srv"], stop_signal="int").stop_signal == "SIGINT"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command": ["srv", "${PROT}"]}, r"unknown placeholder \$\{PROT\}"),
        ({"command": ["srv", "-m", "${MODEL}"]}, r"\$\{MODEL\} is the model's source file"),
        ({"command": ["srv"], "env": {"A": "${X}"}}, r"unknown placeholder \$\{X\}"),
        ({"command": ["srv"], "stop_signal": "SIGNOPE"}, "not a signal name"),
        ({"command": ["srv"], "health": "health"}, "must be a path"),
        ({"command": ["srv"], "group": "g", "replicas": 2}, "one device"),
        ({"command": ["srv"], "backend": "json"}, "needs base_url"),
        ({"command": ["srv"], "cwd": "/no/such/dir"}, "not a directory"),
        ({"base_url": "http://h/v1", "env": {"A": "1"}}, "env goes with a command"),
        ({"base_url": "http://h/v1", "source": "catalog:smollm2"}, "not source"),
    ],
)
def test_a_managed_spec_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**fields)


def test_server_fields_go_with_kind_http() -> None:
    with pytest.raises(ValueError, match="stop_timeout goes with kind: http and a command"):
        ModelSpec(name="m", kind="llm", backend="fake", stop_timeout=1)


def test_model_placeholder_and_relative_cwd(tmp_path: Path) -> None:
    (tmp_path / "w.gguf").write_bytes(b"x")
    (tmp_path / "run").mkdir()
    config = write(
        tmp_path,
        "models:\n  - {name: m, kind: http, source: w.gguf, cwd: run,\n"
        "     command: [srv, -m, '${MODEL}', --port, '${PORT}']}\n",
    )
    settings = load_settings(config, env={})
    (model,) = settings.models
    assert model.cwd == str(tmp_path / "run") and model.source == str(tmp_path / "w.gguf")
    # A spec read back from its dump (as `serve --model` does) is the same spec.
    assert select_models(settings, ["m"], None).models[0] == model


def test_the_models_of_a_group_describe_one_server(tmp_path: Path) -> None:
    same = "{kind: http, command: [srv, '${PORT}'], group: g"
    ok = f"models:\n  - {{name: a, {same[1:]}}}\n  - {{name: b, {same[1:]}, upstream_model: x}}\n"
    assert [m.group for m in load_settings(write(tmp_path, ok), env={}).models] == ["g", "g"]
    differ = ok.replace("upstream_model: x", "stop_timeout: 1")
    with pytest.raises(ConfigError, match="share group 'g' but not its server: their stop_timeout"):
        load_settings(write(tmp_path, differ), env={})


def test_the_registry_entry_of_a_managed_model_holds_memory() -> None:
    managed, remote = entry("http", "openai", managed=True), entry("http", "openai")
    assert managed.holds_memory and not remote.holds_memory
    assert managed.capabilities == remote.capabilities
    assert import_object(managed.replica) is ServerReplica
    assert issubclass(ServerReplica, Replica)
    assert import_object(entry("http", "json", managed=True).replica) is ServerReplica


# ---- Launch --------------------------------------------------------------------------------


def test_a_launch_fills_in_all_but_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = spec(
        command=["srv", "-m", "${MODEL}", "--alias", "${NAME}", "--port", "${PORT}"],
        source="catalog:smollm2",
        env={"TOKEN_FILE": "/run/${NAME}", "OMP_NUM_THREADS": "3"},
        base_url="http://127.0.0.1:${PORT}/api",
        health="/ready",
        stop_signal="INT",
    )
    launch = Launch.of(model, "cuda:1", "/weights/m.gguf")
    assert launch.command == ("srv", "-m", "/weights/m.gguf", "--alias", "m", "--port", "${PORT}")
    env = dict(launch.env)
    assert env["TOKEN_FILE"] == "/run/m" and env["OMP_NUM_THREADS"] == "3"  # env overrides
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "HF_HUB_OFFLINE" not in env
    assert launch.health == "http://127.0.0.1:${PORT}/ready"
    assert launch.stop_signal is signal.SIGINT and launch.who == "model 'm'"
    grouped = Launch.of(spec(command=["srv", "${NAME}"], group="pair"), "cpu", None)
    assert grouped.command == ("srv", "pair") and grouped.who == "group 'pair'"


# ---- ServerReplica on real programs ----------------------------------------------------------


def replica(model: ModelSpec, exits: list[Replica] | None = None) -> ServerReplica:
    on_exit = exits.append if exits is not None else (lambda _: None)
    return ServerReplica(model, "cpu", ReplicaHooks(ModelLog(model.name, 100), on_exit=on_exit))


def group_of(pid: int) -> list[int]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


async def test_stop_reaches_the_whole_group_and_kills_what_ignores_the_signal(
    tmp_path: Path,
) -> None:
    # A server that ignores SIGTERM, with a child of its own in its process group.
    program = (
        "import signal, subprocess, sys, http.server\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen(['sleep', '300'])\n"
        "print('serving', flush=True)\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])),"
        " http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    )
    model = spec(
        command=[PY, "-c", program, "${PORT}"], health="/", cwd=str(tmp_path), stop_timeout=0.5
    )
    server = replica(model)
    await server.start(30)
    assert server.pid is not None
    pid = server.pid
    assert len(group_of(pid)) == 2
    assert (server.resident_bytes() or 0) > 2**20
    await server.stop()
    assert group_of(pid) == []
    log = [r.message for r in server._hooks.log.since(0)]
    assert "serving" in log and any("after SIGTERM: sending SIGKILL" in line for line in log)
    await server.stop()  # idempotent


async def test_an_exit_is_reported_once_and_cleans_up() -> None:
    exits: list[Replica] = []
    server = replica(spec(command=HTTP_SERVER, health="/"), exits)
    await server.start(30)
    assert server.alive and server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    for _ in range(100):
        if exits and server._server is not None and not server._server.holders:
            break
        await asyncio.sleep(0.05)
    assert exits == [server] and not server.alive and server.returncode == -9
    assert server.resident_bytes() is None


async def test_a_start_that_fails_says_why() -> None:
    quits = spec(command=[PY, "-c", "print('no GPU found'); raise SystemExit(2)"])
    with pytest.raises(ModelUnavailable, match="exited with code 2 while starting: no GPU found"):
        await replica(quits).start(30)
    hangs = replica(spec(command=[PY, "-c", "import time; time.sleep(30)"], start_timeout=0.5))
    with pytest.raises(ModelUnavailable, match=r"/health with 200 within 0.5 s"):
        await hangs.start(30)
    assert hangs.pid is not None
    await hangs.stop()
    assert group_of(hangs.pid) == []
    with pytest.raises(ModelUnavailable, match="cannot start '/no/such/server'"):
        await replica(spec(command=["/no/such/server"])).start(30)


async def test_a_group_starts_once_and_stops_with_its_last_model() -> None:
    fields = {"command": HTTP_SERVER, "health": "/", "group": "pair"}
    first = replica(spec(**fields, name="a"))
    second = replica(spec(**fields, name="b"))
    await asyncio.gather(first.start(30), second.start(30))  # at once: one start
    assert first.pid == second.pid and first.pid is not None
    pid = first.pid
    assert first.status().details == {
        "port": first._server.port if first._server else None,
        "program": Path(PY).name,
        "group": "pair",
        "group_models": 2,
    }
    whole = first._server.resident_bytes() if first._server else None
    assert whole and first.resident_bytes() == whole // 2
    await first.stop()
    assert psutil.pid_exists(pid) and second.alive
    third = replica(spec(**fields, name="c"))
    await third.start(30)
    assert third.pid == pid  # joins the running server
    await second.stop()
    await third.stop()
    assert group_of(pid) == []
    fourth = replica(spec(**fields, name="d"))
    await fourth.start(30)  # the group's server was stopped: a new one
    assert fourth.pid != pid
    await fourth.stop()
