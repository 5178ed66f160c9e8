"""Tool calls for every chat model: tools into the prompt, the call constrained by a grammar, the answer parsed.

A model whose chat template renders tool definitions in a format parsed here (catalog/capabilities.py
`tool_style`: Hermes/Qwen `<tool_call>{...}</tool_call>`, Llama 3.x `{"name": ..., "parameters": ...}`, Mistral
`[TOOL_CALLS][...]`) gets the tools through its own template and answers in its own format. Every other model gets
them described in a system message and answers in the Hermes format, which small instruct models follow best; its
conversation's earlier calls and tool results are written in that format too, as plain turns any template renders.

Either way the call is constrained by a grammar built from the tools' parameter schemas, so a call is always valid
JSON naming an offered function with arguments that match its schema: from the first token for tool_choice
"required" or a named function; for "auto" lazily, from the moment the answer starts the style's call marker
(llama.cpp's lazy grammar), so a plain answer stays free. "none" offers no tools.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from app.core.runtime.local.grammar import SchemaRefused

MAX_PARALLEL_CALLS = 4  # calls one answer may hold: a small model asked for "one or more" may otherwise loop


@dataclass(frozen=True, slots=True)
class Style:
    """One tool-call format: the marker that starts its calls, the key holding a call's arguments, and how calls
    are written one after another."""

    name: str
    marker: str  # a regex: where the calls begin
    opener: str  # the literal text the marker starts with (what may be held back while it could be a call)
    arguments_key: str
    anywhere: bool  # the calls may follow some text (else only at the start of the answer)
    # GBNF of the calls, given the one-call rule `call` and how many more calls may follow.
    wrap: str

    def grammar(self, call_rules: str, more: int) -> str:
        return call_rules.replace("root ::=", "call ::=", 1) + "\n" + self.wrap.format(more=more) + "\n"

    def find(self, text: str) -> int:
        """Where the calls begin in an answer, or -1."""
        found = re.search(self.marker if self.anywhere else r"^\s*(?=" + self.marker + ")", text)
        return -1 if found is None else found.end() if not self.anywhere else found.start()

    @property
    def trigger(self) -> str:
        """The lazy grammar's trigger, as llama.cpp reads one: a regex searched for in the answer so far (the call
        begins where it matches), or, between ^ and $, matched against the whole answer (group 1: where the call
        begins). llama.cpp tries it after every token, so it is kept to what a match needs: a search for the
        marker, or one anchored match for a call that may only start the answer."""
        return self.marker if self.anywhere else r"^\s*(" + self.marker + r")[\s\S]*$"


HERMES = Style("hermes", re.escape("<tool_call>"), "<tool_call>", "arguments", True,
               'root ::= block ("\\n"? block){{0,{more}}}\n'
               'block ::= "<tool_call>" "\\n"? call "\\n"? "</tool_call>"')
LLAMA3 = Style("llama3", r'\{\s*"name"', "{", "parameters", False,
               'root ::= call (";" " "? call){{0,{more}}}')
MISTRAL = Style("mistral", re.escape("[TOOL_CALLS]"), "[TOOL_CALLS]", "arguments", True,
                'root ::= "[TOOL_CALLS]" " "? "[" call ("," " "? call){{0,{more}}} "]"')
STYLES = {style.name: style for style in (HERMES, LLAMA3, MISTRAL)}

FALLBACK_PROMPT = """You can call these tools. Each is a function with a JSON Schema for its arguments:
<tools>
{tools}
</tools>
To call a tool, answer with nothing but:
<tool_call>
{{"name": "<the function's name>", "arguments": {{<its arguments>}}}}
</tool_call>
When no tool is needed, answer normally."""


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one chat request is put to the model and read back."""

    messages: list[dict[str, Any]]  # the conversation as its template gets it
    tools: list[dict[str, Any]] | None  # for a template that renders them itself
    style: Style | None  # None: no tool calls expected
    grammar: str | None = None  # constrains the calls
    lazy: bool = False  # the grammar waits for the style's marker (tool_choice auto)


def plan(params: dict[str, Any], native: str | None) -> ToolPlan:
    """The conversation, tools and call grammar of a chat request for a model whose template's tool style is
    `native` (None: the fallback). Raises SchemaRefused for a tool whose parameters cannot be constrained."""
    tools = [t["function"] for t in params.get("tools") or () if t.get("type") == "function"]
    choice = params.get("tool_choice") or "auto"
    style = STYLES[native] if native else HERMES
    messages = _conversation(params["messages"], native=native is not None)
    if not tools or choice == "none":
        return ToolPlan(messages, None, None)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tools = [t for t in tools if t.get("name") == name]
        if not tools:
            raise SchemaRefused(f"tool_choice names the function {name!r}, which is not among the tools")
    more = MAX_PARALLEL_CALLS - 1 if params.get("parallel_tool_calls", True) else 0
    grammar = style.grammar(_call_rules(tools, style.arguments_key), more)
    if native is None:
        messages = _with_tool_prompt(messages, tools)
        offered = None
    else:
        offered = [{"type": "function", "function": t} for t in tools]
    return ToolPlan(messages, offered, style, grammar, lazy=choice == "auto")


def parse(style: Style, text: str) -> list[dict[str, Any]] | None:
    """The OpenAI tool calls an answer holds (its complete ones: an answer cut off by max_tokens may end inside
    one; a call repeated word for word counts once), or None when it holds no well-formed call."""
    calls: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    at = style.find(text)
    if at < 0:
        return None
    rest = text[at:] if style is LLAMA3 else text[at + len(style.opener):]
    if style is MISTRAL:
        rest = rest.lstrip()
        try:
            found, _ = decoder.raw_decode(rest)
        except ValueError:
            return None
        objects = found if isinstance(found, list) else [found]
    else:
        objects = []
        while True:
            start = rest.find("{")
            if start < 0:
                break
            try:
                found, end = decoder.raw_decode(rest, start)
            except ValueError:
                break
            objects.append(found)
            rest = rest[end:]
    seen = set()
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        arguments = obj.get(style.arguments_key, obj.get("arguments", {}))
        function = {"name": obj["name"], "arguments": json.dumps(arguments)}
        if (function["name"], function["arguments"]) in seen:
            continue
        seen.add((function["name"], function["arguments"]))
        calls.append({"index": len(calls), "id": "call_" + secrets.token_hex(12), "type": "function",
                      "function": function})
    return calls or None


def _call_rules(tools: list[dict[str, Any]], arguments_key: str) -> str:
    """GBNF whose root is one call of any of the tools: {"name": <its name>, <arguments_key>: <its schema>}."""
    alternatives = [{"type": "object", "required": ["name", arguments_key],
                     "properties": {"name": {"const": t["name"]},
                                    arguments_key: t.get("parameters") or {"type": "object"}}}
                    for t in tools]
    schema = alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter asserts on what it cannot express
        raise SchemaRefused(f"A tool's parameters cannot be used: {exc or type(exc).__name__}") from exc


def _with_tool_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    described = "\n".join(json.dumps({"type": "function", "function": t}) for t in tools)
    prompt = FALLBACK_PROMPT.format(tools=described)
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + prompt}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _conversation(messages: list[dict[str, Any]], *, native: bool) -> list[dict[str, Any]]:
    """Earlier calls and tool results as the template takes them: a native template gets each call's arguments
    as an object (Hugging Face's convention); any other gets the calls written in the fallback's own format, as an
    assistant turn, and each result as a user turn that names the function it came from (a model that never
    learned a tool format answers from plain words, where a tagged result is echoed back)."""
    out = []
    names = {c.get("id"): c.get("function", {}).get("name") for m in messages for c in m.get("tool_calls") or ()}
    for message in messages:
        calls = message.get("tool_calls")
        if native:
            if calls:
                message = {**message, "tool_calls": [_with_object_arguments(c) for c in calls]}
        elif calls:
            written = "".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                            "arguments": _arguments(c)}) + "\n</tool_call>"
                              for c in calls)
            content = message.get("content") or ""
            message = {"role": "assistant", "content": f"{content}\n{written}" if content else written}
        elif message.get("role") == "tool":
            name = names.get(message.get("tool_call_id")) or "the tool"
            message = {"role": "user", "content": f"The result of {name}: {message.get('content', '')}"}
        out.append(message)
    return out


def _arguments(call: dict[str, Any]) -> Any:
    arguments = call.get("function", {}).get("arguments", {})
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _with_object_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function", {})
    return {**call, "function": {**function, "arguments": _arguments(call)}}
