"""User configuration: one typed schema with defaults, stored as JSON in the config dir."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.core import paths

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642


@dataclass(slots=True)
class Config:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # Never written to disk by `save` when it came from the environment.
    api_key: str | None = None
    model_dirs: list[str] = field(default_factory=list)
    discovery: bool = True
    # Loaded models must fit in this many bytes; None means a share of system RAM.
    memory_budget_bytes: int | None = None
    memory_budget_fraction: float = 0.5
    idle_ttl_s: float = 600.0
    # Context size a model is loaded with, capped at the model's trained context.
    n_ctx: int = 4096
    n_threads: int | None = None
    # Layers llama.cpp puts on the GPU: None decides from the free VRAM NVML reports; -1 all; 0 none.
    n_gpu_layers: int | None = None
    # Each worker keeps recent conversations' llama.cpp state so the next turn reuses its prefix.
    prompt_cache_bytes: int = 256 * 1024 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    cors_origins: list[str] = field(default_factory=list)
    # Extra Host-header names accepted besides loopback names (DNS-rebinding allowlist).
    allowed_hosts: list[str] = field(default_factory=list)
    load_timeout_s: float = 120.0
    # How often loaded workers and remote backends are checked.
    health_interval_s: float = 15.0

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or paths.config_path()
        values: dict[str, Any] = {}
        if path.exists():
            try:
                values = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from exc
            if not isinstance(values, dict):
                raise ConfigError(f"{path} must hold a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        config = cls(**values)
        env_key = os.environ.get("SWITCHBOARD_API_KEY")
        if env_key and not config.api_key:
            config.api_key = env_key
        return config

    def save(self, path: Path | None = None) -> None:
        path = path or paths.config_path()
        data = asdict(self)
        if data["api_key"] and data["api_key"] == os.environ.get("SWITCHBOARD_API_KEY"):
            data["api_key"] = None
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(path)


class ConfigError(Exception):
    pass
