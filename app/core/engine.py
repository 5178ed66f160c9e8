"""The composition root: configuration, store, registry, pool, router and their bookkeeping wired together.

The HTTP server and the window reach it only through app/core/services.py. A request becomes a Job: routed,
started (retried once on another model if its model fails before the first token), streamed, and when it ends,
however it ends, a `Finished` goes to each registered observer: the router (strategy hooks, latency stats), the
health book, the quota, the metrics, the decision log and the A/B experiments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from app.core import paths
from app.core.catalog.discovery.found import ScanResult
from app.core.catalog.discovery.scan import scan
from app.core.catalog.model import ModelEntry
from app.core.catalog.registry import Registry
from app.core.config import Config
from app.core.errors import (
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    QueueFull,
    SwitchboardError,
    WorkerDied,
)
from app.core.job import Job, holding, timeout_error
from app.core.observe.decisions import DecisionLog
from app.core.observe.experiments import Arm, Experiments
from app.core.observe.metrics import Metrics, ModelSnapshot
from app.core.routing.admission import Place, Queues
from app.core.routing.health import BreakerConfig, Health, HealthBook
from app.core.routing.health_checker import HealthChecker, Probe, ProbeResult
from app.core.routing.latency_stats import TargetStats
from app.core.routing.quota import QuotaManager
from app.core.routing.request import AUTO, Finished, RouteRequest, RoutingDecision
from app.core.routing.router import DEFAULT_STRATEGY, RequestRouter
from app.core.routing.strategies.base import Outcome
from app.core.runtime.local.handle import WorkerHandle
from app.core.runtime.pool import ModelPool
from app.core.storage.store import Store

ALL_SOURCES = ("embedded", "hf", "ollama", "folders")
# The worker's codes for a chat template that refused to render a conversation (process.py's Refused).
TEMPLATE_FAULTS = frozenset({"template_refused", "template_error"})


class Engine:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store or Store(paths.database_path())
        self.registry = Registry(self.store)
        self.pool = ModelPool(config, self.store)
        self.quota = QuotaManager(self.store)
        self.health = HealthBook(BreakerConfig())
        self.stats = TargetStats()
        self.router = RequestRouter(self.registry, self.pool, self.quota, self.health, self.stats, self.store)
        self.pool.on_worker_gone = self.router.forget
        self.pool.on_worker_report = self.router.reported
        # Health has one owner: the pool reports its workers' lifecycle to the book, and a model leaving the
        # catalog leaves the book.
        self.pool.on_worker_state = lambda model_id, replica, state, reason: self.health.worker_changed(
            model_id, replica, state, reason, now=time.monotonic())
        # A load that failed because of the files is remembered with the model, across restarts.
        self.pool.on_load_result = self.registry.set_load_failure
        # Models whose load failure is remembered: when it is forgotten, so is the unhealthy health it showed.
        self._failed_loads = {e.id for e in self.registry.list() if e.load_failure is not None}
        self.registry.subscribe(self._catalog_changed)
        self.experiments = Experiments(self.store)
        self.decisions = DecisionLog(self.store)
        self.metrics = Metrics(self._snapshot)
        # Told of every finished request, in this order: each records its own part of it.
        self.observers: list[Callable[[Finished], None]] = [
            self.router.on_finished, self.health.on_finished, self.quota.on_finished, self.metrics.on_finished,
            self.decisions.on_finished, self.experiments.on_finished,
        ]
        self.queues = Queues()
        self.checker = HealthChecker(self.health, self._probes, interval_s=config.health_interval_s,
                                     on_change=self.health.show)
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
                check_architectures=True,
            )
            # Only a scan of every source may conclude that a model is gone.
            self.registry.sync(result.models, complete=self.config.discovery)
            self.last_scan = result
        return result

    # -- requests -----------------------------------------------------------------------------
    def route(self, request: RouteRequest) -> RoutingDecision:
        return self.router.route(request)

    async def count_tokens(self, request: RouteRequest, params: dict[str, Any]) -> tuple[int, RoutingDecision]:
        """The prompt tokens a chat takes on the model it is routed to, counted by that model's worker (loaded
        if need be) with its own template and tokenizer: nothing generated, nothing counted against a quota."""
        decision = self.router.route(request)
        entry = self.registry.resolve(decision.model_id)
        if entry.is_remote:
            raise InvalidRequest(f"The model '{entry.id}' is served by a remote backend, which cannot count tokens "
                                 "here", param="model")
        async with asyncio.timeout(self.config.request_timeout_s):
            handle = await self.pool.acquire(entry, decision.replica)
            messages = [message async for message in handle.run("tokenize", params)]
        return int(messages[-1]["result"]["prompt_tokens"]), decision

    async def open(self, request: RouteRequest, op: str, params: dict[str, Any]) -> Job:
        """Route, admit and start a job; its first message has arrived when this returns.

        A model that fails before sending anything is retried once on the next candidate; for `auto`, a model
        whose chat template cannot render the conversation (the model's trait, not its failure, and never
        counted against its health) hands it on to the next. The whole request, the wait for a model to load
        included, must end within `request_timeout_s`.
        """
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + self.config.request_timeout_s
        decision, place = self._admit(request)
        exclude: frozenset[str] = frozenset()
        model_failed = False
        while True:
            failure: SwitchboardError
            try:
                return await self._start_held(decision, place, request, op, params, started, deadline)
            except InvalidRequest as refused:
                if refused.code not in TEMPLATE_FAULTS or (request.model and request.model != AUTO):
                    raise
                failure = refused
            except ModelUnavailable as unavailable:
                if not isinstance(unavailable, WorkerDied):  # its worker's lifecycle counted it
                    self._record_failure(decision, unavailable)
                if model_failed:
                    raise
                model_failed, failure = True, unavailable
            exclude |= {decision.model_id}
            try:
                retry, place = self._admit(request, exclude=exclude)
            except SwitchboardError:
                raise failure from None
            decision = dataclasses.replace(
                retry, retried_from=decision.model_id,
                reason=f"retried: {decision.model_id} failed ({failure.message}); {retry.reason}")
            self.metrics.observe_decision(decision.strategy, decision.model_id, retried=True)

    def _admit(self, request: RouteRequest,
               exclude: frozenset[str] = frozenset()) -> tuple[RoutingDecision, Place]:
        """Route, then hold a place in the chosen model's queue (the Job releases it when it ends).

        A model whose queue is full is routed around like any model that cannot serve (its fallbacks, or other
        candidates for `auto`); when none is left, or the whole server has `max_queue_total` waiting, 429.
        Routing and holding happen with no await in between, so the bounds hold however many requests arrive."""
        if self.queues.waiting_total() >= self.config.max_queue_total:
            raise QueueFull(f"The server has {self.config.max_queue_total} requests waiting; retry shortly",
                            retry_after=1)
        full: QueueFull | None = None
        while True:
            try:
                decision = self.router.route(request, exclude=exclude)
            except SwitchboardError:
                if full is not None:
                    raise full from None
                raise
            entry = self.registry.resolve(decision.model_id)
            # A remote backend queues on its own machine.
            slots = 1 if entry.is_remote else self.pool.slots(entry)
            if entry.is_remote or self.queues.waiting(entry.id, slots) < self.config.max_queue:
                return decision, self.queues.hold(entry.id, slots)
            full = full or QueueFull(f"The model '{entry.id}' has {self.config.max_queue} requests waiting; "
                                     "retry shortly", retry_after=1)
            exclude |= {entry.id}

    async def _start_held(self, decision: RoutingDecision, place: Place, request: RouteRequest, op: str,
                          params: dict[str, Any], started: float, deadline: float) -> Job:
        """Start the job that holds `place`: its messages free the place when they end, else it is freed here."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self._start(decision, place, request, op, params, started, deadline)
        except TimeoutError:
            place.release()
            failure = timeout_error(decision, self.config.request_timeout_s)
            self._record_failure(decision, failure)
            raise failure from None
        except BaseException:
            place.release()
            raise

    async def _start(self, decision: RoutingDecision, place: Place, request: RouteRequest, op: str,
                     params: dict[str, Any], started: float, deadline: float) -> Job:
        entry = self.registry.resolve(decision.model_id)
        handle = await self.pool.acquire(entry, decision.replica)
        messages = holding(place, handle.run(op, params, tag=request.request_id))
        try:
            first = await anext(messages)
        except BaseException:
            await messages.aclose()
            raise
        self.registry.record_use(entry.id)
        self.router.started(decision)
        if decision.retried_from is None:
            self.metrics.observe_decision(decision.strategy, decision.model_id)
        self.decisions.append(request.request_id, endpoint=request.endpoint, surface=request.surface,
                              model_id=decision.model_id,
                              strategy=decision.strategy, reason=decision.reason,
                              total_score=decision.total_score,
                              candidates=decision.explain()["candidates"], retried=decision.retried_from is not None)
        return Job(decision, request, messages, first, started, deadline, timeout_s=self.config.request_timeout_s,
                   on_end=self.finish)

    def _record_failure(self, decision: RoutingDecision, failure: SwitchboardError) -> None:
        self.health.record_request(decision.model_id, False, time.monotonic(), reason=failure.message)

    def finish(self, decision: RoutingDecision, request: RouteRequest, outcome: Outcome, status: int) -> None:
        finished = Finished(decision, request, outcome, status, time.monotonic())
        for observer in self.observers:
            observer(finished)

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
            arms = [dataclasses.asdict(a) for a in experiment.arms]
            params = {**params, "experiment_id": experiment.id, "arms": arms}
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
        strategy = self.router.strategy
        if strategy.name == "ab_test" and strategy.params().get("experiment_id") == experiment_id:
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
        """The model's health and why: unhealthy while a load failure is remembered (from before a restart too),
        else as the health book shows it."""
        entry = self.registry.get(model_id)
        if entry is not None and entry.load_failure is not None:
            return Health.UNHEALTHY, entry.load_failure.reason
        return self.health.shown(model_id)

    def shown_health(self, model_id: str) -> tuple[str, str | None]:
        """A model's health column in the API, the window and /metrics: "loading" while its workers start and
        none runs yet (a worker state, not a health value), else model_health's value and reason."""
        if self.pool.is_loading(model_id):
            return "loading", None
        health, reason = self.model_health(model_id)
        return health.value, reason

    def subscribe(self, listener: Callable[[str, ModelEntry], None]) -> Callable[[], None]:
        """Catalog changes, and changes of what a model's health shows as ("health", entry)."""
        def health_changed(model_id: str, _health: Health, _reason: str | None) -> None:
            entry = self.registry.get(model_id)
            if entry is not None:
                listener("health", entry)

        unsubscribers = (self.registry.subscribe(listener), self.health.subscribe(health_changed))

        def unsubscribe() -> None:
            for stop in unsubscribers:
                stop()

        return unsubscribe

    def _catalog_changed(self, event: str, entry: ModelEntry) -> None:
        if event == "removed":
            self.health.forget(entry.id)
            self._failed_loads.discard(entry.id)
        elif entry.load_failure is not None:
            self._failed_loads.add(entry.id)
        elif entry.id in self._failed_loads:
            # The remembered load failure was forgotten (its file changed, the user retries it): the failed load no
            # longer says anything about the model, which is unknown until one of its workers tells otherwise.
            self._failed_loads.discard(entry.id)
            if self.health.shown(entry.id)[0] is Health.UNHEALTHY:
                self.health.show(entry.id, Health.UNKNOWN)

    def _probes(self) -> Mapping[str, Probe]:
        """Every loaded worker of every replica: local ones, is the process alive; remote backends, their /v1/models.

        The breaker is per model, so a model's probe covers all its loaded workers and fails when any of them
        does, naming the replica: one dead replica of two fails it as a dead only worker would, and counts as one
        failure of the model per round, however many replicas it runs. (A crash itself already shows: the
        worker's failure makes its model unhealthy at once, whichever replica it was.)"""
        local: dict[str, list[WorkerHandle]] = {}
        probes: dict[str, Probe] = {}
        for view in self.pool.loaded():
            handle = self.pool.worker(view.model_id, view.replica)
            if isinstance(handle, WorkerHandle):
                local.setdefault(view.model_id, []).append(handle)
            elif handle is not None:
                probes[view.model_id] = handle.probe
        probes.update((model_id, _alive_probe(handles)) for model_id, handles in local.items())
        for entry in self.registry.list():
            if entry.is_remote and entry.enabled and entry.id not in probes:
                probes[entry.id] = _remote_probe(self, entry.id)
        return probes

    def _snapshot(self) -> list[ModelSnapshot]:
        memory: dict[str, int] = {}
        for view in self.pool.loaded():
            memory[view.model_id] = memory.get(view.model_id, 0) + self.pool.memory_of(view.key)
        return [
            ModelSnapshot(e.id, self.shown_health(e.id)[0], e.id in memory, memory.get(e.id, 0),
                          self.quota.remaining_fraction(e.id))
            for e in self.registry.list()
        ]


def _alive_probe(handles: list[WorkerHandle]) -> Probe:
    async def probe() -> ProbeResult:
        for handle in handles:
            if not handle.alive:
                reason = handle.dead_reason or "the worker process is not running"
                return False, 0.0, reason if handle.replica == 0 else f"replica {handle.replica}: {reason}"
        return True, 0.0, None

    return probe


def _remote_probe(engine: Engine, model_id: str) -> Probe:
    async def probe() -> ProbeResult:
        handle = await engine.pool.acquire(engine.registry.resolve(model_id))
        return await handle.probe()  # type: ignore[union-attr]

    return probe
