"""The ASGI application: every API surface, the management routes, the error table and the guard."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.core.services import Services
from app.server import errors, manage
from app.server.guard import Guard
from app.server.surfaces import anthropic, ollama, openai, responses


def create_app(services: Services) -> FastAPI:
    config = services.config
    app = FastAPI(title="Switchboard", version=__version__, docs_url=None, redoc_url=None)
    errors.install(app)
    for surface in (openai, responses, anthropic, ollama):
        app.include_router(surface.routes(services))
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
