"""LlamaServerReplica: its reshaping of llama-server's replies, on recorded bytes; its launch
and what makes a swap short (the flags, readiness seen at once, the stop, the model file read
once), on a stand-in llama-server."""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mmserve.config import ModelSpec
from mmserve.errors import ModelUnavailable
from mmserve.logs import ModelLog
from mmserve.replicas import llama_server
from mmserve.replicas.base import ReplicaHooks
from mmserve.replicas.llama_server import LegacyLogprobs, LlamaServerReplica, _as_openai_streams


async def pieces(*parts: bytes) -> AsyncGenerator[bytes, None]:
    for part in parts:
        yield part


def collect(stream: AsyncGenerator[bytes, None]) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in stream])

    return asyncio.run(run())


def events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def chunk(index: int, delta: dict) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": index, "delta": delta}]}).encode()


def test_a_stream_that_opens_without_its_role_gets_it() -> None:
    # llama-server's first stream after its start, as recorded: content first, no role.
    raw = (
        chunk(0, {"content": "Hel"})
        + b"\n\n"
        + chunk(0, {"content": "lo"})
        + b"\n\ndata: [DONE]\n\n"
    )
    # Cut anywhere: the fix must not depend on where the pieces break.
    out = collect(_as_openai_streams(pieces(raw[:17], raw[17:60], raw[60:]), choices=1))
    deltas = [e["choices"][0]["delta"] for e in events(out)]
    assert deltas == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}]
    assert out.endswith(b"data: [DONE]\n\n")


def test_a_stream_with_its_roles_passes_untouched() -> None:
    raw = (
        chunk(0, {"role": "assistant", "content": None}) + b"\n\n"
        + chunk(1, {"content": "b"}) + b"\n\n" + chunk(0, {"content": "a"}) + b"\n\n"
    )  # fmt: skip
    out = collect(_as_openai_streams(pieces(raw), choices=2))
    deltas = [e["choices"][0]["delta"] for e in events(out)]
    assert deltas == [
        {"role": "assistant", "content": None},
        {"role": "assistant", "content": "b"},  # choice 1's first delta
        {"content": "a"},
    ]


def test_every_chunk_gets_the_first_chunks_created() -> None:
    lines = [
        b'data: {"created":100,"choices":[{"index":0,"delta":{"role":"assistant"}}]}',
        b'data: {"created":100,"choices":[{"index":0,"delta":{"content":"a"}}]}',
        b'data: {"created": 101,"choices":[{"index":0,"delta":{"content":"b"}}]}',
    ]
    raw = b"\n\n".join(lines) + b"\n\ndata: [DONE]\n\n"
    out = collect(_as_openai_streams(pieces(raw[:30], raw[30:]), choices=1))
    assert {e["created"] for e in events(out)} == {100}
    assert [e["choices"][0]["delta"].get("content") for e in events(out)] == [None, "a", "b"]


def test_completion_logprobs_take_openais_legacy_shape() -> None:
    entry = {"token": " Paris", "logprob": -0.1, "top_logprobs": [
        {"token": " Paris", "logprob": -0.1}, {"token": " Lyon", "logprob": -2.5}]}  # fmt: skip
    answer = {"choices": [{"index": 0, "text": " Paris.", "logprobs": {"content": [
        entry, {"token": ".", "logprob": -0.5, "top_logprobs": []}]}}]}  # fmt: skip
    LegacyLogprobs().reshape(answer)
    assert answer["choices"][0]["logprobs"] == {
        "tokens": [" Paris", "."],
        "token_logprobs": [-0.1, -0.5],
        "top_logprobs": [{" Paris": -0.1, " Lyon": -2.5}, {}],
        "text_offset": [0, 6],
    }


# ---- the launch, and swaps: a stand-in llama-server --------------------------------------------

# Answers /health 503 while it "loads" (LOAD_S), then writes llama-server's line and answers 200;
# records its arguments; takes its time over a SIGTERM, as llama-server's destructors do.
FAKE_LLAMA_SERVER = """\
import http.server, json, os, signal, sys, threading, time
began = time.monotonic()

def stamp():  # llama-server's own clock at the start of each line: m.ss.mmm.uuu
    s = time.monotonic() - began
    return f"{int(s // 60)}.{int(s % 60):02d}.{int(s * 1e3) % 1000:03d}.{int(s * 1e6) % 1000:03d} "

args = sys.argv[1:]
open(os.environ["ARGS_FILE"], "w").write(json.dumps(args))
signal.signal(signal.SIGTERM, lambda *_: time.sleep(30))
quiet = "--log-disable" in args
ready = threading.Event()

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if ready.is_set() else 503)
        self.end_headers()

    def log_message(self, *_):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
if not quiet:
    print(stamp() + "I srv    load_model: loading model", flush=True)
time.sleep(float(os.environ.get("LOAD_S", "0.3")))
ready.set()
if not quiet:
    print(stamp() + "I srv  llama_server: model loaded", flush=True)
time.sleep(300)
"""


def gguf(path: Path, entries: dict[str, str | int]) -> Path:
    """A GGUF file with these header entries and no tensors (what read_metadata reads)."""

    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    body = b""
    for key, value in entries.items():
        if isinstance(value, str):
            body += text(key) + struct.pack("<I", 8) + text(value)
        else:
            body += text(key) + struct.pack("<Ii", 5, value)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + body)
    return path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in as the llama-server mmserve runs; returns where it writes its arguments."""
    program = tmp_path / "llama-server"
    program.write_text(f"#!{sys.executable}\n{FAKE_LLAMA_SERVER}")
    program.chmod(0o755)
    monkeypatch.setenv("MMSERVE_LLAMA_SERVER", str(program))
    monkeypatch.setenv("ARGS_FILE", str(tmp_path / "args.json"))
    llama_server._MODEL_FILES.clear()
    return tmp_path / "args.json"


def model(source: Path, **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "kind": "llm", "source": str(source), **fields})


def replica(spec: ModelSpec, device: str = "cpu") -> LlamaServerReplica:
    return LlamaServerReplica(spec, device, ReplicaHooks(ModelLog(spec.name, 100)))


def args_of(written: Path) -> list[str]:
    return list(json.loads(written.read_text()))


async def test_a_cpu_start_skips_the_warm_up_and_the_fitting_and_the_operators_flags_win(
    fake: Path, tmp_path: Path
) -> None:
    path = gguf(tmp_path / "m.gguf", {"tokenizer.chat_template": "{{ messages }}"})
    server = replica(model(path, options={"args": ["--fit", "on"]}))
    await server.start(30)
    try:
        args = args_of(fake)
        assert "--no-warmup" in args
        # --fit off before the operator's own flags: llama.cpp takes the last one given.
        assert args[-4:] == ["--fit", "off", "--fit", "on"]
        assert server.info.capabilities == ["chat", "complete", "relay"]
    finally:
        await server.stop()


async def test_the_status_splits_the_start_by_llama_servers_own_clock(
    fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOAD_S", "0.4")  # the stand-in's model load
    server = replica(model(gguf(tmp_path / "m.gguf", {})))
    await server.start(30)
    try:
        load = server.status().details["load"]
        assert 0.35 <= load["weights_s"] < 3.0  # "loading model" to "model loaded"
        assert 0.0 <= load["process_s"] < load["total_s"]  # spawn to its clock's zero
        assert load["total_s"] >= load["weights_s"] and load["warm"] is False
        assert load["imports_s"] == 0.0 and load["warmup_s"] == 0.0
    finally:
        await server.stop()


def test_the_fitting_stays_on_when_llama_cpp_places_the_layers() -> None:
    # -1: as many layers as the GPU holds, which is what --fit works out.
    assert llama_server._quick_start(llama_server.AUTO_GPU_LAYERS) == ["--no-warmup"]
    assert llama_server._quick_start(0) == ["--no-warmup", "--fit", "off"]
    assert llama_server._quick_start(20) == ["--no-warmup", "--fit", "off"]


async def test_readiness_is_seen_at_its_log_line_not_at_the_next_poll(
    fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were /health polled only every HEALTH_INTERVAL, this start would take 30 s.
    monkeypatch.setattr(llama_server, "HEALTH_INTERVAL", 30.0)
    server = replica(model(gguf(tmp_path / "m.gguf", {})))
    began = time.monotonic()
    await server.start(60)
    try:
        assert time.monotonic() - began < 10
        assert server.alive
    finally:
        await server.stop()


async def test_a_server_that_writes_nothing_is_found_healthy_by_the_poll(
    fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llama_server, "HEALTH_INTERVAL", 0.05)
    server = replica(model(gguf(tmp_path / "m.gguf", {}), options={"args": ["--log-disable"]}))
    await server.start(60)
    try:
        assert server.alive
    finally:
        await server.stop()


async def test_a_start_that_fails_is_reported_in_the_servers_words(
    fake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = gguf(tmp_path / "m.gguf", {})
    monkeypatch.setenv("ARGS_FILE", str(tmp_path / "no-such-dir" / "args.json"))  # it crashes
    with pytest.raises(ModelUnavailable, match="exited with code 1 while starting"):
        await replica(model(path)).start(30)
    monkeypatch.setenv("ARGS_FILE", str(fake))
    monkeypatch.setenv("LOAD_S", "30")
    with pytest.raises(ModelUnavailable, match=r"did not answer .* within 0.5 s"):
        await replica(model(path)).start(0.5)


async def test_a_stop_does_not_wait_for_llama_servers_clean_up(fake: Path, tmp_path: Path) -> None:
    # The stand-in sleeps 30 s on SIGTERM; stop_timeout would wait before a SIGKILL.
    server = replica(model(gguf(tmp_path / "m.gguf", {})))
    await server.start(30)
    pid = server.pid
    assert pid is not None
    began = time.monotonic()
    await server.stop()
    assert time.monotonic() - began < 5
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_model_file_is_resolved_and_read_once_while_it_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = gguf(tmp_path / "m.gguf", {"tokenizer.ggml.bos_token_id": 1})
    resolved: list[str] = []

    def resolve(source: str) -> Path:
        resolved.append(source)
        return Path(source)

    monkeypatch.setattr(llama_server, "resolve_source", resolve)
    llama_server._MODEL_FILES.clear()
    first = llama_server._model_file("m", str(path))
    assert first == (path, {"tokenizer.ggml.bos_token_id": 1})
    assert llama_server._model_file("m", str(path)) == first
    assert resolved == [str(path)]
    # Changed (another size, another time): resolved and read again.
    gguf(path, {"tokenizer.ggml.bos_token_id": 2, "general.name": "new"})
    assert llama_server._model_file("m", str(path))[1]["tokenizer.ggml.bos_token_id"] == 2
    path.unlink()
    with pytest.raises(ModelUnavailable, match="cannot read"):
        llama_server._model_file("m", str(path))
    assert len(resolved) == 3
