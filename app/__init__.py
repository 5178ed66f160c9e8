"""Switchboard: a desktop model manager and request router for local LLMs."""

from __future__ import annotations

__version__ = "0.1.0"
