"""WarmPool: one fork server per key, which has imported the backend and forks a worker per load.

A cold load of a Python-backend model pays the interpreter's start and the engine's imports
(torch and sentence-transformers: about 4 s of CPU here, more on a busy machine) before it reads
a byte of weights. The pool keeps one warm worker per wanted `WarmKey` (backend, kind, device,
threads: what `child_env` and the imports depend on): `python -m mmserve.workers.main --warm
KIND BACKEND`, run with the environment a real worker of that key gets, which imports once and
then forks a child per load (`workers.forkserver`: why that is safe, and how it is checked). A
`WorkerProcess` that starts asks the pool to `fork` one; the child it gets behaves as a cold one
(`ForkedProcess` has what the supervisor uses of asyncio's Process), and the fork server is at
once ready for the next load: nothing to refill.

Chosen over the earlier design of one pre-started process per key, taken whole by a load and
refilled in the background: a refill is the whole import again, so with swaps every second or
so the next warm worker was never ready (MiniLM and SmolLM2 alternating: 0.17 of one process
loading each in turn; docs/benchmarks.md). Unloading still ends the replica's process, so the
model's memory really comes back; the fork server's own memory (its USS: what would come back
if it ended; its children share the rest) is counted in the room and shown in the status.

One fork server's life, every step on the event loop's thread:

    start:   spawned at nice 10 (it must not slow the loads being served); its stderr kept
    ready:   it says so once imported, with its thread count (forks only with one thread)
    fork:    the pool sends a spec and the child's three pipes; the child is reniced to 0 and
             handed to the caller; the fork server reports the child's exit code later
    stop:    its socket closed (the key no longer wanted, or its memory needed by a load, and
             no child of its own alive); it exits, awaited
    exit:    one that dies on its own is dropped; the next `want` of its key starts another

Only wanted keys get one: the pool's owner (the engine) names the keys of its registered
Python-worker models (`want`); a program's own `command`, a llama-server, a remote or in-process
model, a Ray bridge need none. A fork server with children is kept while they run, wanted or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from mmserve.backends.base import BackendSpec
from mmserve.workers.main import WARM_FLAG
from mmserve.workers.supervisor import MAX_LINE, child_env

__all__ = ["ForkServer", "ForkedProcess", "WarmKey", "WarmPool"]

LOW_PRIORITY = 10  # the nice of a fork server (and so of a child until it is handed over)
STOP_GRACE = 2.0
STDERR_TAIL = 50  # lines of a fork server's stderr kept
UNKNOWN_CODE = -1  # the exit code of a child whose fork server died before it

_log = logging.getLogger("mmserve.warm")


@dataclass(frozen=True)
class WarmKey:
    """What a worker's environment and imports depend on: one fork server serves any model of
    the same key."""

    backend: str
    kind: str
    device: str
    threads: int

    @classmethod
    def of(cls, spec: BackendSpec) -> WarmKey:
        return cls(backend=spec.backend, kind=spec.kind, device=spec.device, threads=spec.threads)

    def command(self, python: str) -> list[str]:
        return [python, "-m", "mmserve.workers.main", WARM_FLAG, self.kind, self.backend]

    def env(self) -> dict[str, str]:
        """The environment a real worker of this key gets (`child_env` reads only its threads
        and device), but for OpenBLAS's threads: one. numpy's OpenBLAS starts its thread pool
        as it loads (measured: 1 thread more per thread asked for), and a fork server must have
        no thread but its own; torch's threads (OpenMP, MKL) start at the first operation, and
        each child sets their number (`torch.set_num_threads`). So numpy's own BLAS runs on one
        thread in a forked child: the models' work is torch's."""
        placeholder = BackendSpec(
            name=f"warm {self.kind}/{self.backend}",
            kind=self.kind,
            backend=self.backend,
            threads=self.threads,
            device=self.device,
        )
        return {**child_env(placeholder), "OPENBLAS_NUM_THREADS": "1"}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ForkedProcess:
    """A worker forked by a fork server, as the supervisor sees a child: pid, pipes, exit code,
    signals. Its exit code comes from the fork server (its parent); the pidfd makes signals safe
    from pid reuse and tells when it is gone if the fork server went first."""

    def __init__(
        self,
        pid: int,
        server: ForkServer,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
    ) -> None:
        self.pid = pid
        self.server_pid = server.pid
        self.spawned_at = server.spawned_at  # when the imports it skipped began
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()
        self._pidfd: int | None = None
        with contextlib.suppress(ProcessLookupError):  # gone already: its report will say how
            self._pidfd = os.pidfd_open(pid)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._pidfd is None or self.returncode is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def exited(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        self._forget_pidfd()
        if not self._exited.done():
            self._exited.set_result(code)

    def orphaned(self) -> None:
        """Its fork server died: its exit will not be reported, so watch for it here."""
        if self._pidfd is not None and self.returncode is None:
            asyncio.get_running_loop().add_reader(self._pidfd, self.exited, UNKNOWN_CODE)

    def _forget_pidfd(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class ForkServer:
    """One running fork server: its process, its socket, what it has said, its live children."""

    def __init__(self, key: WarmKey, proc: asyncio.subprocess.Process, sock: socket.socket):
        self.key = key
        self.proc = proc
        self.sock = sock  # our end; closing it tells the fork server to stop
        self.spawned_at = time.monotonic()
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()  # threads
        self.children: dict[int, ForkedProcess] = {}
        self.stderr: deque[str] = deque(maxlen=STDERR_TAIL)
        # Forks asked for, not yet answered, in order: the answer, and the child's pipes.
        self._forks: deque[tuple[asyncio.Future[ForkedProcess], _ChildPipes]] = deque()
        self._tasks = [
            asyncio.create_task(self._read_lines(), name=f"fork server {proc.pid}"),
            asyncio.create_task(self._read_stderr(), name=f"fork server {proc.pid} stderr"),
        ]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def idle(self) -> bool:
        """No child of its own alive, and none being forked."""
        return not self.children and not self._forks

    @property
    def stopping(self) -> bool:
        return self.sock.fileno() == -1

    def unique_bytes(self) -> int:
        """Memory that would come back if it ended (its USS; its children share the rest)."""
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.pid).memory_full_info().uss)
        return 0

    async def fork(self, spec: BackendSpec) -> ForkedProcess | None:
        """A child loading `spec`, or None (the fork server is gone, stopping, or refused: the
        caller spawns a cold worker)."""
        if self.stopping or self.proc.returncode is not None:
            return None
        await asyncio.wait([self.ready])  # cancelled if it exits first
        if self.ready.cancelled() or self.ready.result() != 1 or self.stopping:
            return None
        # Our ends become streams before the fork is asked for, so that the child is in
        # `children` the moment its pid is read (`_heard`): its exit, reported next, must
        # find it there, or its wait would never end.
        ours, theirs = _pipes()
        try:
            pipes = await _streams(*ours)  # closes ours if it fails
            sent = not self.stopping and self._ask(spec, theirs)
        finally:
            _close(*theirs)  # the fork server has its own copies now
        if not sent:
            pipes.close()
            return None
        answer: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
        self._forks.append((answer, pipes))
        try:
            return await answer
        except (RuntimeError, ConnectionResetError):  # refused, or the fork server died
            pipes.close()
            return None
        except asyncio.CancelledError:  # our caller left: a child forked all the same finds
            pipes.close()  # its stdin closed and exits
            raise

    def _ask(self, spec: BackendSpec, fds: list[int]) -> bool:
        try:
            socket.send_fds(self.sock, [spec.model_dump_json().encode()], fds)
        except OSError as exc:
            _log.warning("could not ask fork server pid %d for a worker: %s", self.pid, exc)
            return False
        return True

    def stop(self) -> None:
        """Tell it to stop (it forks nothing more, and exits once its children have)."""
        if not self.stopping:
            self.sock.close()

    async def wait_stopped(self) -> None:
        """Stop it and await its exit (SIGTERM, then SIGKILL, after STOP_GRACE each)."""
        self.stop()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), STOP_GRACE)
                break
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {
            **self.key.to_json(),
            "pid": self.pid,
            "ready": self.ready.done() and not self.ready.cancelled(),
            "children": sorted(self.children),
            "unique_bytes": self.unique_bytes(),
        }

    async def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                self._heard(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                _log.warning("fork server pid %d said %r", self.pid, raw[:200])
        await self.proc.wait()
        self.ready.cancel()
        for answer, _ in self._forks:
            if not answer.done():
                answer.set_exception(ConnectionResetError("the fork server exited"))
        for child in self.children.values():
            child.orphaned()
        self.children.clear()
        self.sock.close()

    def _heard(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            threads = int(message["threads"])
            if threads != 1:
                _log.warning(
                    "fork server pid %d for %s runs %d threads after its imports: it will not "
                    "fork (loads of this key start cold)",
                    self.pid,
                    self.key,
                    threads,
                )
            if not self.ready.done():
                self.ready.set_result(threads)
        elif "forked" in message or "refused" in message:
            answer, pipes = self._forks.popleft()
            if answer.done():  # its caller left; the child exits on its own (stdin closed)
                return
            if "forked" in message:
                pid = int(message["forked"])
                self.children[pid] = child = ForkedProcess(
                    pid, self, pipes.stdin, pipes.stdout, pipes.stderr
                )
                _renice(pid, 0)
                answer.set_result(child)
            else:
                answer.set_exception(RuntimeError(message["refused"]))
                _log.warning("fork server pid %d refused a load: %s", self.pid, message["refused"])
        elif "exited" in message:
            ended = self.children.pop(int(message["exited"]), None)
            if ended is not None:
                ended.exited(int(message["code"]))

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())


class WarmPool:
    """A fork server per wanted key. Every method runs on the event loop's thread; `want`
    returns at once and starts fork servers in the background."""

    def __init__(self, *, python: str | None = None) -> None:
        self._python = python or sys.executable
        self._wanted: set[WarmKey] = set()
        self._servers: dict[WarmKey, ForkServer] = {}
        self._starting: dict[WarmKey, asyncio.Task[None]] = {}  # at most one start per key
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    def want(self, keys: Iterable[WarmKey]) -> None:
        """Keep a fork server for each of `keys` from now on: those without one start now, in
        the background; those of other keys stop once they have no children (memory back)."""
        self._wanted = set(keys)
        for key in self._wanted:
            self._start(key)
        for key in [k for k in self._starting if k not in self._wanted]:
            self._starting[key].cancel()
        self._stop_where(lambda s: s.key not in self._wanted)

    async def fork(self, spec: BackendSpec) -> ForkedProcess | None:
        """A worker for `spec` forked by its key's fork server (waiting for its imports if it is
        still at them); None when there is none (the caller spawns a cold worker)."""
        key = WarmKey.of(spec)
        starting = self._starting.get(key)
        if starting is not None:
            await asyncio.wait([starting])
        server = self._servers.get(key)
        if server is None:
            return None
        return await server.fork(spec)  # None from a dead one, which its watcher drops

    async def drop_idle(self, keep: Iterable[WarmKey] = ()) -> None:
        """End the fork servers without children but those of `keys` now (a load needs their
        memory); the keys stay wanted, and get one again at the next `want`."""
        kept = set(keep)
        await asyncio.gather(*self._stop_where(lambda s: s.key not in kept))

    def resident_bytes(self, besides: Iterable[WarmKey] = ()) -> int:
        """The memory the fork servers hold of their own (USS), but for those of `besides`."""
        skip = set(besides)
        return sum(s.unique_bytes() for k, s in self._servers.items() if k not in skip)

    def status(self) -> list[dict[str, Any]]:
        """One entry per fork server: its key, pid, readiness, children and own memory."""
        return [s.status() for s in self._servers.values()]

    async def close(self) -> None:
        """Stop every fork server, awaiting their exits. Idempotent; the pool starts nothing
        afterwards."""
        self._closed = True
        starting = list(self._starting.values())
        for task in starting:
            task.cancel()  # a spawn cut short is killed and awaited by asyncio itself
        await asyncio.gather(*starting, return_exceptions=True)
        servers, self._servers = list(self._servers.values()), {}
        await asyncio.gather(*(s.wait_stopped() for s in servers), *self._stopping)

    # ---- the background work -----------------------------------------------------------------

    def _start(self, key: WarmKey) -> None:
        if self._closed or key in self._servers or key in self._starting:
            return
        task = asyncio.create_task(self._spawn(key), name=f"fork server start {key}")
        self._starting[key] = task
        task.add_done_callback(lambda _: self._starting.pop(key, None))

    async def _spawn(self, key: WarmKey) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                *key.command(self._python),
                stdin=theirs.fileno(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=key.env(),
                limit=MAX_LINE,
                start_new_session=True,  # as a cold worker: the server stops it, not a Ctrl-C
            )
        except OSError as exc:  # no processes or fds left: the loads spawn cold meanwhile
            ours.close()
            _log.warning("could not start a fork server for %s: %s", key, exc)
            return
        except asyncio.CancelledError:  # the pool closed, or the key is no longer wanted
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        _renice(proc.pid, LOW_PRIORITY)
        server = ForkServer(key, proc, ours)
        self._servers[key] = server
        watcher = asyncio.create_task(self._watch(server), name=f"fork server watch {proc.pid}")
        self._stopping.add(watcher)
        watcher.add_done_callback(self._stopping.discard)

    async def _watch(self, server: ForkServer) -> None:
        await server.proc.wait()
        self._drop(server)
        if not self._closed and not server.stopping:
            _log.warning(
                "fork server pid %d for %s exited with code %s: %s",
                server.pid,
                server.key,
                server.proc.returncode,
                " | ".join(list(server.stderr)[-3:]) or "no output",
            )

    def _drop(self, server: ForkServer) -> None:
        if self._servers.get(server.key) is server:
            del self._servers[server.key]

    def _stop_where(self, condition: Any) -> list[asyncio.Task[None]]:
        """Stop (in background tasks, returned) the fork servers without children that meet
        `condition`."""
        tasks = []
        for server in [s for s in self._servers.values() if s.idle and condition(s)]:
            self._drop(server)
            task = asyncio.create_task(server.wait_stopped(), name=f"fork server stop {server.pid}")
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            tasks.append(task)
        return tasks


def _pipes() -> tuple[tuple[int, int, int], list[int]]:
    """Three pipes for a child: (our stdin write end, stdout and stderr read ends), and the
    child's ends (stdin read, stdout and stderr write), in fd order 0, 1, 2."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    return (stdin_w, stdout_r, stderr_r), [stdin_r, stdout_w, stderr_w]


@dataclass
class _ChildPipes:
    """Our ends of a forked child's pipes as asyncio streams, as asyncio's subprocesses have."""

    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    transports: list[asyncio.BaseTransport]

    def close(self) -> None:
        for transport in self.transports:
            transport.close()


async def _streams(stdin_w: int, stdout_r: int, stderr_r: int) -> _ChildPipes:
    loop = asyncio.get_running_loop()
    files = [os.fdopen(stdin_w, "wb", buffering=0)]
    files += [os.fdopen(fd, "rb", buffering=0) for fd in (stdout_r, stderr_r)]
    transports: list[asyncio.BaseTransport] = []
    readers: list[asyncio.StreamReader] = []
    try:
        pipe, flow = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, files[0])
        transports.append(pipe)
        for file in files[1:]:
            reader, read = await _reader(file)
            transports.append(read)
            readers.append(reader)
    except BaseException:  # a file asyncio did not take (or took and closed) is closed here
        for transport in transports:
            transport.close()
        for file in files:
            file.close()
        raise
    stdin = asyncio.StreamWriter(pipe, flow, None, loop)
    return _ChildPipes(stdin, readers[0], readers[1], transports)


async def _reader(file: IO[bytes]) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    reader = asyncio.StreamReader(limit=MAX_LINE)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, file)
    return reader, transport


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _renice(pid: int, nice: int) -> None:
    """Set a process's priority, best effort: each of its threads' nice (a thread started later
    inherits its starter's), and its autogroup's (Linux runs each session, and a worker has its
    own, as one group: without that, nice would weigh only against the group's own threads).
    Raising a nice is always allowed; lowering it back takes privilege (CAP_SYS_NICE or
    RLIMIT_NICE), so without it a forked child stays at LOW_PRIORITY."""
    with contextlib.suppress(psutil.Error, PermissionError, ProcessLookupError):
        process = psutil.Process(pid)
        process.nice(nice)
        for thread in process.threads():
            os.setpriority(os.PRIO_PROCESS, thread.id, nice)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
