"""ab_test: split traffic between models by percent, sticky per session.

The arm comes from a stable hash (blake2b, not Python's salted hash()) of the experiment id and the session key
(else the user, else the request id) into 10,000 buckets, laid out by cumulative percent: the same session gets
the same arm in every process and after restarts. `assign_arm` is that rule on its own, for other modules.
A request with no key at all gets a random bucket from the (seeded) random.Random.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import favour
from app.core.routing.strategies.least_loaded import LeastLoaded
from app.core.routing.strategies.params import ABTestParams, Arm

BUCKETS = 10_000


class ArmLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def model_id(self) -> str: ...
    @property
    def percent(self) -> float: ...


A = TypeVar("A", bound=ArmLike)


def bucket(experiment_id: str, key: str) -> int:
    """The key's bucket in [0, BUCKETS) for this experiment: stable across processes."""
    digest = hashlib.blake2b(f"{experiment_id}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def arm_for_bucket(b: int, arms: Sequence[A]) -> A:
    """The arm whose cumulative-percent range holds bucket `b` (the last arm takes any rounding remainder)."""
    edge = 0.0
    for arm in arms:
        edge += arm.percent * (BUCKETS / 100)
        if b < edge:
            return arm
    return arms[-1]


def assign_arm(experiment_id: str, key: str, arms: Sequence[A]) -> A:
    """The arm `key` (a session key, user or request id) belongs to in this experiment. Pure and stable."""
    return arm_for_bucket(bucket(experiment_id, key), arms)


class ABTest(Strategy):
    name = "ab_test"
    Params = ABTestParams
    config: ABTestParams

    def __init__(self, config: ABTestParams, rng: random.Random | None = None) -> None:
        super().__init__(config)
        self._rng = rng if rng is not None else random.Random(config.seed)  # only for requests with no key
        self._ll = LeastLoaded()  # picks the replica within an arm's model, and the last-resort fallback

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        experiment_id, arms = self.config.experiment_id, self.config.arms
        key = ctx.session_key or ctx.user or ctx.request_id
        b = bucket(experiment_id, key) if key else self._rng.randrange(BUCKETS)
        assigned = arm_for_bucket(b, arms)
        detail: dict[str, Any] = {"experiment_id": experiment_id, "arm": assigned.name}
        # The assignment is honoured even when the arm's replicas are degraded: moving such sessions to the
        # other arm would bias the experiment. Among the arm's replicas, healthy and less loaded ones come first.
        served: Arm = assigned
        members = [t for t in targets if t.model_id == assigned.model_id]
        if not members:
            present = {t.model_id for t in targets}
            fallback = next((a for a in arms if a.model_id in present), None)
            if fallback is None:
                scores = self._ll.scores(targets)
                chosen, why = self._ll.choose(targets, scores)
                detail["arm"] = None
                detail["assigned_arm"] = assigned.name
                reason = f"A/B {experiment_id}: no arm's model has a target; {why}"
                return Selection(chosen.key, reason, scores, detail)
            served = fallback
            members = [t for t in targets if t.model_id == served.model_id]
        scores = self._ll.scores(targets)
        chosen, _ = self._ll.pick(members)
        if served is assigned:
            reason = f"A/B {experiment_id}: arm {assigned.name} ({assigned.model_id})"
        else:
            detail["arm"] = served.name
            detail["assigned_arm"] = assigned.name
            reason = (
                f"A/B {experiment_id}: arm {assigned.name}'s model {assigned.model_id} has no target; "
                f"using arm {served.name} ({served.model_id})"
            )
        return Selection(chosen.key, reason, favour(scores, [t.key for t in members]), detail)

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._ll.on_start(target, ctx)
