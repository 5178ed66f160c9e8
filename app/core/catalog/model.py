"""A model as the registry knows it: what a scan found in its file, and the user's settings of it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.core.catalog import capabilities as caps
from app.core.catalog.architectures import llama_version
from app.core.catalog.discovery.found import FoundModel

# The fields a scan (or the user, for a remote backend) determines; persisted as one JSON document.
DISCOVERED = ("name", "tag", "source", "path", "paths", "parts", "projector", "display_name", "metadata",
               "inferred_capabilities", "remote")


def file_state(paths: Iterable[str]) -> tuple[int, int]:
    """The files as they are now: their total size and latest mtime (ns); a file that is gone counts as empty."""
    size = mtime = 0
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
    return size, mtime


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """Why a model's files failed to load, with those files and llama.cpp as they were then. It holds, and the model
    is not tried again, until either changes or the user loads the model again: the same file fails the same way."""

    reason: str
    files: tuple[int, int]  # file_state of its files
    llama: str  # llama_version()

    @classmethod
    def now(cls, reason: str, paths: Iterable[str]) -> LoadFailure:
        return cls(reason, file_state(paths), llama_version())

    def holds(self, paths: Iterable[str]) -> bool:
        return self.files == file_state(paths) and self.llama == llama_version()

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "size": self.files[0], "mtime_ns": self.files[1], "llama": self.llama}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LoadFailure | None:
        if not data:
            return None
        return cls(str(data["reason"]), (int(data["size"]), int(data["mtime_ns"])), str(data["llama"]))


@dataclass(slots=True)
class ModelEntry:
    id: str
    name: str
    tag: str
    source: str
    path: str
    paths: list[str]  # every place this exact model was found; `path` is the one loaded
    parts: list[str]
    projector: str | None
    display_name: str
    metadata: dict[str, Any]
    inferred_capabilities: list[str]
    capabilities_override: list[str] | None = None
    aliases: list[str] = field(default_factory=list)
    enabled: bool = True
    missing: bool = False
    use_count: int = 0
    last_used: float | None = None
    # Routing options the user sets: weight (weighted-random), fallbacks (tried in order when this model
    # cannot serve a request that names it), replicas (worker processes), parallel (requests each worker decodes
    # together; None: the configured default). Replicas and parallel apply when a worker next loads.
    weight: float = 1.0
    fallbacks: list[str] = field(default_factory=list)
    replicas: int = 1
    parallel: int | None = None
    # For a remote OpenAI-compatible backend: its RemoteSpec as a dict; None for local models.
    remote: dict[str, Any] | None = None
    # Why its files did not load (or cannot, as a scan found), remembered across restarts; None: nothing known.
    load_failure: LoadFailure | None = None

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    def options(self) -> dict[str, Any]:
        """What the store keeps in the model's options: the routing options, and the remembered load failure."""
        return {"weight": self.weight, "fallbacks": self.fallbacks, "replicas": self.replicas,
                "parallel": self.parallel,
                "load_failure": None if self.load_failure is None else self.load_failure.to_dict()}

    @property
    def capabilities(self) -> list[str]:
        chosen = self.capabilities_override if self.capabilities_override is not None else self.inferred_capabilities
        return list(chosen)

    @property
    def size(self) -> int:
        return int(self.metadata.get("size") or 0)

    def discovered(self) -> dict[str, Any]:
        """What a scan determines (persisted so missing models keep their description)."""
        return {name: getattr(self, name) for name in DISCOVERED}


def entry_from_found(found: FoundModel) -> ModelEntry:
    header = found.header
    template = header.chat_template
    meta: dict[str, Any] = {
        "architecture": header.architecture,
        "quantization": header.quantization,
        "size_label": header.size_label,
        "parameter_count": header.parameter_count,
        "context_length": header.context_length,
        "embedding_length": header.embedding_length,
        "block_count": header.block_count,
        "head_count": header.head_count,
        "head_count_kv": header.head_count_kv,
        "has_chat_template": header.has_chat_template,
        "tool_style": caps.tool_style(template),
        "pooling_type": header.pooling_type,
        "size": found.size or header.file_size,
        "general_name": header.name,
    }
    parts = list(found.parts) or [found.path]
    return ModelEntry(
        id=found.id,
        name=found.name,
        tag=found.tag,
        source=found.source,
        path=found.path,
        paths=[found.path],
        parts=parts,
        projector=found.projector,
        display_name=found.display_name or header.name or found.name,
        metadata=meta,
        inferred_capabilities=caps.infer(meta, has_projector=found.projector is not None),
        load_failure=None if found.load_refusal is None else LoadFailure.now(found.load_refusal, parts),
    )
