"""Experiments on a real Store: validation, persistence, per-arm metrics, feedback and the bootstrap test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.observe.experiments import Arm, Experiment, Experiments
from app.core.routing.strategies.base import Outcome
from app.core.storage.store import Store


@pytest.fixture
def exps(store: Store) -> Experiments:
    return Experiments(store, clock=lambda: 1000.0, seed=7)


def two_arms(a: float = 50, b: float = 50) -> list[Arm]:
    return [Arm("control", "model-a", a), Arm("candidate", "model-b", b)]


def ok(ttft_s: float, *, duration_s: float = 1.0, completion: int = 10, prompt: int = 5) -> Outcome:
    return Outcome(ok=True, ttft_s=ttft_s, duration_s=duration_s, prompt_tokens=prompt, completion_tokens=completion)


@pytest.mark.parametrize(
    ("arms", "metric", "message"),
    [
        ([Arm("a", "m", 100)], "ttft_ms", "at least 2"),
        ([Arm("a", "m", 50), Arm("a", "n", 50)], "ttft_ms", "used twice"),
        ([Arm("a", "m", 100), Arm("b", "n", 0)], "ttft_ms", "> 0"),
        ([Arm("a", "m", 60), Arm("b", "n", 30)], "ttft_ms", "sum to 100"),
        ([Arm("a", "", 50), Arm("b", "n", 50)], "ttft_ms", "model_id"),
        (two_arms(), "latency", "unknown metric"),
    ],
)
def test_create_validates(exps: Experiments, arms: list[Arm], metric: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exps.create("x", arms, metric)
    assert exps.list() == []


def test_percent_sum_tolerance(exps: Experiments) -> None:
    exps.create("thirds", [Arm("a", "m", 100 / 3), Arm("b", "n", 100 / 3), Arm("c", "o", 100 / 3)])
    with pytest.raises(ValueError, match="sum to 100"):
        exps.create("off", [Arm("a", "m", 50), Arm("b", "n", 50.001)])


def test_crud_persists(tmp_path: Path) -> None:
    path = tmp_path / "sb.db"
    store = Store(path)
    exps = Experiments(store, clock=lambda: 1000.0)
    made = exps.create("speed", two_arms(), "tokens_per_s")
    other = exps.create("doomed", two_arms())
    assert made == Experiment(made.id, "speed", two_arms(), "tokens_per_s", 1000.0, True)
    assert exps.get(made.id) == made
    updated = exps.update(made.id, arms=two_arms(20, 80), active=False, name="speed v2")
    assert updated.arms[1].percent == 80 and not updated.active and updated.name == "speed v2"
    with pytest.raises(ValueError, match="sum to 100"):
        exps.update(made.id, arms=two_arms(20, 20))
    with pytest.raises(KeyError):
        exps.update("nope", active=True)
    exps.record(other.id, "control", "r1", ok(0.1))
    assert exps.delete(other.id)
    assert not exps.delete(other.id)
    store.close()

    store = Store(path)
    again = Experiments(store)
    assert again.list() == [updated]
    assert store.query("SELECT COUNT(*) FROM experiment_samples")[0][0] == 0  # the deleted one's samples went
    store.close()


def test_get_returns_a_copy(exps: Experiments) -> None:
    made = exps.create("x", two_arms())
    made.arms[0] = Arm("changed", "m", 99)  # arms themselves are immutable; the list is the caller's copy
    assert exps.get(made.id).arms[0].percent == 50  # type: ignore[union-attr]


def test_per_arm_metrics(exps: Experiments) -> None:
    e = exps.create("x", two_arms())
    for i in range(1, 101):  # ttft 1..100 ms; 10 tokens over (1 s - ttft)
        exps.record(e.id, "control", f"c{i}", ok(i / 1000, duration_s=1.0 + i / 1000, completion=10))
    exps.record(e.id, "control", "fail", Outcome(ok=False, duration_s=0.5, error="boom"))
    exps.record(e.id, "candidate", "b1", ok(0.2, duration_s=2.2, completion=40, prompt=7))
    results = exps.results(e.id)
    control, candidate = results["arms"]
    assert control["requests"] == 101 and control["errors"] == 1
    assert control["error_rate"] == pytest.approx(1 / 101)
    assert control["ttft_p50_ms"] == pytest.approx(50.5)  # linear interpolation between closest ranks
    assert control["ttft_p95_ms"] == pytest.approx(95.05)
    assert control["tokens_per_s"] == pytest.approx(10.0)
    assert control["prompt_tokens"] == 500 and control["completion_tokens"] == 1000
    assert candidate == {
        "name": "candidate",
        "model_id": "model-b",
        "percent": 50.0,
        "requests": 1,
        "errors": 0,
        "error_rate": 0.0,
        "ttft_p50_ms": pytest.approx(200.0),
        "ttft_p95_ms": pytest.approx(200.0),
        "tokens_per_s": pytest.approx(20.0),
        "prompt_tokens": 7,
        "completion_tokens": 40,
        "feedback_mean": None,
        "feedback_count": 0,
    }
    (sig,) = results["significance"]
    assert sig["ci95"] is None and not sig["significant"] and "too few samples" in sig["method"]


def test_record_ignores_unknown_experiment_or_arm(exps: Experiments) -> None:
    e = exps.create("x", two_arms())
    assert not exps.record("nope", "control", "r", ok(0.1))
    assert not exps.record(e.id, "gone", "r", ok(0.1))
    assert exps.results(e.id)["arms"][0]["requests"] == 0


def test_feedback_attaches_by_request_id(exps: Experiments) -> None:
    e1 = exps.create("one", two_arms(), "feedback")
    e2 = exps.create("two", two_arms())
    exps.record(e1.id, "control", "r1", ok(0.1))
    exps.record(e1.id, "control", "r2", ok(0.1))
    exps.record(e2.id, "candidate", "r3", ok(0.1))
    assert exps.feedback("r1", 1.0)
    assert exps.feedback("r2", -0.5)
    assert exps.feedback("r3", 0.25)
    assert not exps.feedback("unknown", 1.0)
    with pytest.raises(ValueError, match="-1 to 1"):
        exps.feedback("r1", 2.0)
    with pytest.raises(ValueError):
        exps.feedback("r1", float("nan"))
    control = exps.results(e1.id)["arms"][0]
    assert control["feedback_mean"] == pytest.approx(0.25) and control["feedback_count"] == 2
    assert exps.results(e2.id)["arms"][1]["feedback_mean"] == pytest.approx(0.25)


def record_ttfts(exps: Experiments, eid: str, arm: str, ttfts_ms: np.ndarray) -> None:
    for i, t in enumerate(ttfts_ms):
        exps.record(eid, arm, f"{arm}-{i}", ok(float(t) / 1000))


def test_bootstrap_flags_a_clearly_better_arm(exps: Experiments) -> None:
    rng = np.random.default_rng(1)
    e = exps.create("x", two_arms())
    record_ttfts(exps, e.id, "control", rng.normal(200, 20, 60))
    record_ttfts(exps, e.id, "candidate", rng.normal(150, 20, 60))
    (sig,) = exps.results(e.id)["significance"]
    assert sig["significant"] and sig["better"] is True
    low, high = sig["ci95"]
    assert low < sig["difference"] < high < 0
    assert sig["difference"] == pytest.approx(-50, abs=12)
    assert "bootstrap" in sig["method"]


def test_bootstrap_is_direction_aware(exps: Experiments) -> None:
    rng = np.random.default_rng(2)
    e = exps.create("x", two_arms(), "tokens_per_s")
    for arm, rate in (("control", 20.0), ("candidate", 30.0)):
        for i, r in enumerate(rng.normal(rate, 2, 40)):
            exps.record(e.id, arm, f"{arm}{i}", ok(0.1, duration_s=0.1 + 10 / float(r), completion=10))
    (sig,) = exps.results(e.id)["significance"]
    assert sig["significant"] and sig["better"] is True and sig["difference"] > 0


def test_bootstrap_error_rate(exps: Experiments) -> None:
    e = exps.create("x", two_arms(), "error_rate")
    for i in range(100):
        exps.record(e.id, "control", f"c{i}", ok(0.1) if i % 10 else Outcome(ok=False))  # 10% errors
        exps.record(e.id, "candidate", f"b{i}", ok(0.1) if i % 2 else Outcome(ok=False))  # 50% errors
    (sig,) = exps.results(e.id)["significance"]
    assert sig["difference"] == pytest.approx(0.4)
    assert sig["significant"] and sig["better"] is False
    assert "rates" in sig["method"]


def test_identical_distributions_are_not_significant(exps: Experiments) -> None:
    rng = np.random.default_rng(3)
    e = exps.create("x", two_arms())
    record_ttfts(exps, e.id, "control", rng.normal(200, 20, 60))
    record_ttfts(exps, e.id, "candidate", rng.normal(200, 20, 60))
    results = exps.results(e.id)
    (sig,) = results["significance"]
    assert not sig["significant"] and sig["better"] is None
    low, high = sig["ci95"]
    assert low < 0 < high
    assert exps.results(e.id) == results  # seeded: the same data gives the same interval


def test_samples_survive_restart_and_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "sb.db"
    store = Store(path)
    exps = Experiments(store, max_samples=5)
    e = exps.create("x", two_arms())
    for i in range(1200):  # more than one prune interval
        exps.record(e.id, "control", f"r{i}", ok(0.1))
    assert store.query("SELECT COUNT(*) FROM experiment_samples")[0][0] <= 5 + 1000
    assert exps.results(e.id)["arms"][0]["requests"] == 5
    store.close()

    store = Store(path)
    assert Experiments(store, max_samples=5).results(e.id)["arms"][0]["requests"] == 5
    store.close()
