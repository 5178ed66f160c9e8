"""The RequestRouter end to end over real registry, store, pool, quota and health book, by dry runs.

Nothing is generated here: routing is a pure decision over state, so the clock is a fake one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.catalog.registry import Registry
from app.core.config import Config
from app.core.errors import CapabilityMissing, InvalidRequest, ModelNotFound, ModelUnavailable, QuotaExceeded
from app.core.routing.health import BreakerConfig, Health, HealthBook
from app.core.routing.latency_stats import TargetStats
from app.core.routing.needs import translate
from app.core.routing.quota import Limits, QuotaManager
from app.core.routing.request import RouteRequest
from app.core.routing.router import RequestRouter
from app.core.routing.strategies.base import Outcome
from app.core.runtime.pool import ModelPool
from app.core.storage.store import Store
from tests.support.models import found

HELLO = {"messages": [{"role": "user", "content": "Hello there"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    store: Store
    registry: Registry
    pool: ModelPool
    quota: QuotaManager
    health: HealthBook
    router: RequestRouter
    clock: Clock

    def route(self, body: dict = HELLO, *, model: str | None = None, session: str | None = None,
              endpoint: str = "chat", request_id: str = "r"):
        """Route as a request does: decide, then start (strategies advance their state on start)."""
        request = RouteRequest(endpoint, model, tuple(body.get("capabilities", ())), translate(endpoint, body),
                               session_key=session, request_id=request_id)
        decision = self.router.route(request)
        self.router.started(decision)
        return decision

    def reopen(self) -> RequestRouter:
        return RequestRouter(self.registry, self.pool, self.quota, self.health, TargetStats(), self.store,
                             clock=self.clock)


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = Store(tmp_path / "db.sqlite3")
    registry = Registry(store)
    registry.sync([found("alpha", "q4_0", "/m/a.gguf"), found("beta", "q4_0", "/m/b.gguf"),
                   found("gamma", "q4_0", "/m/c.gguf"),
                   found("embed", "f16", "/m/e.gguf", arch="bert", template=None, pooling=1)])
    clock = Clock()
    pool = ModelPool(Config(), store)
    quota = QuotaManager(store, clock=clock)
    health = HealthBook(BreakerConfig(failure_threshold=2, success_threshold=1, cooldown_s=10.0))
    router = RequestRouter(registry, pool, quota, health, TargetStats(), store, clock=clock)
    return World(store, registry, pool, quota, health, router, clock)


CHAT_MODELS = ["alpha:q4_0", "beta:q4_0", "gamma:q4_0"]


def test_every_candidate_is_explained(world: World) -> None:
    decision = world.route()
    explained = {c["model_id"]: c for c in decision.explain()["candidates"]}
    assert set(explained) == {*CHAT_MODELS, "embed:f16"}
    assert explained["embed:f16"]["filtered"] and explained["embed:f16"]["reason"] == "lacks chat"
    assert decision.model_id in CHAT_MODELS and not explained[decision.model_id]["filtered"]
    assert decision.strategy == "least_loaded"


def test_round_robin_alternates(world: World) -> None:
    world.router.configure("round_robin")
    picks = [world.route().model_id for _ in range(9)]
    assert picks == CHAT_MODELS * 3


def test_strategy_change_is_immediate_and_persisted(world: World) -> None:
    world.router.configure("weighted_random", {"weights": {"alpha:q4_0": 1}, "seed": 1})
    assert world.route().strategy == "weighted_random"
    again = world.reopen()
    assert again.describe()["strategy"] == "weighted_random"
    assert again.describe()["params"]["weights"] == {"alpha:q4_0": 1}
    with pytest.raises(InvalidRequest, match="unknown strategy"):
        world.router.configure("fastest_please")
    with pytest.raises(InvalidRequest):
        world.router.configure("round_robin", {"bogus": 1})


def test_weighted_random_three_to_one(world: World) -> None:
    world.registry.set_enabled("gamma:q4_0", False)
    world.router.configure("weighted_random", {"weights": {"alpha:q4_0": 3, "beta:q4_0": 1}, "seed": 7})
    counts = Counter(world.route().model_id for _ in range(800))
    share = counts["alpha:q4_0"] / 800
    # 3:1 is 75 %; over 800 draws the standard deviation is 1.5 points: allow 5.
    assert abs(share - 0.75) < 0.05, counts


def test_affinity_is_sticky_per_session(world: World) -> None:
    world.router.configure("affinity", {"ttl_s": 60})
    first = {s: world.route(session=s).model_id for s in ("s1", "s2", "s3")}
    for _ in range(50):
        for session, model in first.items():
            assert world.route(session=session).model_id == model


def test_ab_split_and_stickiness(world: World) -> None:
    arms = [{"name": "a", "model_id": "alpha:q4_0", "percent": 50},
            {"name": "b", "model_id": "beta:q4_0", "percent": 50}]
    world.router.configure("ab_test", {"experiment_id": "exp1", "arms": arms})
    picks = {f"session-{i}": world.route(session=f"session-{i}") for i in range(600)}
    share = Counter(d.model_id for d in picks.values())["alpha:q4_0"] / 600
    # 50 % over 600 sessions: standard deviation ~2 points; allow 7.
    assert abs(share - 0.5) < 0.07
    for session, decision in list(picks.items())[:100]:
        again = world.route(session=session)
        assert (again.model_id, again.detail["arm"]) == (decision.model_id, decision.detail["arm"])


def test_capabilities_filter_and_errors(world: World) -> None:
    world.registry.set_capabilities("beta:q4_0", ["chat", "completion", "arabic_nlp"])
    assert world.route({"messages": [{"role": "user", "content": "مرحبا، كيف حالك اليوم يا صديقي العزيز؟"}]}
                       ).model_id == "beta:q4_0"
    assert world.route({**HELLO, "capabilities": ["arabic_nlp"]}).model_id == "beta:q4_0"
    assert world.route({"input": "hi"}, endpoint="embeddings").model_id == "embed:f16"
    with pytest.raises(CapabilityMissing, match="vision"):
        world.route({**HELLO, "capabilities": ["vision"]})
    with pytest.raises(CapabilityMissing, match="embeddings"):
        world.route({"input": "hi"}, endpoint="embeddings", model="alpha:q4_0")
    with pytest.raises(ModelNotFound):
        world.route(model="nope")


def test_context_length_filters(world: World) -> None:
    long = {"messages": [{"role": "user", "content": "word " * 2000}], "max_tokens": 500}
    with pytest.raises(InvalidRequest, match="context"):
        world.route(long)  # 2,000 context tokens everywhere in this world


def test_quota_exhaustion_routes_away_then_429(world: World) -> None:
    world.router.configure("quota_aware")
    for model in CHAT_MODELS:
        world.quota.set_limits(f"model:{model}", Limits(requests_per_hour=2))
    seen = []
    for _ in range(6):
        decision = world.route()
        seen.append(decision.model_id)
        world.quota.record(decision.model_id, None, 10)
    assert Counter(seen) == {m: 2 for m in CHAT_MODELS}
    with pytest.raises(QuotaExceeded) as info:
        world.route()
    assert 0 < info.value.retry_after <= 3600
    world.clock.now += 3700
    assert world.route().model_id in CHAT_MODELS


def test_quota_is_why_none_can_serve_even_beside_disabled_and_unhealthy_models(world: World) -> None:
    alpha, beta, gamma = CHAT_MODELS
    world.registry.set_enabled(alpha, False)
    for _ in range(3):
        world.health.record(beta, False, world.clock.now, reason="worker crashed")
    world.quota.set_limits(f"model:{gamma}", Limits(requests_per_hour=1))
    world.quota.record(gamma, None, 1)
    with pytest.raises(QuotaExceeded) as info:
        world.route()
    assert 0 < info.value.retry_after <= 3600


def test_an_unhealthy_model_asked_by_name_says_when_to_retry(world: World) -> None:
    for _ in range(3):
        world.health.record("alpha:q4_0", False, world.clock.now, reason="worker crashed")
    with pytest.raises(ModelUnavailable, match="worker crashed") as info:
        world.route(model="alpha:q4_0")
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 30


def test_unhealthy_model_is_skipped_and_returns_after_cooldown(world: World) -> None:
    world.router.configure("round_robin")
    for _ in range(2):
        world.health.record("alpha:q4_0", False, world.clock.now, reason="worker crashed")
    picks = {world.route().model_id for _ in range(6)}
    assert picks == {"beta:q4_0", "gamma:q4_0"}
    explained = {c["model_id"]: c["reason"] for c in world.route().explain()["candidates"]}
    assert explained["alpha:q4_0"].startswith("unhealthy")
    world.clock.now += 11
    assert "alpha:q4_0" in {world.route().model_id for _ in range(6)}


def test_a_model_the_health_book_shows_degraded_scores_below_the_healthy_ones(world: World) -> None:
    world.router.configure("least_loaded")
    world.health.show("alpha:q4_0", Health.DEGRADED, "3 of the last 10 requests failed")
    scores = {c["model_id"]: c["score"] for c in world.route().explain()["candidates"]}
    assert scores["alpha:q4_0"] < min(scores["beta:q4_0"], scores["gamma:q4_0"])
    assert world.route().model_id != "alpha:q4_0"


def test_named_model_falls_back_in_order(world: World) -> None:
    world.registry.set_options("alpha:q4_0", fallbacks=["gamma:q4_0", "beta:q4_0"])
    world.registry.set_enabled("alpha:q4_0", False)
    with pytest.raises(ModelNotFound, match="disabled"):
        world.route(model="alpha:q4_0")
    world.registry.set_enabled("alpha:q4_0", True)
    world.quota.set_limits("model:alpha:q4_0", Limits(requests_per_hour=1))
    world.quota.record("alpha:q4_0", None, 1)
    decision = world.route(model="alpha:q4_0")
    assert decision.model_id == "gamma:q4_0" and "fallback of alpha:q4_0" in decision.reason
    # The retry path: the named model failed already, the next fallback serves.
    request = RouteRequest("chat", "gamma:q4_0", (), translate("chat", HELLO))
    world.registry.set_options("gamma:q4_0", fallbacks=["beta:q4_0"])
    assert world.router.route(request, exclude=frozenset({"gamma:q4_0"})).model_id == "beta:q4_0"


def test_replicas_are_targets(world: World) -> None:
    world.registry.set_options("alpha:q4_0", replicas=2)
    world.router.configure("round_robin")
    keys = [world.route(model="alpha:q4_0").replica for _ in range(4)]
    assert keys == [0, 1, 0, 1]


def test_latency_feedback_reaches_the_strategy(world: World) -> None:
    world.router.configure("latency_based", {"min_samples": 1, "explore_every": 1000})
    for model, ttft in (("alpha:q4_0", 0.9), ("beta:q4_0", 0.1), ("gamma:q4_0", 0.5)):
        decision = world.route(model=model)
        world.router.completed(decision, Outcome(ok=True, ttft_s=ttft, duration_s=ttft + 1, completion_tokens=11))
    assert world.route().model_id == "beta:q4_0"
