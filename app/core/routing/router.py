"""The request router: filters the candidates, asks the configured strategy, explains the decision.

Every model that cannot serve a request keeps its reason, so a decision can always say why each model was or
was not chosen. The strategy only ever sees the candidates that passed every filter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from app.core.catalog.model import ModelEntry
from app.core.catalog.registry import Registry
from app.core.errors import (
    CapabilityMissing,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    QuotaExceeded,
    SwitchboardError,
)
from app.core.routing import strategies
from app.core.routing.health import Health, HealthBook
from app.core.routing.latency_stats import TargetStats
from app.core.routing.quota import QuotaManager
from app.core.routing.request import AUTO, Candidate, RouteRequest, RoutingDecision
from app.core.routing.strategies.base import Outcome, RouteContext, Strategy, Target
from app.core.runtime.pool import ModelPool, worker_key
from app.core.runtime.slots import SlotReport
from app.core.storage.store import Store

if TYPE_CHECKING:
    from app.core.routing.request import Finished

DEFAULT_STRATEGY = "least_loaded"


class _Filtered(Exception):
    """Why one model cannot take a request; `error` is what a client asking for it by name gets."""

    def __init__(self, reason: str, error: SwitchboardError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class RequestRouter:
    def __init__(self, registry: Registry, pool: ModelPool, quota: QuotaManager, health: HealthBook,
                 stats: TargetStats, store: Store, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._pool = pool
        self._quota = quota
        self._health = health
        self._stats = stats
        self._store = store
        self._clock = clock
        saved = store.get_setting("router") or {}
        try:
            self._strategy = strategies.build(saved.get("strategy", DEFAULT_STRATEGY), saved.get("params") or {})
        except ValueError:
            # A saved setting this version no longer accepts must not stop the server.
            self._strategy = strategies.build(DEFAULT_STRATEGY, {})

    # -- configuration ------------------------------------------------------------------------
    @property
    def strategy(self) -> Strategy:
        return self._strategy

    def describe(self) -> dict[str, Any]:
        return {"strategy": self._strategy.name, "params": self._strategy.params(), "available": strategies.names()}

    def configure(self, name: str, params: Mapping[str, Any] | None = None) -> Strategy:
        """Switch strategy at run time; persisted. Raises InvalidRequest for an unknown name or bad params."""
        try:
            strategy = strategies.build(name, dict(params or {}))
        except ValueError as exc:
            param = "strategy" if name not in strategies.names() else "params"
            raise InvalidRequest(str(exc), param=param) from exc
        self._strategy = strategy
        self._store.set_setting("router", {"strategy": strategy.name, "params": strategy.params()})
        return strategy

    # -- routing ----------------------------------------------------------------------------
    def route(self, request: RouteRequest, *, exclude: frozenset[str] = frozenset()) -> RoutingDecision:
        now = self._clock()
        if request.model and request.model != AUTO:
            return self._named(request, now, exclude)
        return self._auto(request, now, exclude)

    def _named(self, request: RouteRequest, now: float, exclude: frozenset[str]) -> RoutingDecision:
        assert request.model is not None
        entry = self._registry.get(request.model)
        if entry is None or not entry.enabled:
            state = "does not exist" if entry is None else "is disabled"
            raise ModelNotFound(f"The model '{request.model}' {state}", param="model")
        tried: list[tuple[str, str]] = []
        first_error: SwitchboardError | None = None
        for candidate in (entry.id, *entry.fallbacks):
            fallback = self._registry.get(candidate)
            if fallback is None or candidate in exclude:
                continue
            try:
                self._check(fallback, request, now)
            except _Filtered as filtered:
                first_error = first_error or filtered.error
                tried.append((candidate, filtered.reason))
                continue
            direct = candidate == entry.id
            why = "; ".join(f"{mid}: {reason}" for mid, reason in tried)
            prefix = None if direct else f"fallback of {entry.id} ({why})"
            return self._select([fallback], request, now, reason_prefix=prefix,
                                filtered=[Candidate(mid, 0.0, True, reason) for mid, reason in tried], direct=direct)
        if first_error is None:
            raise ModelUnavailable(f"The model '{entry.id}' cannot serve this request", param="model")
        raise first_error

    def _auto(self, request: RouteRequest, now: float, exclude: frozenset[str]) -> RoutingDecision:
        passing: list[ModelEntry] = []
        filtered: list[Candidate] = []
        errors: list[SwitchboardError] = []
        for entry in self._registry.list():
            if entry.id in exclude:
                filtered.append(Candidate(entry.id, 0.0, True, "failed this request already"))
                continue
            try:
                self._check(entry, request, now)
            except _Filtered as f:
                filtered.append(Candidate(entry.id, 0.0, True, f.reason))
                errors.append(f.error)
                continue
            passing.append(entry)
        # Soft needs (a script, code): prefer models tagged with them when any is.
        for need in sorted(request.soft):
            tagged = [e for e in passing if need in e.capabilities]
            if tagged and len(tagged) < len(passing):
                filtered += [Candidate(e.id, 0.0, True, f"not tagged {need}") for e in passing if e not in tagged]
                passing = tagged
        if not passing:
            raise _no_candidate(self._registry.list(), request, errors, exclude)
        return self._select(passing, request, now, filtered=filtered)

    def _select(self, entries: list[ModelEntry], request: RouteRequest, now: float, *, filtered: list[Candidate],
                reason_prefix: str | None = None, direct: bool = False) -> RoutingDecision:
        targets = [t for e in entries for t in self._targets(e, request)]
        ctx = RouteContext(
            text=request.needs.text if request.needs else "",
            session_key=request.session_key, user=request.user, api_key_id=request.api_key_id,
            capabilities=request.hard | request.soft, request_id=request.request_id, now=now,
        )
        if direct and len(targets) == 1:
            target = targets[0]
            return RoutingDecision(target.model_id, "direct", "requested by name", 1.0,
                                   (Candidate(target.model_id, 1.0, False, "requested by name"), *filtered),
                                   replica=target.replica, target=target, context=ctx)
        selection = self._strategy.select(targets, ctx)
        chosen = next(t for t in targets if t.key == selection.key)
        reason = selection.reason if reason_prefix is None else f"{reason_prefix}; {selection.reason}"
        scored = tuple(
            Candidate(t.model_id, selection.scores.get(t.key, 0.0), False,
                      "chosen" if t.key == chosen.key else "candidate", t.replica)
            for t in targets
        )
        return RoutingDecision(chosen.model_id, self._strategy.name if not direct else "direct", reason,
                               selection.scores.get(chosen.key, 0.0), (*scored, *filtered), replica=chosen.replica,
                               detail=selection.detail, target=chosen, context=ctx)

    def _targets(self, entry: ModelEntry, request: RouteRequest) -> list[Target]:
        quota_left = self._quota.remaining_fraction(entry.id, request.api_key_id)
        degraded = self._health.shown(entry.id)[0] is Health.DEGRADED
        targets = []
        slots = 1 if entry.is_remote else max(1, self._pool.placement(entry).parallel)
        for replica in range(1 if entry.is_remote else entry.replicas):
            key = worker_key(entry.id, replica)
            handle = self._pool.worker(entry.id, replica)
            latency = self._stats.get(key)
            loaded = handle is not None and handle.alive
            targets.append(Target(
                key=key, model_id=entry.id, replica=replica,
                in_flight=handle.in_flight if handle is not None else 0, slots=slots,
                pending_tokens=handle.slot_report.pending_tokens if loaded and handle is not None else 0,
                memory_pressure=self._pool.pressure(key) if loaded else 0.0,
                loaded=loaded, degraded=degraded, weight=entry.weight, quota_left=quota_left,
                ttft_s=latency.ttft_s, tpot_s=latency.tpot_s, latency_samples=latency.samples,
            ))
        return targets

    def _check(self, entry: ModelEntry, request: RouteRequest, now: float) -> None:
        """Raise _Filtered when `entry` cannot take `request`, with the reason and the error to give."""
        if not entry.enabled:
            raise _Filtered("disabled", ModelNotFound(f"The model '{entry.id}' is disabled", param="model"))
        if entry.missing:
            raise _Filtered("files missing",
                            ModelUnavailable(f"The files of model '{entry.id}' are missing: {entry.path}"))
        if entry.load_failure is not None:
            why = entry.load_failure.reason
            raise _Filtered(f"not loadable: {why}", ModelUnavailable(
                f"{why}. The model '{entry.id}' is not tried again until its file changes or it is loaded by hand "
                f"(POST /api/models/{entry.id}/load)", param="model"))
        if not self._health.allow(entry.id, now, claim=False):
            why = self._health.reason(entry.id) or self._health.shown(entry.id)[1] or "failing"
            retry = self._health.retry_in(entry.id, now)
            raise _Filtered(f"unhealthy: {why}", ModelUnavailable(
                f"The model '{entry.id}' is unhealthy ({why}); retry later", retry_after=retry or None))
        lacking = sorted(request.hard - set(entry.capabilities))
        if lacking:
            raise _Filtered(f"lacks {', '.join(lacking)}", CapabilityMissing(
                f"The model '{entry.id}' does not have the capability: {', '.join(lacking)}", param="model"))
        context = self._pool.context_of(entry)
        if request.min_context and context and request.min_context > context:
            raise _Filtered(f"context {context} < {request.min_context} needed", InvalidRequest(
                f"This request needs about {request.min_context} tokens of context; '{entry.id}' has {context}",
                param="messages", code="context_length_exceeded"))
        if self._quota.exhausted(entry.id, request.api_key_id):
            retry = self._quota.retry_after(entry.id, request.api_key_id)
            whose = f"'{entry.id}'" if self._quota.exhausted(entry.id) else f"the API key '{request.api_key_id}'"
            raise _Filtered("quota exhausted", QuotaExceeded(
                f"The hourly quota of {whose} is used up; retry in {retry:.0f} s", retry_after=retry))
        if not entry.is_remote and not self._pool.fits(entry):
            need = self._pool.estimate(entry) / 2**20
            raise _Filtered(f"won't fit: needs {need:.0f} MiB, budget {self._pool.budget / 2**20:.0f} MiB",
                            InsufficientMemory(f"The model '{entry.id}' needs about {need:.0f} MiB; the memory "
                                               f"budget is {self._pool.budget / 2**20:.0f} MiB"))

    def forget(self, key: str) -> None:
        """A worker ended: drop what the strategy believed it held (its prompt-cache prediction)."""
        self._strategy.forget(key)

    def reported(self, key: str, report: SlotReport) -> None:
        """A local worker said what its slots and cache hold: the strategy learns it as fact."""
        self._strategy.on_report(key, report)

    # -- feedback from requests -------------------------------------------------------------------
    def started(self, decision: RoutingDecision) -> None:
        if decision.target is not None and decision.context is not None:
            self._strategy.on_start(decision.target, decision.context)

    def on_finished(self, finished: Finished) -> None:
        self.completed(finished.decision, finished.outcome)

    def completed(self, decision: RoutingDecision, outcome: Outcome) -> None:
        if outcome.ok and outcome.ttft_s is not None:
            tpot = None
            if outcome.completion_tokens > 1:
                tpot = max(0.0, outcome.duration_s - outcome.ttft_s) / (outcome.completion_tokens - 1)
            self._stats.record(decision.key, outcome.ttft_s, tpot)
        if decision.target is not None and decision.context is not None:
            self._strategy.on_complete(decision.target, decision.context, outcome)


def _no_candidate(entries: list[ModelEntry], request: RouteRequest, errors: list[SwitchboardError],
                  exclude: frozenset[str]) -> SwitchboardError:
    usable = [e for e in entries if e.enabled and not e.missing]
    offered = {c for e in usable for c in e.capabilities}
    absent = sorted(request.hard - offered)
    if absent:
        return CapabilityMissing(f"No available model has the capability: {', '.join(absent)}", param="capabilities")
    if not any(request.hard <= set(e.capabilities) for e in usable):
        return CapabilityMissing(f"No single available model has all of: {', '.join(sorted(request.hard))}",
                                 param="capabilities")
    # Quota is why no candidate can serve when any capable model is held back by it alone: the client should
    # come back when the first quota frees up (429, Retry-After), whatever keeps the other models away now.
    quota = [e for e in errors if isinstance(e, QuotaExceeded)]
    if quota:
        retry = min(e.retry_after for e in quota)
        return QuotaExceeded(f"Every model that can serve this request has used its hourly quota; retry in "
                             f"{retry:.0f} s", retry_after=retry)
    context = [e for e in errors if isinstance(e, InvalidRequest)]
    if context and len(context) == len([e for e in errors if not isinstance(e, CapabilityMissing)]):
        return context[0]
    if exclude:
        return ModelUnavailable(f"No other model can serve this request after {', '.join(sorted(exclude))} failed")
    return ModelUnavailable("No model can serve this request now: "
                            + "; ".join(e.message for e in errors if not isinstance(e, CapabilityMissing)))
