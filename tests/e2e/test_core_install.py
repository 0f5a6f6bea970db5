"""A core install (`pip install .`, no `models` extra) into a fresh venv: the server runs, serves
kind http and kind subprocess models, and names the extra a backend needs when it is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest
from tests.conftest import ROOT, ServerProcess, free_port

pytestmark = pytest.mark.slow

ENGINE_PACKAGES = ("torch", "PIL", "llama_cpp", "sentence_transformers", "onnxruntime")


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding mmserve without extras."""
    home = tmp_path_factory.mktemp("core") / "venv"
    venv.create(home, with_pip=True)
    pip = [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, str(ROOT)], check=True, timeout=600)
    return home / "bin"


def test_the_core_install_has_no_engine_package(core: Path) -> None:
    code = "import importlib.util as u, sys; print([p for p in sys.argv[1:] if u.find_spec(p)])"
    out = subprocess.run(
        [core / "python", "-c", code, *ENGINE_PACKAGES], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_version(core: Path) -> None:
    out = subprocess.run([core / "mmserve", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mmserve ")


def test_serves_subprocess_and_http_models(core: Path, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "mmserve.yaml"
    config.write_text(
        "models:\n"
        f"  - {{name: echo, kind: subprocess, command: [{sys.executable},"
        f" {ROOT}/examples/echo_model.py]}}\n"
        # Itself, as an upstream: a relay that needs nothing but httpx.
        f"  - {{name: relayed, kind: http, base_url: 'http://127.0.0.1:{port}/v1',"
        " upstream_model: echo}\n"
    )
    server = ServerProcess(config, tmp_path / "server.log", python=core / "python", port=port)
    try:
        server.wait_healthy()
        server.wait_models()
        chat = {"messages": [{"role": "user", "content": "hello core"}]}
        for name in ("echo", "relayed"):
            answer = httpx.post(f"{server.url}/v1/chat/completions", json={**chat, "model": name})
            assert answer.status_code == 200, answer.text
            assert "hello core" in answer.json()["choices"][0]["message"]["content"]
    finally:
        server.stop()


def test_a_backend_whose_packages_are_missing_names_the_extra(core: Path, tmp_path: Path) -> None:
    config = tmp_path / "mmserve.yaml"
    config.write_text(
        f"models:\n  - {{name: e, kind: embedding, source: {tmp_path}}}\n"
        "  - {name: o, kind: vision, backend: rapidocr}\n"
    )
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    llm = tmp_path / "llm.yaml"
    llm.write_text(f"models:\n  - {{name: t, kind: llm, source: {gguf}}}\n")
    out_llm = subprocess.run(
        [core / "mmserve", "serve", "--config", str(llm)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MMSERVE_LLAMA_SERVER"},
    )
    assert out_llm.returncode != 0
    assert "needs the program llama-server" in out_llm.stderr, out_llm.stderr
    out = subprocess.run(
        [core / "mmserve", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "pip install 'mmserve[models]'" in out.stderr, out.stderr
    assert "sentence_transformers" in out.stderr and "Traceback" not in out.stderr
