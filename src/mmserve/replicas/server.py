"""ServerReplica: a server program mmserve starts, health-checks, relays to and stops (kind http
with a `command`: a managed upstream, such as llama.cpp's llama-server, vLLM, another mmserve).

    start   pick a free loopback port; spawn the command (a list, no shell; ${PORT}, ${MODEL},
            ${NAME} filled in) in its own process group, made to die with mmserve; poll
            `health` until it answers 200 (within start_timeout); then relay to base_url as a
            RemoteReplica does. A program that exits or stays unhealthy is a ModelUnavailable
            (503) quoting its last output lines.
    stop    stop_signal to the whole process group, SIGKILL after stop_timeout. Idempotent.
    exits   on its own: requests in flight fail (502); `hooks.on_exit(replica)` tells the
            model, which starts a new replica after a backoff; the replica cleans up after
            itself (the model does not stop a replica that exited).

The program's stdout and stderr lines go to the model's log; its resident memory is that of its
whole process tree (psutil, children recursively), counted in the room like a worker's.

A `group` is one server for several models. Servers of a group are shared through `_GROUPS`,
keyed by the group's name and its `Launch`, and counted by their holders: the first replica to
attach starts it (those attaching meanwhile wait for that same start), the last to detach stops
it. Its memory is split evenly between its holders, so the room counts it once. A server that
exited or is stopping is dropped from `_GROUPS`: the next attach starts a new one.

When mmserve itself is killed, the kernel sends the program stop_signal (PR_SET_PDEATHSIG, on
Linux); what the program itself started is then its own to stop. Everything here runs on the
event loop's thread, so the holder lists need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from mmserve.catalog import resolve_source
from mmserve.config import ModelSpec, fill_placeholders
from mmserve.errors import ModelUnavailable, UpstreamError
from mmserve.logs import ModelLog
from mmserve.replicas.base import Replica, ReplicaHooks
from mmserve.replicas.process import backend_spec
from mmserve.replicas.remote import CAPABILITIES, RemoteReplica
from mmserve.types import WorkerInfo
from mmserve.workers.supervisor import child_env

__all__ = ["Launch", "Server", "ServerReplica", "free_port"]

HEALTH_INTERVAL = 0.1  # seconds between health polls while the server starts
HEALTH_TIMEOUT = 2.0  # seconds one health poll may take
FAILURE_LINES = 3  # of the program's last output lines, quoted when its start fails
MAX_LINE = 64 * 1024  # an output line is cut there
SETTLE = 1.0  # seconds to wait for the program's last output once it has exited
KILL_WAIT = 5.0  # seconds to wait for the exit after SIGKILL before giving up on it
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now. Another program may take it before the server binds it: the
    server then fails to start, and the model's next load picks another."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Launch:
    """How one server starts and stops: placeholders filled in, except ${PORT} (a free port is
    picked at each start). Hashable: with the group's name it keys a shared server."""

    who: str  # "model 'x'" or "group 'g'", for messages
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # the whole environment of the program
    cwd: str | None
    health: str  # a URL
    stop_signal: signal.Signals
    stop_timeout: float

    @classmethod
    def of(cls, spec: ModelSpec, device: str, model_path: str | None) -> Launch:
        """The launch of `spec`'s server on `device`; `model_path` fills ${MODEL}."""
        assert spec.command is not None and spec.base_url is not None  # ModelSpec._managed
        values = {"NAME": spec.group or spec.name}
        if model_path is not None:
            values["MODEL"] = model_path
        fill = functools.partial(fill_placeholders, values=values)
        # What mmserve's workers get (a thread budget, no busy-waiting OpenMP threads, only
        # this replica's GPU visible), but not HF_HUB_OFFLINE: the program's own downloads
        # (vLLM's) are its business. The spec's env comes last: it overrides.
        env = child_env(backend_spec(spec, device))
        if "HF_HUB_OFFLINE" not in os.environ:
            env.pop("HF_HUB_OFFLINE", None)
        env.update({key: fill(value) for key, value in spec.env.items()})
        health = spec.health if "://" in spec.health else _origin(spec.base_url) + spec.health
        return cls(
            who=f"group {spec.group!r}" if spec.group else f"model {spec.name!r}",
            command=tuple(fill(arg) for arg in spec.command),
            env=tuple(sorted(env.items())),
            cwd=spec.cwd,
            health=fill(health),
            stop_signal=signal.Signals[spec.stop_signal],
            stop_timeout=spec.stop_timeout,
        )


class Server:
    """One run of a server program: started once, stopped once (a restart is a new Server).

    Held by one ServerReplica, or by several (a group); `attach` and `detach` count them.
    """

    def __init__(self, launch: Launch, key: tuple[str, Launch] | None = None) -> None:
        self.launch = launch
        self.port: int | None = None
        self.holders: list[ServerReplica] = []
        self.exited = asyncio.Event()  # the program has exited
        self.stopping = False
        self._key = key  # in _GROUPS, for a group's server
        self._logs: list[ModelLog] = []  # where its output goes: its holders' logs
        self._last: deque[str] = deque(maxlen=FAILURE_LINES)
        self._start_task: asyncio.Task[None] | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._closed = asyncio.Event()  # its output pipes are closed: every line is logged

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport else None

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode() if self._transport else None

    @property
    def running(self) -> bool:
        return self._transport is not None and not self.exited.is_set() and not self.stopping

    def fill(self, template: str) -> str:
        """`template` with ${PORT} filled in (valid once started)."""
        return fill_placeholders(template, {"PORT": str(self.port)})

    async def attach(self, holder: ServerReplica, log: ModelLog, timeout: float) -> None:
        """Hold this server, starting it unless another holder has; return once it is healthy.
        Raises ModelUnavailable (the same for every holder) when that start fails."""
        self.holders.append(holder)
        self._logs.append(log)
        if self._start_task is None:
            self._start_task = asyncio.create_task(self._start(timeout))
            self._start_task.add_done_callback(_retrieve)
        # Shielded: a holder that stops waiting (its load cancelled) leaves the start running
        # for the others; its stop() detaches it.
        await asyncio.shield(self._start_task)

    async def detach(self, holder: ServerReplica, log: ModelLog) -> None:
        """Let go of the server; the last holder's detach stops it. Idempotent."""
        if holder in self.holders:
            self.holders.remove(holder)
        if log in self._logs and len(self._logs) > 1:  # the last log hears the shutdown
            self._logs.remove(log)
        if not self.holders:
            await self.stop()

    async def stop(self) -> None:
        """Stop the program's whole process group: stop_signal, then SIGKILL after stop_timeout.
        Idempotent; returns once it has exited (or SIGKILL went unanswered for KILL_WAIT s)."""
        self.stopping = True
        self._forget()
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
            await asyncio.wait({self._start_task})
        if self._transport is None:
            return
        if not self.exited.is_set():
            self._signal(self.launch.stop_signal)
            if not await _within(self.exited.wait(), self.launch.stop_timeout):
                self._event(
                    f"server pid {self.pid} still running {self.launch.stop_timeout:g} s after "
                    f"{self.launch.stop_signal.name}: sending SIGKILL"
                )
                self._signal(signal.SIGKILL)
                await _within(self.exited.wait(), KILL_WAIT)
        await _within(self._closed.wait(), SETTLE)
        self._transport.close()

    def resident_bytes(self) -> int | None:
        """The resident memory of the program and every process under it."""
        if not self.running or self.pid is None:
            return None
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for process in tree:
            with contextlib.suppress(psutil.Error):  # one may exit while we count
                total += process.memory_info().rss
        return total

    # ---- starting ----------------------------------------------------------------------------

    async def _start(self, timeout: float) -> None:
        self.port = free_port()
        command = [self.fill(arg) for arg in self.launch.command]
        env = {key: self.fill(value) for key, value in self.launch.env}
        loop = asyncio.get_running_loop()
        try:
            self._transport, _ = await loop.subprocess_exec(
                lambda: _Output(self),
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.launch.cwd,
                # Its own session, so its own process group: a stop reaches every process it
                # started, and a Ctrl-C aimed at mmserve does not hit it directly.
                start_new_session=True,
                preexec_fn=_dies_with(os.getpid(), self.launch.stop_signal),
            )
        except OSError as exc:  # no such program, not executable, no such cwd
            raise ModelUnavailable(
                f"{self.launch.who}: cannot start {command[0]!r}: {exc.strerror or exc}"
            ) from None
        self._event(f"started server pid {self.pid} on port {self.port}: {command[0]}")
        await self._wait_healthy(self.fill(self.launch.health), timeout)
        self._event(f"server pid {self.pid} is healthy")

    async def _wait_healthy(self, url: str, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(trust_env=False, timeout=HEALTH_TIMEOUT) as client:
            while not await _answers_200(client, url):
                if self.exited.is_set():
                    await _within(self._closed.wait(), SETTLE)  # its last words, if any
                    raise ModelUnavailable(
                        f"{self.launch.who}: its server (pid {self.pid}) exited with code "
                        f"{self.returncode} while starting: {'; '.join(self._last) or 'no output'}"
                    )
                if asyncio.get_running_loop().time() >= deadline:
                    raise ModelUnavailable(
                        f"{self.launch.who}: its server (pid {self.pid}) did not answer "
                        f"{url} with 200 within {timeout:g} s (start_timeout)"
                    )
                await _within(self.exited.wait(), HEALTH_INTERVAL)

    # ---- what the program does (called by _Output) -------------------------------------------

    def output(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            return
        self._last.append(line)
        for log in self._logs:
            log.stderr(line)

    def process_exited(self) -> None:
        # What it started in its group goes with it: no orphan keeps the port, the GPU or our
        # pipes. (A group outlives its leader while any member is left.)
        self._signal(signal.SIGKILL)
        if self.stopping:
            self._event(f"server pid {self.pid} stopped")
        else:
            self._event(f"server pid {self.pid} exited with code {self.returncode}")
        self.exited.set()
        self._forget()
        if not self.stopping:
            for holder in list(self.holders):
                holder.server_exited()

    def output_closed(self) -> None:
        self._closed.set()
        if self._transport is not None:  # exited and every pipe closed: nothing more to read
            self._transport.close()

    # ---- helpers -----------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
            os.killpg(self.pid, sig)

    def _event(self, message: str) -> None:
        for log in self._logs:
            log.event(message)

    def _forget(self) -> None:
        if self._key is not None and _GROUPS.get(self._key) is self:
            del _GROUPS[self._key]


class _Output(asyncio.SubprocessProtocol):
    """The program's stdout and stderr, line by line, and its exit, handed to its Server."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._partial: dict[int, bytes] = {}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        *lines, rest = (self._partial.pop(fd, b"") + data).split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = b""
        if rest:
            self._partial[fd] = rest
        for line in lines:
            self._server.output(line[:MAX_LINE])

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if rest := self._partial.pop(fd, b""):
            self._server.output(rest)

    def process_exited(self) -> None:
        self._server.process_exited()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.output_closed()


# The started servers of groups: see the module doc.
_GROUPS: dict[tuple[str, Launch], Server] = {}


def _server_for(group: str | None, launch: Launch) -> Server:
    """A new server of one's own; or a group's, shared while it runs."""
    if group is None:
        return Server(launch)
    key = (group, launch)
    server = _GROUPS.get(key)
    if server is None or server.stopping or server.exited.is_set():
        server = _GROUPS[key] = Server(launch, key)
    return server


class ServerReplica(Replica):
    """One replica of a managed model: its hold on a started server (its own, or its group's)
    and a RemoteReplica relaying to it."""

    def __init__(self, spec: ModelSpec, device: str, hooks: ReplicaHooks) -> None:
        super().__init__(device)
        self.spec = spec
        self._hooks = hooks
        self._server: Server | None = None
        self._remote: RemoteReplica | None = None
        self._stopped = False
        self._cleanup: asyncio.Task[None] | None = None  # after an exit: see server_exited

    @property
    def info(self) -> WorkerInfo:
        return WorkerInfo(capabilities=CAPABILITIES[self.spec.backend or "openai"])

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server else None

    @property
    def returncode(self) -> int | None:
        return self._server.returncode if self._server else None

    @property
    def alive(self) -> bool:
        running = self._server is not None and self._server.running
        return running and self.loaded_at is not None and not self._stopped

    @property
    def relays_as(self) -> str:
        """The RemoteReplica backend its requests go through (openai or json)."""
        return self.spec.backend or "openai"

    async def _launch(self) -> tuple[Launch, str]:
        """How this replica's server starts, and its OpenAI base URL (${PORT} unfilled)."""
        source = self.spec.source
        model_path = str(await asyncio.to_thread(resolve_source, source)) if source else None
        assert self.spec.base_url is not None  # ModelSpec._managed fills it in
        return Launch.of(self.spec, self.device, model_path), self.spec.base_url

    async def _start(self, timeout: float) -> None:
        launch, base_url = await self._launch()
        self._server = server = self._server_of(launch)
        await server.attach(self, self._hooks.log, self.spec.start_timeout or timeout)
        remote_spec = self.spec.model_copy(
            update={"base_url": server.fill(base_url), "backend": self.relays_as}
        )
        self._remote = RemoteReplica(remote_spec, self.device, self._hooks)
        await self._remote.start(timeout)
        # Its exit may have come between the health check and here, when this replica was not
        # started yet and so not told (server_exited): no await from here to `loaded_at`.
        if not server.running:
            raise ModelUnavailable(f"{launch.who}: its server exited as it became healthy")

    def _server_of(self, launch: Launch) -> Server:
        """The server this replica runs on: its group's (shared), or one of its own."""
        return _server_for(self.spec.group, launch)

    async def stop(self) -> None:
        """Close the client and let go of the server (stopped unless another model of its
        group holds it). Idempotent."""
        self._stopped = True
        if self._remote is not None:
            await self._remote.stop()
        if self._server is not None:
            await self._server.detach(self, self._hooks.log)

    def server_exited(self) -> None:
        """Called by the server when its program exits on its own."""
        if self.loaded_at is None or self._stopped:
            return  # still starting (its start fails), or being stopped
        self._hooks.on_exit(self)
        # The model drops a replica that exited without stopping it: let go here.
        self._cleanup = asyncio.get_running_loop().create_task(self.stop())

    def resident_bytes(self) -> int | None:
        server = self._server
        total = server.resident_bytes() if server else None
        if total is None or server is None or not server.holders:
            return total
        return total // len(server.holders)  # a group's server, counted once in the room

    def _details(self) -> dict[str, Any]:
        if self._server is None:
            return {}
        details: dict[str, Any] = {
            "port": self._server.port,
            "program": Path(self._server.launch.command[0]).name,
        }
        if self.spec.group is not None:
            details.update(group=self.spec.group, group_models=len(self._server.holders))
        return details

    # ---- requests: relayed as a RemoteReplica does -------------------------------------------

    async def relay(self, path: str, body: dict[str, Any]) -> Any:
        return await self._client.relay(path, body)

    def relay_stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        return self._client.relay_stream(path, body)

    async def call(self, body: dict[str, Any]) -> Any:
        return await self._client.call(body)

    @property
    def _client(self) -> RemoteReplica:
        if self._remote is None:
            raise UpstreamError(f"model {self.spec.name!r}: its server is not started")
        return self._remote


def _origin(url: str) -> str:
    """scheme://host:port of a URL (its port may still be ${PORT})."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


async def _answers_200(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def _within(waiting: Awaitable[Any], timeout: float) -> bool:
    """Await `waiting` for at most `timeout` s; whether it finished."""
    try:
        await asyncio.wait_for(waiting, timeout)
    except TimeoutError:
        return False
    return True


def _retrieve(task: asyncio.Task[None]) -> None:
    """A start's failure is its holders' to raise; if all of them left, it is no error."""
    if not task.cancelled():
        task.exception()


def _dies_with(parent: int, sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec function: the child gets `sig` when mmserve dies (Linux's PR_SET_PDEATHSIG),
    and exits at once if mmserve died before that took effect. mmserve's workers ask for the
    same in their own code (`workers.main.die_with_parent`); a foreign program cannot.

    prctl is looked up here, before the fork: the child only calls it. The signal comes when
    the thread that forked ends: the event loop's, which lives as long as mmserve serves."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:
            os._exit(1)

    return preexec
