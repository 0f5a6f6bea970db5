"""What the benchmark scripts in bench/ share: a server of their own, noise and environment.

The scripts run as `.venv/bin/python bench/<script>.py` from the repository root, so this
directory is first on `sys.path` and they import from here with `from common import ...`.

  server    `free_port`, `write_config`, `start_server` (mmserve, this one or the one at a git
            ref: `source_at`) and `start_process` (any server, a peer's), `wait_until` with
            the checks `is_healthy`, `models_ready`, `started` and `answers`, `terminate` and
            `stop_server`, `tail` of its log; or all of it at once: `serving_mmserve` and
            `serving` (a peer's) as context managers
  CPU       `cpu_seconds`: a process's (and its children's) CPU time, for CPU per request
  noise     `CpuMeter`: the CPU cores other programs kept busy during a measurement
  figures   `medians` per contender, `median_ratios` of two paired contenders
  context   `omp_env` (the OpenMP settings the server gives its model processes),
            `describe_environment` (machine, versions, command) and `cpu_model`
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import yaml

T = TypeVar("T")
S = TypeVar("S")

# --- a server of its own ---------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(log: Path, chars: int = 4000) -> str:
    """The last `chars` characters of a log file, for error messages."""
    return log.read_text(errors="replace")[-chars:]


def write_config(directory: Path, config: dict[str, Any]) -> Path:
    """Write `config` as `config.yaml` in `directory`; return its path."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_server(
    config: Path, log: Path, src: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m mmserve serve --config CONFIG` on a free port, its output to `log`.

    MMSERVE_CONFIG is taken out of its environment so that only `config` counts. With `src`
    (a directory holding an `mmserve` package: see `source_at`) that mmserve runs, with this
    venv. Returns the process and the server's base URL; it returns at once, without waiting
    for the server.
    """
    port = free_port()
    command = [sys.executable, "-m", "mmserve", "serve", "--config", str(config)]
    command += ["--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "MMSERVE_CONFIG"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return start_process(command, log, env), f"http://127.0.0.1:{port}"


# What `uvicorn[standard]` adds to plain uvicorn: uvicorn uses them when they import.
STANDARD_EXTRAS = ("uvloop", "httptools")


def source_at(ref: str, directory: Path) -> Path:
    """mmserve's `src` as it was at git `ref`, extracted under `directory`: the directory to
    hand `start_server` as `src`, to measure an older mmserve beside this one.

    If that commit's pyproject.toml asked for plain uvicorn, a `sitecustomize` there hides
    uvloop and httptools from it (this venv has them now), so that it runs as it then did.
    """
    repo = Path(__file__).resolve().parent.parent
    target = directory / f"mmserve-{ref.replace('/', '_')}"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", ref, "src", "pyproject.toml"], cwd=repo, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    if "uvicorn[standard]" not in (target / "pyproject.toml").read_text():
        hide = "".join(f"sys.modules[{name!r}] = None\n" for name in STANDARD_EXTRAS)
        (target / "src" / "sitecustomize.py").write_text(f"import sys\n{hide}")
    return target / "src"


def start_process(
    command: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `command` with its stdout and stderr to `log`; `env` replaces the environment."""
    with log.open("wb") as out:
        return subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env)


def is_healthy(url: str) -> bool:
    """Whether the server's /health answers 200."""
    return httpx.get(f"{url}/health", timeout=2).status_code == 200


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 200 (a peer server's readiness check)."""
    return httpx.get(url, timeout=5).status_code == 200


def started(url: str, log: Path, headers: Mapping[str, str] | None = None) -> bool:
    """Whether /ready answers 200 (the models loaded at start are); RuntimeError if one failed.

    Unlike `models_ready`, a model that loads on its first request (`preload: false`) does not
    hold it up. `headers`: the API key, if the server has keys.
    """
    if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
        return True
    models_ready(url, log, headers)  # raises if a model failed to load
    return False


def models_ready(url: str, log: Path, headers: Mapping[str, str] | None = None) -> bool:
    """Whether every model in /api/v1/ is `ready`; RuntimeError if one `failed` to load."""
    listing = httpx.get(f"{url}/api/v1/", timeout=5, headers=headers)
    states = [m["state"] for m in listing.json()["models"]]
    if all(state == "ready" for state in states):
        return True
    if "failed" in states:
        raise RuntimeError(f"a model failed to load:\n{tail(log)}")
    return False


def wait_until(
    proc: subprocess.Popen[bytes],
    log: Path,
    ready: Callable[[], bool],
    *,
    timeout: float,
    interval: float,
    what: str,
    retry_on: tuple[type[Exception], ...] = (httpx.TransportError,),
) -> None:
    """Poll `ready()` every `interval` s until it is true.

    An exception in `retry_on` counts as not ready yet. RuntimeError if the server exits first,
    TimeoutError (`what` after `timeout` s) if `timeout` s pass; both quote the end of `log`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(*retry_on):
            if ready():
                return
        time.sleep(interval)
    raise TimeoutError(f"{what} after {timeout} s:\n{tail(log)}")


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the process and wait for it; SIGKILL it if it is still running after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """`terminate` the server; then make sure none of its children outlived it.

    The children are those seen now: a child the server started after a SIGTERM already sent to
    it would be missed; the server stops its children itself. A child still running 10 s after
    the server is gone is killed, with a warning.
    """
    children: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        children = psutil.Process(proc.pid).children(recursive=True)
    terminate(proc, timeout)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        print(f"warning: child pid {child.pid} outlived the server; killing it")
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def serving_mmserve(
    directory: Path, config: dict[str, Any], *, timeout: float = 300, src: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mmserve serve` with `config` (written to `directory`), its start-up models ready; with
    `src`, the mmserve found there (see `start_server`).

    Yields the base URL and the process; stops the server (and its children) at the end.
    RuntimeError (quoting the server's log) if it exits or a model fails to load first.
    """
    log = directory / "server.log"
    proc, url = start_server(write_config(directory, config), log, src)
    headers = _auth(config)
    try:
        wait_until(
            proc,
            log,
            lambda: is_healthy(url) and started(url, log, headers),
            timeout=timeout,
            interval=0.2,
            what="mmserve not ready",
            retry_on=(httpx.TransportError, ValueError, KeyError),
        )
        yield url, proc
    finally:
        stop_server(proc)


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    log: Path,
    ready_url: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> Iterator[subprocess.Popen[bytes]]:
    """Any server (a peer's): started, then polled until `ready_url` answers 200; stopped after."""
    proc = start_process(command, log, env)
    try:
        wait_until(
            proc,
            log,
            lambda: answers(ready_url),
            timeout=timeout,
            interval=0.2,
            what=f"{Path(command[0]).name} not ready",
        )
        yield proc
    finally:
        stop_server(proc)


def _auth(config: dict[str, Any]) -> dict[str, str]:
    """The Authorization header of the config's first API key (none if it has no keys)."""
    keys = config.get("api_keys") or []
    return {"Authorization": f"Bearer {keys[0]['key']}"} if keys else {}


# --- noise -------------------------------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = True) -> float:
    """CPU seconds of process `pid` so far (and of its children, alive now).

    Read from each thread's /proc/PID/task/TID/schedstat (nanoseconds on a CPU) where Linux
    has it: psutil's user + system time counts in clock ticks (10 ms), too coarse for a
    request that costs a millisecond. A thread that ended meanwhile takes its time with it.
    """
    root = psutil.Process(pid)
    procs = [root, *(root.children(recursive=True) if children else [])]
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, OSError):
            total += _on_cpu(proc)
    return total


def _on_cpu(proc: psutil.Process) -> float:
    tasks = Path(f"/proc/{proc.pid}/task")
    if not tasks.is_dir():
        times = proc.cpu_times()
        return float(times.user + times.system)
    total = 0
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class CpuMeter:
    """How busy the machine was with work other than ours: the noise on a shared box.

    Ours is the processes given and their descendants at the end of the measurement (a server,
    its model processes, a direct child). Others' is the CPU time of every other process alive
    at the end of the measurement (all of it if it started meanwhile), plus the steal time (the
    host running other virtual machines on our CPUs). Processes that start and end within one
    measurement go unseen.
    """

    def __init__(self, pids: list[int]) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]

    def measure(self, run: Callable[[], T]) -> tuple[T, float]:
        """Call `run`; return its result and the CPU cores others kept busy meanwhile."""
        before, steal, start = self._others(), self._steal(), time.perf_counter()
        result = run()
        wall = time.perf_counter() - start
        used = sum(cpu - before.get(key, 0.0) for key, cpu in self._others().items())
        return result, (used + self._steal() - steal) / wall

    def _ours(self) -> set[int]:
        pids: set[int] = set()
        for root in self.roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                pids |= {root.pid, *(child.pid for child in root.children(recursive=True))}
        return pids

    def _others(self) -> dict[tuple[int, float], float]:
        """CPU seconds of every other process, by (pid, start time)."""
        ours, times = self._ours(), {}
        for proc in psutil.process_iter(["create_time", "cpu_times"]):
            cpu = proc.info["cpu_times"]
            if proc.pid not in ours and cpu is not None:
                times[proc.pid, proc.info["create_time"]] = cpu.user + cpu.system
        return times

    @staticmethod
    def _steal() -> float:
        return float(getattr(psutil.cpu_times(), "steal", 0.0))


# --- figures -----------------------------------------------------------------------------------


def medians(groups: Mapping[str, Iterable[S]], of: Callable[[S], float]) -> dict[str, float]:
    """The median of `of(sample)` over each group's samples, by group name."""
    return {name: statistics.median(of(s) for s in samples) for name, samples in groups.items()}


def median_ratios(
    numerators: Sequence[float], denominators: Sequence[float]
) -> tuple[float, float]:
    """Ratios of paired measurements: of the medians, and the median of each pair's own ratio."""
    of_medians = statistics.median(numerators) / statistics.median(denominators)
    pairs = zip(numerators, denominators, strict=True)
    return of_medians, statistics.median(n / d for n, d in pairs)


# --- context -----------------------------------------------------------------------------------


def omp_env(threads: int) -> dict[str, str]:
    """The OpenMP settings the server gives its model processes: threads sleep, not spin.

    In this process they must be set before llama_cpp is imported (it reads them when it loads).
    """
    return {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def describe_environment(versions: Iterable[str]) -> None:
    """Print the machine, the versions (mmserve, then `versions`, then python) and the command."""
    import mmserve

    memory = psutil.virtual_memory().total / 2**30
    print(f"machine:  {platform.machine()}, {os.cpu_count()} cores, {memory:.1f} GiB memory")
    print(f"          {cpu_model()}, {platform.platform()}")
    print(
        f"versions: mmserve {mmserve.__version__}, {', '.join(versions)}, "
        f"python {platform.python_version()}"
    )
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
