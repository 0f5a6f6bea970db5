"""The parent's side of one child process: spawn, wait for ready, route replies, stop.

Lifecycle (one owner: the replica that holds this object):

    start() -> [ready] -> request()* -> stop()
          \\-> load failure: start() raises ModelUnavailable with the child's reason
    at any time the child may exit on its own: `exited` is set, every pending request
    fails with WorkerCrashed, and `on_exit` is called once.

Restarting is not done here: a WorkerProcess runs one child once; the manager makes a new one.

Given a `WarmPool` (workers.warm), `start` has the fork server of its key fork the child when there
is one (a `ForkedProcess`: the same pipes and signals as a spawned child, then `ready` as from a
cold one) and spawns a cold one otherwise. Where the load's time went is `load` (`LoadPhases`),
from the times the child reports in `ready`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from mmserve.backends.base import BackendSpec
from mmserve.errors import InvalidRequest, MMServeError, ModelUnavailable, WorkerCrashed, from_kind
from mmserve.logs import ModelLog
from mmserve.workers.main import PARENT_PID_ENV
from mmserve.workers.protocol import (
    PROTOCOL_VERSION,
    Chunk,
    ErrorReply,
    LoadTimes,
    Pong,
    Ready,
    Reply,
    Request,
    Result,
    WorkerInfo,
    decode_reply,
    encode,
)

if TYPE_CHECKING:  # workers.warm imports this module
    from mmserve.workers.warm import WarmPool

__all__ = ["LoadPhases", "WorkerProcess", "child_env"]

# A reply line can hold a batch of embeddings: far above asyncio's 64 KiB default.
MAX_LINE = 256 * 1024 * 1024
STOP_GRACE = 5.0

_Pending = asyncio.Queue[Chunk | Result | ErrorReply | Pong | MMServeError]


class Child(Protocol):
    """What a WorkerProcess uses of its child: asyncio's Process, or a `ForkedProcess`."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdin(self) -> asyncio.StreamWriter | None: ...
    @property
    def stdout(self) -> asyncio.StreamReader | None: ...
    @property
    def stderr(self) -> asyncio.StreamReader | None: ...
    async def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def child_env(spec: BackendSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: its thread budget, its device, and no busy-waiting threads.

    OMP_WAIT_POLICY=PASSIVE matters on a shared CPU: llama.cpp's OpenMP threads otherwise spin
    between tokens and starve the other models' processes (figures in docs/benchmarks.md).
    """
    env = dict(os.environ if base is None else base)
    threads = str(spec.threads)
    env.update(
        OMP_WAIT_POLICY="PASSIVE",
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env[PARENT_PID_ENV] = str(os.getpid())
    # One device per replica: the child sees only its own GPU (as device 0), or none.
    env["CUDA_VISIBLE_DEVICES"] = spec.device.removeprefix("cuda:") if spec.device != "cpu" else ""
    return env


@dataclass(frozen=True)
class LoadPhases:
    """Where one replica's start went, in seconds, as `load` in its status.

    process_s: spawn until the child's main() ran; imports_s: until its backend's module was
    imported; weights_s: the backend loading its model; warmup_s: a first-token warm-up (0 for a
    backend that does none); total_s: spawn until `ready`, as the parent saw it. For a child
    forked by a warm worker the clock starts at the request to fork, so process_s is the fork
    and imports_s ~0, and saved_s is what the warm worker had done of both before. A child that
    reports no times (a user's program) has only total_s.
    """

    total_s: float
    warm: bool
    process_s: float | None = None
    imports_s: float | None = None
    weights_s: float | None = None
    warmup_s: float | None = None
    saved_s: float | None = None

    @classmethod
    def measure(
        cls, times: LoadTimes | None, began: float, ready: float, spawned: float | None = None
    ) -> LoadPhases:
        """From the child's `times` (its own time.monotonic(): the clock is system-wide), the
        time the parent spawned or took it (`began`) and got `ready`; `spawned`: when a warm
        worker was spawned (None: this start spawned it)."""
        total, warm = round(ready - began, 4), spawned is not None
        if times is None:
            return cls(total_s=total, warm=warm)
        main_ran = max(times.started, began)
        saved = max(0.0, min(times.imported, began) - spawned) if spawned is not None else None
        return cls(
            total_s=total,
            warm=warm,
            process_s=round(max(0.0, times.started - began), 4),
            imports_s=round(max(0.0, times.imported - main_ran), 4),
            weights_s=round(times.weights_s, 4),
            warmup_s=round(times.warmup_s, 4),
            saved_s=None if saved is None else round(saved, 4),
        )

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "saved_s" or self.warm}


class WorkerProcess:
    """One child running `mmserve.workers.main` (or a user program speaking the same protocol)."""

    def __init__(
        self,
        spec: BackendSpec,
        log: ModelLog,
        on_exit: Callable[[WorkerProcess], None] | None = None,
        command: list[str] | None = None,
        heartbeat: tuple[float, float] | None = None,
        warm: WarmPool | None = None,
    ) -> None:
        self.spec = spec
        self.log = log
        self.on_exit = on_exit
        self.heartbeat = heartbeat  # (ping every N s, kill if no pong within M s)
        self.warm = warm if command is None else None  # a user's program is never pre-started
        self.command = command or [
            sys.executable,
            "-m",
            "mmserve.workers.main",
            spec.model_dump_json(),
        ]
        self.info = WorkerInfo()
        self.details: dict[str, Any] = {}  # the child's own report, from `ready` and each `pong`
        self.load: LoadPhases | None = None  # where the start's time went, once ready
        self._began = 0.0  # time.monotonic() when the child was spawned or asked to fork
        self._warm_since: float | None = None  # when the warm worker it forked from started
        self.exited = asyncio.Event()
        self.stopping = False
        self._proc: Child | None = None
        self._ready: asyncio.Future[WorkerInfo] | None = None
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []  # the stdout and stderr readers
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self, timeout: float) -> WorkerInfo:
        """Fork the child from a warm worker or spawn it, and wait for `ready`. Raises
        ModelUnavailable with the reason."""
        self._ready = asyncio.get_running_loop().create_future()
        self._began = time.monotonic()
        if not await self._fork_warm():
            self._proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child_env(self.spec),
                limit=MAX_LINE,
                # Its own session: a Ctrl-C aimed at the server does not hit the children
                # directly; the server stops them in order.
                start_new_session=True,
            )
            self.log.event(f"started worker pid {self._proc.pid} on {self.spec.device}")
        self._tasks = [
            asyncio.create_task(self._read_stderr()),
            asyncio.create_task(self._read_replies()),
        ]
        try:
            self.info = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except (TimeoutError, MMServeError, asyncio.CancelledError) as exc:
            self._ready.cancel()  # nobody waits for it any more
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise ModelUnavailable(
                    f"model {self.spec.name!r} did not load within {timeout:.0f} s"
                ) from None
            raise
        if self.heartbeat is not None:
            self._heartbeat = asyncio.create_task(self._watch(*self.heartbeat))
        return self.info

    async def _fork_warm(self) -> bool:
        """Have the pool's warm worker of this key fork the child, if it has one."""
        forked = await self.warm.fork(self.spec) if self.warm is not None else None
        if forked is None:
            return False
        self._proc, self._warm_since = forked, forked.spawned_at
        self.log.event(
            f"forked worker pid {forked.pid} from warm worker pid {forked.server_pid} "
            f"on {self.spec.device}"
        )
        return True

    async def ping(self, timeout: float) -> bool:
        """True if the child answers a ping within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                async for _ in self.request("ping", {}):
                    pass
        except (TimeoutError, MMServeError):
            return False
        return True

    async def _watch(self, interval: float, timeout: float) -> None:
        """Ping the child every `interval` s; one that stays silent for `timeout` s is hung:
        kill it, and the usual crash handling (fail its requests, restart) follows."""
        while not self.exited.is_set() and not self.stopping:
            await asyncio.sleep(interval)
            if self.exited.is_set() or self.stopping or await self.ping(timeout):
                continue
            self.log.event(
                f"worker pid {self.pid} did not answer a ping within {timeout:g} s: killing it"
            )
            with contextlib.suppress(ProcessLookupError):
                if self._proc is not None:
                    self._proc.kill()
            return

    async def request(self, op: str, body: dict[str, Any]) -> AsyncGenerator[Chunk | Result, None]:
        """Send one request; yield its chunks, then its result. Leaving early cancels it.

        Raises the error the child reported (rebuilt from its kind), or WorkerCrashed.
        """
        if self.exited.is_set() or self._proc is None or self._proc.stdin is None:
            raise WorkerCrashed(f"the worker of model {self.spec.name!r} is not running")
        rid = str(next(self._ids))
        queue: _Pending = asyncio.Queue()
        self._pending[rid] = queue
        finished = False
        try:
            self._send(Request(op=op, id=rid, body=body))  # type: ignore[arg-type]
            while True:
                reply = await queue.get()
                if isinstance(reply, MMServeError):
                    finished = True
                    raise reply
                if isinstance(reply, ErrorReply):
                    finished = True
                    raise from_kind(reply.error.kind, reply.error.message)
                if isinstance(reply, Chunk):
                    yield reply
                elif isinstance(reply, Result):
                    finished = True
                    yield reply
                    return
                else:  # Pong: the whole answer to a ping
                    finished = True
                    return
        finally:
            self._pending.pop(rid, None)
            if not finished:  # the caller left (client gone, task cancelled): stop the work
                self._send(Request(op="cancel", id=rid))

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Ask the child to exit; TERM then KILL if it does not. Idempotent."""
        self.stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._send(Request(op="shutdown"))
            if proc.stdin:
                proc.stdin.close()
            await self._wait_or_signal(proc, grace)
        self._stop_heartbeat()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wait_or_signal(self, proc: Child, grace: float) -> None:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
                return

    def _send(self, request: Request) -> None:
        proc = self._proc
        if (
            proc is None
            or proc.stdin is None
            or proc.stdin.is_closing()
            or proc.returncode is not None
        ):
            return
        # Lines are small and the child reads continuously, so no drain: this never blocks.
        try:
            line = encode(request)
        except PydanticSerializationError:  # the API refuses such text first; this is the backstop
            raise InvalidRequest("the request holds text that is not valid Unicode") from None
        proc.stdin.write(line)

    async def _read_stderr(self) -> None:
        assert self._proc and self._proc.stderr
        async for raw in self._proc.stderr:
            self.log.stderr(raw.decode(errors="replace").rstrip())

    async def _read_replies(self) -> None:
        assert self._proc and self._proc.stdout
        try:
            async for line in self._proc.stdout:
                self._dispatch(line)
        finally:
            await self._proc.wait()
            self._on_child_exit()

    def _dispatch(self, line: bytes) -> None:
        try:
            reply: Reply = decode_reply(line)
        except ValidationError:
            self.log.event(f"ignored a malformed line from the worker: {line[:200]!r}")
            return
        if isinstance(reply, Ready | Pong) and reply.details:
            self.details = reply.details
        if isinstance(reply, Ready):
            if self.load is None:
                self.load = LoadPhases.measure(
                    reply.load, self._began, time.monotonic(), self._warm_since
                )
            error = None
            if reply.protocol != PROTOCOL_VERSION:
                error = ModelUnavailable(
                    f"the worker of model {self.spec.name!r} speaks protocol {reply.protocol}; "
                    f"this server speaks {PROTOCOL_VERSION}"
                )
            self._resolve_ready(reply.info, error)
        elif reply.id is None:
            if isinstance(reply, ErrorReply):
                self._resolve_ready(
                    None,
                    ModelUnavailable(
                        f"model {self.spec.name!r} failed to load: {reply.error.message}"
                    ),
                )
                self.log.event(f"worker error: {reply.error.message}")
        elif (queue := self._pending.get(reply.id)) is not None:
            queue.put_nowait(reply)
        # Replies to requests nobody waits for any more (cancelled) are dropped.

    def _resolve_ready(self, info: WorkerInfo | None, error: MMServeError | None) -> None:
        if self._ready is None or self._ready.done():
            return
        if error is not None:
            self._ready.set_exception(error)
        else:
            self._ready.set_result(info or WorkerInfo())

    def _stop_heartbeat(self) -> None:
        # The heartbeat itself kills a hung child, whose exit comes back here: never cancel oneself.
        if self._heartbeat is not None and self._heartbeat is not asyncio.current_task():
            self._heartbeat.cancel()

    def _on_child_exit(self) -> None:
        code = self.returncode
        reason = f"the worker of model {self.spec.name!r} (pid {self.pid}) exited with code {code}"
        self.log.event(reason if not self.stopping else f"worker pid {self.pid} stopped")
        detail = "; ".join(self.log.tail(3))
        self._resolve_ready(None, ModelUnavailable(f"{reason} while loading: {detail}"))
        for queue in self._pending.values():
            queue.put_nowait(WorkerCrashed(reason))
        self.exited.set()
        self._stop_heartbeat()
        if self.on_exit is not None:
            self.on_exit(self)
