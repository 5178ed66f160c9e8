"""How much memory a model needs, from its GGUF header alone (before loading it)."""

from __future__ import annotations

from collections.abc import Mapping
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
