"""Child entry point: `python -m mmserve.workers.main SPEC_JSON`, or, for a warm worker
(a fork server: `workers.forkserver`), `python -m mmserve.workers.main --warm KIND BACKEND`.

Loads one backend, says `ready`, then serves protocol requests from stdin until stdin closes or
a `shutdown` arrives. The main thread reads stdin (so `ping` and `cancel` are answered even while
a model is busy); one executor thread runs requests in turn, because an engine such as llama.cpp
runs one sequence at a time.

A warm worker imports the backend's module and then forks one child per load it is asked for;
each child goes on from `load_and_serve`, as a cold worker does after its imports. Either way
`ready` carries `LoadTimes`: when main() began (for a forked child: when it was forked), when the
backend's module was imported, and how long the weights took, so the parent can say where a
load's time went.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import IO

from pydantic import BaseModel, ValidationError

from mmserve.backends import Backend, BackendSpec, backend_class, create_backend
from mmserve.errors import MMServeError
from mmserve.types import ChatRequest, CompletionRequest, EmbedRequest, TextDelta, TextEvent
from mmserve.workers.forkserver import serve_forks
from mmserve.workers.protocol import (
    Chunk,
    ErrorInfo,
    ErrorReply,
    LoadTimes,
    Pong,
    Ready,
    Request,
    Result,
    decode_request,
    embed_result_data,
    encode,
)

PARENT_PID_ENV = "MMSERVE_PARENT_PID"
WARM_FLAG = "--warm"


def claim_stdout() -> IO[bytes]:
    """Keep fd 1 for the protocol alone: move it to a private fd and point fd 1 at stderr,
    so a library that prints cannot corrupt the stream."""
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(private, "wb")


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux), so no child is orphaned even
    when the server is SIGKILLed. stdin EOF covers the other systems."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and int(expected) != os.getppid():  # the parent died before prctl took effect
        sys.exit(0)


def request_id_of(line: bytes) -> str | None:
    """The `id` of a request line that failed validation, if it has a readable one."""
    try:
        rid = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) else None


def brief(exc: ValidationError) -> str:
    """A validation error in one line, without pydantic's documentation links."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


class ReplyWriter:
    """Writes protocol lines; safe to call from the reader and the executor threads."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()  # one whole line at a time, from either thread

    def send(self, message: BaseModel) -> None:
        with self._lock:
            self._out.write(encode(message))
            self._out.flush()

    def error(self, request_id: str | None, kind: str, message: str) -> None:
        self.send(ErrorReply(id=request_id, error=ErrorInfo(kind=kind, message=message)))


class Job:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.cancelled = threading.Event()


class Worker:
    """Serves one loaded backend. `serve` returns when stdin closes or on `shutdown`."""

    def __init__(self, backend: Backend, writer: ReplyWriter) -> None:
        self.backend = backend
        self.writer = writer
        self.jobs: dict[str, Job] = {}
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.capabilities = set(backend.info().capabilities)

    def serve(self, stdin: IO[bytes]) -> None:
        executor = threading.Thread(target=self._execute_all, name="executor", daemon=True)
        executor.start()
        for line in stdin:
            if line.strip() and not self._handle(line):
                break  # `shutdown`: finish what was received, then exit
        else:
            for job in list(self.jobs.values()):  # stdin closed: nobody is waiting any more
                job.cancelled.set()
        self.queue.put(None)
        executor.join()

    def _handle(self, line: bytes) -> bool:
        """Dispatch one line from the parent; False means stop serving."""
        try:
            request = decode_request(line)
        except ValidationError as exc:
            # Answer with the line's id when it has one, so its sender does not wait forever.
            self.writer.error(
                request_id_of(line), "invalid_request", f"malformed request: {brief(exc)}"
            )
            return True
        if request.op == "shutdown":
            return False
        if request.op == "ping":
            self.writer.send(Pong(id=request.id))
        elif request.op == "cancel":
            job = self.jobs.get(request.id or "")
            if job:
                job.cancelled.set()
        elif request.id is None:
            self.writer.error(None, "invalid_request", f"op {request.op!r} needs an id")
        else:
            self.jobs[request.id] = job = Job(request)
            self.queue.put(job)
        return True

    def _execute_all(self) -> None:
        while (job := self.queue.get()) is not None:
            try:
                self._execute(job)
            finally:
                self.jobs.pop(job.request.id or "", None)

    def _execute(self, job: Job) -> None:
        rid = job.request.id
        if job.cancelled.is_set():
            self.writer.error(rid, "cancelled", "cancelled before it started")
            return
        try:
            self._run(job)
        except MMServeError as exc:
            self.writer.error(rid, exc.kind, exc.message)
        except ValidationError as exc:
            self.writer.error(rid, "invalid_request", brief(exc))
        except Exception as exc:  # a foreign engine error: log it whole, report it short
            traceback.print_exc(file=sys.stderr)
            self.writer.error(rid, "backend", f"{type(exc).__name__}: {exc}")

    def _run(self, job: Job) -> None:
        op, body, rid = job.request.op, job.request.body, job.request.id or ""
        if op not in self.capabilities:
            self.writer.error(rid, "unsupported", f"this model does not serve op {op!r}")
            return
        if op == "embed":
            result = self.backend.embed(EmbedRequest.model_validate(body))
            self.writer.send(Result(id=rid, data=embed_result_data(result, body)))
            return
        if op == "call":
            self.writer.send(Result(id=rid, data=self.backend.call(body)))
            return
        events: Iterator[TextEvent]
        if op == "chat":
            events = self.backend.chat(ChatRequest.model_validate(body), job.cancelled.is_set)
        elif op == "complete":
            events = self.backend.complete(
                CompletionRequest.model_validate(body), job.cancelled.is_set
            )
        else:
            self.writer.error(rid, "unsupported", f"this worker does not serve op {op!r}")
            return
        self._stream(rid, events, job)

    def _stream(self, rid: str, events: Iterator[TextEvent], job: Job) -> None:
        # Backends poll `cancelled` between tokens and stop early; the check here also covers
        # a backend that does not, and closing the generator releases the engine's stream.
        with contextlib.closing(events):  # type: ignore[type-var]
            for event in events:
                if job.cancelled.is_set():
                    break
                if isinstance(event, TextDelta):
                    self.writer.send(Chunk(id=rid, data=event.model_dump()))
                else:
                    self.writer.send(Result(id=rid, data=event.model_dump()))
                    return
        if job.cancelled.is_set():
            self.writer.error(rid, "cancelled", "cancelled while running")
        else:
            self.writer.error(rid, "backend", "the backend stopped without finishing the answer")


def import_backend(kind: str, backend: str, *, prepare: bool = False) -> float:
    """Import the backend's class (no model yet), and with `prepare` run its one-time set-up
    (a fork server's, for all the children it forks); the `time.monotonic()` once done."""
    found = backend_class(kind, backend)
    if prepare:
        found.prepare()
    return time.monotonic()


def main(argv: list[str]) -> int:
    started = time.monotonic()
    out = claim_stdout()
    die_with_parent()
    if argv[1:2] == [WARM_FLAG]:
        # A fork server (workers.forkserver): a failed import is its pool's to see (stderr, exit
        # code); the next load then spawns a cold worker, which reports the reason to its model.
        kind, backend = argv[2], argv[3]
        imported = import_backend(kind, backend, prepare=True)
        return serve_forks(kind, backend, out, imported, forked_child)
    writer = ReplyWriter(out)
    try:
        spec = BackendSpec.model_validate_json(argv[1])
        imported = import_backend(spec.kind, spec.backend)
    except Exception as exc:  # report the reason to the parent, then exit
        return load_failed(writer, exc)
    return load_and_serve(spec, writer, started, imported)


def forked_child(spec: BackendSpec, started: float, imported: float) -> int:
    """What a forked child runs, once its own stdin, stdout and stderr are fds 0-2."""
    out = claim_stdout()
    os.environ[PARENT_PID_ENV] = str(os.getppid())
    die_with_parent()  # with the fork server, which dies with the server
    return load_and_serve(spec, ReplyWriter(out), started, imported)


def load_failed(writer: ReplyWriter, exc: Exception) -> int:
    traceback.print_exc(file=sys.stderr)
    writer.error(None, "load_failed", f"{type(exc).__name__}: {exc}")
    return 1


def load_and_serve(spec: BackendSpec, writer: ReplyWriter, started: float, imported: float) -> int:
    """Load the model, say `ready` (with where the time went), serve until stdin closes."""
    try:
        loading = time.monotonic()
        backend = create_backend(spec)
        times = LoadTimes(started=started, imported=imported, weights_s=time.monotonic() - loading)
    except Exception as exc:
        return load_failed(writer, exc)
    writer.send(Ready(info=backend.info(), load=times))
    Worker(backend, writer).serve(sys.stdin.buffer)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
