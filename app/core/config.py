"""User configuration: one typed schema (type, bounds, default, description), stored as JSON in the config dir.

Each setting is its default, overridden by `config.json`, overridden by the environment variable SWITCHBOARD_
plus the setting's name in capitals: SWITCHBOARD_PORT=9000, SWITCHBOARD_DISCOVERY=false. A list takes a JSON list,
or items separated by os.pathsep for `model_dirs` (like PATH) and by commas for the others. An empty variable
counts as unset. SWITCHBOARD_API_KEY is the one exception: it is used only when the file sets no key.
SWITCHBOARD_HOME is not a setting; paths.py reads it.

`save()` never writes the environment back: a setting still holding its variable's value is saved with the value
it had before the environment applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from app.core import paths

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642
ENV_PREFIX = "SWITCHBOARD_"
MIB = 1024 * 1024
MAX_PARALLEL = 64  # requests one worker decodes together, at most (the setting and each model's own)


class ConfigError(Exception):
    """A setting that cannot be used; the message names where it came from, the key and why."""


class Config(BaseModel):
    # Callers change settings in place (the CLI's flags, the window's forms): every assignment is validated.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    host: str = Field(DEFAULT_HOST, min_length=1, description="Address the server listens on.")
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="Port the server listens on; 0 picks a free one.")
    ollama_port: int | None = Field(
        None, ge=0, le=65535,
        description="A second port for clients that only know Ollama's (11434); none: off. Refuses to start if taken.",
    )
    api_key: str | None = Field(
        None, description="Key every request must send as 'Authorization: Bearer KEY'; none leaves the API open."
    )
    model_dirs: list[str] = Field(default_factory=list, description="More folders to scan for GGUF models.")
    discovery: bool = Field(True, description="Scan the usual places (Hugging Face, Ollama, LM Studio, ~/models).")
    memory_budget_bytes: int | None = Field(
        None, gt=0, description="Loaded models must fit in this many bytes; none means a share of system RAM."
    )
    memory_budget_fraction: float = Field(
        0.5, gt=0, le=1, description="The share of system RAM loaded models may use when no byte budget is set."
    )
    idle_ttl_s: float = Field(600.0, gt=0, description="Unload a model idle this long (pinned models stay).")
    n_ctx: int = Field(4096, ge=1, description="Context a model is loaded with, capped at its trained context.")
    n_threads: int | None = Field(None, ge=1, description="Threads per worker; none shares the cores among workers.")
    parallel: int | None = Field(
        None, ge=1, le=MAX_PARALLEL,
        description="Requests a worker decodes together, each with n_ctx of context; none: 4 on the CPU, more where "
                    "VRAM allows, never more than the memory budget fits.",
    )
    n_gpu_layers: int | None = Field(
        None, ge=-1, description="Layers llama.cpp puts on the GPU: none decides from the free VRAM; -1 all, 0 none."
    )
    prompt_cache_bytes: int = Field(
        256 * MIB, ge=0, description="Per-worker cache of recent conversations' llama.cpp state; 0 turns it off."
    )
    max_body_bytes: int = Field(8 * MIB, ge=1, description="Request bodies larger than this get 413.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; none sends no CORS.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host-header names accepted besides loopback names (DNS rebinding)."
    )
    load_timeout_s: float = Field(120.0, gt=0, description="A model that takes longer to load has failed.")
    request_timeout_s: float = Field(
        600.0, gt=0, description="A request not finished this long after it arrived is cancelled (504)."
    )
    max_queue: int = Field(64, ge=0, description="Requests that may wait per local model; more get 429.")
    max_queue_total: int = Field(512, ge=1, description="Requests that may wait on the whole server; more get 429.")
    health_interval_s: float = Field(15.0, gt=0, description="How often loaded workers and remote backends are probed.")
    responses_kept: int = Field(
        10_000, ge=0, description="Stored Responses API responses kept for previous_response_id; the oldest go first."
    )

    # setting -> (its environment value, its value before that), kept by load() for save().
    _from_env: dict[str, tuple[Any, Any]] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from exc

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from exc

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or paths.config_path()
        try:
            config = cls(**_read(path))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for name, value in _environment().items():
            before = getattr(config, name)
            if name == "api_key" and before:
                continue  # the file's key wins over SWITCHBOARD_API_KEY
            try:
                setattr(config, name, value)
            except ConfigError as exc:
                raise ConfigError(f"{_variable(name)}: {exc}") from exc
            config._from_env[name] = (getattr(config, name), before)
        return config

    def save(self, path: Path | None = None) -> None:
        path = path or paths.config_path()
        data = self.model_dump(mode="json")
        for name, (value, before) in self._from_env.items():
            if data[name] == value:
                data[name] = before
        _write_atomically(path, json.dumps(data, indent=2))


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` so that a crash or power loss at any moment leaves the old file or the new one, whole.

    The temp file sits beside the target (a rename is atomic only within one file system) under a unique name (two
    processes saving at once must not share one), and is synced before the rename so the name never points at
    unwritten data. mkstemp makes it owner-only: the file may hold the API key."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` survive power loss: POSIX records it only once the folder itself is synced."""
    if os.name != "posix":  # pragma: no cover - Windows cannot open a folder to sync it
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return values


def _variable(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _environment() -> dict[str, Any]:
    """The settings the environment sets, as text (a list of text for a list) for the schema to validate."""
    values: dict[str, Any] = {}
    for name, field in Config.model_fields.items():
        text = os.environ.get(_variable(name), "")
        if not text:
            continue
        if get_origin(field.annotation) is not list:
            values[name] = text
        elif text.lstrip().startswith("["):
            try:
                values[name] = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{_variable(name)}: not a JSON list ({exc})") from exc
        else:
            separator = os.pathsep if name == "model_dirs" else ","
            values[name] = [item.strip() for item in text.split(separator) if item.strip()]
    return values


def _explain(exc: ValidationError) -> str:
    """Every problem on one line, each naming its key: "unknown setting(s) a, b; port: <why> (got 70000)"."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    problems = [f"unknown setting(s) {', '.join(unknown)}"] if unknown else []
    for error in errors:
        if error["type"] != "extra_forbidden":
            key, *index = error["loc"]
            where = str(key) + "".join(f"[{i}]" for i in index)
            problems.append(f"{where}: {error['msg']} (got {error['input']!r})")
    return "; ".join(problems)
