"""The loaded-model pool: load on demand, stay within the memory budget, unload idle models.

The pool writes no health: it tells `on_worker_state` every lifecycle step of its workers, and whoever owns health
(the engine wires the health book) decides what that means.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from app.core.catalog import capabilities as caps
from app.core.catalog.model import ModelEntry
from app.core.config import Config
from app.core.errors import InsufficientMemory, ModelUnavailable
from app.core.runtime import gpu
from app.core.runtime.local import worker_log
from app.core.runtime.local.handle import LoadSpec, WorkerHandle, WorkerState
from app.core.runtime.placement import (
    ALL_LAYERS,
    VRAM_HEADROOM,
    Placement,
    Resident,
    choose_evictions,
    context_for,
    expired,
    plan,
)
from app.core.runtime.slots import SlotReport
from app.core.runtime.threads import cpu_cores, thread_share
from app.core.storage.store import Store

if TYPE_CHECKING:
    from app.core.runtime.remote.handle import RemoteHandle

    Handle = WorkerHandle | RemoteHandle


def worker_key(model_id: str, replica: int = 0) -> str:
    """Replica 0 is keyed by the model id itself; others as "model_id#N"."""
    return model_id if replica == 0 else f"{model_id}#{replica}"


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A read-only view of one worker, for the API and the window."""

    key: str
    model_id: str
    replica: int
    pid: int | None
    state: str  # "loading" | "loaded"
    estimate_bytes: int
    rss_bytes: int
    in_flight: int
    pinned: bool
    idle_s: float
    vram_bytes: int = 0  # measured through NVML; 0 without an NVIDIA GPU
    gpu_layers: int = 0  # llama.cpp's n_gpu_layers it was loaded with (-1: all)
    parallel: int = 0  # requests it decodes together (its slots); 0 for a remote backend
    report: SlotReport = SlotReport()  # what its slots hold and do, as the worker last said (empty: remote)
    expires_in_s: float = math.inf  # until the idle reaper unloads it, if it stays idle (inf: never)


# (model_id, replica, state, reason): one step of a worker's lifecycle; the reason says why it failed.
WorkerListener = Callable[[str, int, WorkerState, str | None], None]


class ModelPool:
    def __init__(self, config: Config, store: Store) -> None:
        self._config = config
        self._store = store
        # Keyed by worker_key(model_id, replica); remote backends are handles without a process.
        self._workers: dict[str, Handle] = {}
        self._estimates: dict[str, int] = {}
        self._loading: dict[str, asyncio.Task[WorkerHandle]] = {}
        # Evicting and reserving memory for a load must be one step, or two loads could both "fit".
        self._admission = asyncio.Lock()
        self._pinned: set[str] = set(store.get_setting("pinned", []))
        self._reaper: asyncio.Task[None] | None = None
        self._rss: dict[str, int] = {}
        self._keep_alive: dict[str, float] = {}  # a worker's idle seconds as a request set them; else the idle TTL
        # Where each local worker's memory went (RAM / VRAM), decided when it loaded.
        self._placements: dict[str, Placement] = {}
        # NVIDIA GPUs and each worker's VRAM, as last sampled; None where NVML finds no GPU (then never asked again).
        self._gpus: list[gpu.GpuMemory] | None = gpu.devices() or None
        self._vram: dict[str, int] = {}
        # Told the worker key whenever a worker process ends (its caches, and what routing knew of them, are gone).
        self.on_worker_gone: Callable[[str], None] | None = None
        self.on_worker_state: WorkerListener | None = None
        # Told (worker key, its report) whenever a local worker reports what its slots hold.
        self.on_worker_report: Callable[[str, SlotReport], None] | None = None
        # Told (model_id, None) when a local worker loaded, (model_id, reason) when the model's files failed to load
        # in a way they would again: not a timeout or a kill, and not while another worker of theirs runs.
        self.on_load_result: Callable[[str, str | None], None] | None = None
        self.budget = config.memory_budget_bytes or int(psutil.virtual_memory().total * config.memory_budget_fraction)

    # -- queries ---------------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        now = time.monotonic()
        # A remote backend has no placement, nor a load before its admission decided one.
        unplaced = Placement(0, 0, 0, parallel=0)
        placed = {key: self._placements.get(key, unplaced) for key in (*self._workers, *self._loading)}
        views = [
            LoadedModel(key, w.model_id, w.replica, w.pid, "loaded", self._estimates.get(key, 0), w.rss(),
                        w.in_flight, w.model_id in self._pinned, now - w.last_used, self._vram.get(key, 0),
                        placed[key].gpu_layers, placed[key].parallel, w.slot_report,
                        self._expires_in(key, w, now - w.last_used))
            for key, w in self._workers.items()
        ]
        views += [LoadedModel(key, mid, replica, None, "loading", self._estimates.get(key, 0), 0, 0,
                              mid in self._pinned, 0.0, parallel=placed[key].parallel)
                  for key, (mid, replica) in ((k, _split_key(k)) for k in self._loading)]
        return views

    def _expires_in(self, key: str, handle: Handle, idle_s: float) -> float:
        reaped = isinstance(handle, WorkerHandle) and handle.model_id not in self._pinned  # not remote, not pinned
        return max(0.0, self._keep_alive.get(key, self._config.idle_ttl_s) - idle_s) if reaped else math.inf

    def is_loading(self, model_id: str) -> bool:
        """Whether a worker of the model is starting and none of them runs yet."""
        return (any(_split_key(key)[0] == model_id for key in self._loading)
                and not any(w.model_id == model_id for w in self._workers.values()))

    def worker(self, model_id: str, replica: int = 0) -> Handle | None:
        return self._workers.get(worker_key(model_id, replica))

    def is_pinned(self, model_id: str) -> bool:
        return model_id in self._pinned

    def estimate(self, entry: ModelEntry) -> int:
        """RAM the model takes (what the memory budget counts): all of it on CPU, less what a GPU holds."""
        return self.placement(entry).ram_bytes

    def placement(self, entry: ModelEntry) -> Placement:
        """How a model is (when loaded) or would be (now) split between RAM and the GPU."""
        return self._placements.get(worker_key(entry.id)) or self._place(entry)

    def slots(self, entry: ModelEntry) -> int:
        """Requests the model's workers decode at once (all replicas): the rest wait in their queues."""
        return entry.replicas * max(1, self.placement(entry).parallel)

    def _place(self, entry: ModelEntry, *, whole: bool = False) -> Placement:
        """Its placement now, or (`whole`) with every layer on the GPU; with the model's own parallel, else the
        configured one, else auto's."""
        return plan(entry.metadata, context_for(entry.metadata, self._config.n_ctx),
                    parallel=entry.parallel if entry.parallel is not None else self._config.parallel,
                    budget=self.budget, embedding=caps.EMBEDDINGS in entry.capabilities,
                    prompt_cache_bytes=self._config.prompt_cache_bytes, free_vram=0 if whole else self.free_vram(),
                    configured_layers=ALL_LAYERS if whole else self._config.n_gpu_layers)

    def free_vram(self) -> int | None:
        """Free bytes on the roomiest GPU llama.cpp can use, less what workers placed since the last sample will
        take; None without one (no NVIDIA GPU, or a CPU-only llama.cpp build)."""
        if not self._gpus or not gpu.offload_supported():
            return None
        free = max(d.total_bytes - d.used_bytes for d in self._gpus)
        pending = sum(p.vram_bytes for key, p in self._placements.items() if key not in self._vram)
        return max(0, free - pending)

    def pressure(self, key: str) -> float:
        """0..1: the worker's RSS against the memory budget, or its VRAM against its GPU, whichever is higher."""
        ram = self._rss.get(key, 0) / max(1, self.budget)
        vram = self._vram.get(key, 0) / max(d.total_bytes for d in self._gpus) if self._gpus and self._vram else 0.0
        return min(1.0, max(ram, vram))

    def fits(self, entry: ModelEntry) -> bool:
        return self.estimate(entry) <= self.budget

    def context_of(self, entry: ModelEntry) -> int | None:
        """The context a request gets on this model: the loaded size for local models, the advertised one remote."""
        trained = entry.metadata.get("context_length")
        if entry.is_remote:
            return trained
        return context_for(entry.metadata, self._config.n_ctx) if trained else self._config.n_ctx

    def log_tail(self, entry: ModelEntry) -> list[str]:
        """The last lines of the model's most recently written worker log. Blocking: call it in a thread."""
        return worker_log.tail(worker_log.path_of(worker_key(entry.id, r)) for r in range(entry.replicas))

    def memory_of(self, key: str) -> int:
        """The worker's resident memory as last sampled (reading it per request would cost a syscall each)."""
        return self._rss.get(key, 0)

    def vram_of(self, key: str) -> int:
        return self._vram.get(key, 0)

    def sample_memory(self) -> dict[str, int]:
        self._rss = {key: w.rss() for key, w in self._workers.items()}
        if self._gpus is not None:
            self._gpus = gpu.devices() or self._gpus
            by_pid = {w.pid: key for key, w in self._workers.items() if isinstance(w, WorkerHandle) and w.pid}
            self._vram = {by_pid[pid]: used for pid, used in gpu.process_memory(by_pid).items() if pid in by_pid}
        return self._rss

    # -- actions ---------------------------------------------------------------------------
    async def acquire(self, entry: ModelEntry, replica: int = 0) -> Handle:
        """The running worker for `entry` (replica N), loading it first if needed. Concurrent callers share one load."""
        key = worker_key(entry.id, replica)
        handle = self._workers.get(key)
        if handle is not None and handle.alive:
            return handle
        if handle is not None:
            self._workers.pop(key, None)
        if entry.remote is not None:
            # A remote backend costs no local memory: nothing to admit or evict.
            from app.core.runtime.remote.handle import RemoteHandle, RemoteSpec

            handle = RemoteHandle(entry.id, RemoteSpec.from_dict(entry.remote))
            self._workers[key] = handle
            return handle
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(entry, replica), name=f"load-{key}")
            self._loading[key] = task
            task.add_done_callback(lambda _task: self._loading.pop(key, None))
        # shield: one impatient client must not cancel a load others wait for.
        return await asyncio.shield(task)

    async def _load(self, entry: ModelEntry, replica: int) -> WorkerHandle:
        if entry.missing:
            raise ModelUnavailable(f"The files of model '{entry.id}' are missing: {entry.path}")
        key = worker_key(entry.id, replica)
        async with self._admission:
            placed = await self._make_room_on_gpu(entry, key)
            need = placed.ram_bytes
            victims = choose_evictions(self._residents(exclude=key), need, self.budget)
            if victims is None:
                raise InsufficientMemory(
                    f"Model '{entry.id}' needs about {need / 2**20:.0f} MiB; the memory budget is "
                    f"{self.budget / 2**20:.0f} MiB and the models using the rest are busy or pinned"
                )
            for victim in victims:
                await self._stop(victim)
            self._estimates[key] = need
            self._placements[key] = placed
        spec = LoadSpec(
            model_path=entry.path,
            n_ctx=context_for(entry.metadata, self._config.n_ctx),
            n_threads=self._config.n_threads,
            n_gpu_layers=placed.gpu_layers,
            embedding=caps.EMBEDDINGS in entry.capabilities,
            prompt_cache_bytes=self._config.prompt_cache_bytes,
            parallel=placed.parallel,
        )
        handle = WorkerHandle(entry.id, spec, replica=replica, log_path=worker_log.path_of(key))
        handle.on_state = self._worker_state
        handle.on_report = self._worker_report
        try:
            await handle.start(self._config.load_timeout_s)
        except BaseException:  # a failed load (the handle is failed already) or one abandoned (it stops now)
            self._release(key)
            await handle.stop()
            running = any(w.model_id == entry.id and w.alive for w in self._workers.values())
            if handle.load_error is not None and not running and self.on_load_result is not None:
                self.on_load_result(entry.id, handle.load_error)
            raise
        self._workers[key] = handle
        self._share_threads()
        if self.on_load_result is not None:
            self.on_load_result(entry.id, None)
        return handle

    async def _make_room_on_gpu(self, entry: ModelEntry, key: str) -> Placement:
        """Where `entry` goes; when it would not fit wholly on the GPU, first unload the least recently used idle
        models holding VRAM if that makes it fit (as Ollama does), rather than run it partly on the CPU."""
        placed = self._place(entry)
        free = self.free_vram()
        if placed.gpu_layers == ALL_LAYERS or free is None or self._config.n_gpu_layers is not None:
            return placed
        on_gpu = [
            Resident(k, used, w.last_used, busy=w.busy, pinned=w.model_id in self._pinned)
            for k, w in self._workers.items() if k != key and (used := self._vram_use(k))
        ]
        reclaimable = free + sum(r.bytes for r in on_gpu)
        need = self._place(entry, whole=True).vram_bytes + VRAM_HEADROOM
        victims = choose_evictions(on_gpu, need, reclaimable)
        if not victims:
            return placed
        for victim in victims:
            await self._stop(victim)
        self.sample_memory()  # the stopped processes' VRAM shows as free now
        return self._place(entry)

    def _vram_use(self, key: str) -> int:
        """A worker's VRAM: as measured, or as placed until its first sample."""
        placed = self._placements.get(key)
        return self._vram.get(key) or (placed.vram_bytes if placed else 0)

    def _release(self, key: str) -> None:
        """Forget what a worker that stopped (or never started) was counted for, and re-share the cores."""
        self._estimates.pop(key, None)
        self._keep_alive.pop(key, None)
        self._placements.pop(key, None)
        self._vram.pop(key, None)
        self._share_threads()

    def _share_threads(self) -> None:
        """Give every local worker its share of the CPU; called whenever one starts or ends. A job already
        running finishes with its threads; the next one takes the new share."""
        local = [h for h in self._workers.values() if isinstance(h, WorkerHandle)]
        share = thread_share(cpu_cores(), len(local), self._config.n_threads)
        for handle in local:
            handle.threads = share

    def _worker_state(self, handle: WorkerHandle) -> None:
        """Every step of every local worker's lifecycle: forget a worker whose process is gone, then pass it on."""
        state = handle.state
        if state in (WorkerState.STOPPED, WorkerState.FAILED):
            key = worker_key(handle.model_id, handle.replica)
            if self.on_worker_gone is not None:
                self.on_worker_gone(key)
            if self._workers.get(key) is handle:
                del self._workers[key]
                self._release(key)
        if self.on_worker_state is not None:
            reason = handle.dead_reason if state is WorkerState.FAILED else None
            self.on_worker_state(handle.model_id, handle.replica, state, reason)

    def _worker_report(self, handle: WorkerHandle) -> None:
        if self.on_worker_report is not None:
            self.on_worker_report(worker_key(handle.model_id, handle.replica), handle.slot_report)

    async def unload(self, model_id: str) -> bool:
        """Stop every replica of a model. All their memory returns to the system."""
        keys = [k for k in self._workers if _split_key(k)[0] == model_id]
        for key in keys:
            await self._stop(key)
        return bool(keys)

    async def _stop(self, key: str) -> None:
        handle = self._workers.pop(key, None)
        self._release(key)
        if handle is not None:
            await handle.stop()

    def pin(self, model_id: str, pinned: bool = True) -> None:
        (self._pinned.add if pinned else self._pinned.discard)(model_id)
        self._store.set_setting("pinned", sorted(self._pinned))

    async def keep_alive(self, model_id: str, seconds: float) -> None:
        """Unload the model's workers `seconds` idle (inf: never; 0: once idle), not at the idle TTL; reap now."""
        self._keep_alive.update({key: seconds for key in self._workers if _split_key(key)[0] == model_id})
        await self.reap_idle()

    def start_reaper(self, interval: float | None = None) -> None:
        interval = interval or max(1.0, min(30.0, self._config.idle_ttl_s / 4))
        self._reaper = asyncio.create_task(self._reap_forever(interval), name="idle-reaper")

    async def reap_idle(self) -> list[str]:
        """Stop idle workers past the TTL; returns their keys."""
        victims = expired(self._residents(), time.monotonic(), self._config.idle_ttl_s)
        for key in victims:
            await self._stop(key)
        return victims

    async def _reap_forever(self, interval: float) -> None:
        # Memory is sampled every second (routing and the window read the samples); idle models reaped less often.
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            self.sample_memory()
            ticks += 1
            if ticks >= interval or self._keep_alive:  # a worker's own keep-alive is honoured to the second
                ticks = 0
                await self.reap_idle()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*(self._stop(key) for key in list(self._workers)), return_exceptions=True)

    def _residents(self, exclude: str | None = None) -> list[Resident]:
        """Local workers as the eviction policy sees them, keyed by worker key (remote ones use no memory)."""
        residents = [
            Resident(key, self._estimates.get(key, 0), w.last_used, busy=w.busy,
                     pinned=w.model_id in self._pinned, ttl=self._keep_alive.get(key))
            for key, w in self._workers.items() if key != exclude and isinstance(w, WorkerHandle)
        ]
        residents += [
            Resident(key, self._estimates.get(key, 0), time.monotonic(), loading=True)
            for key in self._loading if key != exclude and key not in self._workers
        ]
        return residents


def _split_key(key: str) -> tuple[str, int]:
    model_id, sep, replica = key.rpartition("#")
    return (model_id, int(replica)) if sep and replica.isdigit() else (key, 0)
