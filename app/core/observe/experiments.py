"""A/B experiments: arms that split traffic between models, their samples, and per-arm results.

Experiment definitions live in memory (and in SQLite); samples go straight to SQLite, one INSERT per request,
and are read back only by `results`, so memory stays small however long an experiment runs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.errors import InvalidValue
from app.core.observe.significance import compare, mean, percentile
from app.core.routing.strategies.base import Outcome
from app.core.routing.strategies.params import Arm, parse_arms
from app.core.storage.store import Store

if TYPE_CHECKING:
    from app.core.routing.request import Finished

# metric -> True when higher is better
METRICS: dict[str, bool] = {"ttft_ms": False, "tokens_per_s": True, "error_rate": False, "feedback": True}
FEEDBACK_RANGE = (-1.0, 1.0)  # -1 thumbs down .. +1 thumbs up; anything between is allowed
MAX_SAMPLES = 50_000  # per experiment: older samples are dropped
_PRUNE_EVERY = 1000  # inserts per experiment between prunes


@dataclass(slots=True)
class Experiment:
    id: str
    name: str
    arms: list[Arm]
    metric: str
    created: float
    active: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _validate_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidValue("experiment name must be a non-empty string")
    return name.strip()


def _validate_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InvalidValue(f"unknown metric {metric!r}; one of: {', '.join(METRICS)}")
    return metric


@dataclass(slots=True)
class _ArmSamples:
    """One arm's samples as numpy arrays, for the statistics."""

    ok: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    ttft_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ok samples with a ttft
    tokens_per_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    feedback: np.ndarray = field(default_factory=lambda: np.zeros(0))
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def metric(self, metric: str) -> np.ndarray:
        """Per-sample values of `metric`, whose mean is the arm's value of it."""
        if metric == "error_rate":
            return (~self.ok).astype(float)
        return getattr(self, metric)


class Experiments:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        self._store = store
        self._clock = clock
        self._seed = seed
        self._max_samples = max_samples
        self._lock = threading.Lock()
        self._inserts: dict[str, int] = {}  # inserts since the last prune, per experiment
        self._experiments: dict[str, Experiment] = {}
        for eid, name, arms, metric, created, active in store.query(
            "SELECT id, name, arms, metric, created, active FROM experiments ORDER BY created, id"
        ):
            self._experiments[eid] = Experiment(
                eid, name, [Arm(**a) for a in json.loads(arms)], metric, created, bool(active)
            )

    # --- definitions ---

    def create(self, name: str, arms: Sequence[Arm], metric: str = "ttft_ms") -> Experiment:
        experiment = Experiment(
            id=uuid.uuid4().hex[:16],
            name=_validate_name(name),
            arms=list(parse_arms(arms)),
            metric=_validate_metric(metric),
            created=self._clock(),
        )
        self._save(experiment)
        return self.get(experiment.id)  # type: ignore[return-value]

    def get(self, experiment_id: str) -> Experiment | None:
        experiment = self._experiments.get(experiment_id)
        # A copy: callers must go through update() to change an experiment.
        return None if experiment is None else replace(experiment, arms=[replace(a) for a in experiment.arms])

    def list(self) -> list[Experiment]:
        with self._lock:
            ids = list(self._experiments)
        return [e for e in map(self.get, ids) if e is not None]

    def update(
        self,
        experiment_id: str,
        *,
        arms: Sequence[Arm] | None = None,
        active: bool | None = None,
        name: str | None = None,
    ) -> Experiment:
        """Change an experiment; KeyError if unknown. Samples of arms renamed or removed no longer count."""
        current = self._require(experiment_id)
        updated = replace(
            current,
            arms=current.arms if arms is None else list(parse_arms(arms)),
            active=current.active if active is None else bool(active),
            name=current.name if name is None else _validate_name(name),
        )
        self._save(updated)
        return self.get(experiment_id)  # type: ignore[return-value]

    def delete(self, experiment_id: str) -> bool:
        """Delete an experiment and its samples; False if unknown."""
        with self._lock:
            if self._experiments.pop(experiment_id, None) is None:
                return False
            self._inserts.pop(experiment_id, None)
        self._store.execute("DELETE FROM experiments WHERE id = ?", (experiment_id,))
        self._store.execute("DELETE FROM experiment_samples WHERE experiment_id = ?", (experiment_id,))
        return True

    # --- samples ---

    def record(self, experiment_id: str, arm: str, request_id: str, outcome: Outcome) -> bool:
        """Store one request's outcome. False (nothing stored) when the experiment or the arm is gone:
        a request can outlive an edit of its experiment."""
        experiment = self._experiments.get(experiment_id)
        if experiment is None or all(a.name != arm for a in experiment.arms):
            return False
        tokens_per_s = None
        if outcome.ttft_s is not None and outcome.completion_tokens > 0 and outcome.duration_s > outcome.ttft_s:
            tokens_per_s = outcome.completion_tokens / (outcome.duration_s - outcome.ttft_s)
        self._store.defer(
            "INSERT INTO experiment_samples (experiment_id, arm, request_id, time, ok, ttft_s, tokens_per_s, "
            "prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                experiment_id,
                arm,
                request_id,
                self._clock(),
                int(outcome.ok),
                outcome.ttft_s,
                tokens_per_s,
                outcome.prompt_tokens,
                outcome.completion_tokens,
            ),
        )
        with self._lock:
            count = self._inserts.get(experiment_id, 0) + 1
            self._inserts[experiment_id] = 0 if count >= _PRUNE_EVERY else count
        if count >= _PRUNE_EVERY:
            self._prune(experiment_id)
        return True

    def on_finished(self, finished: Finished) -> None:
        """A sample for the experiment (and arm) that routed the request, if it still exists."""
        detail = finished.decision.detail
        experiment = detail.get("experiment_id")
        if experiment and self.get(experiment) is not None:
            self.record(experiment, detail["arm"], finished.request.request_id, finished.outcome)

    def feedback(self, request_id: str, score: float) -> bool:
        """Attach a user score in FEEDBACK_RANGE (-1..1) to the request's sample; False if no sample has it."""
        low, high = FEEDBACK_RANGE
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not low <= score <= high:
            raise InvalidValue(f"feedback score must be a number from {low:g} to {high:g} (got {score!r})")
        changed = self._store.execute(
            "UPDATE experiment_samples SET feedback = ? WHERE request_id = ?", (float(score), request_id)
        )
        return changed > 0

    # --- results ---

    def results(self, experiment_id: str) -> dict[str, Any]:
        """Per-arm metrics and, for the experiment's metric, each arm against the first (the baseline)."""
        experiment = self._require(experiment_id)
        samples = self._samples(experiment)
        arms = []
        for arm in experiment.arms:
            s = samples[arm.name]
            requests = int(s.ok.size)
            errors = int((~s.ok).sum())
            arms.append(
                {
                    "name": arm.name,
                    "model_id": arm.model_id,
                    "percent": arm.percent,
                    "requests": requests,
                    "errors": errors,
                    "error_rate": errors / requests if requests else None,
                    "ttft_p50_ms": percentile(s.ttft_ms, 50),
                    "ttft_p95_ms": percentile(s.ttft_ms, 95),
                    "tokens_per_s": mean(s.tokens_per_s),
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens,
                    "feedback_mean": mean(s.feedback),
                    "feedback_count": int(s.feedback.size),
                }
            )
        # Seeded from the id when no seed is given, so the same data gives the same interval on every call.
        rng = np.random.default_rng(self._seed if self._seed is not None else zlib.crc32(experiment_id.encode()))
        baseline = experiment.arms[0].name
        metric = experiment.metric
        significance = [
            compare(metric, METRICS[metric], baseline, samples[baseline].metric(metric), arm.name,
                    samples[arm.name].metric(metric), rng)
            for arm in experiment.arms[1:]
        ]
        return {
            "experiment": experiment.as_dict(),
            "metric": experiment.metric,
            "higher_is_better": METRICS[experiment.metric],
            "arms": arms,
            "significance": significance,
        }

    # --- internals ---

    def _require(self, experiment_id: str) -> Experiment:
        experiment = self.get(experiment_id)
        if experiment is None:
            raise KeyError(f"no experiment {experiment_id!r}")
        return experiment

    def _save(self, experiment: Experiment) -> None:
        self._store.execute(
            "INSERT INTO experiments (id, name, arms, metric, created, active) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, arms = excluded.arms, active = excluded.active",
            (
                experiment.id,
                experiment.name,
                json.dumps([asdict(a) for a in experiment.arms]),
                experiment.metric,
                experiment.created,
                int(experiment.active),
            ),
        )
        with self._lock:
            self._experiments[experiment.id] = experiment

    def _prune(self, experiment_id: str) -> None:
        self._store.execute(
            "DELETE FROM experiment_samples WHERE experiment_id = ? AND seq <= COALESCE(("
            "SELECT seq FROM experiment_samples WHERE experiment_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?), -1)",
            (experiment_id, experiment_id, self._max_samples),
        )

    def _samples(self, experiment: Experiment) -> dict[str, _ArmSamples]:
        # LIMIT: between prunes the table may briefly hold a few more than max_samples.
        rows = self._store.query(
            "SELECT arm, ok, ttft_s, tokens_per_s, prompt_tokens, completion_tokens, feedback "
            "FROM experiment_samples WHERE experiment_id = ? ORDER BY seq DESC LIMIT ?",
            (experiment.id, self._max_samples),
        )
        by_arm: dict[str, list[tuple[Any, ...]]] = {arm.name: [] for arm in experiment.arms}
        for row in rows:
            if row[0] in by_arm:
                by_arm[row[0]].append(row)
        out: dict[str, _ArmSamples] = {}
        for name, arm_rows in by_arm.items():
            ok = np.array([bool(r[1]) for r in arm_rows], dtype=bool)
            out[name] = _ArmSamples(
                ok=ok,
                # Latency from successful requests only: a failed stream's timings describe the failure.
                ttft_ms=np.array([r[2] * 1000.0 for r in arm_rows if r[1] and r[2] is not None], dtype=float),
                tokens_per_s=np.array([r[3] for r in arm_rows if r[1] and r[3] is not None], dtype=float),
                feedback=np.array([r[6] for r in arm_rows if r[6] is not None], dtype=float),
                prompt_tokens=sum(r[4] for r in arm_rows),
                completion_tokens=sum(r[5] for r in arm_rows),
            )
        return out
