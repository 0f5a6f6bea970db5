"""WorkerProcess against a real child process running the fake backend."""

from __future__ import annotations

import asyncio
import os

import psutil
import pytest

from mmserve.backends.base import BackendSpec
from mmserve.errors import InvalidRequest, ModelUnavailable, WorkerCrashed
from mmserve.logs import ModelLog
from mmserve.workers.protocol import Chunk, Result
from mmserve.workers.supervisor import WorkerProcess, child_env


def spec(**options: object) -> BackendSpec:
    return BackendSpec(name="echo", kind="llm", backend="fake", options=options)


async def started(**options: object) -> WorkerProcess:
    worker = WorkerProcess(spec(**options), ModelLog("echo"))
    await worker.start(timeout=30)
    return worker


def chat_body(text: str, max_tokens: int = 16) -> dict:
    return {"messages": [{"role": "user", "content": text}], "sampling": {"max_tokens": max_tokens}}


async def test_ready_then_streamed_reply_then_stop() -> None:
    worker = await started()
    assert worker.info.capabilities == ["chat", "complete"]
    replies = [r async for r in worker.request("chat", chat_body("a b"))]
    assert [type(r) for r in replies] == [Chunk, Chunk, Chunk, Chunk, Result]
    assert replies[-1].data["completion_tokens"] == 4
    pid = worker.pid
    await worker.stop()
    assert worker.returncode == 0 and not psutil.pid_exists(pid or 0)


async def test_requests_in_flight_are_matched_by_id() -> None:
    worker = await started(delay=0.001)
    texts = ["one", "two two", "three three three"]
    results = await asyncio.gather(*(_collect(worker, t) for t in texts))
    assert results == [f"You said: {t}" for t in texts]
    await worker.stop()


async def _collect(worker: WorkerProcess, text: str) -> str:
    return "".join(
        [
            r.data["text"]
            async for r in worker.request("chat", chat_body(text))
            if isinstance(r, Chunk)
        ]
    )


async def test_leaving_early_cancels_in_the_child() -> None:
    worker = await started(delay=0.05)
    async for _ in worker.request("chat", chat_body("x " * 300, max_tokens=300)):
        break  # the generator's cleanup sends `cancel`
    replies = await asyncio.wait_for(_collect(worker, "next"), timeout=5)
    assert replies == "You said: next"
    await worker.stop()


async def test_backend_errors_come_back_typed() -> None:
    worker = await started()
    with pytest.raises(InvalidRequest):
        [r async for r in worker.request("chat", {"messages": "not a list"})]
    await worker.stop()


async def test_a_crash_fails_pending_requests_and_calls_on_exit() -> None:
    exits: list[int | None] = []
    worker = WorkerProcess(spec(), ModelLog("echo"), on_exit=lambda w: exits.append(w.returncode))
    await worker.start(timeout=30)
    with pytest.raises(WorkerCrashed, match="exited with code 3"):
        [r async for r in worker.request("chat", chat_body("crash"))]
    assert exits == [3]
    with pytest.raises(WorkerCrashed):
        [r async for r in worker.request("chat", chat_body("hi"))]


async def test_load_failure_carries_the_reason() -> None:
    worker = WorkerProcess(spec(fail_load="no weights"), ModelLog("echo"))
    with pytest.raises(ModelUnavailable, match="no weights"):
        await worker.start(timeout=30)


async def test_the_child_keeps_stdout_for_the_protocol() -> None:
    # A backend that prints to stdout must not corrupt the stream: the print lands in the log.
    log = ModelLog("echo")
    worker = WorkerProcess(
        spec(), log, command=[*_python(), "-c", _PRINTING_CHILD, spec().model_dump_json()]
    )
    await worker.start(timeout=30)
    replies = [r async for r in worker.request("chat", chat_body("hi"))]
    assert replies[-1].data["finish_reason"] == "stop"
    await worker.stop()
    assert any("hello from a chatty library" in m for m in log.tail(50))


def _python() -> list[str]:
    import sys

    return [sys.executable]


_PRINTING_CHILD = """
import sys
import mmserve.backends.fake as fake
original = fake.FakeBackend.__init__
def chatty(self, spec):
    print("hello from a chatty library", flush=True)
    original(self, spec)
fake.FakeBackend.__init__ = chatty
from mmserve.workers.main import main
sys.exit(main(sys.argv))
"""


def test_child_env_sets_the_thread_budget_and_device() -> None:
    env = child_env(
        BackendSpec(name="m", kind="llm", backend="fake", threads=3, device="cuda:1"), base={}
    )
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "3"
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["MMSERVE_PARENT_PID"] == str(os.getpid())
    assert (
        child_env(BackendSpec(name="m", kind="llm", backend="fake"), base={})[
            "CUDA_VISIBLE_DEVICES"
        ]
        == ""
    )
