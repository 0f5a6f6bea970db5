"""A warm worker's side: `python -m mmserve.workers.main --warm KIND BACKEND`, a fork server.

It imports the backend's module once (torch and sentence-transformers: seconds of CPU) and runs
its `prepare` (what a process's first load would do beyond the weights: transformers' lazy
imports and tables, 590 -> 106 ms of MiniLM's load in each child), then forks one worker per
load that its pool (`workers.warm`) asks for. Each forked child is an
ordinary worker from the line after the imports on: it loads its model, says `ready`, serves
the protocol on its own pipes, and exits when its replica stops. The fork server stays, so the
next load of the same key forks again at once: no process start, no imports, no refill.

Why forking is safe here, and how that is checked rather than assumed: a fork copies only the
calling thread, so a process whose imports started threads (OpenMP's and MKL's pools, torch's
intra-op threads, tokenizers') would hand its child their locks in whatever state they were, and
the child could hang in its first parallel region. Importing starts none of them (they start at
the first parallel operation, which the fork server never runs; TOKENIZERS_PARALLELISM is off):
measured, sentence-transformers on CPU leaves exactly one thread after its imports. The fork
server counts its threads (`/proc/self/task`) after the imports and before every fork, and
refuses to fork with more than one (its pool then spawns cold workers). CUDA is never touched
before a fork: the imports do not initialise it, and only a child loads a model.

The conversation, on three descriptors given at spawn:

    fd 0  a Unix SOCK_SEQPACKET socket: one message per load, the BackendSpec JSON, with the
          child's stdin, stdout and stderr pipes attached (SCM_RIGHTS); EOF: no more loads
    fd 1  JSON lines to the pool: {"ready": T, "imported": T, "threads": N} once imported,
          {"forked": PID} or {"refused": REASON} per load, {"exited": PID, "code": C} per child
    fd 2  its own log

A fork server whose pool let it go (EOF) forks nothing more but lives until its last child has
exited: a child's parent must not vanish under it (PR_SET_PDEATHSIG would stop the child, and an
orphan's exit code would be lost). It dies with the server (PR_SET_PDEATHSIG), and its children
with it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

from mmserve.backends import BackendSpec

__all__ = ["MAX_SPEC", "live_threads", "serve_forks"]

MAX_SPEC = 1 << 20  # bytes of one spec message


def live_threads() -> int:
    """The threads this process runs (the kernel's count: a library's own threads included)."""
    return sum(1 for _ in Path("/proc/self/task").iterdir())


class _Reporter:
    """Writes whole lines to the pool (each under PIPE_BUF, one write: atomic, so the SIGCHLD
    handler's lines never split the main loop's)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.fd = out.fileno()

    def say(self, **message: Any) -> None:
        os.write(self.fd, json.dumps(message).encode() + b"\n")


def serve_forks(
    kind: str,
    backend: str,
    out: IO[bytes],
    imported: float,
    run_child: Any,
) -> int:
    """Fork a worker per spec received on fd 0 until EOF, then wait for the children. Each child
    calls `run_child(spec, started, imported)` (the worker's load-and-serve, `workers.main`) and
    exits with what it returns."""
    reporter = _Reporter(out)
    sock = socket.socket(fileno=os.dup(0))  # fd 0 itself becomes the child's stdin
    sock.setblocking(True)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    children: set[int] = set()

    def reap(_signum: int = 0, _frame: object = None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            reporter.say(exited=pid, code=_code_of(status))

    signal.signal(signal.SIGCHLD, reap)
    threads = live_threads()
    reporter.say(ready=time.monotonic(), imported=imported, threads=threads)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, MAX_SPEC, 3)
        except OSError as exc:  # the pool's end is broken: nothing more will come
            print(f"fork server: {exc}", file=sys.stderr)
            break
        if not data:
            for fd in fds:
                os.close(fd)
            break
        # SIGCHLD waits until the pool has heard of the child: its "exited" never comes first.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = _fork(data, fds, kind, backend, reporter, sock, out, imported, run_child)
            if pid is not None:
                children.add(pid)
                reporter.say(forked=pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    sock.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while children:  # linger: each child's parent stays until it is done
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        children.discard(pid)
        reporter.say(exited=pid, code=_code_of(status))
    return 0


def _fork(
    data: bytes,
    fds: list[int],
    kind: str,
    backend: str,
    reporter: _Reporter,
    sock: socket.socket,
    out: IO[bytes],
    imported: float,
    run_child: Any,
) -> int | None:
    """Fork one child for the spec in `data`; its pid, or None after saying why not."""
    try:
        if len(fds) != 3:
            raise ValueError(f"a load needs 3 descriptors (stdin, stdout, stderr), got {len(fds)}")
        spec = BackendSpec.model_validate_json(data)
        if (spec.kind, spec.backend) != (kind, backend):
            raise ValueError(f"a fork server of {kind}/{backend} got a {spec.kind}/{spec.backend}")
        threads = live_threads()
        if threads != 1:
            raise RuntimeError(f"{threads} threads are running: forking is not safe")
    except (ValueError, RuntimeError) as exc:
        for fd in fds:
            os.close(fd)
        reporter.say(refused=str(exc))
        return None
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            sock.close()
            os.setsid()  # its own session, as a cold worker's: its own scheduling group
            out.close()  # the fork server's line to its pool is not the child's
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            code = run_child(spec, time.monotonic(), imported)
        except BaseException:  # a child must exit here, whatever happened
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return pid


def _code_of(status: int) -> int:
    """A wait status as asyncio reports a child's exit: its code, or minus its signal."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
