"""affinity: keep a session on the target it started on, and honour pins to models.

Precedence: session pin > user pin > api_key pin > capability pin > sticky session > least loaded. A pin maps to
a model: any of its targets (least loaded, healthy first). A pin whose model has no target is skipped (the next
rule applies and the reason says so). The sticky table is refreshed on each use (`ttl_s` from ctx.now),
bounded to `max_sessions` (the least recently used dropped first), and a session on a degraded target moves
when a healthy one exists. A new session sticks to wherever it went.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import favour
from app.core.routing.strategies.least_loaded import LeastLoaded
from app.core.routing.strategies.params import PIN_KINDS, AffinityParams, LeastLoadedParams


class Affinity(Strategy):
    name = "affinity"
    Params = AffinityParams
    config: AffinityParams

    def __init__(self, config: AffinityParams | None = None) -> None:
        super().__init__(config)
        # The fallback, and the choice among a pinned model's replicas.
        self._ll = LeastLoaded(LeastLoadedParams(memory_weight=self.config.memory_weight))
        # Exact-value pins by kind; capability pins stay a list (first match in the user's order wins).
        self._by_value: dict[str, dict[str, str]] = {k: {} for k in PIN_KINDS[:3]}
        self._capability: list[tuple[str, str]] = []
        for pin in self.config.pins:
            if pin.kind == "capability":
                self._capability.append((pin.value, pin.model_id))
            else:
                self._by_value[pin.kind][pin.value] = pin.model_id
        # session key -> (target key, expires at); ordered by last use, so the front is the oldest.
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def _pins_for(self, ctx: RouteContext) -> list[tuple[str, str, str]]:
        """(kind, value, model_id) of every pin that applies, in precedence order."""
        out = []
        for kind, value in (("session", ctx.session_key), ("user", ctx.user), ("api_key", ctx.api_key_id)):
            if value is not None and (model_id := self._by_value[kind].get(value)) is not None:
                out.append((kind, value, model_id))
        if ctx.capabilities:
            out.extend(("capability", v, m) for v, m in self._capability if v in ctx.capabilities)
        return out

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        ll = self._ll
        scores = ll.scores(targets)  # least loaded order, degraded penalised; the rule's choice gets a bonus
        skipped: list[str] = []
        for kind, value, model_id in self._pins_for(ctx):
            members = [t for t in targets if t.model_id == model_id]
            if members:
                chosen, _ = ll.pick(members)
                note = f" ({'; '.join(skipped)})" if skipped else ""
                reason = f"pinned by {kind} {value!r} to {model_id}{note}"
                return Selection(chosen.key, reason, favour(scores, [t.key for t in members]), {"pin": kind})
            skipped.append(f"{kind} pin's model {model_id} has no target")
        prefix = "; ".join(skipped) + "; " if skipped else ""
        entry = self._sessions.get(ctx.session_key) if ctx.session_key else None
        if entry is not None and ctx.now < entry[1]:
            key = entry[0]
            if key not in scores:
                prefix += f"session's target {key} is gone; "
            elif scores[key] > 0.0 or max(scores.values()) <= 0.0:  # > 0: healthy; or every target is degraded
                return Selection(key, f"{prefix}sticky session on {key}", favour(scores, (key,)))
            else:
                prefix += f"session's target {key} is degraded; "
        chosen, why = ll.choose(targets, scores)
        return Selection(chosen.key, prefix + why, scores)

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._ll.on_start(target, ctx)
        key = ctx.session_key
        if not key:
            return
        sessions = self._sessions
        sessions[key] = (target.key, ctx.now + self.config.ttl_s)  # a new session sticks; a known one is refreshed
        sessions.move_to_end(key)
        # Expired sessions are the oldest ones (one TTL for all), so they sit at the front.
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest[1] > ctx.now and len(sessions) <= self.config.max_sessions:
                break
            sessions.popitem(last=False)

    def session_count(self) -> int:
        return len(self._sessions)
