"""Where a model goes and what makes room for it: pure functions of the GGUF header and the pool's state, no I/O.

How much memory a model needs (from its header alone, before loading it), how it splits between RAM and VRAM,
and which loaded models to unload so that it fits (least recently used idle ones first).
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


def kv_cache_bytes(meta: Mapping[str, Any], n_ctx: int) -> int:
    layers, embd = meta.get("block_count"), meta.get("embedding_length")
    heads = meta.get("head_count")
    if not (layers and embd and heads):
        return 0
    kv_heads = meta.get("head_count_kv") or heads
    head_dim = int(embd) // int(heads)
    # K and V, per layer, per position.
    return 2 * int(layers) * n_ctx * int(kv_heads) * head_dim * KV_BYTES_PER_VALUE


def estimate_bytes(meta: Mapping[str, Any], n_ctx: int, *, prompt_cache_bytes: int = 0) -> int:
    """Weights (the file size) + KV cache at `n_ctx` + runtime + the worker's prompt cache."""
    return int(meta.get("size") or 0) + kv_cache_bytes(meta, n_ctx) + RUNTIME_OVERHEAD + prompt_cache_bytes


ALL_LAYERS = -1  # llama.cpp's n_gpu_layers for "every layer, and the output layer too"
VRAM_HEADROOM = 512 * 1024 * 1024  # left free on the GPU: CUDA's context, compute buffers, the desktop


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a model's memory goes: how many layers llama.cpp offloads, and the bytes that takes from each side."""

    gpu_layers: int  # llama.cpp's n_gpu_layers: 0 (CPU only), N, or ALL_LAYERS
    ram_bytes: int
    vram_bytes: int


def place(meta: Mapping[str, Any], n_ctx: int, *, prompt_cache_bytes: int = 0, free_vram: int | None = None,
          configured_layers: int | None = None) -> Placement:
    """Split a model between RAM and a GPU with `free_vram` bytes free (None: no GPU llama.cpp can use).

    Unconfigured, as Ollama does: every layer when the weights and KV cache fit beside VRAM_HEADROOM, else as many
    whole layers as do (each layer holds about 1/block_count of the weights and of the KV cache), else none.
    Offloaded layers leave RAM; the prompt cache (host copies of KV states) and the runtime stay there."""
    total = estimate_bytes(meta, n_ctx, prompt_cache_bytes=prompt_cache_bytes)
    layers = int(meta.get("block_count") or 0)
    if configured_layers == 0 or (configured_layers is None and (free_vram is None or layers <= 0)):
        return Placement(0, total, 0)
    if free_vram is None or layers <= 0:
        assert configured_layers is not None  # unconfigured, the branch above returned
        # A GPU NVML cannot see (Metal, ROCm) or a model of unknown shape: llama.cpp gets the setting, and every
        # byte stays counted against RAM, since nothing says how much moved.
        return Placement(ALL_LAYERS if configured_layers < 0 else configured_layers, total, 0)
    offloadable = int(meta.get("size") or 0) + kv_cache_bytes(meta, n_ctx)
    per_layer = offloadable / layers
    if configured_layers is not None:
        count = layers if configured_layers < 0 else min(configured_layers, layers)
    elif offloadable + RUNTIME_OVERHEAD + VRAM_HEADROOM <= free_vram:
        count = layers
    else:
        count = max(0, min(layers, int((free_vram - RUNTIME_OVERHEAD - VRAM_HEADROOM) // max(per_layer, 1))))
    if count == 0:
        return Placement(0, total, 0)
    moved = offloadable if count == layers else int(per_layer * count)
    return Placement(ALL_LAYERS if count == layers else count, total - moved, moved + RUNTIME_OVERHEAD)


# -- eviction: which loaded models to unload ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resident:
    model_id: str
    bytes: int
    last_used: float
    busy: bool = False
    loading: bool = False
    pinned: bool = False

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
    """Idle, unpinned models unused for longer than `ttl` seconds."""
    return [r.model_id for r in resident if r.evictable and now - r.last_used > ttl]
