"""Routing through a real server: management API, dry runs, retries, quotas, remote backends, metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gguf_files import write_gguf
from tests.support.servers import Served, start_server

pytestmark = pytest.mark.slow
DEFAULT_ID = "smollm2-135m-instruct:q4_1"
BROKEN_ID = "broken-1m:q8_0"
HELLO = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "What is the capital of France?"}],
         "temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("routing")
    # A model whose header is fine but whose weights are not: it fails to load, before any token.
    write_gguf(tmp / "models" / "broken-1m.Q8_0.gguf", arch="llama", name="broken", chat_template="{{ messages }}")
    server = start_server(tmp, "--model-dir", str(tmp / "models"))
    yield server
    server.stop()


def api(served: Served, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{served.base_url}{path}", timeout=60, **kwargs)


def test_failure_before_first_token_is_retried_on_the_next_candidate(served: Served) -> None:
    assert api(served, "PUT", "/api/router", json={"strategy": "round_robin"}).status_code == 200
    response = api(served, "POST", "/v1/chat/completions", json={**HELLO, "model": "auto"})
    assert response.status_code == 200, response.text
    assert response.headers["x-switchboard-model"] == DEFAULT_ID
    assert response.headers["x-switchboard-retried-from"] == BROKEN_ID
    assert "retried" in response.headers["x-switchboard-route"]
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
    models = {m["id"]: m for m in api(served, "GET", "/api/models").json()["data"]}
    assert models[BROKEN_ID]["health"] == "unhealthy" and "failed to load" in models[BROKEN_ID]["health_reason"]
    decisions = api(served, "GET", "/api/decisions").json()["data"]
    assert decisions[0]["model_id"] == DEFAULT_ID and decisions[0]["status"] == 200


def test_dry_run_explains_every_candidate(served: Served) -> None:
    api(served, "PUT", "/api/router", json={"strategy": "least_loaded"})
    decision = api(served, "POST", "/api/route", json={**HELLO, "capabilities": ["chat"]}).json()
    assert set(decision) >= {"model_id", "strategy", "reason", "total_score", "candidates"}
    assert decision["strategy"] == "least_loaded"
    candidates = {c["model_id"]: c for c in decision["candidates"]}
    assert set(candidates) == {DEFAULT_ID, BROKEN_ID}
    assert all(set(c) >= {"model_id", "score", "filtered", "reason"} for c in candidates.values())
    vision = api(served, "POST", "/api/route", json={**HELLO, "capabilities": ["vision"]})
    assert vision.status_code == 404 and "vision" in vision.json()["error"]["message"]


def test_router_settings_validate_and_persist(served: Served, tmp_path: Path) -> None:
    bad = api(served, "PUT", "/api/router", json={"strategy": "fastest"})
    assert bad.status_code == 400 and "unknown strategy" in bad.json()["error"]["message"]
    ok = api(served, "PUT", "/api/router", json={"strategy": "cache_aware", "params": {"cache_threshold": 0.7}})
    assert ok.json()["strategy"] == "cache_aware" and ok.json()["params"]["cache_threshold"] == 0.7
    assert set(ok.json()["available"]) == {"round_robin", "least_loaded", "cache_aware", "quota_aware",
                                           "latency_based", "affinity", "weighted_random", "ab_test"}


def test_model_settings_and_quota_429(served: Served) -> None:
    used = api(served, "GET", "/api/quota").json().get(f"model:{DEFAULT_ID}", {}).get("requests", 0)
    patched = api(served, "PATCH", f"/api/models/{DEFAULT_ID}",
                  json={"aliases": ["smol"], "quota": {"requests_per_hour": used + 1}})
    assert patched.status_code == 200 and patched.json()["aliases"] == ["smol"]
    api(served, "PATCH", f"/api/models/{BROKEN_ID}", json={"enabled": False})
    first = api(served, "POST", "/v1/chat/completions", json={**HELLO, "model": "smol"})
    assert first.status_code == 200
    second = api(served, "POST", "/v1/chat/completions", json={**HELLO, "model": "smol"})
    assert second.status_code == 429 and int(second.headers["retry-after"]) > 0
    assert second.json()["error"]["type"] == "rate_limit_error"
    usage = api(served, "GET", "/api/quota").json()[f"model:{DEFAULT_ID}"]
    assert usage["requests"] >= 1
    api(served, "PATCH", f"/api/models/{DEFAULT_ID}", json={"quota": {}})
    assert api(served, "POST", "/v1/chat/completions", json={**HELLO, "model": "smol"}).status_code == 200
    bad = api(served, "PATCH", f"/api/models/{DEFAULT_ID}", json={"replicas": 99})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "replicas"


def test_metrics(served: Served) -> None:
    response = api(served, "GET", "/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = {tuple(sorted(s.labels.items())): s.value for s in families["switchboard_requests"].samples
                if s.name == "switchboard_requests_total"}
    assert any(dict(k)["model"] == DEFAULT_ID and dict(k)["status"] == "200" for k in requests)
    assert "switchboard_routing_decisions" in families and "switchboard_model_loaded" in families


def test_experiment_feedback_and_results(served: Served) -> None:
    api(served, "PATCH", f"/api/models/{BROKEN_ID}", json={"enabled": True})
    bad = api(served, "POST", "/api/experiments", json={"name": "x", "arms": [
        {"name": "a", "model_id": DEFAULT_ID, "percent": 60}, {"name": "b", "model_id": BROKEN_ID, "percent": 30}]})
    assert bad.status_code == 400 and "100" in bad.json()["error"]["message"]
    experiment = api(served, "POST", "/api/experiments", json={"name": "smol vs smol", "arms": [
        {"name": "a", "model_id": DEFAULT_ID, "percent": 50}, {"name": "b", "model_id": "smol", "percent": 50}]}).json()
    assert experiment["routing"] is True
    assert api(served, "GET", "/api/router").json()["strategy"] == "ab_test"
    response = api(served, "POST", "/v1/chat/completions", json=HELLO, headers={"x-session-id": "user-42"})
    request_id = response.headers["x-request-id"]
    assert api(served, "POST", "/v1/feedback", json={"request_id": request_id, "score": 1}).status_code == 200
    assert api(served, "POST", "/v1/feedback", json={"request_id": "nope", "score": 1}).status_code == 404
    results = api(served, "GET", f"/api/experiments/{experiment['id']}").json()["results"]
    arms = {a["name"]: a for a in results["arms"]}
    assert sum(a["requests"] for a in arms.values()) == 1
    assert sum(a["feedback_count"] for a in arms.values()) == 1
    assert api(served, "DELETE", f"/api/experiments/{experiment['id']}").status_code == 200
    assert api(served, "GET", "/api/router").json()["strategy"] != "ab_test"


def test_remote_backend_streams_through(served: Served, tmp_path: Path) -> None:
    remote = start_server(tmp_path)
    try:
        added = api(served, "POST", "/api/models", json={
            "id": "far-smol:remote", "base_url": remote.base_url, "model": DEFAULT_ID,
            "capabilities": ["chat", "completion"], "context_length": 4096})
        assert added.status_code == 200 and added.json()["source"] == "remote"
        client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0, timeout=60)
        stream = client.chat.completions.create(model="far-smol:remote", stream=True,
                                                stream_options={"include_usage": True}, **HELLO)
        chunks = list(stream)
        assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens > 0
        assert api(served, "DELETE", "/api/models/far-smol:remote").status_code == 200
    finally:
        remote.stop()


def test_router_choice_survives_restart(tmp_path: Path) -> None:
    first = start_server(tmp_path)
    try:
        api(first, "PUT", "/api/router", json={"strategy": "affinity", "params": {"ttl_s": 99}})
    finally:
        first.stop()
    second = start_server(tmp_path)
    try:
        described = api(second, "GET", "/api/router").json()
        assert described["strategy"] == "affinity" and described["params"]["ttl_s"] == 99
    finally:
        second.stop()
