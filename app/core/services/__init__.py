"""The one API of the core: what the HTTP layer (app/server) and the window (app/ui) may ask and do.

Neither caller reaches past it into the registry, the pool, the router or the store, so a rule such as "loading a
model starts every replica" is written once, here, and both surfaces behave alike. Reads return plain values or
the read models of views.py; writes validate and raise the core's own errors (app/core/errors.py). One object
per concern: the models (models.py), routing, experiments, quota, settings, and the requests themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

from app.core import views
from app.core.catalog.discovery.found import ScanResult
from app.core.config import Config
from app.core.engine import Engine
from app.core.errors import ModelNotFound
from app.core.job import Job
from app.core.keys import KeyRing
from app.core.responses import ResponseStore
from app.core.routing.quota import Limits, model_scope
from app.core.routing.request import RouteRequest, RoutingDecision
from app.core.runtime.pool import LoadedModel
from app.core.services.chats import Chats
from app.core.services.library import Library
from app.core.services.models import Models

__all__ = ["Experiments", "Job", "MemorySample", "Models", "Quota", "Routing", "Services", "Settings"]


class Routing:
    """Where `auto` goes: the strategy and its parameters, and a dry run of a request."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def describe(self) -> dict[str, Any]:
        return self._engine.router.describe()

    @property
    def strategy(self) -> str:
        return self._engine.router.strategy.name

    def strategies(self) -> list[str]:
        return list(self._engine.router.describe()["available"])

    def configure(self, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Switch strategy at run time (persisted); returns the new description."""
        self._engine.configure_router(name, params)
        return self.describe()

    def route(self, request: RouteRequest) -> RoutingDecision:
        """Where the request would go now, without running it."""
        return self._engine.route(request)


class Experiments:
    """A/B experiments: their arms, results (statistics computed off the event loop) and feedback."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def ids(self) -> list[str]:
        return [e.id for e in self._engine.experiments.list()]

    def summaries(self) -> list[dict[str, Any]]:
        """Each experiment's definition and whether it routes `auto`, without the (costly) results."""
        return [self._engine.experiment_summary(e.id) for e in self._engine.experiments.list()]

    async def all(self) -> list[dict[str, Any]]:
        return [await self.info(experiment_id) for experiment_id in self.ids()]

    async def info(self, experiment_id: str) -> dict[str, Any]:
        """Definition and results; the bootstrap runs in a thread so streams in flight never stall."""
        summary = self._engine.experiment_summary(experiment_id)
        results = await asyncio.to_thread(self._engine.experiments.results, experiment_id)
        return {**summary, "results": results}

    def create(self, name: str, arms: list[dict[str, Any]], metric: str, *, activate: bool) -> dict[str, Any]:
        experiment = self._engine.create_experiment(name, arms, metric, activate=activate)
        return self._engine.experiment_summary(experiment.id)

    def delete(self, experiment_id: str) -> None:
        self._engine.delete_experiment(experiment_id)

    def route_by(self, experiment_id: str) -> dict[str, Any]:
        """Let this experiment route `auto` requests (the ab_test strategy over its arms)."""
        return Routing(self._engine).configure("ab_test", {"experiment_id": experiment_id})

    def feedback(self, request_id: str, score: float) -> None:
        if not self._engine.experiments.feedback(request_id, score):
            raise ModelNotFound(f"No experiment request has the id '{request_id}'", param="request_id",
                                code="request_not_found")


class Quota:
    """Hourly token and request limits per model (scope "model:<id>") and per API key."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def limits(self, model_id: str) -> Limits:
        return self._engine.quota.limits(model_scope(model_id))

    def set_limits(self, model_id: str, limits: Limits) -> None:
        if self._engine.quota.limits(model_scope(model_id)) != limits:
            self._engine.quota.set_limits(model_scope(model_id), limits)

    def usage(self, model_id: str) -> dict[str, Any]:
        return self._engine.quota.usage(model_scope(model_id))

    def all_usage(self) -> dict[str, dict[str, Any]]:
        return self._engine.quota.all_usage()


class Settings:
    """Small persisted preferences of the surfaces (the window's geometry, close-to-tray)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, key: str, default: Any = None) -> Any:
        return self._engine.store.get_setting(key, default)

    def set(self, key: str, value: Any) -> None:
        self._engine.store.set_setting(key, value)


@dataclasses.dataclass(frozen=True, slots=True)
class MemorySample:
    """Worker memory as sampled now: resident bytes per worker key, and the budget loaded models must fit in."""

    rss: Mapping[str, int]
    workers: list[LoadedModel]
    budget: int


class Services:
    """The facade: one object per concern, plus the life of the engine and the requests themselves."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.models = Models(engine)
        self.routing = Routing(engine)
        self.experiments = Experiments(engine)
        self.quota = Quota(engine)
        # API keys with their quotas (app/core/keys.py), the config's api_key included.
        self.keys = KeyRing(engine.store, engine.quota, engine.config)
        self.settings = Settings(engine)
        self.library = Library(engine)
        self.responses = ResponseStore(engine.store, engine.config)
        self.chats = Chats(engine)

    @classmethod
    def create(cls, config: Config, **kwargs: Any) -> Services:
        return cls(Engine(config, **kwargs))

    @property
    def config(self) -> Config:
        """This run's configuration (read it; change settings through the methods that persist them)."""
        return self._engine.config

    def set_server(self, *, host: str, port: int, api_key: str | None, cors_origins: list[str]) -> None:
        """Where the HTTP server listens and who may call it, in this run's config and config.json (the window's
        Server tab); a server already listening uses them once restarted. OSError when config.json cannot be
        written (this run keeps the new values)."""
        config = self._engine.config
        config.host, config.port, config.api_key, config.cors_origins = host, port, api_key, list(cors_origins)
        config.save()

    async def start(self) -> None:
        await self._engine.start()

    async def close(self) -> None:
        await self._engine.close()

    def close_store(self) -> None:
        """For short-lived command-line uses that never started the engine."""
        self._engine.store.close()

    # -- requests --------------------------------------------------------------------------
    async def open(self, request: RouteRequest, op: str, params: dict[str, Any]) -> Job:
        """Route and start a request; see Engine.open."""
        return await self._engine.open(request, op, params)

    async def count_tokens(self, request: RouteRequest, params: dict[str, Any]) -> tuple[int, RoutingDecision]:
        """The prompt tokens of a chat (`params` as for open's "chat") on the model it would go to; see
        Engine.count_tokens."""
        return await self._engine.count_tokens(request, params)

    def decisions(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._engine.decisions.recent(max(1, min(limit, 1000)))

    def memory(self) -> MemorySample:
        """Sample every worker's memory now (a syscall per worker: call it on a timer, not per request)."""
        pool = self._engine.pool
        return MemorySample(pool.sample_memory(), pool.loaded(), pool.budget)

    def metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition: body and content type."""
        self._engine.pool.sample_memory()
        return self._engine.metrics.render()

    def scan_info(self, result: ScanResult) -> dict[str, Any]:
        return views.scan_info([m.id for m in result.models], result.problems)
