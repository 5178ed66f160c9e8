"""The ASGI application: OpenAI-compatible routes, management routes, error table and guard."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.core.services import Services
from app.server import api, errors, manage
from app.server.guard import Guard


def create_app(services: Services) -> FastAPI:
    config = services.config
    app = FastAPI(title="Switchboard", version=__version__, docs_url=None, redoc_url=None)
    errors.install(app)
    app.include_router(api.routes(services))
    app.include_router(manage.routes(services))
    app.include_router(manage.public_routes(services))
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id", "x-switchboard-model",
                                                                "x-switchboard-route"])
    # Added last, so it runs first: nothing reaches a route without passing it.
    app.add_middleware(Guard, keys=services.keys, bind_host=config.host, allowed_hosts=config.allowed_hosts,
                       max_body_bytes=config.max_body_bytes)
    return app
