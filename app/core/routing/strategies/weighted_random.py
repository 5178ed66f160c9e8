"""weighted_random: a random target, in proportion to its model's weight.

A model's weight comes from the `weights` parameter, else from Target.weight; it is shared among that model's
targets, so adding a replica does not change the model's share. Zero weight means never, unless every weight
is zero (then uniform). Healthy targets first: a degraded target is drawn only when no healthy target has
weight. Randomness only from the injected (or `seed`-seeded) random.Random. Score = the chance of being drawn,
less the degraded penalty.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from itertools import accumulate

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import finite_or, pct, penalise
from app.core.routing.strategies.params import WeightedRandomParams

_INF = float("inf")


class WeightedRandom(Strategy):
    name = "weighted_random"
    Params = WeightedRandomParams
    config: WeightedRandomParams

    def __init__(self, config: WeightedRandomParams | None = None, rng: random.Random | None = None) -> None:
        super().__init__(config)
        self._rng = rng if rng is not None else random.Random(self.config.seed)
        self._signature: list[tuple[str, str, float, bool]] | None = None
        self._odds: tuple[list[float], float, dict[str, float], str] = ([], 0.0, {}, "")

    def model_weight(self, t: Target) -> float:
        """The weight of the target's model (a missing or nonsensical Target.weight counts as 0)."""
        w = self.config.weights.get(t.model_id)
        return w if w is not None else (finite_or(t.weight, 0.0) or 0.0)

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        # The odds depend only on keys, models, weights and health, which rarely change between requests
        # (unlike load): they are worked out again only when those do. A memo, not behaviour.
        signature = [(t.key, t.model_id, t.weight, t.degraded) for t in targets]
        if signature != self._signature:
            self._odds = self._work_out(targets)
            self._signature = signature
        cumulative, total, scores, how = self._odds
        i = min(bisect_right(cumulative, self._rng.random() * total), len(targets) - 1)
        while i > 0 and cumulative[i] <= cumulative[i - 1]:  # float edge: never a zero-weight target
            i -= 1
        chosen = targets[i]
        chance = pct((cumulative[i] - (cumulative[i - 1] if i else 0.0)) / total)
        if how:
            return Selection(chosen.key, f"weighted random: {how}, {chance} chance", dict(scores))
        weight = self.model_weight(chosen)
        return Selection(chosen.key, f"weighted random: weight {weight:g}, {chance} chance", dict(scores))

    def _work_out(self, targets: Sequence[Target]) -> tuple[list[float], float, dict[str, float], str]:
        """Cumulative draw weights, their total, the scores (chance of being drawn) and a note for the reason."""
        models = [t.model_id for t in targets]
        replicas = Counter(models)
        # Each target's share of its model's weight; degraded targets held back at first.
        draw = [0.0 if t.degraded else self.model_weight(t) / replicas[m] for t, m in zip(targets, models)]
        how = ""
        if not max(draw) > 0.0:  # no healthy target has weight: the degraded ones with weight, if any
            draw = [self.model_weight(t) / replicas[m] for t, m in zip(targets, models)]
            if not max(draw) > 0.0:
                draw = [0.0 if t.degraded else 1.0 for t in targets]  # every weight is 0: uniform
                if not max(draw) > 0.0:
                    draw = [1.0] * len(targets)
                how = "uniform (every weight is 0)"
        total = sum(draw)
        if not total < _INF:  # huge weights overflow the sum: rescale, keeping their ratios
            top = max(draw)
            draw = [w / top for w in draw]
            total = sum(draw)
        scores = penalise({t.key: w / total for t, w in zip(targets, draw)}, targets)
        return list(accumulate(draw)), total, scores, how
