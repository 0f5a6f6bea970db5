"""The cluster section, placement and resources: defaults, refusals and what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mmserve.config import load_settings, select_models
from mmserve.errors import ConfigError

CLUSTER = "cluster: {address: 127.0.0.1:6379}\n"


def settings(tmp_path: Path, text: str):
    path = tmp_path / "mmserve.yaml"
    path.write_text(text)
    return load_settings(path, env={})


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        settings(tmp_path, text)
    return caught.value.message


def test_a_cluster_makes_llm_and_embedding_models_ray_by_default(tmp_path: Path) -> None:
    loaded = settings(
        tmp_path,
        CLUSTER
        + """models:
  - {name: chat, kind: llm, source: "catalog:smollm2"}
  - {name: vec, kind: embedding, source: "catalog:minilm"}
  - {name: here, kind: llm, backend: fake, placement: local}
  - {name: gguf-server, kind: llm, backend: llama_server, source: "catalog:smollm2"}
  - {name: ocr, kind: vision, backend: rapidocr}
  - {name: gpu-here, kind: llm, backend: fake, devices: [cuda:0]}
""",
    )
    placed = {m.name: (m.placement, m.backend) for m in loaded.models}
    assert placed == {
        # In a Ray actor an llm runs llama-cpp-python: llama-server is a local program.
        "chat": ("ray", "llama_cpp"),
        "vec": ("ray", "sentence_transformers"),
        "here": ("local", "fake"),
        "gguf-server": ("local", "llama_server"),
        "ocr": ("local", "rapidocr"),
        "gpu-here": ("local", "fake"),  # a GPU of this machine: it stays here
    }
    assert loaded.cluster is not None and loaded.cluster.namespace == "mmserve"


def test_without_a_cluster_everything_is_local(tmp_path: Path) -> None:
    loaded = settings(tmp_path, "models:\n  - {name: e, kind: llm, backend: fake}\n")
    assert loaded.cluster is None and loaded.models[0].placement == "local"


def test_resources_are_parsed(tmp_path: Path) -> None:
    loaded = settings(
        tmp_path,
        CLUSTER
        + """models:
  - name: e
    kind: embedding
    backend: fake
    resources: {num_cpus: 0.5, num_gpus: 1, memory: 2GiB, custom: {box: 1}, labels: {z: a}}
""",
    )
    resources = loaded.models[0].resources
    assert resources is not None and resources.memory == 2 * 2**30
    assert (resources.num_cpus, resources.num_gpus, resources.custom) == (0.5, 1, {"box": 1})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "models:\n  - {name: e, kind: llm, backend: fake, placement: ray}\n",
            "no cluster is configured",
        ),
        (
            CLUSTER + "models:\n  - {name: e, kind: llm, backend: llama_server, "
            'source: "catalog:smollm2", placement: ray}\n',
            "llama-cpp-python",
        ),
        (
            CLUSTER + "models:\n  - {name: o, kind: vision, backend: rapidocr, placement: ray}\n",
            "kind vision runs on this machine",
        ),
        (
            CLUSTER + "models:\n  - {name: e, kind: llm, backend: fake, devices: [cuda:0], "
            "placement: ray}\n",
            "resources.num_gpus",
        ),
        (
            "models:\n  - {name: e, kind: llm, backend: fake, resources: {num_cpus: 1}}\n",
            "resources go with placement: ray",
        ),
        (
            CLUSTER + "models:\n  - {name: e, kind: llm, backend: fake, "
            "resources: {custom: {CPU: 2}}}\n",
            "Ray's own resource",
        ),
        ("cluster: {address: 'http://head:8265'}\nmodels: []\n", "auto, HOST:PORT or ray://"),
        ("cluster: {engine: kubernetes}\nmodels: []\n", "cluster.engine"),
    ],
)
def test_refusals_name_the_fix(tmp_path: Path, text: str, says: str) -> None:
    assert says in refused(tmp_path, text)


def test_a_cluster_without_ray_installed_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def without_ray(name: str, *args: object) -> object:
        return None if name == "ray" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_ray)
    message = refused(tmp_path, CLUSTER + "models: []\n")
    assert "pip install 'mmserve[ray]'" in message


def test_select_models_keeps_the_placement(tmp_path: Path) -> None:
    loaded = settings(tmp_path, CLUSTER + "models:\n  - {name: e, kind: llm, backend: fake}\n")
    chosen = select_models(loaded, ["e"], None)
    assert chosen.models[0].placement == "ray" and chosen.cluster == loaded.cluster
