"""Capabilities a model offers, inferred from its GGUF metadata (users may override them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHAT = "chat"
COMPLETION = "completion"
EMBEDDINGS = "embeddings"
VISION = "vision"
TOOLS = "tools"

KNOWN = (CHAT, COMPLETION, EMBEDDINGS, VISION, TOOLS)

# Encoder-only architectures llama.cpp runs as embedding models.
EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert"})


def infer(meta: Mapping[str, Any], *, has_projector: bool = False) -> list[str]:
    """`meta` is a registry metadata dict (architecture, pooling_type, has_chat_template, chat_template_tools)."""
    arch = (meta.get("architecture") or "").lower()
    pooling = meta.get("pooling_type")
    # pooling_type 0 is "none": a generative model that merely records the field.
    if arch in EMBEDDING_ARCHITECTURES or (pooling not in (None, 0) and not meta.get("has_chat_template")):
        return [EMBEDDINGS]
    caps = [COMPLETION]
    if meta.get("has_chat_template"):
        caps.insert(0, CHAT)
        if meta.get("chat_template_tools"):
            caps.append(TOOLS)
    if has_projector:
        caps.append(VISION)
    return caps


def template_supports_tools(template: str | None) -> bool:
    # Templates that render tool definitions mention them by these names (HF and llama.cpp conventions).
    return bool(template) and ("tools" in template or "tool_call" in template)  # type: ignore[operator]
