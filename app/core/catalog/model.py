"""A model as the registry knows it: what a scan found in its file, and the user's settings of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.catalog import capabilities as caps
from app.core.catalog.discovery.found import FoundModel

# The fields a scan (or the user, for a remote backend) determines; persisted as one JSON document.
DISCOVERED = ("name", "tag", "source", "path", "paths", "parts", "projector", "display_name", "metadata",
               "inferred_capabilities", "remote")


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
    # cannot serve a request that names it), replicas (worker processes).
    weight: float = 1.0
    fallbacks: list[str] = field(default_factory=list)
    replicas: int = 1
    # For a remote OpenAI-compatible backend: its RemoteSpec as a dict; None for local models.
    remote: dict[str, Any] | None = None

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    def options(self) -> dict[str, Any]:
        return {"weight": self.weight, "fallbacks": self.fallbacks, "replicas": self.replicas}

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
        "chat_template_tools": caps.template_supports_tools(template),
        "pooling_type": header.pooling_type,
        "size": found.size or header.file_size,
        "general_name": header.name,
    }
    return ModelEntry(
        id=found.id,
        name=found.name,
        tag=found.tag,
        source=found.source,
        path=found.path,
        paths=[found.path],
        parts=list(found.parts) or [found.path],
        projector=found.projector,
        display_name=found.display_name or header.name or found.name,
        metadata=meta,
        inferred_capabilities=caps.infer(meta, has_projector=found.projector is not None),
    )
