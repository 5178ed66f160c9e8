"""Where a model goes and what makes room for it: pure functions of the GGUF header and the pool's state, no I/O.

How much memory a model needs (from its header alone, before loading it), how many requests it decodes together
(each with its own context), how it splits between RAM and VRAM, and which loaded models to unload so that it fits
(least recently used idle ones first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# llama.cpp's compute buffers and runtime; measured around 40-60 MiB for small models on CPU.
RUNTIME_OVERHEAD = 64 * 1024 * 1024
KV_BYTES_PER_VALUE = 2  # f16 KV cache, llama.cpp's default


def context_for(meta: Mapping[str, Any], requested: int) -> int:
    trained = meta.get("context_length") or requested
    return max(1, min(requested, int(trained)))


def kv_cache_bytes(meta: Mapping[str, Any], n_ctx: int, parallel: int = 1) -> int:
    """The KV cache of `parallel` sequences of `n_ctx` tokens each (one unified cache of parallel × n_ctx cells)."""
    layers, embd = meta.get("block_count"), meta.get("embedding_length")
    heads = meta.get("head_count")
    if not (layers and embd and heads):
        return 0
    kv_heads = meta.get("head_count_kv") or heads
    head_dim = int(embd) // int(heads)
    # K and V, per layer, per position.
    return 2 * int(layers) * n_ctx * parallel * int(kv_heads) * head_dim * KV_BYTES_PER_VALUE


def estimate_bytes(meta: Mapping[str, Any], n_ctx: int, *, parallel: int = 1, prompt_cache_bytes: int = 0) -> int:
    """Weights (the file size) + KV cache of `parallel` × `n_ctx` + runtime + the worker's prompt cache."""
    return (int(meta.get("size") or 0) + kv_cache_bytes(meta, n_ctx, parallel) + RUNTIME_OVERHEAD
            + prompt_cache_bytes)


ALL_LAYERS = -1  # llama.cpp's n_gpu_layers for "every layer, and the output layer too"
VRAM_HEADROOM = 512 * 1024 * 1024  # left free on the GPU: CUDA's context, compute buffers, the desktop


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a model's memory goes: how many layers llama.cpp offloads, and the bytes that takes from each side, with
    the KV cache of `parallel` sequences."""

    gpu_layers: int  # llama.cpp's n_gpu_layers: 0 (CPU only), N, or ALL_LAYERS
    ram_bytes: int
    vram_bytes: int
    parallel: int = 1


def place(meta: Mapping[str, Any], n_ctx: int, *, parallel: int = 1, prompt_cache_bytes: int = 0,
          free_vram: int | None = None, configured_layers: int | None = None) -> Placement:
    """Split a model with `parallel` sequences of `n_ctx` between RAM and a GPU with `free_vram` bytes free (None: no
    GPU llama.cpp can use).

    Unconfigured, as Ollama does: every layer when the weights and KV cache fit beside VRAM_HEADROOM, else as many
    whole layers as do (each layer holds about 1/block_count of the weights and of the KV cache), else none.
    Offloaded layers leave RAM; the prompt cache (host copies of KV states) and the runtime stay there."""
    total = estimate_bytes(meta, n_ctx, parallel=parallel, prompt_cache_bytes=prompt_cache_bytes)
    layers = int(meta.get("block_count") or 0)
    if configured_layers == 0 or (configured_layers is None and (free_vram is None or layers <= 0)):
        return Placement(0, total, 0, parallel)
    if free_vram is None or layers <= 0:
        assert configured_layers is not None  # unconfigured, the branch above returned
        # A GPU NVML cannot see (Metal, ROCm) or a model of unknown shape: llama.cpp gets the setting, and every
        # byte stays counted against RAM, since nothing says how much moved.
        return Placement(ALL_LAYERS if configured_layers < 0 else configured_layers, total, 0, parallel)
    offloadable = int(meta.get("size") or 0) + kv_cache_bytes(meta, n_ctx, parallel)
    per_layer = offloadable / layers
    if configured_layers is not None:
        count = layers if configured_layers < 0 else min(configured_layers, layers)
    elif offloadable + RUNTIME_OVERHEAD + VRAM_HEADROOM <= free_vram:
        count = layers
    else:
        count = max(0, min(layers, int((free_vram - RUNTIME_OVERHEAD - VRAM_HEADROOM) // max(per_layer, 1))))
    if count == 0:
        return Placement(0, total, 0, parallel)
    moved = offloadable if count == layers else int(per_layer * count)
    return Placement(ALL_LAYERS if count == layers else count, total - moved, moved + RUNTIME_OVERHEAD, parallel)


AUTO_PARALLEL = 4  # on the CPU, as LM Studio's 4 parallel predictions
AUTO_PARALLEL_GPU = 8  # at most, where the model with every slot's KV cache fits wholly in VRAM


def plan(meta: Mapping[str, Any], n_ctx: int, *, parallel: int | None, budget: int, embedding: bool = False,
         prompt_cache_bytes: int = 0, free_vram: int | None = None,
         configured_layers: int | None = None) -> Placement:
    """The placement with `parallel` sequences of `n_ctx`, or (None) with as many as auto decides.

    Auto: the most up to AUTO_PARALLEL_GPU with which the model still goes wholly to the GPU, else AUTO_PARALLEL,
    fewer until the RAM it takes fits in `budget` (at least 1). An embedding model gets 1: its worker batches a
    request's inputs in one decode anyway."""

    def at(count: int) -> Placement:
        return place(meta, n_ctx, parallel=count, prompt_cache_bytes=prompt_cache_bytes, free_vram=free_vram,
                     configured_layers=configured_layers)

    if embedding:
        return at(1)
    if parallel is not None:
        return at(parallel)
    for count in range(AUTO_PARALLEL_GPU, AUTO_PARALLEL, -1):
        placed = at(count)
        if (placed.gpu_layers == ALL_LAYERS and free_vram is not None and placed.ram_bytes <= budget
                and placed.vram_bytes + VRAM_HEADROOM <= free_vram):
            return placed
    count = AUTO_PARALLEL
    placed = at(count)
    while count > 1 and placed.ram_bytes > budget:
        count -= 1
        placed = at(count)
    return placed


# -- eviction: which loaded models to unload ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resident:
    model_id: str
    bytes: int
    last_used: float
    busy: bool = False
    loading: bool = False
    pinned: bool = False
    ttl: float | None = None  # its own keep-alive in seconds (math.inf: until unloaded); None: the pool's idle TTL

    @property
    def evictable(self) -> bool:
        return not (self.busy or self.loading or self.pinned)


def choose_evictions(resident: Sequence[Resident], need: int, budget: int) -> list[str] | None:
    """Least recently used idle models to stop so that `need` more bytes fit; None if impossible."""
    used = sum(r.bytes for r in resident)
    if used + need <= budget:
        return []
    victims: list[str] = []
    for r in sorted((r for r in resident if r.evictable), key=lambda r: r.last_used):
        victims.append(r.model_id)
        used -= r.bytes
        if used + need <= budget:
            return victims
    return None


def expired(resident: Sequence[Resident], now: float, ttl: float) -> list[str]:
    """Idle, unpinned models unused for their own keep-alive (0: expired as soon as idle), or for `ttl` seconds
    without one."""
    return [r.model_id for r in resident
            if r.evictable and now - r.last_used >= (ttl if r.ttl is None else r.ttl)]
