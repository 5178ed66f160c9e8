"""The loaded-model pool: load on demand, stay within the memory budget, unload idle models."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import psutil

from app.core import capabilities as caps
from app.core import eviction, memory
from app.core.config import Config
from app.core.errors import InsufficientMemory, ModelUnavailable
from app.core.paths import data_dir
from app.core.registry import Health, ModelEntry, Registry
from app.core.store import Store
from app.core.worker import LoadSpec, WorkerHandle


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A read-only view of one worker, for the API and the window."""

    model_id: str
    pid: int | None
    state: str  # "loading" | "loaded"
    estimate_bytes: int
    rss_bytes: int
    in_flight: int
    pinned: bool
    idle_s: float


class ModelPool:
    def __init__(self, registry: Registry, config: Config, store: Store) -> None:
        self._registry = registry
        self._config = config
        self._store = store
        self._workers: dict[str, WorkerHandle] = {}
        self._estimates: dict[str, int] = {}
        self._loading: dict[str, asyncio.Task[WorkerHandle]] = {}
        # Evicting and reserving memory for a load must be one step, or two loads could both "fit".
        self._admission = asyncio.Lock()
        self._pinned: set[str] = set(store.get_setting("pinned", []))
        self._reaper: asyncio.Task[None] | None = None
        self.budget = config.memory_budget_bytes or int(psutil.virtual_memory().total * config.memory_budget_fraction)

    # -- queries ---------------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        now = time.monotonic()
        views = [
            LoadedModel(mid, w.pid, "loaded", self._estimates.get(mid, 0), w.rss(), w.in_flight,
                        mid in self._pinned, now - w.last_used)
            for mid, w in self._workers.items()
        ]
        views += [LoadedModel(mid, None, "loading", self._estimates.get(mid, 0), 0, 0, mid in self._pinned, 0.0)
                  for mid in self._loading]
        return views

    def worker(self, model_id: str) -> WorkerHandle | None:
        return self._workers.get(model_id)

    def is_pinned(self, model_id: str) -> bool:
        return model_id in self._pinned

    def estimate(self, entry: ModelEntry) -> int:
        return memory.estimate_bytes(entry.metadata, memory.context_for(entry.metadata, self._config.n_ctx),
                                     prompt_cache_bytes=self._config.prompt_cache_bytes)

    def fits(self, entry: ModelEntry) -> bool:
        return self.estimate(entry) <= self.budget

    # -- actions ---------------------------------------------------------------------------
    async def acquire(self, entry: ModelEntry) -> WorkerHandle:
        """The running worker for `entry`, loading it first if needed. Concurrent callers share one load."""
        handle = self._workers.get(entry.id)
        if handle is not None and handle.alive:
            return handle
        if handle is not None:
            self._workers.pop(entry.id, None)
        task = self._loading.get(entry.id)
        if task is None:
            task = asyncio.create_task(self._load(entry), name=f"load-{entry.id}")
            self._loading[entry.id] = task
            task.add_done_callback(lambda _t, mid=entry.id: self._loading.pop(mid, None))
        # shield: one impatient client must not cancel a load others wait for.
        return await asyncio.shield(task)

    async def _load(self, entry: ModelEntry) -> WorkerHandle:
        if entry.missing:
            raise ModelUnavailable(f"The files of model '{entry.id}' are missing: {entry.path}")
        need = self.estimate(entry)
        async with self._admission:
            victims = eviction.choose_evictions(self._residents(exclude=entry.id), need, self.budget)
            if victims is None:
                raise InsufficientMemory(
                    f"Model '{entry.id}' needs about {need / 2**20:.0f} MiB; the memory budget is "
                    f"{self.budget / 2**20:.0f} MiB and the models using the rest are busy or pinned"
                )
            for victim in victims:
                await self.unload(victim)
            self._estimates[entry.id] = need
        self._registry.set_health(entry.id, Health.LOADING)
        spec = LoadSpec(
            model_path=entry.path,
            n_ctx=memory.context_for(entry.metadata, self._config.n_ctx),
            n_threads=self._config.n_threads,
            embedding=caps.EMBEDDINGS in entry.capabilities,
            prompt_cache_bytes=self._config.prompt_cache_bytes,
        )
        log_dir = data_dir() / "logs"
        log_dir.mkdir(exist_ok=True)
        handle = WorkerHandle(entry.id, spec, log_path=log_dir / f"{_safe(entry.id)}.log")
        handle.on_exit = self._on_worker_exit
        try:
            await handle.start(self._config.load_timeout_s)
        except ModelUnavailable as exc:
            self._estimates.pop(entry.id, None)
            self._registry.set_health(entry.id, Health.UNHEALTHY, exc.message)
            raise
        except BaseException:
            self._estimates.pop(entry.id, None)
            await handle.stop()
            raise
        self._workers[entry.id] = handle
        self._registry.set_health(entry.id, Health.HEALTHY)
        return handle

    def _on_worker_exit(self, handle: WorkerHandle, expected: bool) -> None:
        if self._workers.get(handle.model_id) is handle:
            del self._workers[handle.model_id]
            self._estimates.pop(handle.model_id, None)
        if not expected:
            self._registry.set_health(handle.model_id, Health.UNHEALTHY, handle.dead_reason)
        elif handle.model_id not in self._loading:
            self._registry.set_health(handle.model_id, Health.UNKNOWN)

    async def unload(self, model_id: str) -> bool:
        handle = self._workers.pop(model_id, None)
        self._estimates.pop(model_id, None)
        if handle is None:
            return False
        await handle.stop()
        return True

    def pin(self, model_id: str, pinned: bool = True) -> None:
        (self._pinned.add if pinned else self._pinned.discard)(model_id)
        self._store.set_setting("pinned", sorted(self._pinned))

    def start_reaper(self, interval: float | None = None) -> None:
        interval = interval or max(1.0, min(30.0, self._config.idle_ttl_s / 4))
        self._reaper = asyncio.create_task(self._reap_forever(interval), name="idle-reaper")

    async def reap_idle(self) -> list[str]:
        victims = eviction.expired(self._residents(), time.monotonic(), self._config.idle_ttl_s)
        for model_id in victims:
            await self.unload(model_id)
        return victims

    async def _reap_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.reap_idle()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*(self.unload(mid) for mid in list(self._workers)), return_exceptions=True)

    def _residents(self, exclude: str | None = None) -> list[eviction.Resident]:
        residents = [
            eviction.Resident(mid, self._estimates.get(mid, 0), w.last_used, busy=w.busy, pinned=mid in self._pinned)
            for mid, w in self._workers.items() if mid != exclude
        ]
        residents += [
            eviction.Resident(mid, self._estimates.get(mid, 0), time.monotonic(), loading=True)
            for mid in self._loading if mid != exclude and mid not in self._workers
        ]
        return residents


def _safe(model_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
