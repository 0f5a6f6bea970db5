"""WarmPool with real fork servers on the fake backend: start, fork, exit codes, stop, close."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import psutil
from tests.processes import gone, wait_for

from mmserve.backends.base import BackendSpec
from mmserve.logs import ModelLog
from mmserve.workers import warm
from mmserve.workers.main import WARM_FLAG
from mmserve.workers.protocol import Ready, Result, decode_reply
from mmserve.workers.supervisor import WorkerProcess
from mmserve.workers.warm import LOW_PRIORITY, WarmKey, WarmPool


def spec(threads: int = 1) -> BackendSpec:
    return BackendSpec(name="echo", kind="llm", backend="fake", threads=threads)


KEY = WarmKey.of(spec())


async def ready(pool: WarmPool, key: WarmKey = KEY) -> int:
    """The pid of `key`'s fork server, once its imports are done."""

    def found() -> list[int]:
        return [s["pid"] for s in pool.status() if s["threads"] == key.threads and s["ready"]]

    await wait_for(found)
    (pid,) = found()
    return pid


def chat_body(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}], "sampling": {"max_tokens": 8}}


async def answer(worker: WorkerProcess, text: str) -> str:
    replies = [r async for r in worker.request("chat", chat_body(text))]
    assert isinstance(replies[-1], Result)
    return "".join(r.data.get("text", "") for r in replies[:-1])


async def started(pool: WarmPool, threads: int = 1) -> WorkerProcess:
    worker = WorkerProcess(spec(threads), ModelLog("echo"), warm=pool)
    await worker.start(timeout=30)
    return worker


async def test_each_load_is_a_child_forked_by_the_one_fork_server() -> None:
    pool = WarmPool()
    pool.want([KEY])
    server_pid = await ready(pool)
    server = psutil.Process(server_pid)
    assert WARM_FLAG in server.cmdline() and server.nice() == LOW_PRIORITY
    assert server.ppid() == os.getpid() and server.num_threads() == 1
    assert pool.resident_bytes() > 10 * 2**20

    first, second = await started(pool), await started(pool)  # no refill between them
    for worker in (first, second):
        assert worker.pid is not None and worker.pid != server_pid
        child = psutil.Process(worker.pid)
        assert child.ppid() == server_pid and child.pid == os.getsid(child.pid)  # own session
        if os.geteuid() == 0:  # lowering a nice back takes privilege
            assert child.nice() == 0
        load = worker.load
        assert load is not None and load.warm and load.imports_s == 0
        assert load.process_s is not None and load.process_s < 1
        assert load.saved_s is not None and load.saved_s > 0
    assert await answer(first, "hi there") == "You said: hi there"
    assert await answer(second, "again") == "You said: again"
    (entry,) = pool.status()
    assert entry["children"] == sorted([first.pid, second.pid])

    await first.stop()
    assert first.returncode == 0 and gone(first.pid)  # its memory back, the server stays
    assert pool.status()[0]["children"] == [second.pid]
    await second.stop()
    await pool.close()
    assert gone(server_pid) and pool.status() == []


async def test_a_killed_child_reports_its_signal_and_the_next_load_forks_again() -> None:
    pool = WarmPool()
    pool.want([KEY])
    server_pid = await ready(pool)
    exits: list[int | None] = []
    worker = WorkerProcess(
        spec(), ModelLog("echo"), warm=pool, on_exit=lambda w: exits.append(w.returncode)
    )
    await worker.start(timeout=30)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    await asyncio.wait_for(worker.exited.wait(), 10)
    assert exits == [-signal.SIGKILL]
    again = await started(pool)
    assert again.load is not None and again.load.warm and again.pid != worker.pid
    assert psutil.Process(again.pid or 0).ppid() == server_pid
    await again.stop()
    await pool.close()


async def test_a_fork_server_that_dies_is_dropped_and_its_children_end_with_it() -> None:
    pool = WarmPool()
    pool.want([KEY])
    server_pid = await ready(pool)
    worker = await started(pool)
    os.kill(server_pid, signal.SIGKILL)
    await asyncio.wait_for(worker.exited.wait(), 10)  # PR_SET_PDEATHSIG, and the pidfd saw it
    assert worker.pid is not None and gone(worker.pid)
    await wait_for(lambda: [s for s in pool.status() if s["pid"] == server_pid] == [])

    cold = await started(pool)  # none to fork from: a cold one
    assert cold.load is not None and not cold.load.warm
    assert await answer(cold, "x") == "You said: x"
    pool.want([KEY])  # the next `want` starts another
    assert await ready(pool) not in (server_pid, cold.pid)
    await cold.stop()
    await pool.close()


async def test_an_unwanted_fork_server_stays_while_its_child_runs() -> None:
    pool = WarmPool()
    pool.want([KEY])
    server_pid = await ready(pool)
    worker = await started(pool)
    pool.want([])  # its model is loaded now: the key is no longer wanted
    await asyncio.sleep(0.3)
    assert [s["pid"] for s in pool.status()] == [server_pid]
    await worker.stop()
    pool.want([])
    await wait_for(lambda: gone(server_pid))
    assert pool.status() == []
    await pool.close()


async def test_a_mismatching_key_spawns_cold_and_leaves_the_fork_server() -> None:
    pool = WarmPool()
    pool.want([KEY])
    server_pid = await ready(pool)
    worker = await started(pool, threads=2)
    assert worker.load is not None and not worker.load.warm
    assert psutil.Process(worker.pid or 0).ppid() == os.getpid()
    assert [s["pid"] for s in pool.status()] == [server_pid]
    await worker.stop()
    await pool.close()
    assert gone(server_pid)


async def test_drop_idle_ends_childless_fork_servers_but_those_kept() -> None:
    other = WarmKey.of(spec(threads=2))
    pool = WarmPool()
    pool.want([KEY, other])
    kept, dropped = await ready(pool, KEY), await ready(pool, other)
    await pool.drop_idle(keep=[KEY])
    assert gone(dropped) and [s["pid"] for s in pool.status()] == [kept]
    await pool.close()


async def test_a_program_of_its_own_is_never_forked() -> None:
    pool = WarmPool()
    pool.want([KEY])
    server_pid = await ready(pool)
    command = [sys.executable, "-m", "mmserve.workers.main", spec().model_dump_json()]
    worker = WorkerProcess(spec(), ModelLog("echo"), command=command, warm=pool)
    await worker.start(timeout=30)
    assert psutil.Process(worker.pid or 0).ppid() == os.getpid()
    assert pool.status()[0]["children"] == [] and pool.status()[0]["pid"] == server_pid
    await worker.stop()
    await pool.close()


async def test_a_load_whose_caller_leaves_forks_a_child_that_exits(monkeypatch: Any) -> None:
    pool = WarmPool()
    pool.want([KEY])
    server_pid = await ready(pool)
    asked = warm.ForkServer._ask

    def ask_then_leave(server: warm.ForkServer, *args: Any) -> bool:
        sent = asked(server, *args)
        task.cancel()  # the caller leaves once the request is sent, before its answer
        return sent

    monkeypatch.setattr(warm.ForkServer, "_ask", ask_then_leave)
    task = asyncio.create_task(pool.fork(spec()))
    await asyncio.wait([task])
    assert task.cancelled()
    await asyncio.sleep(0.5)
    server = psutil.Process(server_pid)
    await wait_for(lambda: [c for c in server.children() if c.status() != "zombie"] == [])
    assert pool.status()[0]["children"] == []
    worker = await started(pool)  # the fork server goes on
    assert worker.load is not None and worker.load.warm
    await worker.stop()
    await pool.close()


async def test_a_child_that_exits_at_once_is_seen_to_exit(monkeypatch: Any) -> None:
    """A child's exit, reported by the fork server, can come while its caller still sets up
    the child's streams (here made slow): the child must be known by then, or the report is
    dropped and its wait never ends."""
    made = warm._streams

    async def slow_streams(*fds: int) -> Any:
        pipes = await made(*fds)
        await asyncio.sleep(1.0)
        return pipes

    monkeypatch.setattr(warm, "_streams", slow_streams)
    pool = WarmPool()
    pool.want([KEY])
    await ready(pool)
    broken = BackendSpec(name="broken", kind="llm", backend="fake", options={"fail_load": "no"})
    child = await pool.fork(broken)
    assert child is not None
    assert await asyncio.wait_for(child.wait(), 10) == 1  # load_failed's exit code
    assert pool.status()[0]["children"] == []
    await pool.close()


async def test_close_stops_a_start_under_way() -> None:
    pool = WarmPool()
    pool.want([KEY])
    await asyncio.sleep(0)  # the start has begun spawning
    await pool.close()
    assert pool.status() == []
    pool.want([KEY])  # a closed pool starts nothing
    await asyncio.sleep(0.3)
    assert pool.status() == []
    assert not [c for c in psutil.Process().children() if WARM_FLAG in _cmdline(c)]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline() if process.status() != psutil.STATUS_ZOMBIE else []
    except psutil.Error:
        return []


# ---- the fork server's side: `python -m mmserve.workers.main --warm KIND BACKEND` -----------


def fork_server(**env: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmserve.workers.main", WARM_FLAG, "llm", "fake"],
        stdin=theirs.fileno(),
        stdout=subprocess.PIPE,
        env={**KEY.env(), **env},
    )
    theirs.close()
    return proc, ours


def said(proc: subprocess.Popen[bytes]) -> dict:
    assert proc.stdout is not None
    return json.loads(proc.stdout.readline())


def test_a_fork_server_told_nothing_says_it_is_ready_and_exits_cleanly() -> None:
    proc, sock = fork_server()
    with proc, sock:
        hello = said(proc)
        assert hello["threads"] == 1 and hello["imported"] <= hello["ready"]
        sock.close()
        assert proc.wait(timeout=30) == 0


def test_a_fork_server_with_threads_running_refuses_to_fork() -> None:
    proc, sock = fork_server(OPENBLAS_NUM_THREADS="2")  # numpy's BLAS starts a thread at import
    with proc, sock:
        assert said(proc)["threads"] == 2
        socket.send_fds(sock, [spec().model_dump_json().encode()], [0, 1, 2])
        assert "2 threads are running: forking is not safe" in said(proc)["refused"]
        sock.close()
        assert proc.wait(timeout=30) == 0


def test_a_forked_child_speaks_the_protocol_on_its_own_pipes() -> None:
    proc, sock = fork_server()
    with proc, sock:
        said(proc)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        socket.send_fds(sock, [spec().model_dump_json().encode()], [stdin_r, stdout_w, 2])
        os.close(stdin_r)
        os.close(stdout_w)
        pid = said(proc)["forked"]
        with os.fdopen(stdin_w, "wb") as stdin, os.fdopen(stdout_r, "rb") as stdout:
            stdin.write(b'{"op": "ping", "id": "p"}\n{"op": "shutdown"}\n')
            stdin.flush()
            ready, pong = [decode_reply(line) for line in stdout.read().splitlines()]
        assert isinstance(ready, Ready) and ready.load is not None and ready.info.capabilities
        assert ready.load.imported <= ready.load.started and pong.id == "p"
        assert said(proc) == {"exited": pid, "code": 0}
        sock.close()
        assert proc.wait(timeout=30) == 0


def test_a_fork_server_refuses_another_backend_and_goes_on() -> None:
    proc, sock = fork_server()
    with proc, sock:
        said(proc)
        other = BackendSpec(name="v", kind="embedding", backend="fake")
        socket.send_fds(sock, [other.model_dump_json().encode()], [0, 1, 2])
        assert "embedding/fake" in said(proc)["refused"]
        socket.send_fds(sock, [spec().model_dump_json().encode()], [0, 1])
        assert "3 descriptors" in said(proc)["refused"]
        sock.close()
        assert proc.wait(timeout=30) == 0
