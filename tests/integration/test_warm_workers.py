"""Warm workers through the engine, with real processes: a load is a child forked by the pool's
pre-imported fork server; the fake backend, then MiniLM on sentence-transformers (slow)."""

from __future__ import annotations

from typing import Any

import psutil
import pytest
from tests.processes import gone, wait_for

from mmserve.config import ModelSpec, Settings
from mmserve.engine.manager import ModelManager
from mmserve.types import EmbedRequest

MB = 2**20


async def warm_pid(manager: ModelManager, backend: str, timeout: float = 30.0) -> int:
    """The pid of `backend`'s fork server, once its imports are done."""

    def found() -> list[int]:
        status = manager.status().warm_workers
        return [w["pid"] for w in status if w["backend"] == backend and w["ready"]]

    await wait_for(found, timeout)
    (pid,) = found()
    return pid


def parent_of(pid: int | None) -> int:
    return psutil.Process(pid or 0).ppid()


def load_of(manager: ModelManager, name: str) -> dict[str, Any]:
    (replica,) = manager.model_status(name).replicas
    load: dict[str, Any] = replica.details["load"]
    return load


def fake_settings(**fields: Any) -> Settings:
    specs = [
        ModelSpec(name="a", kind="llm", backend="fake", preload=False),
        ModelSpec(name="b", kind="llm", backend="fake", preload=False),
        ModelSpec(name="prog", kind="subprocess", command=["true"], preload=False),
    ]
    return Settings(models=specs, max_loaded_models=1, **fields)


async def test_swaps_fork_from_the_warm_worker_and_the_status_counts_it() -> None:
    manager = ModelManager(fake_settings())
    manager.start()
    try:
        warm = await warm_pid(manager, "fake")
        status = manager.status()
        (entry,) = status.warm_workers  # one for both fake models; none for the program
        assert entry["kind"] == "llm" and entry["device"] == "cpu" and entry["unique_bytes"] > 0
        assert status.resident_bytes >= entry["unique_bytes"]

        await manager.load("a")
        (first,) = manager.model_status("a").replicas
        assert parent_of(first.pid) == warm and load_of(manager, "a")["warm"] is True
        assert manager.status().warm_workers[0]["children"] == [first.pid]

        await manager.load("b")  # evicts a (max_loaded_models: 1), forked by the same one
        (second,) = manager.model_status("b").replicas
        assert gone(first.pid or 0) and second.pid != first.pid
        assert parent_of(second.pid) == warm and load_of(manager, "b")["warm"] is True
        assert [w["children"] for w in manager.status().warm_workers] == [[second.pid]]
    finally:
        await manager.stop()
    assert manager.status().warm_workers == [] and gone(warm)


async def test_no_pool_when_warm_workers_is_false() -> None:
    manager = ModelManager(fake_settings(warm_workers=False))
    manager.start()
    try:
        assert manager.warm is None
        await manager.load("a")
        assert load_of(manager, "a")["warm"] is False and manager.status().warm_workers == []
    finally:
        await manager.stop()


async def test_a_model_registered_at_runtime_gets_its_key_filled() -> None:
    manager = ModelManager(Settings(models=[]))
    manager.start()
    try:
        assert manager.status().warm_workers == []
        manager.register(ModelSpec(name="v", kind="embedding", backend="fake", preload=False))
        await warm_pid(manager, "fake")
        assert [w["kind"] for w in manager.status().warm_workers] == ["embedding"]
    finally:
        await manager.stop()


# ---- the real thing: MiniLM, whose worker imports torch and sentence-transformers ----------


@pytest.mark.slow
async def test_minilm_swapped_in_is_forked_by_a_warm_worker_and_skips_the_imports() -> None:
    minilm = {"kind": "embedding", "source": "catalog:minilm", "preload": False}
    settings = Settings(
        models=[ModelSpec(name="minilm", **minilm), ModelSpec(name="minilm-b", **minilm)],
        max_loaded_models=1,
        load_timeout=300,
    )
    manager = ModelManager(settings)
    try:
        # Before start(): nothing is wanted yet, so this load is cold.
        await manager.load("minilm")
        cold_pid = manager.model_status("minilm").replicas[0].pid
        cold = load_of(manager, "minilm")
        assert cold["warm"] is False and cold_pid is not None

        manager.start()  # fills the sentence-transformers key (a busy machine: many seconds)
        warm = await warm_pid(manager, "sentence_transformers", timeout=240)
        uss = next(w["unique_bytes"] for w in manager.status().warm_workers if w["pid"] == warm)
        assert uss > 100 * MB  # torch is in it

        await manager.unload("minilm")
        assert gone(cold_pid)  # unloading gives the memory back for real
        for name in ("minilm-b", "minilm", "minilm-b"):  # each load evicts the other
            await manager.load(name)
            (replica,) = manager.model_status(name).replicas
            hot = load_of(manager, name)
            assert parent_of(replica.pid) == warm and hot["warm"] is True
            assert hot["imports_s"] < cold["imports_s"] / 10 and hot["process_s"] < 0.1
            assert hot["total_s"] < cold["total_s"] / 2
            result = await manager.embed(name, EmbedRequest(inputs=["warm"]))
            assert len(result.vectors[0]) == 384
        print(f"\ncold load {cold}\nwarm load {hot}\nwarm worker USS {uss / MB:.0f} MB")
    finally:
        await manager.stop()


async def test_idle_warm_workers_give_way_to_a_load_that_needs_their_memory() -> None:
    specs = [
        ModelSpec(name="a", kind="llm", backend="fake", preload=False),
        ModelSpec(name="e", kind="embedding", backend="fake", preload=False),
    ]
    # Room for one fake replica (estimated at 150 MB before it was measured) and little more.
    manager = ModelManager(Settings(models=specs, max_memory=160 * MB))
    manager.start()
    try:
        # llm and embedding, imports done (an importing one holds little memory yet)
        await wait_for(lambda: [w["ready"] for w in manager.status().warm_workers] == [True] * 2)
        llm_warm = next(w["pid"] for w in manager.status().warm_workers if w["kind"] == "llm")
        other = next(w["pid"] for w in manager.status().warm_workers if w["kind"] != "llm")
        await manager.load("a")  # fits only once the embedding key's warm worker is gone
        assert parent_of(manager.model_status("a").replicas[0].pid) == llm_warm  # its own
        assert gone(other)
    finally:
        await manager.stop()
