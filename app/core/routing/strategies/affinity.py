"""affinity: keep a session on the target it started on, and honour pins to models.

Precedence: session pin > user pin > api_key pin > capability pin > sticky session > least loaded. A pin maps to
a model: any of its targets (least loaded, healthy first). A pin whose model has no target is skipped (the next
rule applies and the reason says so). The sticky table is refreshed on each use (`ttl_s` from ctx.now),
bounded to `max_sessions` (the least recently used dropped first), and a session on a degraded target moves
when a healthy one exists. A new session sticks to wherever it went.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from app.core.routing.strategies.base import RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import check_params, favour, integer, number, text
from app.core.routing.strategies.least_loaded import DEFAULT_MEMORY_WEIGHT, LeastLoaded

PIN_KINDS = ("session", "user", "api_key", "capability")  # in precedence order


class Affinity(Strategy):
    name = "affinity"

    def __init__(
        self,
        ttl_s: float = 1800.0,
        max_sessions: int = 100_000,
        pins: Sequence[Mapping[str, Any]] = (),
        memory_weight: float = DEFAULT_MEMORY_WEIGHT,
    ) -> None:
        self.ttl_s = number("ttl_s", ttl_s, minimum=0.0, min_exclusive=True)
        self.max_sessions = integer("max_sessions", max_sessions, minimum=1)
        self.pins = _parse_pins(pins)
        self._ll = LeastLoaded(memory_weight)  # the fallback, and the choice among a pinned model's replicas
        # Exact-value pins by kind; capability pins stay a list (first match in the user's order wins).
        self._by_value: dict[str, dict[str, str]] = {k: {} for k in PIN_KINDS[:3]}
        self._capability: list[tuple[str, str]] = []
        for p in self.pins:
            if p["kind"] == "capability":
                self._capability.append((p["value"], p["model_id"]))
            else:
                self._by_value[p["kind"]][p["value"]] = p["model_id"]
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
        for kind, value, model_id in self._pins_for(ctx) if self.pins else ():
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
        sessions[key] = (target.key, ctx.now + self.ttl_s)  # a new session sticks; a known one is refreshed
        sessions.move_to_end(key)
        # Expired sessions are the oldest ones (one TTL for all), so they sit at the front.
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest[1] > ctx.now and len(sessions) <= self.max_sessions:
                break
            sessions.popitem(last=False)

    def session_count(self) -> int:
        return len(self._sessions)

    def params(self) -> dict[str, Any]:
        return {
            "ttl_s": self.ttl_s,
            "max_sessions": self.max_sessions,
            "pins": [dict(p) for p in self.pins],
            "memory_weight": self._ll.memory_weight,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Affinity:
        return cls(**check_params(cls.name, params, ("ttl_s", "max_sessions", "pins", "memory_weight")))


def _parse_pins(pins: Any) -> tuple[dict[str, str], ...]:
    if isinstance(pins, (str, bytes, Mapping)) or not isinstance(pins, Sequence):
        raise ValueError('pins must be a list of {"kind", "value", "model_id"}')
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for i, pin in enumerate(pins):
        if not isinstance(pin, Mapping):
            raise ValueError(f'pins[{i}] must be an object with "kind", "value" and "model_id"')
        extra = sorted(str(k) for k in pin if k not in ("kind", "value", "model_id"))
        if extra:
            raise ValueError(f"pins[{i}]: unknown field {', '.join(extra)}")
        kind = pin.get("kind")
        if kind not in PIN_KINDS:
            raise ValueError(f"pins[{i}].kind must be one of {', '.join(PIN_KINDS)} (got {kind!r})")
        value = text(f"pins[{i}].value", pin.get("value"))
        model_id = text(f"pins[{i}].model_id", pin.get("model_id"))
        if (kind, value) in seen:
            raise ValueError(f"pins[{i}]: {kind} {value!r} is pinned twice")
        seen.add((kind, value))
        out.append({"kind": kind, "value": value, "model_id": model_id})
    return tuple(out)
