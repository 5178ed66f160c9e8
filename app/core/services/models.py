"""The model side of the service layer: which models exist, what runs, and the user's settings of each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.core import views
from app.core.catalog.discovery.found import ScanResult
from app.core.catalog.gguf.header import GGUFError, GGUFHeader
from app.core.catalog.gguf.reader import read_header
from app.core.catalog.model import ModelEntry
from app.core.config import Config, ConfigError
from app.core.engine import Engine
from app.core.errors import InvalidRequest, ModelNotFound, ModelUnavailable
from app.core.routing.health import Health
from app.core.routing.quota import Limits, model_scope
from app.core.runtime.pool import LoadedModel
from app.core.runtime.remote.handle import RemoteSpec

Listener = Callable[[str, ModelEntry], None]


class Models:
    """Which models exist, what runs, and the user's settings of each."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- reading ---------------------------------------------------------------------------
    def all(self) -> list[ModelEntry]:
        return self._engine.registry.list()

    def served(self) -> list[ModelEntry]:
        """What /v1/models lists: enabled models whose files are present."""
        return [e for e in self._engine.registry.list() if e.enabled and not e.missing]

    def available(self) -> list[ModelEntry]:
        """Models a request may be routed to now: served, and not unhealthy."""
        return [e for e in self.served() if self.health(e.id)[0] is not Health.UNHEALTHY]

    def get(self, name: str) -> ModelEntry | None:
        return self._engine.registry.get(name)

    def resolve(self, name: str) -> ModelEntry:
        return self._engine.registry.resolve(name)

    def enabled(self, name: str) -> ModelEntry:
        """The model by id or alias, as a client may use it: ModelNotFound when it is absent or disabled."""
        entry = self._engine.registry.get(name)
        if entry is None or not entry.enabled:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        return entry

    @property
    def default_id(self) -> str | None:
        return self._engine.registry.default_id

    def health(self, model_id: str) -> tuple[Health, str | None]:
        return self._engine.model_health(model_id)

    def shown_health(self, model_id: str) -> tuple[str, str | None]:
        """What the health column shows: "loading" while the model's workers start, else health's value."""
        return self._engine.shown_health(model_id)

    def info(self, name: str) -> dict[str, Any]:
        return views.model_info(self._engine, self.resolve(name))

    def infos(self) -> list[dict[str, Any]]:
        return [views.model_info(self._engine, e) for e in self.all()]

    async def details(self, name: str) -> dict[str, Any]:
        """info, with the last lines of its worker log as `log_tail` (read in a thread, off the event loop)."""
        entry = self.resolve(name)
        tail = [] if entry.is_remote else await asyncio.to_thread(self._engine.pool.log_tail, entry)
        return {**views.model_info(self._engine, entry), "log_tail": tail}

    def openai_object(self, entry: ModelEntry) -> dict[str, Any]:
        return views.model_object(self._engine, entry)

    async def header(self, name: str) -> GGUFHeader | None:
        """The model's GGUF header, read again from its file off the event loop (all of its metadata, which the
        registry keeps only a summary of); None for a remote backend. ModelUnavailable when the file is unreadable."""
        entry = self.resolve(name)
        if entry.is_remote:
            return None
        try:
            return await asyncio.to_thread(read_header, entry.path)
        except GGUFError as exc:
            raise ModelUnavailable(f"The file of '{entry.id}' cannot be read: {exc.reason}") from None

    def estimate(self, name: str) -> dict[str, Any]:
        entry = self.resolve(name)
        pool = self._engine.pool
        return {**views.placement_info(self._engine, entry), "budget_bytes": pool.budget, "fits": pool.fits(entry)}

    def loaded(self) -> list[LoadedModel]:
        return self._engine.pool.loaded()

    @property
    def memory_budget(self) -> int:
        """Bytes of RAM the loaded models may take together (what `fits` is measured against)."""
        return self._engine.pool.budget

    def memory_of(self, worker_key: str) -> int:
        return self._engine.pool.memory_of(worker_key)

    def is_pinned(self, model_id: str) -> bool:
        return self._engine.pool.is_pinned(model_id)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Told (event, entry) on every change of the catalog or of a model's health; returns the unsubscriber."""
        return self._engine.subscribe(listener)

    # -- running ---------------------------------------------------------------------------
    async def load(self, name: str) -> dict[str, Any]:
        """Start every replica of the model (a remote backend has one handle); returns its info.

        Loading by hand is also how a model that failed to load is retried, as in LM Studio and Ollama: its
        remembered failure is forgotten first."""
        entry = self.resolve(name)
        self._engine.registry.set_load_failure(entry.id, None)
        for replica in range(1 if entry.is_remote else entry.replicas):
            await self._engine.pool.acquire(entry, replica)
        return views.model_info(self._engine, entry)

    async def unload(self, name: str) -> dict[str, Any]:
        entry = self.resolve(name)
        await self._engine.pool.unload(entry.id)
        return views.model_info(self._engine, entry)

    async def keep_alive(self, name: str, seconds: float) -> None:  # Ollama's keep_alive: see ModelPool.keep_alive
        await self._engine.pool.keep_alive(self.resolve(name).id, seconds)

    def pin(self, name: str, pinned: bool = True) -> dict[str, Any]:
        entry = self.resolve(name)
        self._engine.pool.pin(entry.id, pinned)
        return views.model_info(self._engine, entry)

    # -- user settings ---------------------------------------------------------------------
    def set_enabled(self, name: str, enabled: bool) -> ModelEntry:
        return self._engine.registry.set_enabled(name, enabled)

    def set_aliases(self, name: str, aliases: list[str]) -> ModelEntry:
        return self._engine.registry.set_aliases(name, aliases)

    def set_capabilities(self, name: str, capabilities: list[str] | None) -> ModelEntry:
        """None returns to the capabilities inferred from the file."""
        return self._engine.registry.set_capabilities(name, capabilities)

    def set_options(self, name: str, *, weight: float | None = None, fallbacks: list[str] | None = None,
                    replicas: int | None = None) -> ModelEntry:
        return self._engine.registry.set_options(name, weight=weight, fallbacks=fallbacks, replicas=replicas)

    def set_parallel(self, name: str, parallel: int | None) -> ModelEntry:
        """Requests each worker decodes together, from the model's next load; None: the configured default."""
        return self._engine.registry.set_parallel(name, parallel)

    def set_default(self, name: str) -> ModelEntry:
        return self._engine.registry.set_default(name)

    def patch(self, name: str, *, enabled: bool | None = None, aliases: list[str] | None = None,
              capabilities: list[str] | None = None, reset_capabilities: bool = False, weight: float | None = None,
              fallbacks: list[str] | None = None, replicas: int | None = None, parallel: int | None = None,
              reset_parallel: bool = False, quota: Limits | None = None, default: bool = False) -> dict[str, Any]:
        """Several settings at once (PATCH /api/models/{id}); None leaves a setting as it is."""
        entry = self.resolve(name)
        if enabled is not None:
            self.set_enabled(entry.id, enabled)
        if aliases is not None:
            self.set_aliases(entry.id, aliases)
        if reset_capabilities or capabilities is not None:
            self.set_capabilities(entry.id, None if reset_capabilities else capabilities)
        if weight is not None or fallbacks is not None or replicas is not None:
            self.set_options(entry.id, weight=weight, fallbacks=fallbacks, replicas=replicas)
        if reset_parallel or parallel is not None:
            self.set_parallel(entry.id, None if reset_parallel else parallel)
        if quota is not None:
            self._engine.quota.set_limits(model_scope(entry.id), quota)
        if default:
            self.set_default(entry.id)
        return views.model_info(self._engine, entry)

    # -- remote backends -------------------------------------------------------------------
    def add_remote(self, model_id: str, *, base_url: str, model: str, api_key: str | None = None,
                   capabilities: list[str], context_length: int | None = None) -> dict[str, Any]:
        spec = RemoteSpec(base_url=base_url, model=model, api_key=api_key, capabilities=capabilities,
                          context_length=context_length)
        entry = self._engine.registry.add_remote(model_id, spec.to_dict(), capabilities=capabilities,
                                                 context_length=context_length)
        return views.model_info(self._engine, entry)

    async def remove(self, name: str) -> None:
        entry = self.resolve(name)
        if not entry.is_remote:
            raise InvalidRequest("Only remote backends can be removed; disable a local model instead", param="id")
        await self._engine.pool.unload(entry.id)
        self._engine.registry.remove(entry.id)

    # -- places ----------------------------------------------------------------------------
    @property
    def last_scan(self) -> ScanResult | None:
        return self._engine.last_scan

    @property
    def model_dirs(self) -> list[str]:
        return list(self._engine.config.model_dirs)

    async def rescan(self) -> ScanResult:
        return await self._engine.rescan()

    def add_folder(self, path: str) -> str | None:
        """Scan `path` from now on: this run, and the saved config (not this run's command-line overrides).

        Returns why it could not be saved (it is still used for this run), or None."""
        config = self._engine.config
        if not path or path in config.model_dirs:
            return None
        config.model_dirs.append(path)
        try:
            saved = Config.load()
            if path not in saved.model_dirs:
                saved.model_dirs.append(path)
                saved.save()
        except (ConfigError, OSError) as exc:
            return str(exc)
        return None
