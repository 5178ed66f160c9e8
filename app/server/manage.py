"""The management API: models, router, experiments, decisions, quotas, API keys, dry-run routing, metrics, feedback.

The desktop window calls the same services in-process; this module only translates HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from app.core.keys import KeySpec
from app.core.routing.quota import Limits
from app.core.services import Services
from app.core.services.library import Pull
from app.server.schemas import (
    ChatCompletionRequest,
    ExperimentBody,
    FeedbackBody,
    ModelPatch,
    PinBody,
    RemoteBody,
    RouterBody,
)
from app.server.surfaces.common import route_request


class PullBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=300, description="owner/repo or owner/repo:quant on the hub")


async def _pull_events(pull: Pull, request: Request) -> AsyncIterator[bytes]:
    """The pull's events as server-sent events; a client that goes away cancels it (even while no byte flows)."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        pull.cancel()

    watching = asyncio.ensure_future(hung_up())
    try:
        async for event in pull.events():
            yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n".encode()
    finally:
        watching.cancel()
        pull.cancel()  # a no-op once it ended; stops the download when the stream was closed early


def routes(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api")
    models = services.models

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"data": models.infos()}

    @router.post("/models")
    async def add_remote(body: RemoteBody) -> dict[str, Any]:
        return models.add_remote(body.id, base_url=body.base_url, model=body.model, api_key=body.api_key,
                                 capabilities=body.capabilities, context_length=body.context_length)

    @router.post("/models/pull")
    async def pull(body: PullBody, request: Request) -> Response:
        # Bad input (no such repo or quantization, no GGUF in it) is an error answer before the stream starts.
        pulling = await services.library.pull(body.model)
        return StreamingResponse(_pull_events(pulling, request), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    @router.get("/library/search")
    async def library_search(q: str = "", limit: int = 20) -> dict[str, Any]:
        return {"data": await services.library.search(q, limit)}

    @router.get("/library/files")
    async def library_files(repo: str = "") -> dict[str, Any]:
        return await services.library.files(repo)

    @router.get("/models/{model_id:path}/estimate")
    async def estimate(model_id: str) -> dict[str, Any]:
        return models.estimate(model_id)

    @router.post("/models/{model_id:path}/load")
    async def load(model_id: str) -> dict[str, Any]:
        # Also the retry of a model that failed to load: it forgets the failure and tries again.
        return await models.load(model_id)

    @router.post("/models/{model_id:path}/unload")
    async def unload(model_id: str) -> dict[str, Any]:
        return await models.unload(model_id)

    @router.post("/models/{model_id:path}/pin")
    async def pin(model_id: str, body: PinBody | None = None) -> dict[str, Any]:
        return models.pin(model_id, body.pinned if body else True)

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        return await models.details(model_id)

    @router.patch("/models/{model_id:path}")
    async def patch_model(model_id: str, body: ModelPatch) -> dict[str, Any]:
        quota = None if body.quota is None else Limits(body.quota.tokens_per_hour, body.quota.requests_per_hour)
        return models.patch(model_id, enabled=body.enabled, aliases=body.aliases, capabilities=body.capabilities,
                            reset_capabilities=body.reset_capabilities, weight=body.weight,
                            fallbacks=body.fallbacks, replicas=body.replicas, parallel=body.parallel,
                            # An explicit null returns to auto; a parallel left out stays as it is.
                            reset_parallel="parallel" in body.model_fields_set and body.parallel is None,
                            quota=quota, default=bool(body.default))

    @router.delete("/models/{model_id:path}")
    async def delete_model(model_id: str) -> dict[str, Any]:
        entry = models.resolve(model_id)
        await models.remove(entry.id)
        return {"id": entry.id, "deleted": True}

    @router.post("/scan")
    async def rescan() -> dict[str, Any]:
        return services.scan_info(await models.rescan())

    @router.get("/router")
    async def get_router() -> dict[str, Any]:
        return services.routing.describe()

    @router.put("/router")
    async def put_router(body: RouterBody) -> dict[str, Any]:
        return services.routing.configure(body.strategy, body.params)

    @router.post("/route")
    async def dry_run(body: ChatCompletionRequest, request: Request) -> dict[str, Any]:
        return services.routing.route(route_request(request, "chat", body)).explain()

    @router.get("/experiments")
    async def list_experiments() -> dict[str, Any]:
        return {"data": await services.experiments.all()}

    @router.post("/experiments")
    async def create_experiment(body: ExperimentBody) -> dict[str, Any]:
        arms = [arm.model_dump() for arm in body.arms]
        created = services.experiments.create(body.name, arms, body.metric, activate=body.activate)
        return await services.experiments.info(created["id"])

    @router.get("/experiments/{experiment_id}")
    async def get_experiment(experiment_id: str) -> dict[str, Any]:
        return await services.experiments.info(experiment_id)

    @router.delete("/experiments/{experiment_id}")
    async def delete_experiment(experiment_id: str) -> dict[str, Any]:
        services.experiments.delete(experiment_id)
        return {"id": experiment_id, "deleted": True}

    @router.get("/decisions")
    async def decisions(limit: int = 100) -> dict[str, Any]:
        return {"data": services.decisions(limit)}

    @router.get("/quota")
    async def quota() -> dict[str, Any]:
        return services.quota.all_usage()

    @router.get("/keys")
    async def list_keys() -> dict[str, Any]:
        return {"data": services.keys.report()}

    @router.post("/keys")
    async def create_key(body: KeySpec) -> dict[str, Any]:
        key, secret = services.keys.add(body)
        return {**key.as_dict(), "secret": secret}  # the only time it is shown

    @router.delete("/keys/{name}")
    async def revoke_key(name: str) -> dict[str, Any]:
        services.keys.revoke(name)
        return {"name": name, "revoked": True}

    return router


def public_routes(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/feedback")
    async def feedback(body: FeedbackBody) -> dict[str, Any]:
        services.experiments.feedback(body.request_id, body.score)
        return {"request_id": body.request_id, "recorded": True}

    @router.get("/metrics")
    async def metrics() -> Response:
        body, content_type = services.metrics()
        return Response(body, media_type=content_type)

    return router
