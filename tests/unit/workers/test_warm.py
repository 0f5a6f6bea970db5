"""WarmPool with real worker processes on the fake backend: fill, take, refill, drop, close."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import psutil
from tests.processes import gone, wait_for, waiting_for_its_spec

from mmserve.backends.base import BackendSpec
from mmserve.logs import ModelLog
from mmserve.workers.main import WARM_FLAG
from mmserve.workers.protocol import ErrorReply, Ready, Result, decode_reply
from mmserve.workers.supervisor import WorkerProcess
from mmserve.workers.warm import LOW_PRIORITY, WarmKey, WarmPool


def spec(threads: int = 1) -> BackendSpec:
    return BackendSpec(name="echo", kind="llm", backend="fake", threads=threads)


KEY = WarmKey.of(spec())


async def filled(pool: WarmPool, key: WarmKey = KEY) -> int:
    """The pid of `key`'s warm worker, once it waits for its spec."""
    await wait_for(lambda: [w for w in pool.status() if w["threads"] == key.threads])
    (pid,) = [w["pid"] for w in pool.status() if w["threads"] == key.threads]
    await wait_for(lambda: waiting_for_its_spec(pid))
    return pid


def chat_body(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}], "sampling": {"max_tokens": 8}}


async def answer(worker: WorkerProcess, text: str) -> str:
    replies = [r async for r in worker.request("chat", chat_body(text))]
    assert isinstance(replies[-1], Result)
    return "".join(r.data.get("text", "") for r in replies[:-1])


async def test_a_worker_takes_the_warm_process_and_the_pool_fills_again() -> None:
    pool = WarmPool(refill_delay=0.1)
    pool.want([KEY])
    warm_pid = await filled(pool)
    process = psutil.Process(warm_pid)
    assert WARM_FLAG in process.cmdline() and process.nice() == LOW_PRIORITY
    assert process.ppid() == os.getpid()
    assert pool.resident_bytes() == pool.status()[0]["rss_bytes"] > 10 * 2**20

    worker = WorkerProcess(spec(), ModelLog("echo"), warm=pool)
    await worker.start(timeout=30)
    assert worker.pid == warm_pid
    if os.geteuid() == 0:  # lowering a nice back takes privilege
        assert process.nice() == 0
    assert await answer(worker, "hi there") == "You said: hi there"
    load = worker.load
    assert load is not None and load.warm and load.process_s == 0 and load.imports_s == 0
    assert load.saved_s is not None and load.saved_s > 0

    refilled = await filled(pool)  # in the background, once that load was done
    assert refilled != warm_pid

    await worker.stop()
    await pool.close()
    assert gone(warm_pid) and gone(refilled) and pool.status() == []


async def test_a_cold_start_reports_its_phases() -> None:
    worker = WorkerProcess(spec(), ModelLog("echo"))
    await worker.start(timeout=30)
    load = worker.load
    assert load is not None and not load.warm and load.saved_s is None
    assert load.process_s is not None and load.process_s > 0  # an interpreter starting
    assert load.imports_s is not None and load.weights_s is not None
    assert load.total_s >= load.process_s + load.imports_s + load.weights_s
    assert "saved_s" not in load.to_json() and load.to_json()["warm"] is False
    await worker.stop()


async def test_a_warm_worker_that_dies_is_dropped() -> None:
    pool = WarmPool(refill_delay=0.1)
    pool.want([KEY])
    pid = await filled(pool)
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: pool.status() == [])

    worker = WorkerProcess(spec(), ModelLog("echo"), warm=pool)
    await worker.start(timeout=30)  # none to take: a cold one
    assert worker.pid != pid and worker.load is not None and not worker.load.warm
    assert await answer(worker, "x") == "You said: x"
    assert await filled(pool) not in (pid, worker.pid)  # and the key is filled again
    await worker.stop()
    await pool.close()


async def test_a_mismatching_key_spawns_cold_and_leaves_the_warm_one() -> None:
    pool = WarmPool(refill_delay=0.1)
    pool.want([KEY])
    warm_pid = await filled(pool)
    worker = WorkerProcess(spec(threads=2), ModelLog("echo"), warm=pool)
    await worker.start(timeout=30)
    assert worker.pid != warm_pid and worker.load is not None and not worker.load.warm
    await asyncio.sleep(0.3)  # past the refill delay: nothing is filled for an unwanted key
    assert [w["pid"] for w in pool.status()] == [warm_pid]
    await worker.stop()
    await pool.close()
    assert gone(warm_pid)


async def test_a_program_of_its_own_never_takes_a_warm_worker() -> None:
    pool = WarmPool()
    pool.want([KEY])
    warm_pid = await filled(pool)
    command = [sys.executable, "-m", "mmserve.workers.main", spec().model_dump_json()]
    worker = WorkerProcess(spec(), ModelLog("echo"), command=command, warm=pool)
    await worker.start(timeout=30)
    assert worker.pid != warm_pid and [w["pid"] for w in pool.status()] == [warm_pid]
    load = worker.load
    assert load is not None and load.total_s > 0
    await worker.stop()
    await pool.close()


async def test_close_stops_a_fill_under_way() -> None:
    pool = WarmPool()
    pool.want([KEY])
    await asyncio.sleep(0)  # the fill has begun spawning
    await pool.close()
    assert pool.status() == []
    pool.want([KEY])  # a closed pool fills nothing
    await asyncio.sleep(0.3)
    assert pool.status() == []
    assert not [c for c in psutil.Process().children() if WARM_FLAG in _cmdline(c)]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline() if process.status() != psutil.STATUS_ZOMBIE else []
    except psutil.Error:
        return []


# ---- the child's side: `python -m mmserve.workers.main --warm KIND BACKEND` ----------------


def warm_child(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmserve.workers.main", WARM_FLAG, "llm", "fake"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_warm_child_given_no_spec_exits_cleanly_having_written_nothing() -> None:
    out = warm_child("")
    assert out.returncode == 0 and out.stdout == ""


def test_a_warm_child_given_its_spec_is_a_worker() -> None:
    out = warm_child(
        spec().model_dump_json() + "\n" + '{"op": "ping", "id": "p"}\n{"op": "shutdown"}\n'
    )
    ready, pong = [decode_reply(line) for line in out.stdout.splitlines()]
    assert isinstance(ready, Ready) and ready.load is not None
    assert ready.load.started <= ready.load.imported and ready.info.capabilities
    assert pong.id == "p" and out.returncode == 0


def test_a_warm_child_given_another_backend_refuses_it() -> None:
    other = BackendSpec(name="v", kind="embedding", backend="fake").model_dump_json()
    out = warm_child(other + "\n")
    (reply,) = [decode_reply(line) for line in out.stdout.splitlines()]
    assert isinstance(reply, ErrorReply) and reply.error.kind == "load_failed"
    assert "embedding/fake" in reply.error.message and out.returncode == 1
