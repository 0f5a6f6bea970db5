"""Fuzz the real server, with the real models, against its own OpenAPI document.

Schemathesis runs every check it has (`--checks all`: no 5xx, every status and body as the
document says, schema-valid requests accepted and schema-violating ones refused, 405s with a
correct `Allow`...) in its four phases (examples, coverage: the boundary values of each field;
fuzzing: random positive and negative cases; stateful: sequences of calls), with the three
built-in text models really loaded. tests/e2e/schemathesis.toml holds the run's settings (a
fixed seed, so a run is reproducible) and tests/e2e/fuzz_hooks.py what only the models can
tell (which names exist, their caps and vocabulary): it fits each schema-valid case to a real
model, so the fuzzing reaches the models and not only the 404 of an unknown name. Each model
has `max_tokens: 8`, so fuzzed generations stay short, and `max_inputs: 64`.

The run passes with no failure of any check. A failure prints schemathesis's report: each
failing case, the check it failed and the curl command that reproduces it.

`MMSERVE_FUZZ_SEED=N` changes the seed and `MMSERVE_FUZZ_EXAMPLES=N` the number of random
examples per operation. Hypothesis never generates lone surrogates (which JSON can carry as
`\\ud800`), so a few hand-picked inputs go in a second test, with the no-5xx property.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
CAP = 8  # max_tokens of every model below (fuzz_hooks.CAP)
MODELS = ("smollm2", "gemma3-270m", "minilm")
CONFIG = f"""
model_dirs: []
models:
  - {{name: smollm2, kind: llm, source: "catalog:smollm2", max_tokens: {CAP}, max_inputs: 64}}
  - {{name: gemma3-270m, kind: llm, source: "catalog:gemma3-270m", max_tokens: {CAP},
      max_inputs: 64}}
  - {{name: minilm, kind: embedding, source: "catalog:minilm", max_tokens: {CAP}, max_inputs: 64}}
"""
TIMEOUT = 120  # seconds for one request: a cold load of minilm takes about 10 s on 2 cores


@pytest.fixture(scope="module")
def fuzz_server(server_factory, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    config.write_text(CONFIG)
    server = server_factory(config)
    models = server.wait_models(timeout=600)
    assert all(m["state"] == "ready" for m in models), models
    return server


def schemathesis_run(url: str) -> list[str]:
    """The command line of the run, with the environment's seed and examples if given."""
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file"]
    command += [str(HERE / "schemathesis.toml"), "run", f"{url}/openapi.json"]
    if "MMSERVE_FUZZ_SEED" in os.environ:
        command += ["--seed", os.environ["MMSERVE_FUZZ_SEED"]]
    if "MMSERVE_FUZZ_EXAMPLES" in os.environ:
        command += ["--max-examples", os.environ["MMSERVE_FUZZ_EXAMPLES"]]
    return command


@pytest.mark.timeout(3600)
def test_schemathesis_finds_no_failure(fuzz_server, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(HERE / "fuzz_hooks.py"),
        "MMSERVE_FUZZ_URL": fuzz_server.url,
    }
    run = subprocess.run(
        schemathesis_run(fuzz_server.url),
        env=env,
        cwd=tmp_path,  # where schemathesis keeps its cache (.schemathesis/), not the repository
        capture_output=True,
        text=True,
        check=False,
    )
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    print(summary)  # the counts, for the log of a passing run (pytest -s)
    assert run.returncode == 0, f"{run.stdout[-20000:]}\n{run.stderr[-3000:]}"
    # The fuzzing reached the models, not only the schema's edges and unknown names.
    answered = answers_by_model(fuzz_server.url)
    print("200s by model:", answered)
    assert all(answered.get(model, 0) >= 20 for model in MODELS), answered


def answers_by_model(url: str) -> dict[str, float]:
    """How many requests each model answered with a 200, from the server's own metrics."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "mmserve_requests_total" and sample.labels["status"] == "200":
                model = sample.labels["model"]
                counts[model] = counts.get(model, 0) + sample.value
    return counts


def server_error(status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong, if the answer is a server error: a 5xx status, or a stream (status 200,
    its headers already sent) that carries an error frame of a 5xx type."""
    if status >= 500:
        return f"status {status}"
    if content_type.startswith("text/event-stream"):
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("data: {") and '"error"' in line:
                error = json.loads(line.removeprefix("data: "))["error"]
                if error.get("type") in ("internal_error", "service_unavailable"):
                    return f"status {status}, then an error in the stream: {error}"
    return None


def log_since(server: Any, start: int) -> str:
    """What the server logged after byte `start` of its log (the last 6000 characters)."""
    with Path(server.log_path).open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")[-6000:]


# Raw JSON bodies: `\ud800` is a lone surrogate, valid JSON that Hypothesis never generates.
HAND_PICKED = {
    "surrogate in a completion prompt": (
        "/v1/completions",
        r'{"model": "gemma3-270m", "prompt": "\ud800", "max_tokens": 8}',
    ),
    "surrogate in a streamed completion prompt": (
        "/v1/completions",
        r'{"model": "gemma3-270m", "prompt": "a\ud800", "max_tokens": 8, "stream": true}',
    ),
    "surrogate in a chat message": (
        "/v1/chat/completions",
        r'{"model": "smollm2", "messages": [{"role": "user", "content": "\udfff"}],'
        r' "max_tokens": 8}',
    ),
    "surrogate in a stop string": (
        "/v1/chat/completions",
        r'{"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}],'
        r' "stop": "\ud800", "max_tokens": 8}',
    ),
    "surrogate in an embedding input": (
        "/v1/embeddings",
        r'{"model": "minilm", "input": ["fine", "\ud800"]}',
    ),
    "an empty prompt in a list, to a model with no BOS token": (
        "/v1/completions",
        r'{"model": "smollm2", "prompt": [""], "max_tokens": 8}',
    ),
    "an empty prompt in a list, streamed": (
        "/v1/completions",
        r'{"model": "smollm2", "prompt": ["Hi", ""], "max_tokens": 8, "stream": true}',
    ),
    "a token array in another model's vocabulary": (
        "/v1/embeddings",
        r'{"model": "minilm", "input": [[9906, 1917], [100256]]}',
    ),
    "a replica on a device this machine does not have": (
        "/api/v1/minilm/add",
        r'{"device": "cuda:99"}',
    ),
}


@pytest.mark.parametrize(("path", "body"), HAND_PICKED.values(), ids=HAND_PICKED.keys())
def test_hand_picked_inputs_get_no_5xx(fuzz_server, path: str, body: str) -> None:
    log_start = fuzz_server.log_path.stat().st_size
    response = httpx.post(
        f"{fuzz_server.url}{path}",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    if response.status_code == 200 and path.endswith("/add"):
        httpx.post(f"{fuzz_server.url}{path.removesuffix('/add')}/remove", timeout=TIMEOUT)
    problem = server_error(
        response.status_code, response.headers.get("content-type", ""), response.content
    )
    assert problem is None, (
        f"POST {path} {body}: {problem}\nresponse: {response.text[-2000:]}\n"
        f"server log while it ran:\n{log_since(fuzz_server, log_start)}"
    )
