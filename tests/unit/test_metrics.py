"""Prometheus metrics, checked by parsing the rendered exposition text."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app.core.observe.metrics import Metrics, ModelSnapshot


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_requests_tokens_and_cache() -> None:
    m = Metrics()
    m.observe_request("llama:q4", "chat", "ok", prompt_tokens=100, completion_tokens=20, cached_tokens=60,
                      ttft_s=0.3, duration_s=1.2)
    m.observe_request("llama:q4", "chat", "ok", prompt_tokens=50, completion_tokens=5, cached_tokens=0,
                      ttft_s=0.7, duration_s=0.4)
    m.observe_request("llama:q4", "chat", 502, duration_s=0.01)
    m.observe_request("bge:f16", "embeddings", "ok", prompt_tokens=8, duration_s=0.05)
    m.observe_request("llama:q4", "chat", "ok", surface="anthropic", prompt_tokens=10, duration_s=0.1)

    assert value(m, "switchboard_requests_total", model="llama:q4", endpoint="chat", status="ok",
                 surface="openai") == 2
    assert value(m, "switchboard_requests_total", model="llama:q4", endpoint="chat", status="ok",
                 surface="anthropic") == 1
    assert value(m, "switchboard_requests_total", model="llama:q4", endpoint="chat", status="502",
                 surface="openai") == 1
    assert value(m, "switchboard_tokens_total", model="llama:q4", kind="prompt") == 160
    assert value(m, "switchboard_tokens_total", model="llama:q4", kind="completion") == 25
    assert value(m, "switchboard_tokens_total", model="llama:q4", kind="cached") == 60
    assert value(m, "switchboard_tokens_total", model="bge:f16", kind="prompt") == 8
    assert value(m, "switchboard_tokens_total", model="bge:f16", kind="completion") is None
    assert value(m, "switchboard_cache_requests_total", model="llama:q4", result="hit") == 1
    assert value(m, "switchboard_cache_requests_total", model="llama:q4", result="miss") == 1
    # No cache figure at all: caching does not apply, so neither hit nor miss.
    assert value(m, "switchboard_cache_requests_total", model="bge:f16", result="miss") is None


def test_histograms() -> None:
    m = Metrics()
    for ttft in (0.03, 0.3, 3.0):
        m.observe_request("a", "chat", "ok", ttft_s=ttft, duration_s=ttft * 2)
    m.observe_request("a", "chat", "error")  # no timings: nothing observed
    name = "switchboard_time_to_first_token_seconds"
    assert value(m, f"{name}_count", model="a") == 3
    assert value(m, f"{name}_sum", model="a") == pytest.approx(3.33)
    assert value(m, f"{name}_bucket", model="a", le="0.05") == 1
    assert value(m, f"{name}_bucket", model="a", le="0.5") == 2
    assert value(m, f"{name}_bucket", model="a", le="+Inf") == 3
    duration = "switchboard_request_duration_seconds"
    assert value(m, f"{duration}_count", model="a", endpoint="chat") == 3
    assert value(m, f"{duration}_sum", model="a", endpoint="chat") == pytest.approx(6.66)


def test_custom_buckets() -> None:
    m = Metrics(ttft_buckets=(1.0, 2.0))
    m.observe_request("a", "chat", "ok", ttft_s=1.5)
    assert value(m, "switchboard_time_to_first_token_seconds_bucket", model="a", le="2.0") == 1
    assert value(m, "switchboard_time_to_first_token_seconds_bucket", model="a", le="0.5") is None


def test_routing_decisions_and_retries() -> None:
    m = Metrics()
    m.observe_decision("least-busy", "a")
    m.observe_decision("least-busy", "a")
    m.observe_decision("least-busy", "b", retried=True)
    assert value(m, "switchboard_routing_decisions_total", strategy="least-busy", model="a") == 2
    assert value(m, "switchboard_routing_decisions_total", strategy="least-busy", model="b") == 1
    assert value(m, "switchboard_routing_retries_total", model="b") == 1
    assert value(m, "switchboard_routing_retries_total", model="a") is None


def test_model_gauges_are_read_at_scrape_time() -> None:
    models = [ModelSnapshot("a", "healthy", True, 512 * 2**20, 0.75)]
    m = Metrics(lambda: models)
    assert value(m, "switchboard_model_loaded", model="a") == 1
    assert value(m, "switchboard_model_memory_bytes", model="a") == 512 * 2**20
    assert value(m, "switchboard_quota_remaining_ratio", model="a") == 0.75
    assert value(m, "switchboard_model_health", model="a", state="healthy") == 1
    for state in ("unknown", "loading", "degraded", "unhealthy"):
        assert value(m, "switchboard_model_health", model="a", state=state) == 0

    # The next scrape sees the new state with no call into Metrics.
    models[:] = [ModelSnapshot("a", "unhealthy", False, 0, 1.0), ModelSnapshot("b", "degraded", True, 10, 0.0)]
    assert value(m, "switchboard_model_health", model="a", state="unhealthy") == 1
    assert value(m, "switchboard_model_health", model="a", state="healthy") == 0
    assert value(m, "switchboard_model_loaded", model="a") == 0
    assert value(m, "switchboard_model_health", model="b", state="degraded") == 1
    assert value(m, "switchboard_quota_remaining_ratio", model="b") == 0.0


def test_a_failing_snapshot_leaves_the_rest_of_the_scrape() -> None:
    def broken() -> list[ModelSnapshot]:
        raise RuntimeError("registry is closing")

    m = Metrics(broken)
    m.observe_decision("s", "a")
    assert value(m, "switchboard_routing_decisions_total", strategy="s", model="a") == 1
    assert not any(name == "switchboard_model_loaded" for name, _ in samples(m))


def test_registering_does_not_call_the_snapshot() -> None:
    calls = []
    Metrics(lambda: calls.append(1) or [])
    assert calls == []


def test_instances_are_independent_and_leave_the_global_registry_alone() -> None:
    one, two = Metrics(lambda: []), Metrics(lambda: [])
    one.observe_decision("s", "a")
    assert value(two, "switchboard_routing_decisions_total", strategy="s", model="a") is None
    assert REGISTRY.get_sample_value("switchboard_routing_decisions_total", {"strategy": "s", "model": "a"}) is None
