"""Model workers and the pool, with real llama.cpp processes on the real default model."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from app.core.config import Config
from app.core.engine import Engine
from app.core.errors import InsufficientMemory, ModelUnavailable, WorkerCrashed
from app.core.routing.health import Health
from app.core.routing.request import RouteRequest
from app.core.runtime.local.handle import WorkerState

pytestmark = pytest.mark.slow
DEFAULT_ID = "smollm2-135m-instruct:q4_1"
CHAT = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "max_tokens": 16}
# A prompt the model continues for as long as it is allowed to.
ENDLESS = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 2000, "temperature": 0}


@contextlib.asynccontextmanager
async def running(**settings) -> AsyncIterator[Engine]:
    engine = Engine(Config(discovery=False, n_ctx=2048, prompt_cache_bytes=0, **settings))
    await engine.rescan()
    try:
        yield engine
    finally:
        await engine.close()


async def collect(engine: Engine, model_id: str, op: str, params: dict) -> tuple[str, dict]:
    job = await engine.open(RouteRequest(op, model_id), op, params)
    text, done = [], {}
    async for message in job.stream():
        if message["type"] == "chunk":
            choice = message["data"]["choices"][0]
            text.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
        else:
            done = message
    return "".join(text), done


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_concurrent_first_requests_load_the_model_once(sb_home: Path) -> None:
    async with running() as engine:
        entry = engine.registry.resolve(DEFAULT_ID)
        assert engine.model_health(DEFAULT_ID)[0] is Health.UNKNOWN
        handles = await asyncio.gather(*(engine.pool.acquire(entry) for _ in range(4)))
        assert len({id(h) for h in handles}) == 1
        assert engine.model_health(DEFAULT_ID)[0] is Health.HEALTHY
        workers = [p for p in psutil.Process().children() if "app.core.runtime.local.process" in " ".join(p.cmdline())]
        assert [p.pid for p in workers] == [handles[0].pid]
        # Its memory is its own process's, readable per model.
        assert handles[0].rss() > 20 * 2**20


async def test_requests_queue_on_one_worker(sb_home: Path) -> None:
    async with running() as engine:
        results = await asyncio.gather(*(collect(engine, DEFAULT_ID, "chat", CHAT) for _ in range(3)))
        assert all("Paris" in text for text, _ in results)
        assert engine.registry.resolve(DEFAULT_ID).use_count == 3


async def test_kill_9_mid_stream_gives_an_error_and_the_next_request_is_served(sb_home: Path) -> None:
    async with running() as engine:
        job = await engine.open(RouteRequest("completion", DEFAULT_ID), "completion", ENDLESS)
        stream = job.stream()
        assert (await anext(stream))["type"] == "chunk"
        pid = engine.pool.worker(DEFAULT_ID).pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="signal 9"):
            async for _ in stream:
                pass
        health, reason = engine.model_health(DEFAULT_ID)
        assert health is Health.UNHEALTHY and "signal 9" in reason
        text, done = await collect(engine, DEFAULT_ID, "chat", CHAT)
        assert "Paris" in text and engine.pool.worker(DEFAULT_ID).pid != pid
        assert engine.model_health(DEFAULT_ID)[0] is Health.HEALTHY


async def test_every_replica_is_probed_and_a_dead_one_shows_on_its_model(sb_home: Path) -> None:
    async with running() as engine:
        engine.registry.set_options(DEFAULT_ID, replicas=2)
        entry = engine.registry.resolve(DEFAULT_ID)
        steps: list[tuple[int, WorkerState]] = []
        report = engine.pool.on_worker_state
        assert report is not None

        def record(model_id: str, replica: int, state: WorkerState, reason: str | None) -> None:
            steps.append((replica, state))
            report(model_id, replica, state, reason)

        engine.pool.on_worker_state = record
        await engine.pool.acquire(entry, 0)
        second = await engine.pool.acquire(entry, 1)
        probe = engine._probes()[DEFAULT_ID]  # one probe for the model, over both of its workers
        assert await probe() == (True, 0.0, None)
        assert second.pid is not None
        os.kill(second.pid, signal.SIGKILL)
        await wait_for(lambda: second.state is WorkerState.FAILED)
        ok, _, why = await probe()
        assert not ok and why is not None and why.startswith("replica 1: ") and "signal 9" in why
        health, reason = engine.model_health(DEFAULT_ID)
        assert health is Health.UNHEALTHY and reason is not None and "signal 9" in reason
        assert steps == [(0, WorkerState.STARTING), (0, WorkerState.READY), (1, WorkerState.STARTING),
                         (1, WorkerState.READY), (1, WorkerState.FAILED)]
        assert engine.pool.worker(DEFAULT_ID, 1) is None
        assert await engine._probes()[DEFAULT_ID]() == (True, 0.0, None), "replica 0 is still probed, and well"


async def test_closing_a_stream_cancels_its_generation(sb_home: Path) -> None:
    async with running() as engine:
        job = await engine.open(RouteRequest("completion", DEFAULT_ID), "completion", ENDLESS)
        stream = job.stream()
        for _ in range(3):
            await anext(stream)
        handle = engine.pool.worker(DEFAULT_ID)
        await stream.aclose()
        await wait_for(lambda: handle.jobs_cancelled == 1)
        assert handle.in_flight == 0
        text, _ = await collect(engine, DEFAULT_ID, "chat", CHAT)
        assert "Paris" in text


async def test_idle_models_unload_and_pinned_ones_stay(sb_home: Path) -> None:
    async with running(idle_ttl_s=0.2) as engine:
        await collect(engine, DEFAULT_ID, "chat", CHAT)
        pid = engine.pool.worker(DEFAULT_ID).pid
        engine.pool.pin(DEFAULT_ID)
        await asyncio.sleep(0.4)
        assert await engine.pool.reap_idle() == []
        engine.pool.pin(DEFAULT_ID, False)
        assert await engine.pool.reap_idle() == [DEFAULT_ID]
        assert engine.pool.worker(DEFAULT_ID) is None and not psutil.pid_exists(pid)
        assert engine.model_health(DEFAULT_ID)[0] is Health.UNKNOWN


async def test_memory_budget_evicts_the_least_recently_used(sb_home: Path, tmp_path: Path, default_model: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    try:  # a second file (not a symlink: the scan counts one file once)
        os.link(default_model, folder / "other-135m.Q4_1.gguf")
    except OSError:
        shutil.copy(default_model, folder / "other-135m.Q4_1.gguf")
    engine = Engine(Config(discovery=False, model_dirs=[str(folder)], n_ctx=2048, prompt_cache_bytes=0))
    await engine.rescan()
    try:
        first, second = engine.registry.resolve(DEFAULT_ID), engine.registry.resolve("other-135m:q4_1")
        engine.pool.budget = int(engine.pool.estimate(first) * 1.5)
        await collect(engine, first.id, "chat", CHAT)
        await collect(engine, second.id, "chat", CHAT)
        assert [m.model_id for m in engine.pool.loaded()] == [second.id]
        engine.pool.budget = engine.pool.estimate(first) // 2
        with pytest.raises(InsufficientMemory):
            await engine.pool.acquire(first)
    finally:
        await engine.close()


async def test_a_model_that_cannot_load_is_unhealthy_with_the_reason(sb_home: Path, tmp_path: Path) -> None:
    from tests.support.gguf_files import write_gguf

    folder = tmp_path / "models"
    write_gguf(folder / "broken-1m.Q8_0.gguf", arch="llama", name="broken")
    async with running(model_dirs=[str(folder)]) as engine:
        entry = engine.registry.resolve("broken-1m:q8_0")
        with pytest.raises(ModelUnavailable, match="failed to load"):
            await engine.pool.acquire(entry)
        health, reason = engine.model_health(entry.id)
        assert health is Health.UNHEALTHY and "failed to load" in reason
        assert engine.pool.loaded() == []


async def test_workers_share_the_cores_and_take_a_new_share_when_one_leaves(sb_home: Path) -> None:
    from app.core.runtime.threads import cpu_cores, thread_share

    cores = cpu_cores()
    async with running() as engine:
        engine.registry.set_options(DEFAULT_ID, replicas=2)
        entry = engine.registry.get(DEFAULT_ID)
        first = await engine.pool.acquire(entry, 0)
        assert first.threads == thread_share(cores, 1)
        second = await engine.pool.acquire(entry, 1)
        assert first.threads == second.threads == thread_share(cores, 2)
        for handle in (first, second):  # the worker process runs its next job with that share
            done = [m async for m in handle.run("completion", {"prompt": "Hello", "max_tokens": 1})][-1]
            assert tuple(done["threads"]) == thread_share(cores, 2)
        assert second.pid is not None
        os.kill(second.pid, signal.SIGKILL)
        await wait_for(lambda: first.threads == thread_share(cores, 1))
        done = [m async for m in first.run("completion", {"prompt": "Hello", "max_tokens": 1})][-1]
        assert tuple(done["threads"]) == thread_share(cores, 1)


@dataclasses.dataclass
class FakeGpu:
    """What NVML would report of one GPU: its size, memory other programs use, and each process's use."""

    total: int
    others: int = 0
    reported: dict[int, int] = dataclasses.field(default_factory=dict)  # pid -> bytes

    def live(self) -> dict[int, int]:
        return {pid: used for pid, used in self.reported.items() if psutil.pid_exists(pid)}


def fake_gpu(monkeypatch: pytest.MonkeyPatch, total: int, others: int = 0) -> FakeGpu:
    """NVML and an NVIDIA card cannot exist here: app.core.runtime.gpu's three functions read a FakeGpu instead. Workers
    stay real (a CPU-only llama.cpp accepts n_gpu_layers and runs on the CPU). Install it before the engine."""
    from app.core.runtime import gpu

    card = FakeGpu(total, others)
    monkeypatch.setattr(gpu, "devices", lambda: [
        gpu.GpuMemory(0, "Test GPU", card.total, card.others + sum(card.live().values()))])
    monkeypatch.setattr(gpu, "offload_supported", lambda: True)
    monkeypatch.setattr(gpu, "process_memory", lambda pids: {p: v for p, v in card.live().items() if p in set(pids)})
    return card


async def test_without_a_gpu_models_load_on_the_cpu_and_pressure_is_ram(sb_home: Path) -> None:
    from app.core.runtime import gpu

    assert gpu.devices() is None, "this test is the no-GPU path"
    async with running() as engine:
        entry = engine.registry.get(DEFAULT_ID)
        handle = await engine.pool.acquire(entry)
        assert handle.spec.n_gpu_layers == 0
        assert engine.pool.free_vram() is None
        rss = engine.pool.sample_memory()[DEFAULT_ID]
        assert engine.pool.pressure(DEFAULT_ID) == pytest.approx(rss / engine.pool.budget)
        view = next(v for v in engine.pool.loaded() if v.key == DEFAULT_ID)
        assert (view.vram_bytes, view.gpu_layers) == (0, 0)


async def test_with_a_gpu_a_model_that_fits_is_offloaded_and_its_vram_counts(
        sb_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.runtime import placement as memory

    total, used = 16 << 30, 1 << 30
    card = fake_gpu(monkeypatch, total, used)
    async with running() as engine:
        entry = engine.registry.get(DEFAULT_ID)
        cpu_only = memory.place(entry.metadata, memory.context_for(entry.metadata, 2048), free_vram=None)
        assert engine.pool.free_vram() == total - used
        planned = engine.pool.placement(entry)
        assert planned.gpu_layers == memory.ALL_LAYERS
        assert planned.parallel == memory.AUTO_PARALLEL_GPU, "wholly in VRAM with room to spare: auto takes more"
        assert engine.pool.estimate(entry) == planned.ram_bytes < cpu_only.ram_bytes  # the weights left RAM
        handle = await engine.pool.acquire(entry)
        assert (handle.spec.n_gpu_layers, handle.spec.parallel) == (memory.ALL_LAYERS, planned.parallel)
        # Placed but not yet measured: a second model would see its VRAM as taken already.
        assert engine.pool.free_vram() == total - used - planned.vram_bytes
        text, _ = await collect(engine, DEFAULT_ID, "chat", CHAT)
        assert "Paris" in text
        assert handle.pid is not None
        card.reported[handle.pid] = 12 << 30  # most of the card: pressure follows VRAM, not the small RSS
        engine.pool.sample_memory()
        assert engine.pool.vram_of(DEFAULT_ID) == 12 << 30
        assert engine.pool.pressure(DEFAULT_ID) == pytest.approx(12 / 16)
        view = next(v for v in engine.pool.loaded() if v.key == DEFAULT_ID)
        assert (view.vram_bytes, view.gpu_layers) == (12 << 30, memory.ALL_LAYERS)
        assert engine.pool.free_vram() == total - used - (12 << 30)
        await engine.pool.unload(DEFAULT_ID)
        engine.pool.sample_memory()
        assert engine.pool.free_vram() == total - used, "an unloaded model's VRAM is free again"


async def test_an_idle_model_leaves_the_gpu_for_one_that_would_not_fit_beside_it(
        sb_home: Path, tmp_path: Path, default_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.runtime import placement as memory

    folder = tmp_path / "models"
    folder.mkdir()
    try:
        os.link(default_model, folder / "other-135m.Q4_1.gguf")
    except OSError:
        shutil.copy(default_model, folder / "other-135m.Q4_1.gguf")
    card = fake_gpu(monkeypatch, total=8 << 30)
    # One sequence each: the room below is reckoned for one (auto would take more where VRAM allows).
    async with running(model_dirs=[str(folder)], parallel=1) as engine:
        first, second = engine.registry.resolve(DEFAULT_ID), engine.registry.resolve("other-135m:q4_1")
        whole = memory.place(first.metadata, memory.context_for(first.metadata, 2048), free_vram=0,
                             configured_layers=memory.ALL_LAYERS).vram_bytes
        card.others = card.total - whole - memory.VRAM_HEADROOM - whole // 2  # room for one of them, not both
        engine.pool.sample_memory()
        a = await engine.pool.acquire(first)
        assert a.spec.n_gpu_layers == memory.ALL_LAYERS
        assert a.pid is not None
        card.reported[a.pid] = whole
        engine.pool.sample_memory()
        assert engine.pool.placement(second).gpu_layers != memory.ALL_LAYERS, "it does not fit beside the first"

        engine.pool.pin(first.id)  # a pinned model stays: the second runs partly or wholly on the CPU
        b = await engine.pool.acquire(second)
        assert b.spec.n_gpu_layers != memory.ALL_LAYERS and a.alive
        await engine.pool.unload(second.id)
        engine.pool.pin(first.id, False)

        b = await engine.pool.acquire(second)  # idle and unpinned: the first gives its VRAM back
        assert b.spec.n_gpu_layers == memory.ALL_LAYERS
        assert not a.alive and [m.model_id for m in engine.pool.loaded()] == [second.id]
