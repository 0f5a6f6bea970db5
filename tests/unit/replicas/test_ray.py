"""What a Ray replica asks of the cluster: its actor's options, built from the model's spec."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from mmserve import registry
from mmserve.config import ClusterSpec, ModelSpec
from mmserve.registry import import_object
from mmserve.replicas.ray import RayReplica, ray_demand, ray_launch

CLUSTER = ClusterSpec(address="10.0.0.1:6379", namespace="ns", connect_timeout=5)
MB = 2**20


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": "e", "kind": "embedding", "backend": "fake", "placement": "ray", **fields}
    )


def test_by_default_one_cpu_one_thread_and_the_measured_memory() -> None:
    launch = ray_launch(spec(), CLUSTER, memory=300 * MB)
    options = launch.actor
    assert (options["num_cpus"], options["num_gpus"], options["memory"]) == (1, 0, 300 * MB)
    assert options["name"].startswith("mmserve.e.") and options["max_restarts"] == 0
    assert "label_selector" not in options and "resources" not in options
    env = options["runtime_env"]["env_vars"]
    # The worker's thread budget and passive waiting, on the node too; its GPU is Ray's to set.
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in env and "MMSERVE_PARENT_PID" not in env
    assert (launch.backend.threads, launch.backend.device) == (1, "cpu")
    assert (launch.address, launch.namespace, launch.connect_timeout) == ("10.0.0.1:6379", "ns", 5)


def test_threads_follow_the_cpus_asked_and_the_spec_memory_wins() -> None:
    launch = ray_launch(spec(resources={"num_cpus": 3, "memory": "1GiB"}), CLUSTER, 300 * MB)
    assert launch.backend.threads == 3 and launch.actor["memory"] == 2**30
    assert ray_demand(spec(threads=2), None) == {"CPU": 2}


def test_a_gpu_replica_loads_on_the_gpu_ray_gives_it() -> None:
    launch = ray_launch(spec(resources={"num_gpus": 0.5}), CLUSTER, None)
    assert launch.actor["num_gpus"] == 0.5 and "memory" not in launch.actor
    assert (launch.backend.device, launch.backend.gpu_layers) == ("cuda:0", -1)


def test_labels_required_and_preferred() -> None:
    required = ray_launch(spec(resources={"labels": {"zone": "a"}}), CLUSTER, None).actor
    assert required["label_selector"] == {"zone": "a"} and "fallback_strategy" not in required
    both = {"labels": {"zone": "a"}, "prefer_labels": {"box": "big"}, "custom": {"box": 1}}
    options = ray_launch(spec(resources=both), CLUSTER, None).actor
    # The preferred labels first, then the required ones alone: another node, same zone.
    assert options["label_selector"] == {"zone": "a", "box": "big"}
    assert options["fallback_strategy"] == [{"label_selector": {"zone": "a"}}]
    assert options["resources"] == {"box": 1}


def test_the_registry_runs_each_ray_backend_in_a_ray_replica() -> None:
    ray_entries = [e for e in registry._ENTRIES if e.placement == "ray"]
    assert {(e.kind, e.backend) for e in ray_entries} == {
        ("llm", "llama_cpp"),
        ("llm", "fake"),
        ("embedding", "sentence_transformers"),
        ("embedding", "llama_cpp"),
        ("embedding", "fake"),
    }
    for found in ray_entries:
        assert import_object(found.replica) is RayReplica
        local = registry.entry(found.kind, found.backend)
        assert found.implementation == local.implementation  # the same backend code
        assert found.in_cluster and not found.holds_memory and "ray" in found.packages
    assert registry.default_backend("llm", "ray") == "llama_cpp"
    assert "llama_server" not in registry.backends_of("llm", "ray")


def test_the_front_never_imports_ray() -> None:
    # Only the bridges and the actors do: the server's engine and its Ray replicas do not.
    code = "import sys, mmserve.engine.manager, mmserve.replicas.ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
