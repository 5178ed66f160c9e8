"""The responses surface (being built)."""

from __future__ import annotations

from fastapi import APIRouter

from app.core.services import Services


def routes(services: Services) -> APIRouter:
    return APIRouter()
