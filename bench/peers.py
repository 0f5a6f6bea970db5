"""The peer servers mmserve is compared with, each in its own virtual environment.

  llama    `llama-cpp-python[server]` at the version mmserve's own venv has (pip's wheel cache
           holds the compiled wheel, so it does not compile again): `python -m llama_cpp.server`
           with a config file that lists one or more GGUF models
  infinity `infinity-emb[server,torch]`, installed with the repository's constraints.txt so that
           torch stays the CPU build (plain torch pulls several GB of CUDA packages): serves a
           local sentence-transformers directory
  litellm  `litellm[proxy]`, LiteLLM's proxy (the gateway users put in front of hosted APIs):
           one worker, a config file naming one OpenAI-compatible upstream, no database, its
           price list read from the package (no fetch), a master key as it requires

`running_llama_server`, `running_infinity` and `running_litellm` start one for the span of a
with block.
`ensure(peer)` creates bench/.peers/NAME (a venv) and installs the peer the first time, again
only when its requirements change (a stamp file holds them and the versions installed), checks
that it imports, and returns its versions, or the reason it cannot be used: a benchmark shows
that reason in the peer's row instead of dropping it. Installs log to
bench/.peers/NAME-install.log.

The peers get the model files mmserve serves (found through `mmserve.catalog`), never a model
hub: Infinity runs with HF_HUB_OFFLINE=1 and its telemetry off.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from common import free_port, omp_env, serving, tail

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEERS = BENCH / ".peers"
INSTALL_TIMEOUT = 1800  # seconds: a first install of infinity-emb with torch takes minutes
INFINITY_VERSION = "0.0.78"
LITELLM_VERSION = "1.110.0"

# Run in the peer's venv: prints the versions the report names, or fails with the import error.
PROBE = """
import importlib, importlib.metadata as m, json, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
names = ("llama-cpp-python", "infinity-emb", "litellm", "sentence-transformers", "torch",
         "transformers", "uvicorn", "uvloop", "httptools")
found = {}
for name in names:
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(found))
"""


@dataclass(frozen=True)
class Peer:
    name: str  # its directory under bench/.peers
    label: str
    requirements: tuple[str, ...]
    modules: tuple[str, ...]  # what must import for it to run

    @property
    def venv(self) -> Path:
        return PEERS / self.name

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


@dataclass(frozen=True)
class Installed:
    """A peer ready to run (its versions), or the reason it is not (`problem`)."""

    peer: Peer
    versions: dict[str, str] = field(default_factory=dict)
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def llama_server() -> Peer:
    """llama-cpp-python's OpenAI server, at the llama-cpp-python version mmserve runs."""
    return Peer(
        "llama",
        "llama-cpp-python server",
        (f"llama-cpp-python[server]=={version('llama-cpp-python')}",),
        ("llama_cpp.server.app",),
    )


def infinity() -> Peer:
    return Peer(
        "infinity",
        "Infinity",
        (f"infinity-emb[server,torch]=={INFINITY_VERSION}",),
        ("infinity_emb.infinity_server", "sentence_transformers", "torch"),
    )


def litellm() -> Peer:
    """The proxy's code ships in the `litellm` wheel; its `proxy` extra also names a package
    `litellm-proxy` that this registry does not have, so the extra's other requirements are
    listed here instead (those the proxy imports when it serves a config file, no database)."""
    extra = (
        *("gunicorn", "uvicorn", "uvloop", "fastapi", "backoff", "pyyaml", "rq", "orjson"),
        *("apscheduler", "fastapi-sso", "pyjwt", "python-multipart", "cryptography", "pynacl"),
        *("websockets", "mcp", "litellm-proxy-extras", "litellm-enterprise", "polars", "rich"),
        *("semver", "expression", "tomlkit", "restrictedpython", "soundfile", "inquirerpy"),
        *("boto3", "azure-identity", "azure-storage-blob", "backports-zstd"),
    )
    return Peer(
        "litellm",
        "LiteLLM proxy",
        (f"litellm=={LITELLM_VERSION}", *extra),
        ("litellm.proxy.proxy_server",),
    )


def ensure(peer: Peer) -> Installed:
    """Install `peer` if its venv lacks its requirements; never raises.

    The first time (or when the requirements change) it installs, checks that the peer imports,
    and records the requirements and versions in the venv's stamp file; later calls read them
    back from there (a venv broken since shows when its server fails to start).
    """
    stamp = peer.venv / ".installed"
    try:
        record = read_stamp(stamp)
        if record.get("requirements") != list(peer.requirements):
            install(peer)
            record = {"requirements": list(peer.requirements), "versions": probe(peer)}
            stamp.write_text(json.dumps(record))
        return Installed(peer, dict(record["versions"]))
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError) as exc:
        return Installed(peer, problem=f"{peer.label} could not be installed or imported: {exc}")


def read_stamp(stamp: Path) -> dict[str, Any]:
    """What the last successful install recorded; empty if none (or unreadable)."""
    try:
        record = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def install(peer: Peer) -> None:
    """Create the venv if needed and pip-install the requirements (with constraints.txt)."""
    PEERS.mkdir(parents=True, exist_ok=True)
    log = PEERS / f"{peer.name}-install.log"
    print(f"installing {' '.join(peer.requirements)} into {peer.venv} (log: {log})...")
    pip = [str(peer.python), "-m", "pip", "install"]
    commands = [
        [*pip, "--upgrade", "--quiet", "pip"],
        [*pip, "-c", str(REPO / "constraints.txt"), *peer.requirements],
    ]
    if not peer.python.exists():
        commands.insert(0, [sys.executable, "-m", "venv", str(peer.venv)])
    with log.open("w") as out:
        for command in commands:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            done = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=INSTALL_TIMEOUT
            )
            if done.returncode != 0:
                shown = " ".join(command[2:] if command[1] == "-m" else command)
                raise RuntimeError(f"`{shown}` failed: {why(log)} (see {log})")


def why(log: Path) -> str:
    """pip's last error line (else the log's last line): the reason, in one line."""
    lines = [line.strip() for line in tail(log, 20_000).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1][:300]


def probe(peer: Peer) -> dict[str, str]:
    """The peer's versions, after importing what it needs to run; RuntimeError if it cannot."""
    done = subprocess.run(
        [str(peer.python), "-c", PROBE, *peer.modules],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "no output")
    versions: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return versions


# llama_cpp.server's requests default to repeat_penalty 1.1, where create_chat_completion (and
# mmserve, which follows llama.cpp) apply none: sent to it, this makes all do the same work
# (with temperature 0, the same text).
LLAMA_SERVER_SAMPLING = {"repeat_penalty": 1.0}


# --- how each peer is started ------------------------------------------------------------------


@contextlib.contextmanager
def running_llama_server(
    directory: Path, models: list[dict[str, Any]], threads: int
) -> Iterator[tuple[str, int]]:
    """`llama_cpp.server` serving `models` (installed first if need be), until the block ends.

    Yields its base URL and pid. RuntimeError, saying why, if it cannot be installed or started.
    """
    installed = ensure(llama_server())
    if not installed.ok:
        raise RuntimeError(installed.problem)
    port = free_port()
    command = llama_server_command(installed.peer, directory, port, models)
    url = f"http://127.0.0.1:{port}"
    log = directory / "llama-server.log"
    with serving(command, log, f"{url}/v1/models", env=llama_server_env(threads)) as proc:
        yield url, proc.pid


@contextlib.contextmanager
def running_infinity(
    directory: Path, model_dir: Path, name: str, threads: int, batch_size: int
) -> Iterator[tuple[str, int, Installed]]:
    """Infinity serving `model_dir` as `name` (installed first if need be), until the block ends.

    Yields its base URL, pid and versions. RuntimeError, saying why, if it cannot be installed or
    started.
    """
    installed = ensure(infinity())
    if not installed.ok:
        raise RuntimeError(installed.problem)
    port = free_port()
    command = infinity_command(installed.peer, model_dir, name, port, batch_size)
    url = f"http://127.0.0.1:{port}"
    log = directory / "infinity.log"
    with serving(command, log, f"{url}/health", env=infinity_env(threads)) as proc:
        yield url, proc.pid, installed


def llama_server_command(
    peer: Peer, directory: Path, port: int, models: list[dict[str, Any]]
) -> list[str]:
    """`python -m llama_cpp.server --config_file FILE`: one server, the models in `models`.

    Each entry is a llama_cpp.server ModelSettings (model, model_alias, n_threads, ...). The
    server holds one model at a time and swaps on a request for another. interrupt_requests is
    off: otherwise a new request cuts the stream in progress short, where mmserve queues it.
    """
    config = {
        "host": "127.0.0.1",
        "port": port,
        "interrupt_requests": False,
        "models": models,
    }
    path = directory / "llama-server.yaml"
    path.write_text(yaml.safe_dump(config))
    return [str(peer.python), "-m", "llama_cpp.server", "--config_file", str(path)]


def llama_model(path: Path, alias: str, threads: int, context: int) -> dict[str, Any]:
    """A llama_cpp.server model entry with mmserve's settings for the same model."""
    return {
        "model": str(path),
        "model_alias": alias,
        "n_ctx": context,
        "n_threads": threads,
        "n_threads_batch": threads,
        "n_gpu_layers": 0,
        "verbose": False,
    }


def llama_server_env(threads: int) -> dict[str, str]:
    """The peer gets the OpenMP settings mmserve gives its model processes."""
    return {**os.environ, **omp_env(threads)}


def infinity_command(
    peer: Peer, model_dir: Path, name: str, port: int, batch_size: int = 32
) -> list[str]:
    """`infinity_emb v2` serving one local sentence-transformers directory on the CPU, torch."""
    return [
        str(peer.venv / "bin" / "infinity_emb"),
        "v2",
        *("--model-id", str(model_dir), "--served-model-name", name),
        *("--engine", "torch", "--device", "cpu", "--batch-size", str(batch_size)),
        "--no-bettertransformer",  # an optimum (not installed) path; plain torch here
        "--no-model-warmup",  # the benchmark warms every contender up alike
        "--url-prefix=/v1",  # /v1/embeddings, as mmserve and OpenAI serve it
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
    ]


def infinity_env(threads: int) -> dict[str, str]:
    """Offline (no model hub), no telemetry, its cache in bench/.peers, OpenMP as mmserve's."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "INFINITY_HOME": str(PEERS / "infinity-home"),  # else it writes ./.infinity_cache
        **omp_env(threads),  # as mmserve gives its embedding model's process
        "MKL_NUM_THREADS": str(threads),
    }


@contextlib.contextmanager
def running_litellm(
    directory: Path, upstream: str, name: str, upstream_model: str, master_key: str
) -> Iterator[tuple[str, int, Installed]]:
    """LiteLLM's proxy serving `name`, relayed to the OpenAI-compatible `upstream` (its base URL,
    with /v1) as `upstream_model`, until the block ends; installed first if need be. Clients
    send `master_key` as their bearer token. Yields its base URL, pid and versions;
    RuntimeError, saying why, if it cannot be installed or started."""
    installed = ensure(litellm())
    if not installed.ok:
        raise RuntimeError(installed.problem)
    port = free_port()
    params = {"model": f"openai/{upstream_model}", "api_base": upstream, "api_key": "unused"}
    config = {"model_list": [{"model_name": name, "litellm_params": params}]}
    path = directory / "litellm.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [str(installed.peer.venv / "bin" / "litellm"), "--config", str(path)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": master_key,  # it refuses to start without one
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the price list from the package, not fetched
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    with serving(command, directory / "litellm.log", f"{url}/health/liveliness", env=env) as proc:
        yield url, proc.pid, installed
