"""How many requests a model decodes together, and the KV cache that costs: pure functions of its header."""

from __future__ import annotations

import pytest

from app.core.runtime.placement import (
    ALL_LAYERS,
    AUTO_PARALLEL,
    AUTO_PARALLEL_GPU,
    RUNTIME_OVERHEAD,
    VRAM_HEADROOM,
    estimate_bytes,
    kv_cache_bytes,
    place,
    plan,
)

MB = 1 << 20
GB = 1 << 30
# An 8B-shaped model: 32 layers, 8 KV heads of 128; 512 MiB of KV cache per sequence of 4096.
META = {"size": 4 * GB, "block_count": 32, "embedding_length": 4096, "head_count": 32, "head_count_kv": 8}
CTX = 4096
CACHE = 256 * MB
PLENTY = 1 << 50


def whole_on_gpu(parallel: int) -> int:
    """The free VRAM in which the model with `parallel` sequences just fits wholly."""
    return META["size"] + kv_cache_bytes(META, CTX, parallel) + RUNTIME_OVERHEAD + VRAM_HEADROOM


def test_the_kv_cache_holds_parallel_times_the_context() -> None:
    one = kv_cache_bytes(META, CTX)
    assert one == 512 * MB
    assert kv_cache_bytes(META, CTX, 4) == 4 * one == kv_cache_bytes(META, 4 * CTX)
    assert estimate_bytes(META, CTX, parallel=4, prompt_cache_bytes=CACHE) - estimate_bytes(
        META, CTX, prompt_cache_bytes=CACHE) == 3 * one


def test_a_placement_counts_every_sequence() -> None:
    cpu = place(META, CTX, parallel=4, prompt_cache_bytes=CACHE)
    assert (cpu.gpu_layers, cpu.parallel) == (0, 4)
    assert cpu.ram_bytes == estimate_bytes(META, CTX, parallel=4, prompt_cache_bytes=CACHE)
    gpu = place(META, CTX, parallel=4, prompt_cache_bytes=CACHE, free_vram=24 * GB)
    assert gpu.vram_bytes == META["size"] + kv_cache_bytes(META, CTX, 4) + RUNTIME_OVERHEAD
    # More sequences, less room for layers: the model that went wholly with one goes partly with eight.
    assert place(META, CTX, free_vram=whole_on_gpu(1)).gpu_layers == ALL_LAYERS
    assert 0 < place(META, CTX, parallel=8, free_vram=whole_on_gpu(1)).gpu_layers < 32


def test_auto_on_the_cpu_is_four() -> None:
    placed = plan(META, CTX, parallel=None, budget=PLENTY, prompt_cache_bytes=CACHE)
    assert placed.parallel == AUTO_PARALLEL == 4
    assert placed == place(META, CTX, parallel=4, prompt_cache_bytes=CACHE)


@pytest.mark.parametrize(("fits", "parallel"), [(4, 4), (3, 3), (2, 2), (1, 1), (0, 1)])
def test_auto_takes_fewer_until_the_estimate_fits_the_budget(fits: int, parallel: int) -> None:
    # A budget the estimate with `fits` sequences just fits in (0: not even one; still one, the load then says so).
    budget = estimate_bytes(META, CTX, parallel=max(fits, 1), prompt_cache_bytes=CACHE) - (1 if fits == 0 else 0)
    placed = plan(META, CTX, parallel=None, budget=budget, prompt_cache_bytes=CACHE)
    assert placed.parallel == parallel
    assert placed.ram_bytes <= budget or parallel == 1


@pytest.mark.parametrize(("free", "parallel", "layers"), [
    (24 * GB, AUTO_PARALLEL_GPU, ALL_LAYERS),  # plenty of VRAM: 8, all on the GPU
    (whole_on_gpu(6), 6, ALL_LAYERS),  # the most that still fits wholly
    (whole_on_gpu(5), 5, ALL_LAYERS),
    (whole_on_gpu(4), 4, ALL_LAYERS),  # no more than on the CPU
    (2 * GB, 4, None),  # partly on the GPU: as on the CPU
])
def test_auto_on_a_gpu_takes_more_where_the_model_stays_wholly_in_vram(free: int, parallel: int,
                                                                       layers: int | None) -> None:
    placed = plan(META, CTX, parallel=None, budget=PLENTY, prompt_cache_bytes=CACHE, free_vram=free)
    assert placed.parallel == parallel
    if layers is None:
        assert 0 < placed.gpu_layers < 32
    else:
        assert placed.gpu_layers == layers and placed.vram_bytes + VRAM_HEADROOM <= free


def test_a_gpu_it_would_fill_wholly_still_leaves_the_budget_to_decide() -> None:
    # Wholly on the GPU, what stays in RAM is the runtime and the prompt cache; a budget below that gets one.
    placed = plan(META, CTX, parallel=None, budget=CACHE, prompt_cache_bytes=CACHE, free_vram=24 * GB)
    assert placed.parallel == 1


def test_a_setting_is_used_as_given() -> None:
    assert plan(META, CTX, parallel=16, budget=PLENTY).parallel == 16
    # Even where it will not fit: the load then refuses it, rather than running with what was not asked for.
    assert plan(META, CTX, parallel=16, budget=1).parallel == 16
    assert plan(META, CTX, parallel=2, budget=PLENTY, free_vram=24 * GB).parallel == 2


def test_an_embedding_model_decodes_one_request_at_a_time() -> None:
    assert plan(META, CTX, parallel=None, budget=PLENTY, embedding=True).parallel == 1
    assert plan(META, CTX, parallel=8, budget=PLENTY, embedding=True, free_vram=24 * GB).parallel == 1
