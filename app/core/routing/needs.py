"""The query translator: what a request body needs from the model that serves it.

`translate` reads a raw OpenAI-style body (before or instead of pydantic validation), so it accepts anything
JSON can hold and never raises on it. It runs on every request, so it is one pass over the text:

* hard capabilities a model must have (the endpoint's, the body's `capabilities`, vision, tools);
* soft capabilities the router prefers when some model is tagged with them (the script of the text, code);
* the prompt as plain text, for prefix matching, and an estimate of the context the request needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.catalog import capabilities as caps

CODE = "code"

# A script is tagged when its letters are at least this share of all letters, or at least this many letters
# (so a question in Thai under a long English system prompt still counts). The share rule needs a few letters
# so that a lone "π" or "α + β" does not make a request Greek.
MIN_SCRIPT_SHARE = 0.2
MIN_SCRIPT_CHARS = 20
MIN_SHARE_CHARS = 3

# Unicode blocks per script tag. Han is cjk_nlp; japanese_nlp is kana, plus the Han around it once there is
# some kana (see _scripts), so Japanese text is usually both.
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "arabic_nlp": ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "hebrew_nlp": ((0x0590, 0x05FF), (0xFB1D, 0xFB4F)),
    "cyrillic_nlp": ((0x0400, 0x052F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F)),
    "greek_nlp": ((0x0370, 0x03FF), (0x1F00, 0x1FFF)),
    "devanagari_nlp": ((0x0900, 0x097F), (0xA8E0, 0xA8FF)),
    "cjk_nlp": ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F)),
    "japanese_nlp": ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)),
    "korean_nlp": ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7FF)),
    "thai_nlp": ((0x0E00, 0x0E7F),),
}
# Latin letters only count towards the total that shares are taken of.
_LATIN = ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F))


def _script_table() -> tuple[np.ndarray, tuple[str, ...], int]:
    """A code point -> class lookup: 0 other, 1 Latin, 2.. the scripts in SCRIPTS order.

    Per-character classification in Python or with Unicode-class regexes costs 100-300 µs for 2 KB; this
    table (200 KB, up to the last Han block) lets numpy classify 2 KB in about 15 µs.
    """
    names = tuple(SCRIPTS)
    limit = max(end for ranges in SCRIPTS.values() for _, end in ranges) + 1
    table = np.zeros(limit + 1, dtype=np.uint8)  # index `limit` stands for every higher code point
    for start, end in _LATIN:
        table[start:end + 1] = 1
    for index, name in enumerate(names, start=2):
        for start, end in SCRIPTS[name]:
            table[start:end + 1] = index
    return table, names, limit


_TABLE, _SCRIPT_NAMES, _TABLE_LIMIT = _script_table()

# Code: a fence, or several lines only code has: ending in ; { or }, or opening with a keyword (checked cheaply
# with startswith, then confirmed by a small regex: "let me know" is prose, "let x = 1" is not). Line by line,
# because one MULTILINE regex over the whole text costs ~25 µs per 2 KB in Python's engine.
_FENCE = "```"
MIN_CODE_LINES = 3
_CODE_ENDINGS = (";", "{", "}")
_CODE_STARTS = ("def ", "class ", "import ", "from ", "function", "#include", "const ", "let ", "var ", "public ",
                "private ", "protected ", "static ", "fn ", "func ", "package ")
_CODE_START = re.compile(
    r"(?:def|class|fn|func|package|import) \w|from [\w.]+ import |function\s*\w*\s*\(|#include\b"
    r"|(?:const|let|var) \w+\s*=|(?:public|private|protected|static) \w"
)
_ROLE_PREFIX_MAX = 12  # "assistant: " — a message's first line in chat text starts with its role

_ENDPOINTS = {
    "chat": caps.CHAT, "chat/completions": caps.CHAT,
    "completion": caps.COMPLETION, "completions": caps.COMPLETION,
    "embeddings": caps.EMBEDDINGS, "embedding": caps.EMBEDDINGS,
}
_IMAGE_PARTS = frozenset({"image_url", "input_image"})
_TEXT_PARTS = frozenset({"text", "input_text"})
IMAGE_PLACEHOLDER = "[image]"  # stands for an image in `text`, so prefixes stay comparable


@dataclass(frozen=True, slots=True)
class QueryNeeds:
    hard: frozenset[str]  # a model without all of these cannot serve the request
    soft: frozenset[str]  # prefer models tagged with these, when any exists
    # The prompt estimate and room for one token: max_tokens is a ceiling, not a need (clients such as Claude Code
    # send 32000 on every request; the worker stops at the end of the context with finish_reason "length").
    min_context: int
    text: str  # the whole prompt as plain text; turn N's text is a prefix of turn N+1's
    prompt_tokens_estimate: int


def translate(endpoint: str, body: Mapping[str, Any], *, chars_per_token: float = 4.0) -> QueryNeeds:
    """`endpoint` is "chat", "completion" or "embeddings" (an API path such as /v1/chat/completions works too)."""
    if not chars_per_token > 0:
        raise ValueError("chars_per_token must be positive")
    if not isinstance(body, Mapping):
        body = {}
    kind = _ENDPOINTS.get(endpoint.strip("/").removeprefix("v1/")) if isinstance(endpoint, str) else None
    hard: set[str] = set(_explicit_capabilities(body.get("capabilities")))
    if kind is not None:
        hard.add(kind)

    tokens = 0
    if kind == caps.CHAT or (kind is None and "messages" in body):
        text, vision = _chat_text(body.get("messages"))
        if vision:
            hard.add(caps.VISION)
    else:
        key = "prompt" if kind == caps.COMPLETION or (kind is None and "prompt" in body) else "input"
        text, tokens = _inputs_text(body.get(key))
    if _non_empty(body.get("tools")) or _non_empty(body.get("functions")):
        hard.add(caps.TOOLS)

    prompt_tokens = math.ceil(len(text) / chars_per_token) + tokens
    return QueryNeeds(
        hard=frozenset(hard),
        soft=frozenset(_soft(text)),
        min_context=prompt_tokens + 1,
        text=text,
        prompt_tokens_estimate=prompt_tokens,
    )


# -- text ------------------------------------------------------------------------------------
def _chat_text(messages: Any) -> tuple[str, bool]:
    """One "role: content" line per message, in order; each depends only on its message, so prefixes hold."""
    if not isinstance(messages, list):
        return "", False
    lines: list[str] = []
    vision = False
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        pieces: list[str] = []
        content = message.get("content")
        if isinstance(content, str):
            pieces.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, str):
                    pieces.append(part)
                elif isinstance(part, Mapping):
                    kind = part.get("type")
                    if kind in _IMAGE_PARTS:
                        vision = True
                        pieces.append(IMAGE_PLACEHOLDER)
                    elif kind in _TEXT_PARTS and isinstance(part.get("text"), str):
                        pieces.append(part["text"])
        pieces.extend(_tool_calls(message))
        joined = "\n".join(pieces)
        lines.append(f"{role if isinstance(role, str) else 'unknown'}: {joined}\n")
    return "".join(lines), vision


def _tool_calls(message: Mapping[str, Any]) -> list[str]:
    """An assistant's tool calls are part of the conversation the model sees next turn."""
    calls = message.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, Mapping)] if isinstance(calls, list) else []
    functions.append(message.get("function_call"))  # the legacy single call
    return [f"{f.get('name')}({f.get('arguments')})" for f in functions if isinstance(f, Mapping)]


def _inputs_text(value: Any) -> tuple[str, int]:
    """Completion prompts and embedding inputs: a string, strings, or token ids (counted, not rendered)."""
    if isinstance(value, str):
        return value, 0
    if not isinstance(value, list):
        return "", 0
    texts: list[str] = []
    tokens = 0
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            tokens += 1
        elif isinstance(item, list):
            tokens += sum(1 for t in item if isinstance(t, int) and not isinstance(t, bool))
    return "\n".join(texts), tokens


# -- capabilities ----------------------------------------------------------------------------
def _explicit_capabilities(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [c.strip().lower() for c in items if isinstance(c, str) and c.strip()]


def _soft(text: str) -> set[str]:
    soft = _scripts(text)
    if _looks_like_code(text):
        soft.add(CODE)
    return soft


def _scripts(text: str) -> set[str]:
    if text.isascii():  # the common case costs nothing
        return set()
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    counts = np.bincount(_TABLE.take(np.minimum(points, _TABLE_LIMIT)), minlength=len(_SCRIPT_NAMES) + 2)
    letters = int(counts[1:].sum())
    per_script = dict(zip(_SCRIPT_NAMES, counts[2:].tolist()))
    # Chinese has no kana, so a few kana make the Han around them Japanese too (kanji-heavy text has few kana).
    if per_script["japanese_nlp"] >= MIN_SHARE_CHARS:
        per_script["japanese_nlp"] += per_script["cjk_nlp"]
    return {name for name, count in per_script.items()
            if count >= MIN_SCRIPT_CHARS or (count >= MIN_SHARE_CHARS and count >= MIN_SCRIPT_SHARE * letters)}


def _looks_like_code(text: str) -> bool:
    if _FENCE in text:
        return True
    hits = 0
    for line in text.splitlines():
        line = line.strip()
        if line and (line.endswith(_CODE_ENDINGS) or _opens_like_code(line)):
            hits += 1
            if hits >= MIN_CODE_LINES:
                return True
    return False


def _opens_like_code(line: str) -> bool:
    if line.startswith(_CODE_STARTS):
        return _CODE_START.match(line) is not None
    colon = line.find(": ", 0, _ROLE_PREFIX_MAX)
    if colon <= 0:
        return False
    rest = line[colon + 2:].lstrip()
    return rest.startswith(_CODE_STARTS) and _CODE_START.match(rest) is not None


# -- values ----------------------------------------------------------------------------------
def _non_empty(value: Any) -> bool:
    return isinstance(value, (list, tuple, Mapping)) and len(value) > 0
