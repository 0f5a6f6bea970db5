"""WarmPool: started, pre-imported worker processes, each waiting for the next model of its key.

A cold load of a Python-backend model pays the interpreter's start and the engine's imports
(torch and sentence-transformers: seconds, tens of seconds on a busy machine) before it reads a
byte of weights. The pool keeps at most one idle worker per `WarmKey` (backend, kind, device,
threads: what `child_env` and the imports depend on) that has paid all that already:
`python -m mmserve.workers.main --warm KIND BACKEND`, run with the environment a real worker of
that key gets (`child_env`), blocked reading its spec from stdin. A `WorkerProcess` that starts
takes it (`take`), sends it the spec line, and waits for `ready` as from a cold child; then it
asks the pool to fill that key again (`refill`). Unloading ends the replica's process as ever,
so its memory really comes back; only the idle warm workers stay, and they are counted
(`resident_bytes`, `status`): the room counts them against max_memory.

Pre-spawned processes, not a fork server. A fork server would import torch once and fork a
child per load, but forking a process whose imports have started threads (OpenMP's and MKL's
pools, torch's intra-op threads, tokenizers') is unsafe: the child gets the threads' locks in
whatever state they were, without the threads, and can hang in its first parallel region; CUDA
cannot be used at all in a child forked after it was initialised. The environment the imports
read (OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES) differs per key too, so it would take a fork server
per key: a pre-spawned process with more steps and more risk. A warm worker is an ordinary
`workers.main` process that did its imports early, so a warm load runs exactly the code of a
cold one. It costs the memory of the imports while idle (its RSS: measured ~45 MB for the fake
backend, ~420 MB for sentence-transformers on CPU).

One warm worker's life, every step on the event loop's thread:

    fill:   spawned at nice 10 (low priority: it must not slow the loads being served)
    idle:   its stderr kept (replayed into the log of the model that takes it)
    take:   back to nice 0 (best effort: lowering nice takes privilege), handed to the taker
    exit:   one that dies while idle is dropped; the next take or `want` of its key fills it
    close:  stdin closed, SIGTERM, SIGKILL after STOP_GRACE; each exit awaited

A refill after a take waits until that load finished, or REFILL_DELAY at most, so it does not
compete with the load it serves. Only wanted keys are filled: the pool's owner (the engine)
names the keys of its registered Python-worker models (`want`); a program's own `command`, a
llama-server, a remote or in-process model, a Ray bridge need none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mmserve.backends.base import BackendSpec
from mmserve.workers.main import WARM_FLAG
from mmserve.workers.supervisor import MAX_LINE, child_env

__all__ = ["WarmKey", "WarmPool", "WarmProcess"]

REFILL_DELAY = 1.0  # seconds a refill waits at most for the load it follows to finish
LOW_PRIORITY = 10  # the nice of a warm worker until it is taken
STOP_GRACE = 2.0
STDERR_TAIL = 50  # lines of an idle warm worker's stderr kept

_log = logging.getLogger("mmserve.warm")


@dataclass(frozen=True)
class WarmKey:
    """What a worker's environment and imports depend on: one warm worker serves any model of
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
        and device)."""
        placeholder = BackendSpec(
            name=f"warm {self.kind}/{self.backend}",
            kind=self.kind,
            backend=self.backend,
            threads=self.threads,
            device=self.device,
        )
        return child_env(placeholder)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WarmProcess:
    """A warm worker: its process, when it was spawned (time.monotonic()), and the tail of
    what it wrote to stderr while it waited."""

    key: WarmKey
    proc: asyncio.subprocess.Process
    spawned_at: float
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL))
    watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.pid).memory_info().rss)
        return 0

    async def unwatch(self) -> None:
        """Stop reading its stderr (whoever takes it reads it from here on)."""
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher
            self.watcher = None


class WarmPool:
    """At most one idle warm worker per wanted key. Every method runs on the event loop's
    thread; `want` and `refill` return at once and fill in background tasks."""

    def __init__(self, *, refill_delay: float = REFILL_DELAY, python: str | None = None) -> None:
        self.refill_delay = refill_delay
        self._python = python or sys.executable
        self._wanted: set[WarmKey] = set()
        self._idle: dict[WarmKey, WarmProcess] = {}
        self._filling: dict[WarmKey, asyncio.Task[None]] = {}  # at most one fill per key
        self._stopping: set[asyncio.Task[None]] = set()  # idle ones no longer wanted
        self._closed = False

    def want(self, keys: Iterable[WarmKey]) -> None:
        """Keep a warm worker for each of `keys` from now on, and for no other key: those
        without one are filled now, in the background; idle ones of keys no longer wanted
        are stopped (their memory back)."""
        self._wanted = set(keys)
        for key in self._wanted:
            self._refill(key, None)
        for key in [k for k in self._filling if k not in self._wanted]:
            self._filling[key].cancel()
        for key in [k for k in self._idle if k not in self._wanted]:
            task = asyncio.create_task(self._stop(self._idle.pop(key)), name=f"warm stop {key}")
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def refill(self, spec: BackendSpec, after: asyncio.Future[Any] | None = None) -> None:
        """Fill `spec`'s key again if it is wanted and has no warm worker, once `after` (the
        load that took the last one, or spawned cold) is done, or REFILL_DELAY s at most.
        Idempotent: one fill per key at a time."""
        self._refill(WarmKey.of(spec), after)

    def _refill(self, key: WarmKey, after: asyncio.Future[Any] | None) -> None:
        if self._closed or key not in self._wanted or key in self._idle or key in self._filling:
            return
        task = asyncio.create_task(self._fill(key, after), name=f"warm fill {key}")
        self._filling[key] = task
        task.add_done_callback(lambda _: self._filling.pop(key, None))

    async def take(self, spec: BackendSpec) -> WarmProcess | None:
        """The idle warm worker of `spec`'s key, now the caller's (it sends the spec line and
        owns the process from then on); None if there is none. Does not refill: see `refill`."""
        key = WarmKey.of(spec)
        filling = self._filling.get(key)
        if filling is not None and key not in self._idle:
            # Half way through its imports already: finishing them beats starting over cold.
            await asyncio.wait([filling])
        warm = self._idle.pop(key, None)
        if warm is None:
            return None
        await warm.unwatch()
        if warm.proc.returncode is not None:  # died just now; its watcher had not said so yet
            await self._stop(warm)
            return None
        _renice(warm.pid, 0)
        return warm

    async def drop_idle(self, keep: Iterable[WarmKey] = ()) -> None:
        """End the idle warm workers but those of `keep` now (a load needs their memory); the
        keys stay wanted, and are filled again at the next `want` or take."""
        kept = set(keep)
        idle = [self._idle.pop(k) for k in list(self._idle) if k not in kept]
        await asyncio.gather(*(self._stop(w) for w in idle))

    def resident_bytes(self, besides: Iterable[WarmKey] = ()) -> int:
        """The memory the idle warm workers hold (their RSS), but for those of `besides`."""
        skip = set(besides)
        return sum(w.rss_bytes() for k, w in self._idle.items() if k not in skip)

    def status(self) -> list[dict[str, Any]]:
        """One entry per idle warm worker: its key, pid and RSS."""
        return [
            {**w.key.to_json(), "pid": w.pid, "rss_bytes": w.rss_bytes()}
            for w in self._idle.values()
        ]

    async def close(self) -> None:
        """Stop filling and end every idle warm worker, awaiting their exits. Idempotent; the
        pool fills nothing afterwards."""
        self._closed = True
        filling = list(self._filling.values())
        for task in filling:
            task.cancel()  # a spawn cut short is killed and awaited by asyncio itself
        await asyncio.gather(*filling, return_exceptions=True)
        idle, self._idle = list(self._idle.values()), {}
        await asyncio.gather(*(self._stop(w) for w in idle), *self._stopping)

    # ---- the background work -----------------------------------------------------------------

    async def _fill(self, key: WarmKey, after: asyncio.Future[Any] | None) -> None:
        if after is not None:
            await asyncio.wait([after], timeout=self.refill_delay)
            await asyncio.sleep(0.05)  # the owner's view of what is loaded catches up (`want`)
        if self._closed or key in self._idle or key not in self._wanted:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *key.command(self._python),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=key.env(),
                limit=MAX_LINE,
                start_new_session=True,  # as a cold worker: the server stops it, not a Ctrl-C
            )
        except OSError as exc:  # no processes or fds left: the loads spawn cold meanwhile
            _log.warning("could not start a warm worker for %s: %s", key, exc)
            return
        _renice(proc.pid, LOW_PRIORITY)
        warm = WarmProcess(key, proc, spawned_at=time.monotonic())
        self._idle[key] = warm
        warm.watcher = asyncio.create_task(self._watch(warm), name=f"warm {proc.pid}")

    async def _watch(self, warm: WarmProcess) -> None:
        """Read an idle warm worker's stderr (a full pipe would block it) until it is taken
        (cancelled) or exits; one that exits is dropped."""
        assert warm.proc.stderr is not None
        async for raw in warm.proc.stderr:
            warm.stderr.append(raw.decode(errors="replace").rstrip())
        await warm.proc.wait()
        if self._idle.get(warm.key) is warm:
            del self._idle[warm.key]
        if not self._closed:
            _log.warning(
                "warm worker pid %d for %s exited with code %s: %s",
                warm.pid,
                warm.key,
                warm.proc.returncode,
                " | ".join(list(warm.stderr)[-3:]) or "no output",
            )

    async def _stop(self, warm: WarmProcess) -> None:
        await warm.unwatch()
        proc = warm.proc
        if proc.stdin is not None:
            proc.stdin.close()  # a warm worker waiting for its spec exits on EOF
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)  # it holds no model: no need to wait for a clean exit
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
        await proc.wait()


def _renice(pid: int, nice: int) -> None:
    """Set a process's priority, best effort: each of its threads' nice (a thread started later
    inherits its starter's), and its autogroup's (Linux runs each session, and a worker has its
    own, as one group: without that, nice would weigh only against the group's own threads).
    Raising a nice is always allowed; lowering it back takes privilege (CAP_SYS_NICE or
    RLIMIT_NICE), so without it a taken warm worker stays at LOW_PRIORITY."""
    with contextlib.suppress(psutil.Error, PermissionError, ProcessLookupError):
        process = psutil.Process(pid)
        process.nice(nice)
        for thread in process.threads():
            os.setpriority(os.PRIO_PROCESS, thread.id, nice)
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
