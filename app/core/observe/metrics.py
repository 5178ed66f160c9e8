"""Prometheus metrics for /metrics.

Each `Metrics` owns its CollectorRegistry, never prometheus_client's global one, so several engines (and tests)
in one process do not collide. Counters and histograms are updated as requests finish; per-model state (health,
loaded, memory, quota) is read from a snapshot callback at scrape time, so it is never stale and never has to be
pushed on every change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from app.core.routing.health import Health

if TYPE_CHECKING:
    from app.core.routing.request import Finished

log = logging.getLogger(__name__)

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Every health, and "loading": a worker state, shown in the health gauge while a model's workers start.
HEALTH_STATES = (*(h.value for h in Health), "loading")


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    model_id: str
    health: str  # a Health value, or "loading"
    loaded: bool
    memory_bytes: int
    quota_remaining: float  # 0..1; 1.0 without a quota


Snapshot = Callable[[], Iterable[ModelSnapshot]]


class _ModelCollector(Collector):
    """The per-model gauges, built from one snapshot per scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only: registering must not call the snapshot (the engine may not be ready yet).
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        quota, health, loaded, memory = families = self._families()
        try:
            models = list(self._snapshot())
        except Exception:  # a broken callback must not fail the whole scrape
            log.exception("model snapshot for metrics failed")
            models = []
        for model in models:
            quota.add_metric([model.model_id], model.quota_remaining)
            states = HEALTH_STATES if model.health in HEALTH_STATES else (*HEALTH_STATES, model.health)
            for state in states:
                health.add_metric([model.model_id, state], 1.0 if state == model.health else 0.0)
            loaded.add_metric([model.model_id], 1.0 if model.loaded else 0.0)
            memory.add_metric([model.model_id], float(model.memory_bytes))
        return iter(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("switchboard_quota_remaining_ratio",
                              "Share of the model's hourly quota left (the smaller of tokens and requests)",
                              labels=["model"]),
            GaugeMetricFamily("switchboard_model_health", "1 for the model's current health state, else 0",
                              labels=["model", "state"]),
            GaugeMetricFamily("switchboard_model_loaded", "1 when a worker has the model loaded", labels=["model"]),
            GaugeMetricFamily("switchboard_model_memory_bytes", "Memory the model's workers use", labels=["model"]),
        )


class Metrics:
    def __init__(self, snapshot: Snapshot | None = None, *, ttft_buckets: Sequence[float] = TTFT_BUCKETS,
                 duration_buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("switchboard_requests", "Requests handled; surface is the API they came through",
                                ["model", "endpoint", "status", "surface"], registry=r)
        self.tokens = Counter("switchboard_tokens", "Tokens processed; kind is prompt, completion or cached",
                              ["model", "kind"], registry=r)
        self.ttft = Histogram("switchboard_time_to_first_token_seconds", "Time to the first generated token",
                              ["model"], buckets=tuple(ttft_buckets), registry=r)
        self.duration = Histogram("switchboard_request_duration_seconds", "Whole request time",
                                  ["model", "endpoint"], buckets=tuple(duration_buckets), registry=r)
        self.decisions = Counter("switchboard_routing_decisions", "Routing decisions by strategy and chosen model",
                                 ["strategy", "model"], registry=r)
        self.retries = Counter("switchboard_routing_retries", "Requests re-routed to this model after a failure",
                               ["model"], registry=r)
        self.cache = Counter("switchboard_cache_requests", "Requests that reused (hit) or did not reuse (miss) "
                             "the worker's prompt cache", ["model", "result"], registry=r)
        if snapshot is not None:
            r.register(_ModelCollector(snapshot))

    def on_finished(self, finished: Finished) -> None:
        o = finished.outcome
        self.observe_request(finished.decision.model_id, finished.request.endpoint, finished.status,
                             surface=finished.request.surface, prompt_tokens=o.prompt_tokens,
                             completion_tokens=o.completion_tokens, cached_tokens=o.cached_tokens, ttft_s=o.ttft_s,
                             duration_s=o.duration_s)

    def observe_request(self, model: str, endpoint: str, status: str | int, *, surface: str = "openai",
                        prompt_tokens: int = 0,
                        completion_tokens: int = 0, cached_tokens: int | None = None, ttft_s: float | None = None,
                        duration_s: float | None = None) -> None:
        """One finished request. `cached_tokens` None means prompt caching does not apply (no hit/miss counted);
        `ttft_s` None means nothing was generated (embeddings, early errors)."""
        self.requests.labels(model, endpoint, str(status), surface).inc()
        for kind, count in (("prompt", prompt_tokens), ("completion", completion_tokens),
                            ("cached", cached_tokens or 0)):
            if count > 0:  # Counter.inc rejects negatives; zeros would only add empty series
                self.tokens.labels(model, kind).inc(count)
        if cached_tokens is not None:
            self.cache.labels(model, "hit" if cached_tokens > 0 else "miss").inc()
        if ttft_s is not None and ttft_s >= 0:
            self.ttft.labels(model).observe(ttft_s)
        if duration_s is not None and duration_s >= 0:
            self.duration.labels(model, endpoint).observe(duration_s)

    def observe_decision(self, strategy: str, model: str, retried: bool = False) -> None:
        """A routing decision; `retried` when it re-routes a request that failed elsewhere (counted on `model`)."""
        self.decisions.labels(strategy, model).inc()
        if retried:
            self.retries.labels(model).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its Content-Type, for a /metrics response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
