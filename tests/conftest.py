"""Shared test helpers: a real `mmserve serve` process on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`mmserve serve` as a real child process; waits on /health, never on log text."""

    def __init__(
        self,
        config: Path | None,
        log_path: Path,
        *args: str,
        python: Path | str = sys.executable,  # another venv's, for an install test
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.api_key: str | None = None  # sent by status() and post() when set
        self.url = f"http://127.0.0.1:{self.port}"
        command = [str(python), "-m", "mmserve", "serve", "--port", str(self.port), *args]
        if config is not None:
            command += ["--config", str(config)]
        env = {k: v for k, v in os.environ.items() if k != "MMSERVE_CONFIG"}
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log()}")

    def wait_models(self, timeout: float = 300) -> list[dict]:
        """Wait until no model is loading (the preloads are done); return the models' status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            models = self.status()["models"]
            if all(m["state"] != "loading" for m in models):
                return models
            time.sleep(0.2)
        raise TimeoutError(f"models still loading after {timeout} s:\n{self.log()}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def status(self) -> dict:
        return httpx.get(f"{self.url}/api/v1/", headers=self.headers, timeout=10).json()

    def model(self, name: str) -> dict:
        """One model's entry in the status."""
        return next(m for m in self.status()["models"] if m["name"] == name)

    def post(self, path: str, body: dict | None = None, timeout: float = 300) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=self.headers, timeout=timeout)

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float = 30) -> None:
        """Poll `predicate` every 50 ms until it holds; fail the test after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"still false after {timeout} s"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    started: list[ServerProcess] = []

    def start(config: Path | None, *args: str) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = ServerProcess(config, log, *args)
        started.append(server)
        server.wait_healthy()
        return server

    yield start
    for server in started:
        server.stop()
