"""A real Ray cluster of two nodes on this machine (loopback only), for the cluster tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import free_port

NODES = Path(__file__).with_name("ray_nodes.py")
START_TIMEOUT = 120  # seconds for two nodes to come up on a busy 2-core machine


class LocalRayCluster:
    """Two Ray nodes in a child process (`ray_nodes.py`): node A (the head, 2 CPUs, label
    `mmserve-test/node=a`) and node B (1 CPU, `=b`); `kill_node_b` and `stop` as a lost machine
    and a lost cluster."""

    def __init__(self, log: Path, client_port: int | None = None) -> None:
        env = {
            **os.environ,
            "OMP_WAIT_POLICY": "PASSIVE",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray's own drivers on the head (its Ray Client server's) keep 127.0.0.1 as given,
            # as mmserve's bridges do (workers.ray_bridge.connect), instead of this machine's
            # outward IP, on which these nodes do not listen.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(NODES),
                *(["--client-port", str(client_port)] if client_port else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )
        self.log_path = log
        self.client_port = client_port
        first = self._reply()
        self.address: str = first["address"]
        self.node_a: str = first["a"]
        self.node_b: str = first["b"]
        self.stopped = False

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Ray cluster did not start:\n{self.log()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _command(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def kill_node_b(self) -> None:
        """Node B's raylet and its workers die, as a machine that is lost."""
        self._command("kill b")

    def stop(self) -> None:
        """The whole cluster goes away (head and GCS included)."""
        if not self.stopped:
            self.stopped = True
            self._command("stop")
            self.proc.wait(60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def close(self) -> None:
        try:
            self.stop()
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._log):
            if stream is not None:
                stream.close()


def states(models: list[dict[str, Any]]) -> str:
    """What went wrong, for an assertion: each model's state, error and last log lines."""
    return "\n".join(
        f"{m['name']}: {m['state']} {m['last_error']}\n  " + "\n  ".join(m["log"][-8:])
        for m in models
    )


def eventually(predicate: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """Poll `predicate` until it holds; after `timeout` s fail, saying `describe()`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"still false after {timeout} s:\n{describe()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """A cluster of the module's own: the tests take its nodes away."""
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray") / "cluster.log")
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def ray_client_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """The same, whose head also serves Ray Client on `client_port`."""
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray") / "cluster.log", free_port())
    yield cluster
    cluster.close()
