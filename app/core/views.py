"""Read models: what the API and the window show of a model, built from the engine's parts in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.catalog import capabilities as caps
from app.core.catalog.model import ModelEntry

if TYPE_CHECKING:
    from app.core.engine import Engine


def model_info(engine: Engine, entry: ModelEntry) -> dict[str, Any]:
    """Everything known about one model: catalog facts, user settings, health, workers, placement, quota."""
    workers = [
        {"replica": w.replica, "pid": w.pid, "state": w.state, "memory_bytes": engine.pool.memory_of(w.key),
         "vram_bytes": w.vram_bytes, "gpu_layers": w.gpu_layers, "parallel": w.parallel,
         "in_flight": w.in_flight, "idle_s": round(w.idle_s, 1),
         # Per slot, as the worker last reported: decoding or idle, and the tokens its cells hold.
         "slots": [{"busy": busy, "tokens": tokens} for busy, tokens in zip(w.report.busy, w.report.tokens,
                                                                              strict=True)],
         "waiting": w.report.waiting}
        for w in engine.pool.loaded() if w.model_id == entry.id
    ]
    remote = None if entry.remote is None else {k: v for k, v in entry.remote.items() if k != "api_key"}
    health, health_reason = engine.shown_health(entry.id)
    return {
        "id": entry.id,
        "display_name": entry.display_name,
        "source": entry.source,
        "path": entry.path,
        "paths": entry.paths,
        "projector": entry.projector,
        "metadata": entry.metadata,
        "capabilities": entry.capabilities,
        "capabilities_edited": entry.capabilities_override is not None,
        "aliases": entry.aliases,
        "enabled": entry.enabled,
        "missing": entry.missing,
        "default": entry.id == engine.registry.default_id,
        "health": health,
        "health_reason": health_reason,
        # Why its files did not load (or cannot): it is not tried again until they change or it is loaded by hand.
        "load_failure": None if entry.load_failure is None else entry.load_failure.reason,
        "use_count": entry.use_count,
        "last_used": entry.last_used,
        "versions": engine.registry.versions(entry.id),
        "weight": entry.weight,
        "fallbacks": entry.fallbacks,
        "replicas": entry.replicas,
        # The model's own setting (None: the configured default); parallel_effective is what its workers run with,
        # or would load with now: a change applies at the next load.
        "parallel": entry.parallel,
        "pinned": engine.pool.is_pinned(entry.id),
        "state": "loaded" if any(w["state"] == "loaded" for w in workers)
        else "loading" if workers else "unloaded",
        "workers": workers,
        **placement_info(engine, entry),
        "fits": True if entry.is_remote else engine.pool.fits(entry),
        "quota": engine.quota.usage(f"model:{entry.id}"),
        "remote": remote,
    }


def placement_info(engine: Engine, entry: ModelEntry) -> dict[str, Any]:
    """RAM it takes (what the budget counts), what goes to the GPU, and the requests decoded together that this
    counts the KV cache of; nothing local for a remote backend."""
    if entry.is_remote:
        return {"estimate_bytes": None, "vram_bytes": 0, "gpu_layers": 0, "parallel_effective": None}
    placed = engine.pool.placement(entry)
    return {"estimate_bytes": placed.ram_bytes, "vram_bytes": placed.vram_bytes, "gpu_layers": placed.gpu_layers,
            "parallel_effective": placed.parallel}


def model_object(engine: Engine, entry: ModelEntry) -> dict[str, Any]:
    """A model as OpenAI's /v1/models lists it, with Switchboard's own fields added and llama-server's `meta`
    (what a client needs to size a conversation: the context a request gets, the trained one, the model's size)."""
    meta = entry.metadata
    return {
        "id": entry.id,
        "object": "model",
        "created": int(meta.get("mtime") or 0),
        "owned_by": entry.source,
        "capabilities": entry.capabilities,
        "input_modalities": ["text", "image"] if caps.VISION in entry.capabilities else ["text"],
        "output_modalities": ["embedding"] if caps.EMBEDDINGS in entry.capabilities else ["text"],
        "aliases": entry.aliases,
        "health": engine.shown_health(entry.id)[0],
        "context_length": engine.pool.context_of(entry),
        "quantization": meta.get("quantization"),
        "meta": {"n_ctx": engine.pool.context_of(entry), "n_ctx_train": meta.get("context_length"),
                 "n_embd": meta.get("embedding_length"), "n_params": meta.get("parameter_count"),
                 "size": meta.get("size")},
    }


def scan_info(models: list[str], problems: list[Any]) -> dict[str, Any]:
    return {"models": models,
            "problems": [{"path": p.path, "source": p.source, "reason": p.reason, "skipped": p.skipped}
                         for p in problems]}
