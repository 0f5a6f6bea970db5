"""LlamaServerReplica: a GGUF text model served by llama.cpp's own `llama-server`, one process
per replica (backend llama_server, the default of kind llm).

llama-server decodes its `parallel` slots as one batch (continuous batching: 8 chats run about
2.2x the aggregate tokens/s of one at a time here, docs/benchmarks.md), and brings `n`,
logprobs, seeds, token-array prompts, JSON schemas and GGUF chat templates (`--jinja`). mmserve
keeps what it adds in front: names, admission (one request per slot: `max_concurrency` defaults
to `parallel`), queues and 429s, keys, cancellation (a client that leaves closes the connection,
which stops its slot), crash restarts, memory in the room, the model's log (llama-server's own
lines too), metrics and errors in mmserve's envelope.

It is a ServerReplica (replicas.server) whose launch mmserve writes itself:

    llama-server -m FILE --host 127.0.0.1 --port ${PORT} --alias NAME --parallel P
                 --ctx-size context_length*P --threads T --threads-batch T --n-gpu-layers G
                 --jinja --no-webui --no-warmup [--fit off] [options.args...]

with the thread budget, OMP_WAIT_POLICY=PASSIVE and the replica's GPU (CUDA_VISIBLE_DEVICES) in
its environment; requests are relayed to its OpenAI routes as the client sent them (validated by
mmserve first). Chat is offered when the GGUF carries a chat template (read from the file's
header before the start: backends.gguf, remembered while the file is unchanged); a base model
serves completions only.

Swaps. With room for one model, each request for another model stops one llama-server and
starts the next, so its start and stop are kept short (measured with bench/swap.py; SmolLM2 /
Gemma 3 270M, 1 thread, 2 cores, before -> after: about 720 -> 500 ms / 1800 -> 1000 ms a
request, of which the request itself is 170 / 360): no warm-up run and no memory fitting
(`_quick_start`), the source resolved and the header read once (`_model_file`), /health asked
as llama-server writes its lines rather than every 100 ms (`_LlamaServer`), and SIGKILL to stop
it (STOP_SIGNAL). What is left is llama.cpp's own work, which no launch flag skips: its load
(Gemma's 262k-token vocabulary: 350-600 ms, as in llama-cpp-python), the KV cache of
`parallel` slots, cleared as it is created (SmolLM2's 4 x 2048 cells: 129 ms, one slot's 32),
and llama-server's probe of the context (`common_context_can_seq_rm`: it clears the cache again
and decodes two tokens, 31-37 ms). The process start itself is a few ms. The file stays in the
page cache between swaps; `--mlock` (about 15 ms slower) and `--no-mmap` (60 ms slower) do not
pay. Figures: docs/benchmarks.md, "What bounds a llama-server swap".

The binary is the one the setup built (scripts/build-llama-cpp), found by
`registry.find_program`: $MMSERVE_LLAMA_SERVER, else beside the running Python (the venv's
bin/), else on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from mmserve.backends import tool_calls
from mmserve.backends.gguf import GgufError, read_metadata
from mmserve.catalog import resolve_source
from mmserve.config import ModelSpec
from mmserve.errors import ContextLengthExceeded, InvalidRequest, ModelUnavailable, UpstreamRejected
from mmserve.registry import find_program, program_variable
from mmserve.replicas.base import ReplicaHooks
from mmserve.replicas.process import backend_spec
from mmserve.replicas.server import HEALTH_INTERVAL, HEALTH_TIMEOUT, Launch, Server, ServerReplica
from mmserve.types import WorkerInfo
from mmserve.workers.supervisor import child_env

__all__ = ["LlamaServerReplica", "engine_threads", "find_llama_server", "llama_cpp_version"]

BASE_URL = "http://127.0.0.1:${PORT}/v1"
HEALTH = "http://127.0.0.1:${PORT}/health"  # 200 once the model is loaded
CONTEXT_ERROR = "exceed_context_size_error"  # llama-server's error type for a prompt too long
# How a replica's llama-server is stopped. It keeps nothing that an exit loses (no state on
# disk; its prompt cache is in memory), and on SIGTERM it runs its destructors first: a stop
# took 22 ms for SmolLM2 and 52 ms for Gemma (its 262k-token vocabulary), 11-15 ms with
# SIGKILL, time a swap waits for before the next model starts. By the time a replica is
# stopped, its requests are done (drained) or given up on.
STOP_SIGNAL = signal.SIGKILL
AUTO_GPU_LAYERS = -1  # llama.cpp's own default: as many layers as the GPU holds (--fit)
COMPLETION_TOKENS = 16  # OpenAI's default max_tokens of a completion (llama-server's: no limit)
_CREATED = re.compile(rb'"created":\s*\d+')


def find_llama_server() -> Path | None:
    """The llama-server binary mmserve runs, or None when there is none."""
    return find_program("llama-server")


@cache
def llama_cpp_version() -> str | None:
    """llama.cpp's version and commit, as the build recorded it (`llama-server --version`)."""
    binary = find_llama_server()
    if binary is None:
        return None
    recorded = binary.resolve().parent / "VERSION"
    try:
        lines = recorded.read_text().splitlines()
    except OSError:
        return None
    version = next((line for line in lines if line.startswith("version:")), None)
    return version.removeprefix("version:").strip() if version else None


def engine_threads() -> int:
    """Every core this process may use: llama-server's slots decode as one batch, which is
    fastest on all of them (8 sequences: 116 tokens/s on 2 threads against 77 on 1, here), and
    its OpenMP threads wait passively, so a second busy model still gets its share."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LlamaServerReplica(ServerReplica):
    """One llama-server process serving one GGUF model (see the module doc)."""

    def __init__(self, spec: ModelSpec, device: str, hooks: ReplicaHooks) -> None:
        super().__init__(spec, device, hooks)
        self._chat = False  # the GGUF has a chat template (known once launched)
        self._tool_template = False  # ... and it renders tools
        self._bos: int | None = None  # its start token

    relays_as = "openai"  # its OpenAI routes

    @property
    def info(self) -> WorkerInfo:
        capabilities = ["chat", "complete", "relay"] if self._chat else ["complete", "relay"]
        return WorkerInfo(capabilities=capabilities, context_length=self.spec.context_length)

    async def _launch(self) -> tuple[Launch, str]:
        binary = find_llama_server()
        if binary is None:
            raise ModelUnavailable(
                f"model {self.spec.name!r}: llama-server is not installed (make setup builds it; "
                f"or point {program_variable('llama-server')} at one)"
            )
        assert self.spec.source is not None  # ModelSpec requires a source for llama_server
        path, metadata = await asyncio.to_thread(_model_file, self.spec.name, self.spec.source)
        template = str(metadata.get("tokenizer.chat_template") or "")
        self._chat = bool(template)
        self._tool_template = "tools" in template  # it renders the tools it is given
        bos = metadata.get("tokenizer.ggml.bos_token_id")
        self._bos = bos if isinstance(bos, int) and not isinstance(bos, bool) else None
        spec = self.spec
        parallel = spec.parallel or 1
        placed = backend_spec(spec, self.device)
        threads = spec.threads or engine_threads()
        command = [
            str(binary),
            "--model", str(path),
            "--host", "127.0.0.1",
            "--port", "${PORT}",
            "--alias", spec.name,
            "--parallel", str(parallel),
            # Every slot gets the whole context_length a request may use.
            "--ctx-size", str(spec.context_length * parallel),
            "--threads", str(threads),
            "--threads-batch", str(threads),
            "--n-gpu-layers", str(placed.gpu_layers),
            "--jinja",
            "--no-webui",
            *_quick_start(placed.gpu_layers),
            *_extra_args(spec.options),
        ]  # fmt: skip
        env = child_env(placed.model_copy(update={"threads": threads}))
        launch = Launch(
            who=f"model {spec.name!r}",
            command=tuple(command),
            env=tuple(sorted(env.items())),
            cwd=None,
            health=HEALTH,
            stop_signal=STOP_SIGNAL,
            stop_timeout=spec.stop_timeout,
        )
        return launch, BASE_URL

    def _server_of(self, launch: Launch) -> Server:
        # One of its own (a llama_server model has no group), that sees its readiness at once.
        return _LlamaServer(launch)

    # ---- requests: relayed, with llama-server's errors in mmserve's words -------------------

    async def relay(self, path: str, body: dict[str, Any]) -> Any:
        sent, tools = self._with_tools(path, body)
        try:
            answer = await super().relay(path, sent)
        except UpstreamRejected as exc:
            raise self._in_our_words(exc) from None
        if isinstance(answer, dict):
            _as_openai_shapes_it(answer)
            if tools is not None:
                tools.finish(answer)
                if tools.repeats(answer):
                    # A small model, given a tool's result, tends to make the same call again
                    # and again: ask once more with calls ruled out, for its answer in words.
                    return await self.relay(path, tool_calls.without_calls(body))
            if _legacy_logprobs_asked(path, body):
                LegacyLogprobs().reshape(answer)
        return answer

    async def relay_stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        if self._with_tools(path, body)[1] is not None:
            # Whether the reply is a call is known once it is whole: generate it, then stream it.
            whole = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
            answer = await self.relay(path, whole)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            for event in tool_calls.stream_chunks(answer, include_usage):
                yield b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            return
        chunks = super().relay_stream(path, body)
        if _legacy_logprobs_asked(path, body):
            chunks = LegacyLogprobs().reshape_stream(chunks)
        if path == "/chat/completions":
            chunks = _as_openai_streams(chunks, choices=int(body.get("n") or 1))
        try:
            async for chunk in chunks:
                yield chunk
        except UpstreamRejected as exc:
            raise self._in_our_words(exc) from None
        finally:
            await chunks.aclose()

    def _with_tools(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], _Tools | None]:
        """The body to send, and the tool layer's part in this request (see
        backends.tool_calls), if any. Schemas with keywords llama.cpp cannot enforce are a 400
        naming them."""
        if path == "/completions":
            body = self._completion(body)
        n = body.get("n") or 1
        if isinstance(n, int) and n > (self.spec.parallel or 1):
            # llama-server decodes a request's choices side by side, one slot each.
            raise InvalidRequest(
                f"model {self.spec.name!r} gives at most {self.spec.parallel} choices a request "
                f"(its parallel slots), not {n}",
                param="n",
            )
        if path != "/chat/completions":
            return body, None
        body = _answers_have_content(body)
        wanted = body.get("response_format") or {}
        if wanted.get("type") == "json_schema":
            self._check_schema(
                wanted["json_schema"]["schema"], "response_format.json_schema.schema"
            )
        tools, choice = body.get("tools") or [], body.get("tool_choice") or "auto"
        if not tools:
            return body, None
        if choice == "none":  # ruled out for real, not just asked for: see without_calls
            return tool_calls.without_calls(body), None
        if not self._tool_template:
            raise InvalidRequest(
                f"model {self.spec.name!r} cannot call tools: its chat template has no tools "
                "(qwen2.5-0.5b, a built-in model, can)",
                param="tools",
            )
        for i, tool in enumerate(tools):
            parameters = tool["function"].get("parameters")
            self._check_schema(parameters, f"tools[{i}].function.parameters")
        names = {tool["function"]["name"] for tool in tools}
        answered = tool_calls.answered_calls(body.get("messages") or [])
        if choice == "auto":
            return body, _Tools(names, constrained=False, answered=answered)
        parallel = body.get("parallel_tool_calls") is not False  # OpenAI's default: allowed
        schema = tool_calls.call_schema(tools, choice, parallel)
        constrained = {
            "type": "json_schema",
            "json_schema": {"name": "tool_call", "schema": schema},
        }
        sent = {**body, "tool_choice": "auto", "response_format": constrained}
        return sent, _Tools(names, constrained=True, answered=answered)

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's defaults where llama-server's differ: max_tokens 16, and an empty prompt
        starting from the model's start token (llama-server leaves "" unanswered)."""
        if body.get("max_tokens") is None:
            body = {**body, "max_tokens": COMPLETION_TOKENS}
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
        if "" not in texts:
            return body
        if self._bos is None:
            raise InvalidRequest(
                f"the prompt is empty and model {self.spec.name!r} has no start token",
                param="prompt",
            )
        start = [self._bos]
        prompts = start if prompt == "" else [start if p == "" else p for p in texts]
        return {**body, "prompt": prompts}

    def _check_schema(self, schema: Any, where: str) -> None:
        if unenforced := tool_calls.unenforced_keywords(schema, where):
            keywords = ", ".join(repr(u.rsplit(".", 1)[1]) for u in unenforced)
            raise InvalidRequest(
                f"llama.cpp cannot enforce {keywords} (at {', '.join(unenforced)}): leave it "
                "out, or check the reply yourself",
                param=unenforced[0],
            )

    def _in_our_words(self, exc: UpstreamRejected) -> Exception:
        if "invalid tokens" in exc.message:
            return InvalidRequest(
                f"the prompt holds token ids that are not in model {self.spec.name!r}'s vocabulary",
                param="prompt",
            )
        if exc.type == CONTEXT_ERROR:
            return ContextLengthExceeded(
                f"the prompt does not fit in the context of model {self.spec.name!r} "
                f"({self.spec.context_length} tokens, the reply included); shorten it"
            )
        return exc

    def _details(self) -> dict[str, Any]:
        server = self._server if isinstance(self._server, _LlamaServer) else None
        parallel = self.spec.parallel or 1
        busy = min(self.in_flight, parallel)
        return {
            **super()._details(),
            "engine": "llama.cpp " + (llama_cpp_version() or "unknown"),
            "slots": {"total": parallel, "busy": busy, "free": parallel - busy},
            **({"load": server.load_phases(self.load_seconds)} if server else {}),
        }


@dataclass(frozen=True)
class _ModelFile:
    """A source's file as a launch last found it: its path, what `stat` said, its header."""

    path: Path
    stamp: tuple[int, int]  # (size, mtime_ns)
    metadata: dict[str, str | int | float | bool]


_MODEL_FILES: dict[str, _ModelFile] = {}  # by source


def _model_file(name: str, source: str) -> tuple[Path, dict[str, str | int | float | bool]]:
    """The file `source` names and its GGUF header; ModelUnavailable if it cannot be read.

    Remembered by source while the file keeps its size and modification time: with room for
    one model, every request for another one starts its llama-server again, and each time
    resolving a catalog source checked the file's sha256 (Gemma's 253 MB: 200-250 ms here) and
    reading the header took 20-50 ms, for the same answer."""
    known = _MODEL_FILES.get(source)
    if known is not None and _stamp(known.path) == known.stamp:
        return known.path, known.metadata
    path = resolve_source(source)
    try:
        info = path.stat()
        metadata = read_metadata(path)
    except (OSError, GgufError) as exc:
        raise ModelUnavailable(f"model {name!r}: cannot read {path}: {exc}") from None
    _MODEL_FILES[source] = _ModelFile(path, (info.st_size, info.st_mtime_ns), metadata)
    return path, metadata


def _stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of the file, None if it is gone."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


# llama-server's lines begin with its own clock, e.g. "0.00.548.052 I srv ...": minutes,
# seconds, milliseconds, microseconds since it started.
_STAMP = re.compile(rb"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")
_PHASES = (("loading", b"load_model: loading model"), ("loaded", b"model loaded"))


def _seconds(stamp: re.Match[bytes]) -> float:
    minutes, seconds, millis, micros = (int(g) for g in stamp.groups())
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


class _LlamaServer(Server):
    """A llama-server run whose readiness is seen as it comes, not up to a poll interval later:
    /health is asked again at each output line (llama-server writes "model loaded" as /health
    turns 200; it writes a few dozen lines while it starts), and every HEALTH_INTERVAL s
    besides (for a server told to write nothing). A failed start is reported as Server does."""

    def __init__(self, launch: Launch) -> None:
        super().__init__(launch)
        self._news = asyncio.Event()  # a line or the exit, since the last health poll
        self._began = time.monotonic()  # created just before it is spawned
        self._marks: dict[str, float] = {}  # when its start reached each phase (monotonic)

    def output(self, raw: bytes) -> None:
        super().output(raw)
        self._news.set()
        self._mark(raw)

    def _mark(self, raw: bytes) -> None:
        """Note when its start reached a phase: by llama-server's own clock where its lines
        carry one (seconds since it started), else as the line arrives."""
        now = time.monotonic()
        stamp = _STAMP.match(raw)
        if stamp is not None and "clock" not in self._marks:
            self._marks["clock"] = now - _seconds(stamp)  # when its own clock began
        at = self._marks["clock"] + _seconds(stamp) if stamp is not None else now
        for phase, text in _PHASES:
            if phase not in self._marks and text in raw:
                self._marks[phase] = at

    def load_phases(self, total: float | None) -> dict[str, Any]:
        """Where its start went, as a worker's `load` (workers.supervisor.LoadPhases): the
        process until llama-server's clock began, no imports, its model load (weights, the
        vocabulary, the KV cache of every slot), no warm-up (--no-warmup)."""
        marks = self._marks

        def between(start: str, end: str) -> float | None:
            return round(marks[end] - marks[start], 4) if {start, end} <= marks.keys() else None

        process = marks.get("clock")
        return {
            "total_s": None if total is None else round(total, 4),
            "warm": False,
            "process_s": None if process is None else round(max(0.0, process - self._began), 4),
            "imports_s": 0.0,
            "weights_s": between("loading", "loaded"),
            "warmup_s": 0.0,
        }

    def process_exited(self) -> None:
        super().process_exited()
        self._news.set()

    async def _wait_healthy(self, url: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(trust_env=False, timeout=HEALTH_TIMEOUT) as client:
            while not self.exited.is_set() and loop.time() < deadline:
                self._news.clear()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        return
                wait = min(HEALTH_INTERVAL, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._news.wait(), max(0.0, wait))
        if self.exited.is_set():  # Server says how (its code, its last lines)
            await super()._wait_healthy(url, 0.0)
        raise ModelUnavailable(
            f"{self.launch.who}: its server (pid {self.pid}) did not answer {url} with 200 "
            f"within {timeout:g} s (start_timeout)"
        )


def _quick_start(gpu_layers: int) -> list[str]:
    """Flags that skip start-up work that changes nothing here (with room for one model each
    swap starts a llama-server; measured on SmolLM2 / Gemma 3 270M, 1 thread, 2 cores):

      --no-warmup  its empty warm-up run (50 ms / 45 ms): the first request is not slower
                   without it (its start already decodes 2 tokens to probe the context)
      --fit off    its fitting of unset settings to the devices' memory, which loads the
                   model's metadata and vocabulary once more (100 ms / 430 ms): mmserve sets
                   the context and the GPU layers, so there is nothing left to fit, unless
                   the layers are llama.cpp's automatic -1 (all of them on a GPU, as many as
                   fit): then it stays on, to fit them
    """
    flags = ["--no-warmup"]
    if gpu_layers != AUTO_GPU_LAYERS:
        flags += ["--fit", "off"]
    return flags


def _extra_args(options: dict[str, Any]) -> list[str]:
    """`options: {args: [...]}`: more llama-server flags, as the operator wrote them."""
    args = options.get("args", [])
    return [str(arg) for arg in args]


@dataclass(frozen=True)
class _Tools:
    """The tool layer's part in one chat request: the tools' names, and whether decoding was
    constrained to a call (required, or a named function) or the model chose (auto)."""

    names: set[str]
    constrained: bool
    answered: set[str]  # the calls the conversation made and has the results of

    def repeats(self, answer: dict[str, Any]) -> bool:
        """The model chose (auto) to make a call already answered: its reply's first call, or
        the call its text opens with."""
        if self.constrained or not self.answered:
            return False
        for choice in answer.get("choices") or ():
            message = choice.get("message") or {}
            key: str | None
            if message.get("tool_calls"):
                first = message["tool_calls"][0]["function"]
                key = tool_calls.call_key(first["name"], first["arguments"])
            else:
                key = tool_calls.opening_call(message.get("content") or "")
            if key in self.answered:
                return True
        return False

    def finish(self, answer: dict[str, Any]) -> None:
        """Each choice's calls as OpenAI's `tool_calls`; text that makes no call stays."""
        for choice in answer.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            if message.get("tool_calls"):  # llama-server's own parser found them
                choice["finish_reason"] = "tool_calls"
                continue
            content = message.get("content") or ""
            if self.constrained:
                calls = tool_calls.calls_from_json(content)
            else:
                calls = tool_calls.find_calls(content, self.names)
            if calls:
                message.update(content=None, tool_calls=tool_calls.shape_tool_calls(calls))
                choice["finish_reason"] = "tool_calls"


def _as_openai_shapes_it(answer: dict[str, Any]) -> None:
    """A reply with the keys OpenAI's schema gives it: `refusal` and `logprobs` null when
    empty, and not llama-server's own `timings`. (A stream's chunks pass as llama-server
    writes them, which OpenAI's clients read as they are: its last one carries `timings`.)"""
    answer.pop("timings", None)
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        choice.setdefault("logprobs", None)
        if isinstance(choice.get("message"), dict):
            choice["message"].setdefault("refusal", None)


async def _as_openai_streams(
    chunks: AsyncGenerator[bytes, None], choices: int
) -> AsyncGenerator[bytes, None]:
    """A chat stream as OpenAI's: the first delta of each choice has `role` (llama-server's
    first stream after its start sometimes opens with a content delta), and every chunk has
    the first one's `created` (llama-server stamps each chunk with its own second). A line is
    parsed only until every choice has had its first delta; after that only `created` is
    rewritten, in the bytes."""
    pending, waiting, created = b"", set(range(choices)), b""
    try:
        async for chunk in chunks:
            *lines, pending = (pending + chunk).split(b"\n")
            out = []
            for line in lines:
                if line.startswith(b"data: {"):
                    if waiting:
                        line = _with_role(line, waiting)
                    if not created and (stamp := _CREATED.search(line)):
                        created = stamp.group(0)
                    elif created:
                        line = _CREATED.sub(created, line, count=1)
                out.append(line + b"\n")
            yield b"".join(out)
        if pending:
            yield pending
    finally:
        await chunks.aclose()


def _with_role(line: bytes, waiting: set[int]) -> bytes:
    try:
        event = json.loads(line[6:])
    except ValueError:
        return line
    changed = False
    for choice in event.get("choices") or ():
        index = choice.get("index", 0) if isinstance(choice, dict) else None
        if index not in waiting or not isinstance(choice.get("delta"), dict):
            continue
        waiting.discard(index)
        if "role" not in choice["delta"]:
            choice["delta"] = {"role": "assistant", **choice["delta"]}
            changed = True
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() if changed else line


def _answers_have_content(body: dict[str, Any]) -> dict[str, Any]:
    """An earlier answer with neither content nor calls (OpenAI allows it) as an empty one:
    llama-server refuses an assistant message that has neither."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    fixed = [
        _answer(m) if isinstance(m, dict) and m.get("role") == "assistant" else m for m in messages
    ]
    return {**body, "messages": fixed}


def _answer(message: dict[str, Any]) -> dict[str, Any]:
    """An earlier answer as llama-server takes it: its content parts joined into one text
    (it knows no refusal parts), and some content when it has no calls."""
    content = message.get("content")
    if isinstance(content, list):
        texts = [p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict)]
        content = "\n".join(t for t in texts if t)
    if content is None and not message.get("tool_calls"):
        content = ""
    return {**message, "content": content}


def _legacy_logprobs_asked(path: str, body: dict[str, Any]) -> bool:
    return path == "/completions" and body.get("logprobs") is not None


class LegacyLogprobs:
    """Completions' logprobs as OpenAI shapes them (`tokens`, `token_logprobs`, `top_logprobs`
    as {token: logprob}, `text_offset`), from the chat-style `content` list llama-server gives
    on both routes. One per answer or stream: a stream's text offsets run on across chunks."""

    def __init__(self) -> None:
        self._offsets: dict[int, int] = {}  # choice index -> characters so far

    def reshape(self, answer: dict[str, Any]) -> None:
        for choice in answer.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("logprobs"), dict):
                choice["logprobs"] = self._legacy(int(choice.get("index", 0)), choice["logprobs"])

    async def reshape_stream(
        self, chunks: AsyncGenerator[bytes, None]
    ) -> AsyncGenerator[bytes, None]:
        pending = b""
        try:
            async for chunk in chunks:
                *lines, pending = (pending + chunk).split(b"\n")
                yield b"".join(self._line(line) + b"\n" for line in lines)
            if pending:
                yield self._line(pending)
        finally:
            await chunks.aclose()

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data: {"):
            return line
        try:
            event = json.loads(line[6:])
        except ValueError:
            return line
        self.reshape(event)
        return b"data: " + json.dumps(event, ensure_ascii=False).encode()

    def _legacy(self, index: int, logprobs: dict[str, Any]) -> dict[str, Any]:
        entries = [e for e in logprobs.get("content") or () if isinstance(e, dict)]
        offsets = []
        for entry in entries:
            offsets.append(self._offsets.get(index, 0))
            self._offsets[index] = offsets[-1] + len(str(entry.get("token", "")))
        return {
            "tokens": [e.get("token") for e in entries],
            "token_logprobs": [e.get("logprob") for e in entries],
            "top_logprobs": [
                {t.get("token"): t.get("logprob") for t in e.get("top_logprobs") or ()}
                for e in entries
            ],
            "text_offset": offsets,
        }
