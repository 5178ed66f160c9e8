"""Capabilities a model offers, inferred from its GGUF metadata (users may override them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CHAT = "chat"
COMPLETION = "completion"
EMBEDDINGS = "embeddings"
VISION = "vision"
TOOLS = "tools"  # tool calls: every chat model (through its template, or the fallback in runtime/local/tools.py)
NATIVE_TOOLS = "native_tools"  # its chat template renders tools, in a format the worker parses

KNOWN = (CHAT, COMPLETION, EMBEDDINGS, VISION, TOOLS, NATIVE_TOOLS)

# Encoder-only architectures llama.cpp runs as embedding models.
EMBEDDING_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert"})


def infer(meta: Mapping[str, Any], *, has_projector: bool = False) -> list[str]:
    """`meta` is a registry metadata dict (architecture, pooling_type, has_chat_template, tool_style)."""
    arch = (meta.get("architecture") or "").lower()
    pooling = meta.get("pooling_type")
    # pooling_type 0 is "none": a generative model that merely records the field.
    if arch in EMBEDDING_ARCHITECTURES or (pooling not in (None, 0) and not meta.get("has_chat_template")):
        return [EMBEDDINGS]
    caps = [COMPLETION]
    if meta.get("has_chat_template"):
        caps.insert(0, CHAT)
        caps.append(TOOLS)
        if meta.get("tool_style"):
            caps.append(NATIVE_TOOLS)
    if has_projector:
        caps.append(VISION)
    return caps


def tool_style(template: str | None) -> str | None:
    """The format of a chat template's own tool calls, when it renders tool definitions (Hugging Face's `tools`
    variable) in a format the worker parses: "hermes" (Qwen, Hermes: <tool_call>), "mistral" ([TOOL_CALLS]) or
    "llama3" (bare JSON after an ipython role); None for any other template."""
    if not template or "tools" not in template:
        return None
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or "ipython" in template:
        return "llama3"
    return None
