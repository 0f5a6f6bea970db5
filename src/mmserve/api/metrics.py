"""Prometheus metrics: what the engine reports (Telemetry), what the HTTP layer sees (`answered`,
called by the Front middleware), and the models' state read at scrape time. Label values are
bounded: configured model names and route templates, never raw paths or other user input."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mmserve.engine.manager import ModelManager
from mmserve.engine.model import ModelState

__all__ = ["Metrics"]

# Seconds: from a few ms (embeddings, errors) to minutes (long generations, cold loads).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """One registry per app (tests start many apps in one process). Implements Telemetry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._answered: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        r = self.registry
        self.requests = Counter(
            "mmserve_requests", "HTTP requests answered", ["model", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "mmserve_request_seconds", "HTTP request latency, to the last byte", ["model", "route"],
            buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "mmserve_time_to_first_token_seconds", "from admission to the first generated text",
            ["model"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("mmserve_generated_tokens", "tokens generated", ["model"], registry=r)
        self.inputs = Counter("mmserve_embedding_inputs", "texts embedded", ["model"], registry=r)
        self.load_seconds = Histogram(
            "mmserve_replica_load_seconds", "time to start one replica, spawn to ready", ["model"],
            buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "mmserve_evictions", "models evicted to make room", ["model"], registry=r
        )
        self.restarts = Counter(
            "mmserve_worker_restarts", "crashed replicas restarted", ["model"], registry=r
        )
        self.swaps_avoided = Counter(
            "mmserve_swaps_avoided",
            "requests a loaded model served while a swap away from it waited (max_swap_delay): "
            "each would have come after that swap, and needed a swap back, in arrival order",
            ["model"],
            registry=r,
        )
        self.batch_size = Histogram(
            "mmserve_batch_size", "requests run together in one batch (embedding, vision)",
            ["model"], buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip

    def answered(self, model: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered (the Front middleware calls this for every request)."""
        # Label values are bounded (configured models, route templates, statuses), so the
        # children can be kept: `labels()` looks them up under a lock, twice per request.
        key = (model, route, status)
        children = self._answered.get(key)
        if children is None:
            children = self._answered[key] = (
                self.requests.labels(model, route, str(status)),
                self.latency.labels(model, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, manager: ModelManager) -> None:
        """Report the models' live state (queues, replicas, memory) at every scrape."""
        self.registry.register(ModelStateCollector(manager))

    # ---- Telemetry -----------------------------------------------------------------------------

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def generated(self, model: str, tokens: int) -> None:
        self.tokens.labels(model).inc(tokens)

    def embedded(self, model: str, inputs: int) -> None:
        self.inputs.labels(model).inc(inputs)

    def loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(model).observe(seconds)

    def evicted(self, model: str) -> None:
        self.evictions.labels(model).inc()

    def restarted(self, model: str) -> None:
        self.restarts.labels(model).inc()

    def served_ahead_of_swap(self, model: str) -> None:
        self.swaps_avoided.labels(model).inc()

    def batched(self, model: str, size: int) -> None:
        self.batch_size.labels(model).observe(size)


class ModelStateCollector(Collector):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily(
            "mmserve_queue_depth", "requests waiting for a replica", labels=["model"]
        )
        running = GaugeMetricFamily("mmserve_in_flight", "requests running", labels=["model"])
        states = GaugeMetricFamily(
            "mmserve_model_state", "1 for the model's current state", labels=["model", "state"]
        )
        replicas = GaugeMetricFamily("mmserve_replicas", "running replicas", labels=["model"])
        memory = GaugeMetricFamily(
            "mmserve_replica_resident_bytes",
            "resident memory of each replica",
            labels=["model", "replica"],
        )
        phases = GaugeMetricFamily(
            "mmserve_replica_load_phase_seconds",
            "where each running replica's start went: process, imports, weights, warmup, total "
            "(a warm worker's process and imports are ~0: done before the load)",
            labels=["model", "replica", "phase"],
        )
        for name, model in self.manager.models.items():
            queue.add_metric([name], model.admission.waiting)
            running.add_metric([name], model.in_flight)
            replicas.add_metric([name], len(model.replicas))
            for state in ModelState:
                states.add_metric([name, state.value], 1.0 if model.state is state else 0.0)
            for index, replica in enumerate(model.replicas):
                memory.add_metric([name, str(index)], replica.resident_bytes() or 0)
                load = replica.status().details.get("load") or {}
                for key, seconds in load.items():
                    if key.endswith("_s") and key != "saved_s" and seconds is not None:
                        phases.add_metric([name, str(index), key.removesuffix("_s")], seconds)
        warm = GaugeMetricFamily(
            "mmserve_warm_worker_resident_bytes",
            "memory of the warm workers' own (pre-imported fork servers; their children share "
            "the rest)",
        )
        warm.add_metric([], self.manager.warm.resident_bytes() if self.manager.warm else 0)
        yield from (queue, running, states, replicas, memory, phases, warm)
