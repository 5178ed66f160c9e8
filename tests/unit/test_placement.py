"""Splitting a model between RAM and a GPU: pure functions of its header and the free VRAM."""

from __future__ import annotations

import pytest

from app.core.runtime.placement import (
    ALL_LAYERS,
    RUNTIME_OVERHEAD,
    VRAM_HEADROOM,
    estimate_bytes,
    kv_cache_bytes,
    place,
)

MB = 1 << 20
GB = 1 << 30
# An 8B-shaped model: 32 layers, 8 KV heads of 128.
META = {"size": 4 * GB, "block_count": 32, "embedding_length": 4096, "head_count": 32, "head_count_kv": 8}
CTX = 4096
CACHE = 256 * MB
TOTAL = estimate_bytes(META, CTX, prompt_cache_bytes=CACHE)
OFFLOADABLE = META["size"] + kv_cache_bytes(META, CTX)


def test_without_a_gpu_everything_is_ram() -> None:
    placed = place(META, CTX, prompt_cache_bytes=CACHE, free_vram=None)
    assert (placed.gpu_layers, placed.ram_bytes, placed.vram_bytes) == (0, TOTAL, 0)


def test_a_model_that_fits_goes_wholly_to_the_gpu_and_leaves_ram() -> None:
    placed = place(META, CTX, prompt_cache_bytes=CACHE, free_vram=24 * GB)
    assert placed.gpu_layers == ALL_LAYERS
    assert placed.vram_bytes == OFFLOADABLE + RUNTIME_OVERHEAD
    # What stays in RAM: the runtime and the prompt cache (host copies of KV states).
    assert placed.ram_bytes == TOTAL - OFFLOADABLE == RUNTIME_OVERHEAD + CACHE


def test_a_model_too_big_for_the_gpu_gets_the_layers_that_fit() -> None:
    free = 3 * GB
    placed = place(META, CTX, prompt_cache_bytes=CACHE, free_vram=free)
    per_layer = OFFLOADABLE / 32
    assert 0 < placed.gpu_layers < 32
    assert placed.gpu_layers == int((free - RUNTIME_OVERHEAD - VRAM_HEADROOM) // per_layer)
    assert placed.vram_bytes <= free - VRAM_HEADROOM
    assert placed.ram_bytes + placed.vram_bytes == TOTAL + RUNTIME_OVERHEAD  # the runtime is on both sides


def test_a_nearly_full_gpu_takes_nothing() -> None:
    assert place(META, CTX, free_vram=VRAM_HEADROOM).gpu_layers == 0


@pytest.mark.parametrize(("configured", "layers"), [(0, 0), (-1, ALL_LAYERS), (10, 10), (99, ALL_LAYERS)])
def test_the_users_setting_wins(configured: int, layers: int) -> None:
    placed = place(META, CTX, prompt_cache_bytes=CACHE, free_vram=1 * GB, configured_layers=configured)
    assert placed.gpu_layers == layers
    assert placed.ram_bytes == (TOTAL if layers == 0 else TOTAL - placed.vram_bytes + RUNTIME_OVERHEAD)


def test_a_gpu_nvml_cannot_see_gets_the_setting_and_ram_counts_everything() -> None:
    # Apple Metal or ROCm: llama.cpp may offload, but there is nothing to measure it with.
    placed = place(META, CTX, prompt_cache_bytes=CACHE, free_vram=None, configured_layers=-1)
    assert (placed.gpu_layers, placed.ram_bytes, placed.vram_bytes) == (ALL_LAYERS, TOTAL, 0)


def test_a_model_of_unknown_shape_is_not_split() -> None:
    meta = {"size": 1 * GB}
    assert place(meta, CTX, free_vram=24 * GB).gpu_layers == 0
