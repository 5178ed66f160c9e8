"""The running core: configuration, store, registry, pool, router and their bookkeeping wired together.

The HTTP server and the desktop window both drive an Engine; neither reaches past it. A request becomes a
Job: routed, started (retried once on another model if its model fails before the first token), streamed,
and on completion reported to the strategy, the latency stats, the quota, the health book, the metrics, the
decision log and any A/B experiment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from app.core import paths
from app.core.config import Config
from app.core.observe.decisions import DecisionLog
from app.core.catalog.discovery.found import ScanResult
from app.core.catalog.discovery.scan import scan
from app.core.errors import InvalidRequest, ModelNotFound, ModelUnavailable, SwitchboardError
from app.core.observe.experiments import Arm, Experiments
from app.core.routing.health import BreakerConfig, HealthBook, HealthChecker
from app.core.observe.metrics import Metrics, ModelSnapshot
from app.core.runtime.pool import ModelPool
from app.core.routing.quota import QuotaManager
from app.core.catalog.registry import Health, ModelEntry, Registry
from app.core.routing.router import DEFAULT_STRATEGY, RequestRouter, RouteRequest, RoutingDecision
from app.core.storage.store import Store
from app.core.routing.strategies.base import Outcome
from app.core.routing.latency_stats import TargetStats

ALL_SOURCES = ("embedded", "hf", "ollama", "folders")


class Engine:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store or Store(paths.database_path())
        self.registry = Registry(self.store)
        self.pool = ModelPool(self.registry, config, self.store)
        self.quota = QuotaManager(self.store)
        self.health = HealthBook(BreakerConfig())
        self.stats = TargetStats()
        self.router = RequestRouter(self.registry, self.pool, self.quota, self.health, self.stats, self.store)
        self.pool.on_worker_gone = self.router.forget
        self.experiments = Experiments(self.store)
        self.decisions = DecisionLog(self.store)
        self.metrics = Metrics(self._snapshot)
        self.checker = HealthChecker(self.health, self._probes, interval_s=config.health_interval_s,
                                     on_change=self._health_changed)
        self.last_scan: ScanResult | None = None
        self._scan_lock = asyncio.Lock()

    async def start(self) -> None:
        await self.rescan()
        self.pool.start_reaper()
        self.checker.start()

    async def close(self) -> None:
        await self.checker.stop()
        await self.pool.close()
        self.store.close()

    async def rescan(self) -> ScanResult:
        """Scan in a thread (file I/O must not block the loop), then merge into the registry."""
        sources = ALL_SOURCES if self.config.discovery else ("embedded", "folders")
        async with self._scan_lock:
            result = await asyncio.to_thread(
                scan,
                extra_dirs=tuple(self.config.model_dirs),
                sources=sources,
                default_folders=self.config.discovery,
            )
            # Only a scan of every source may conclude that a model is gone.
            self.registry.sync(result.models, complete=self.config.discovery)
            self.last_scan = result
        return result

    # -- requests -----------------------------------------------------------------------------
    def route(self, request: RouteRequest) -> RoutingDecision:
        return self.router.route(request)

    async def open(self, request: RouteRequest, op: str, params: dict[str, Any]) -> Job:
        """Route and start a job; its first message has arrived when this returns.

        A model that fails before sending anything is retried once on the next candidate.
        """
        decision = self.router.route(request)
        started = time.monotonic()
        try:
            return await self._start(decision, request, op, params, started)
        except InvalidRequest:
            raise
        except ModelUnavailable as failure:
            self._record_failure(decision, failure)
            try:
                retry = self.router.route(request, exclude=frozenset({decision.model_id}))
            except SwitchboardError:
                raise failure from None
            retry = dataclasses.replace(
                retry, retried_from=decision.model_id,
                reason=f"retried: {decision.model_id} failed ({failure.message}); {retry.reason}")
            self.metrics.observe_decision(retry.strategy, retry.model_id, retried=True)
            return await self._start(retry, request, op, params, started)

    async def _start(self, decision: RoutingDecision, request: RouteRequest, op: str, params: dict[str, Any],
                     started: float) -> Job:
        entry = self.registry.resolve(decision.model_id)
        handle = await self.pool.acquire(entry, decision.replica)
        messages = handle.run(op, params)
        try:
            first = await anext(messages)
        except BaseException:
            await messages.aclose()
            raise
        self.registry.record_use(entry.id)
        self.router.started(decision)
        if decision.retried_from is None:
            self.metrics.observe_decision(decision.strategy, decision.model_id)
        self.decisions.append(request.request_id, endpoint=request.endpoint, model_id=decision.model_id,
                              strategy=decision.strategy, reason=decision.reason,
                              total_score=decision.total_score,
                              candidates=decision.explain()["candidates"], retried=decision.retried_from is not None)
        return Job(self, decision, request, messages, first, started)

    def _record_failure(self, decision: RoutingDecision, failure: SwitchboardError) -> None:
        self.health.record(decision.model_id, False, time.monotonic(), reason=failure.message)
        self._sync_health(decision.model_id, ok=False)

    def finish(self, job: Job, outcome: Outcome, status: int) -> None:
        decision, request = job.decision, job.request
        self.router.completed(decision, outcome)
        if outcome.ok or outcome.error is not None:
            self.health.record(decision.model_id, outcome.ok, time.monotonic(), latency_s=outcome.ttft_s,
                               reason=outcome.error)
            self._sync_health(decision.model_id, outcome.ok)
        tokens = outcome.prompt_tokens + outcome.completion_tokens
        self.quota.record(decision.model_id, request.api_key_id, tokens)
        self.metrics.observe_request(decision.model_id, request.endpoint, status,
                                     prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                                     cached_tokens=outcome.cached_tokens, ttft_s=outcome.ttft_s,
                                     duration_s=outcome.duration_s)
        self.decisions.complete(request.request_id, status=status, prompt_tokens=outcome.prompt_tokens,
                                completion_tokens=outcome.completion_tokens, cached_tokens=outcome.cached_tokens,
                                ttft_ms=None if outcome.ttft_s is None else outcome.ttft_s * 1000,
                                duration_ms=outcome.duration_s * 1000, error=outcome.error)
        experiment = decision.detail.get("experiment_id")
        if experiment and self.experiments.get(experiment) is not None:
            self.experiments.record(experiment, decision.detail["arm"], request.request_id, outcome)

    # -- routing configuration ----------------------------------------------------------------
    def configure_router(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        """Switch strategy at run time (persisted). ab_test takes its arms from an experiment."""
        params = dict(params or {})
        if name == "ab_test" and "arms" not in params:
            experiment = self.experiments.get(params.get("experiment_id", "")) if params.get("experiment_id") else \
                next((e for e in self.experiments.list() if e.active), None)
            if experiment is None:
                raise InvalidRequest("ab_test needs an experiment: create one with POST /api/experiments",
                                     param="params")
            params = {**params, "experiment_id": experiment.id, "arms": [dataclasses.asdict(a) for a in experiment.arms]}
        self.router.configure(name, params)

    def create_experiment(self, name: str, arms: list[dict[str, Any]], metric: str, *, activate: bool) -> Any:
        for arm in arms:
            arm["model_id"] = self.registry.resolve(arm["model_id"]).id
        experiment = self.experiments.create(name, [Arm(**arm) for arm in arms], metric)
        if activate:
            self.configure_router("ab_test", {"experiment_id": experiment.id})
        return experiment

    def delete_experiment(self, experiment_id: str) -> None:
        self._experiment(experiment_id)
        if self.router.strategy.name == "ab_test" and self.router.strategy.params().get("experiment_id") == experiment_id:
            # The experiment routed "auto" requests: hand them to the default strategy again.
            self.configure_router(DEFAULT_STRATEGY)
        self.experiments.delete(experiment_id)

    def experiment_summary(self, experiment_id: str) -> dict[str, Any]:
        """The experiment's definition and whether it routes `auto` now; its results are computed apart (costly)."""
        experiment = self._experiment(experiment_id)
        routing = self.router.strategy.name == "ab_test" and \
            self.router.strategy.params().get("experiment_id") == experiment_id
        return {**dataclasses.asdict(experiment), "routing": routing}

    def _experiment(self, experiment_id: str) -> Any:
        experiment = self.experiments.get(experiment_id)
        if experiment is None:
            raise ModelNotFound(f"No experiment has the id '{experiment_id}'", param="id", code="experiment_not_found")
        return experiment

    # -- health ------------------------------------------------------------------------------
    def model_health(self, model_id: str) -> tuple[Health, str | None]:
        entry = self.registry.get(model_id)
        return (Health.UNKNOWN, None) if entry is None else (entry.health, entry.health_reason)

    def subscribe(self, listener: Callable[[str, ModelEntry], None]) -> Callable[[], None]:
        """Catalog changes and health changes, as (event, entry)."""
        return self.registry.subscribe(listener)

    def _sync_health(self, model_id: str, ok: bool) -> None:
        """Show the breaker's view, except that one failure never hides a worse fact (a crashed worker)."""
        health = self.health.health(model_id, time.monotonic())
        if health is Health.UNKNOWN or (not ok and health is Health.HEALTHY):
            return
        self.registry.set_health(model_id, health, self.health.reason(model_id))

    def _health_changed(self, model_id: str, health: Health, reason: str | None) -> None:
        self.registry.set_health(model_id, health, reason)

    def _probes(self) -> Mapping[str, Any]:
        """Loaded local workers: is the process alive; remote backends: their /v1/models."""
        probes: dict[str, Any] = {}
        for view in self.pool.loaded():
            handle = self.pool.worker(view.model_id, view.replica)
            if handle is None or view.replica != 0:
                continue
            probes[view.model_id] = handle.probe if hasattr(handle, "probe") else _alive_probe(handle)
        for entry in self.registry.list():
            if entry.is_remote and entry.enabled and entry.id not in probes:
                probes[entry.id] = _remote_probe(self, entry.id)
        return probes

    def _snapshot(self) -> list[ModelSnapshot]:
        memory: dict[str, int] = {}
        for view in self.pool.loaded():
            memory[view.model_id] = memory.get(view.model_id, 0) + self.pool.memory_of(view.key)
        return [
            ModelSnapshot(e.id, e.health.value, e.id in memory, memory.get(e.id, 0),
                          self.quota.remaining_fraction(e.id))
            for e in self.registry.list()
        ]


def _alive_probe(handle: Any) -> Any:
    async def probe() -> tuple[bool, float, str | None]:
        return handle.alive, 0.0, None if handle.alive else handle.dead_reason

    return probe


def _remote_probe(engine: Engine, model_id: str) -> Any:
    async def probe() -> tuple[bool, float, str | None]:
        handle = await engine.pool.acquire(engine.registry.resolve(model_id))
        return await handle.probe()  # type: ignore[union-attr]

    return probe


class Job:
    """One running request: its decision, and the worker's messages as they arrive."""

    def __init__(self, engine: Engine, decision: RoutingDecision, request: RouteRequest,
                 messages: AsyncIterator[dict[str, Any]], first: dict[str, Any], started: float) -> None:
        self.engine = engine
        self.decision = decision
        self.request = request
        self._messages = messages
        self._first = first
        self._started = started

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Every message, the first included. Reports the outcome when the job ends, however it ends."""
        ttft: float | None = None
        usage: dict[str, int] = {}
        error: str | None = None
        status = 499  # the client went away before the end, unless we learn otherwise
        try:
            async with contextlib.aclosing(self._messages):  # type: ignore[type-var]
                message = self._first
                while True:
                    if ttft is None and message["type"] in ("chunk", "done"):
                        ttft = time.monotonic() - self._started
                    if message["type"] == "done":
                        usage = message.get("usage") or _embedding_usage(message)
                        status = 200
                        yield message
                        return
                    yield message
                    message = await anext(self._messages)
        except SwitchboardError as exc:
            error, status = exc.message, 503
            raise
        finally:
            outcome = Outcome(
                ok=status == 200, ttft_s=ttft, duration_s=time.monotonic() - self._started,
                prompt_tokens=usage.get("prompt_tokens", 0), completion_tokens=usage.get("completion_tokens", 0),
                cached_tokens=usage.get("cached_tokens", 0), error=error,
            )
            self.engine.finish(self, outcome, status)


def _embedding_usage(message: Mapping[str, Any]) -> dict[str, int]:
    usage = (message.get("result") or {}).get("usage") or {}
    return {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": 0}
