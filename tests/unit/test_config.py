from __future__ import annotations

from pathlib import Path

import pytest

from mmserve.config import DEFAULT_MODELS, load_settings, parse_bytes, select_models
from mmserve.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mmserve.yaml"
    path.write_text(text)
    return path


def test_example_config_loads_and_validates() -> None:
    settings = load_settings(ROOT / "config.example.yaml", env={})
    names = [m.name for m in settings.models]
    assert names[:3] == ["smollm2", "gemma3-270m", "minilm"]
    assert settings.host == "127.0.0.1"


def test_no_file_serves_the_builtin_models() -> None:
    settings = load_settings(None, env={})
    assert [m.name for m in settings.models] == [m["name"] for m in DEFAULT_MODELS]
    assert {m.backend for m in settings.models} == {
        "llama_server",
        "sentence_transformers",
        "rapidocr",
        "efficientnet_lite0",
        "open_nsfw",
    }


def test_layers_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 9000\nhost: 127.0.0.1\nmodels: []\n")
    assert load_settings(path, env={}).port == 9000
    assert load_settings(path, env={"MMSERVE_PORT": "9100"}).port == 9100
    assert load_settings(path, env={"MMSERVE_PORT": "9100"}, overrides={"port": 9200}).port == 9200


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "models:\n  - name: a\n    kind: llm\n    backend: fake\n    sourcee: x\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(path) in info.value.message
    assert "models.0.sourcee" in info.value.message


def test_bad_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "port: lots\nmodels: []\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(path, env={})


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - name: a\n    kind: llm\n    source: nowhere.gguf\n")
    with pytest.raises(ConfigError, match=r"models\.0\.source.*file not found: .*nowhere\.gguf"):
        load_settings(path, env={})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(Path("/nonexistent/mmserve.yaml"), env={})


def test_relative_source_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = write(tmp_path, "models:\n  - name: a\n    kind: llm\n    source: m.gguf\n")
    assert load_settings(path, env={}).models[0].source == str(tmp_path / "m.gguf")


def test_devices_and_replicas(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n"
        "  - {name: a, kind: llm, backend: fake, replicas: 2}\n"
        "  - {name: b, kind: llm, backend: fake, devices: [cuda:0, cuda:1]}\n"
        "  - {name: c, kind: llm, backend: fake, devices: [cuda:0, cuda:1], replicas: 2}\n",
    )
    a, b, c = load_settings(path, env={}).models
    assert c.devices == ["cuda:0", "cuda:1"]
    assert a.devices == ["cpu", "cpu"] and a.replicas == 2
    assert b.devices == ["cuda:0", "cuda:1"] and b.replicas == 2


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{name: a, kind: llm, backend: fake, devices: [gpu0]}", "must be 'cpu' or 'cuda:N'"),
        ("{name: a/b, kind: llm, backend: fake}", "no slash"),
        ("{name: a, kind: llm, backend: nope}", "unknown backend 'nope'"),
        ("{name: a, kind: llm}", "needs a source"),
        ("{name: a, kind: llm, source: 'catalog:nope'}", "unknown catalog model 'nope'"),
        ("{name: a, kind: teleport, backend: fake}", "kind"),
    ],
)
def test_bad_model_specs(tmp_path: Path, model: str, message: str) -> None:
    path = write(tmp_path, f"models:\n  - {model}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env={})


def test_duplicate_names_and_aliases(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n"
        "  - {name: a, kind: llm, backend: fake, aliases: [chat]}\n"
        "  - {name: b, kind: llm, backend: fake, aliases: [chat]}\n",
    )
    with pytest.raises(ConfigError, match="'chat' is used twice"):
        load_settings(path, env={})


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1000", 1000), ("512MB", 512 * 10**6), ("8GiB", 8 * 2**30), ("1.5 gb", 15 * 10**8)],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_room_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path, f"max_loaded_models: 2\nmax_memory: 4GiB\nmodel_dirs: [{tmp_path}]\nmodels: []\n"
    )
    settings = load_settings(path, env={})
    assert (settings.max_loaded_models, settings.max_memory) == (2, 4 * 2**30)
    assert settings.model_dirs == [tmp_path.resolve()]
    with pytest.raises(ConfigError, match="not a size"):
        load_settings(write(tmp_path, "max_memory: lots\nmodels: []\n"), env={})
    with pytest.raises(ConfigError, match="not a directory"):
        load_settings(write(tmp_path, "model_dirs: [/nonexistent]\nmodels: []\n"), env={})


def test_keep_alive_values(tmp_path: Path) -> None:
    ok = write(tmp_path, "models:\n  - {name: a, kind: llm, backend: fake, keep_alive: -1}\n")
    assert load_settings(ok, env={}).models[0].keep_alive == -1
    bad = write(tmp_path, "models:\n  - {name: a, kind: llm, backend: fake, keep_alive: -5}\n")
    with pytest.raises(ConfigError, match="keep_alive"):
        load_settings(bad, env={})


def test_select_models_with_devices() -> None:
    settings = select_models(load_settings(None, env={}), ["smollm2"], ["cuda:0", "cuda:1"])
    (spec,) = settings.models
    assert spec.name == "smollm2" and spec.devices == ["cuda:0", "cuda:1"] and spec.replicas == 2
    assert select_models(settings, ["smollm2"], ["cpu", "cpu"]).models[0].devices == ["cpu", "cpu"]
    with pytest.raises(ConfigError, match="nor in the built-in catalog"):
        select_models(settings, ["gpt-9"], None)


def test_subprocess_models_need_a_command_and_nothing_else(tmp_path: Path) -> None:
    ok = write(tmp_path, "models:\n  - {name: p, kind: subprocess, command: [node, model.js]}\n")
    (spec,) = load_settings(ok, env={}).models
    assert spec.backend == "subprocess" and spec.command == ["node", "model.js"]
    for bad in (
        "{name: p, kind: subprocess}",
        "{name: p, kind: llm, source: 'catalog:smollm2', command: [x]}",
        "{name: p, kind: subprocess, backend: llama_cpp, command: [x]}",
    ):
        with pytest.raises(ConfigError, match="subprocess"):
            load_settings(write(tmp_path, f"models:\n  - {bad}\n"), env={})


def test_http_models(tmp_path: Path) -> None:
    ok = write(
        tmp_path,
        "models:\n  - {name: r, kind: http, base_url: 'http://h:1/v1', api_key_env: UP_KEY}\n"
        "  - {name: j, kind: http, backend: json, base_url: 'https://h/x', max_concurrency: 2}\n",
    )
    remote, endpoint = load_settings(ok, env={"UP_KEY": "k1"}).models
    assert remote.backend == "openai" and remote.max_concurrency == 64
    assert remote.api_key is not None and remote.api_key.get_secret_value() == "k1"
    assert "k1" not in repr(remote)
    assert endpoint.backend == "json" and endpoint.max_concurrency == 2
    with pytest.raises(ConfigError, match="UP_KEY is not set"):
        load_settings(ok, env={})
    for bad, message in (
        ("{name: r, kind: http}", "needs base_url"),
        ("{name: r, kind: http, base_url: 'ftp://h'}", "http:// or https://"),
        ("{name: r, kind: http, base_url: 'http://d:\u00b6'}", "http:// or https://"),
        ("{name: r, kind: http, base_url: 'http://h', backend: llama_cpp}", "openai or json"),
        ("{name: r, kind: http, base_url: 'http://h', source: 'catalog:smollm2'}", "not source"),
        ("{name: r, kind: llm, backend: fake, base_url: 'http://h'}", "base_url goes with"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(write(tmp_path, f"models:\n  - {bad}\n"), env={})


def test_embedding_batches_default_to_16_unless_set(tmp_path: Path) -> None:
    text = (
        "models:\n  - {name: e, kind: embedding, source: catalog:minilm}\n"
        "  - {name: f, kind: embedding, source: catalog:minilm, max_batch_size: 4}\n"
    )
    default, given = load_settings(write(tmp_path, text), env={}).models
    assert (default.max_batch_size, default.max_concurrency) == (16, 32)
    assert (given.max_batch_size, given.max_concurrency) == (4, 8)


def test_vision_models(tmp_path: Path) -> None:
    ok = write(tmp_path, "models:\n  - {name: v, kind: vision, backend: rapidocr, threads: 1}\n")
    (spec,) = load_settings(ok, env={}).models
    assert spec.max_concurrency == 2 * spec.max_batch_size == 16
    for bad, message in (
        ("{name: v, kind: vision}", "needs a backend"),
        ("{name: v, kind: vision, backend: llama_cpp}", "needs a backend"),
        ("{name: v, kind: vision, backend: rapidocr, source: 'catalog:minilm'}", "no source"),
        ("{name: v, kind: vision, backend: rapidocr, devices: ['cuda:0']}", "cpu device only"),
        ("{name: v, kind: vision, backend: rapidocr, options: {lang: fr}}", "unknown options"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(write(tmp_path, f"models:\n  - {bad}\n"), env={})
