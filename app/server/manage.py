"""The management API: models, router, experiments, decisions, quotas, dry-run routing, metrics, feedback.

The desktop window calls the same Engine methods in-process; this module only translates HTTP.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.core.engine import Engine
from app.core.errors import InvalidRequest, ModelNotFound
from app.core.quota import Limits
from app.core.registry import ModelEntry
from app.core.remote import RemoteSpec
from app.server.api import route_request
from app.server.schemas import (
    ChatCompletionRequest,
    ExperimentBody,
    FeedbackBody,
    ModelPatch,
    PinBody,
    RemoteBody,
    RouterBody,
)


def model_info(engine: Engine, entry: ModelEntry) -> dict[str, Any]:
    workers = [
        {"replica": w.replica, "pid": w.pid, "state": w.state, "memory_bytes": engine.pool.memory_of(w.key),
         "vram_bytes": w.vram_bytes, "gpu_layers": w.gpu_layers, "in_flight": w.in_flight,
         "idle_s": round(w.idle_s, 1)}
        for w in engine.pool.loaded() if w.model_id == entry.id
    ]
    remote = None if entry.remote is None else {k: v for k, v in entry.remote.items() if k != "api_key"}
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
        "health": entry.health.value,
        "health_reason": entry.health_reason,
        "use_count": entry.use_count,
        "last_used": entry.last_used,
        "versions": engine.registry.versions(entry.id),
        "weight": entry.weight,
        "fallbacks": entry.fallbacks,
        "replicas": entry.replicas,
        "pinned": engine.pool.is_pinned(entry.id),
        "state": "loaded" if any(w["state"] == "loaded" for w in workers)
        else "loading" if workers else "unloaded",
        "workers": workers,
        **_placement(engine, entry),
        "fits": True if entry.is_remote else engine.pool.fits(entry),
        "quota": engine.quota.usage(f"model:{entry.id}"),
        "remote": remote,
    }


def _placement(engine: Engine, entry: ModelEntry) -> dict[str, Any]:
    """RAM it takes (what the budget counts), and what goes to the GPU; nothing local for a remote backend."""
    if entry.is_remote:
        return {"estimate_bytes": None, "vram_bytes": 0, "gpu_layers": 0}
    placed = engine.pool.placement(entry)
    return {"estimate_bytes": placed.ram_bytes, "vram_bytes": placed.vram_bytes, "gpu_layers": placed.gpu_layers}


def routes(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/api")
    registry = engine.registry

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"data": [model_info(engine, e) for e in registry.list()]}

    @router.post("/models")
    async def add_remote(body: RemoteBody) -> dict[str, Any]:
        spec = RemoteSpec(base_url=body.base_url, model=body.model, api_key=body.api_key,
                          capabilities=body.capabilities, context_length=body.context_length)
        entry = registry.add_remote(body.id, spec.to_dict(), capabilities=body.capabilities,
                                    context_length=body.context_length)
        return model_info(engine, entry)

    @router.get("/models/{model_id:path}/estimate")
    async def estimate(model_id: str) -> dict[str, Any]:
        entry = registry.resolve(model_id)
        return {**_placement(engine, entry), "budget_bytes": engine.pool.budget, "fits": engine.pool.fits(entry)}

    @router.post("/models/{model_id:path}/load")
    async def load(model_id: str) -> dict[str, Any]:
        entry = registry.resolve(model_id)
        for replica in range(1 if entry.is_remote else entry.replicas):
            await engine.pool.acquire(entry, replica)
        return model_info(engine, entry)

    @router.post("/models/{model_id:path}/unload")
    async def unload(model_id: str) -> dict[str, Any]:
        entry = registry.resolve(model_id)
        await engine.pool.unload(entry.id)
        return model_info(engine, entry)

    @router.post("/models/{model_id:path}/pin")
    async def pin(model_id: str, body: PinBody | None = None) -> dict[str, Any]:
        entry = registry.resolve(model_id)
        engine.pool.pin(entry.id, body.pinned if body else True)
        return model_info(engine, entry)

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return model_info(engine, registry.resolve(model_id))

    @router.patch("/models/{model_id:path}")
    async def patch_model(model_id: str, body: ModelPatch) -> dict[str, Any]:
        entry = registry.resolve(model_id)
        if body.enabled is not None:
            registry.set_enabled(entry.id, body.enabled)
        if body.aliases is not None:
            registry.set_aliases(entry.id, body.aliases)
        if body.reset_capabilities or body.capabilities is not None:
            registry.set_capabilities(entry.id, None if body.reset_capabilities else body.capabilities)
        if body.weight is not None or body.fallbacks is not None or body.replicas is not None:
            registry.set_options(entry.id, weight=body.weight, fallbacks=body.fallbacks, replicas=body.replicas)
        if body.quota is not None:
            engine.quota.set_limits(f"model:{entry.id}", Limits(body.quota.tokens_per_hour,
                                                                 body.quota.requests_per_hour))
        if body.default:
            registry.set_default(entry.id)
        return model_info(engine, entry)

    @router.delete("/models/{model_id:path}")
    async def delete_model(model_id: str) -> dict[str, Any]:
        entry = registry.resolve(model_id)
        if not entry.is_remote:
            raise InvalidRequest("Only remote backends can be removed; disable a local model instead", param="id")
        await engine.pool.unload(entry.id)
        registry.remove(entry.id)
        return {"id": entry.id, "deleted": True}

    @router.post("/scan")
    async def rescan() -> dict[str, Any]:
        result = await engine.rescan()
        return {"models": [m.id for m in result.models],
                "problems": [{"path": p.path, "source": p.source, "reason": p.reason, "skipped": p.skipped}
                             for p in result.problems]}

    @router.get("/router")
    async def get_router() -> dict[str, Any]:
        return engine.router.describe()

    @router.put("/router")
    async def put_router(body: RouterBody) -> dict[str, Any]:
        engine.configure_router(body.strategy, body.params)
        return engine.router.describe()

    @router.post("/route")
    async def dry_run(body: ChatCompletionRequest, request: Request) -> dict[str, Any]:
        return engine.route(route_request(request, "chat", body)).explain()

    @router.get("/experiments")
    async def list_experiments() -> dict[str, Any]:
        return {"data": [engine.experiment_info(e.id) for e in engine.experiments.list()]}

    @router.post("/experiments")
    async def create_experiment(body: ExperimentBody) -> dict[str, Any]:
        arms = [arm.model_dump() for arm in body.arms]
        experiment = engine.create_experiment(body.name, arms, body.metric, activate=body.activate)
        return engine.experiment_info(experiment.id)

    @router.get("/experiments/{experiment_id}")
    async def get_experiment(experiment_id: str) -> dict[str, Any]:
        return engine.experiment_info(experiment_id)

    @router.delete("/experiments/{experiment_id}")
    async def delete_experiment(experiment_id: str) -> dict[str, Any]:
        engine.delete_experiment(experiment_id)
        return {"id": experiment_id, "deleted": True}

    @router.get("/decisions")
    async def decisions(limit: int = 100) -> dict[str, Any]:
        return {"data": engine.decisions.recent(max(1, min(limit, 1000)))}

    @router.get("/quota")
    async def quota() -> dict[str, Any]:
        return engine.quota.all_usage()

    return router


def public_routes(engine: Engine) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/feedback")
    async def feedback(body: FeedbackBody) -> dict[str, Any]:
        if not engine.experiments.feedback(body.request_id, body.score):
            raise ModelNotFound(f"No experiment request has the id '{body.request_id}'", param="request_id",
                                code="request_not_found")
        return {"request_id": body.request_id, "recorded": True}

    @router.get("/metrics")
    async def metrics() -> Response:
        engine.pool.sample_memory()
        body, content_type = engine.metrics.render()
        return Response(body, media_type=content_type)

    return router
