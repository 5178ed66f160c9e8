"""Structured output: a request's `response_format` as the llama.cpp grammar that constrains its tokens.

llama-cpp-python's chat handlers only know `{"type": "json_object"}` and, when a schema cannot be compiled, fall
back to any JSON without a word; here `json_schema` is honoured and a schema that cannot be compiled is the
request's error (`SchemaRefused`), named, before any token is decoded.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf


class SchemaRefused(ValueError):
    """The response_format's schema cannot be turned into a grammar."""


def grammar_for(response_format: dict[str, Any]) -> str | None:
    """The GBNF text llama.cpp's grammar sampler parses: None for plain text; any JSON for json_object; the
    schema's grammar for json_schema (or json_object with llama-cpp-python's `schema` extension)."""
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    elif kind == "json_object":
        schema = response_format.get("schema")
    else:
        return None
    if schema is None:
        return JSON_GBNF
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter asserts on what it cannot express
        raise SchemaRefused(f"The response_format schema cannot be used: {exc or type(exc).__name__}") from exc
