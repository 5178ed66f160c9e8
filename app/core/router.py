"""Choosing the model for a request. Until strategies land, "auto" means the default capable model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.core import capabilities as caps
from app.core.errors import CapabilityMissing, ModelNotFound
from app.core.registry import Health, ModelEntry, Registry

AUTO = "auto"
ENDPOINT_CAPABILITY = {"chat": caps.CHAT, "completion": caps.COMPLETION, "embeddings": caps.EMBEDDINGS}


@dataclass(frozen=True, slots=True)
class RouteRequest:
    endpoint: str  # "chat" | "completion" | "embeddings"
    model: str | None = None
    capabilities: tuple[str, ...] = ()

    @property
    def required(self) -> frozenset[str]:
        return frozenset(c.lower() for c in self.capabilities) | {ENDPOINT_CAPABILITY[self.endpoint]}


@dataclass(frozen=True, slots=True)
class Candidate:
    model_id: str
    score: float
    filtered: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    model_id: str
    strategy: str
    reason: str
    total_score: float = 0.0
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)


class Router:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def route(self, request: RouteRequest) -> RoutingDecision:
        if request.model and request.model != AUTO:
            return self._named(request)
        return self._auto(request)

    def _named(self, request: RouteRequest) -> RoutingDecision:
        assert request.model is not None
        entry = self._registry.resolve(request.model)
        if not entry.enabled:
            raise ModelNotFound(f"The model '{request.model}' is disabled", param="model")
        lacking = sorted(request.required - set(entry.capabilities))
        if lacking:
            raise CapabilityMissing(
                f"The model '{entry.id}' does not have the capability: {', '.join(lacking)}", param="model"
            )
        return RoutingDecision(entry.id, "direct", "requested by name", 1.0,
                               (Candidate(entry.id, 1.0, False, "requested by name"),))

    def _auto(self, request: RouteRequest) -> RoutingDecision:
        required = request.required
        default_id = self._registry.default_id
        candidates: list[Candidate] = []
        capable: list[ModelEntry] = []
        for entry in self._registry.list():
            reason = _filter_reason(entry, required)
            if reason is None:
                capable.append(entry)
            candidates.append(Candidate(entry.id, 0.0, reason is not None, reason or "capable"))
        if not capable:
            raise CapabilityMissing(_missing_message(self._registry.list(), required), param="capabilities")
        # The default model when it can serve; otherwise a healthy capable one before an unhealthy one.
        capable.sort(key=lambda e: (e.id != default_id, e.health is Health.UNHEALTHY, -e.use_count, e.id))
        chosen = capable[0]
        reason = "default model" if chosen.id == default_id else "first capable model (the default cannot serve)"
        scored = tuple(
            Candidate(c.model_id, 1.0 if c.model_id == chosen.id else 0.0, c.filtered,
                      reason if c.model_id == chosen.id else c.reason)
            for c in candidates
        )
        return RoutingDecision(chosen.id, "default", reason, 1.0, scored)


def _filter_reason(entry: ModelEntry, required: frozenset[str]) -> str | None:
    if not entry.enabled:
        return "disabled"
    if entry.missing:
        return "files missing"
    lacking = sorted(required - set(entry.capabilities))
    if lacking:
        return f"lacks {', '.join(lacking)}"
    return None


def _missing_message(entries: Sequence[ModelEntry], required: frozenset[str]) -> str:
    usable = [e for e in entries if e.enabled and not e.missing]
    offered = {c for e in usable for c in e.capabilities}
    absent = sorted(required - offered)
    if absent:
        return f"No available model has the capability: {', '.join(absent)}"
    return f"No single available model has all of: {', '.join(sorted(required))}"
