"""Tool calls: which format a template's own calls take, how a request's tools reach the model (its template or
the fallback's system message), the grammar that constrains a call, and how an answer is read back as calls."""

from __future__ import annotations

import json

import pytest

from app.core.catalog.capabilities import NATIVE_TOOLS, TOOLS, infer, tool_style
from app.core.runtime.local import tools
from app.core.runtime.local.grammar import SchemaRefused
from tests.support import templates

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                                  "required": ["a", "b"]}}}
ASK = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Weather in Paris?"}]


def test_a_template_s_tool_format_is_recognised() -> None:
    assert tool_style(templates.HERMES) == "hermes"
    assert tool_style(templates.LLAMA3) == "llama3"
    assert tool_style("{% if tools %}[TOOL_CALLS]{% endif %}{{ messages }}") == "mistral"
    assert tool_style("{% for m in messages %}{{ m.content }}{% endfor %}") is None  # no tools: the fallback
    assert tool_style("{{ tools }} in a format of its own") is None
    chat = {"architecture": "llama", "has_chat_template": True}
    assert TOOLS in infer(chat) and NATIVE_TOOLS not in infer(chat)  # every chat model calls tools
    assert NATIVE_TOOLS in infer({**chat, "tool_style": "hermes"})
    assert TOOLS not in infer({"architecture": "bert"})


def test_the_fallback_describes_the_tools_and_waits_for_the_marker() -> None:
    plan = tools.plan({"messages": ASK, "tools": [WEATHER, ADD]}, None)
    assert plan.tools is None and plan.style is tools.HERMES and plan.lazy  # tool_choice defaults to auto
    system = plan.messages[0]["content"]
    assert system.startswith("You are helpful.") and '"name": "get_weather"' in system and "<tool_call>" in system
    assert plan.messages[1:] == ASK[1:]
    assert plan.grammar is not None and '"\\"get_weather\\""' in plan.grammar and '"\\"add\\""' in plan.grammar
    required = tools.plan({"messages": ASK[1:], "tools": [WEATHER], "tool_choice": "required"}, None)
    assert not required.lazy and required.messages[0]["role"] == "system"  # a system message of its own


def test_a_native_template_gets_the_tools_and_objects_for_arguments() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [*ASK, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    plan = tools.plan({"messages": messages, "tools": [WEATHER]}, "hermes")
    assert plan.tools == [WEATHER] and plan.messages[0] == ASK[0]
    assert plan.messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert plan.messages[3] == messages[3]  # the template renders tool turns itself
    fallback = tools.plan({"messages": messages}, None)  # no tools this turn: the history still has to render
    assert fallback.style is None and fallback.grammar is None
    assert fallback.messages[2] == {"role": "assistant", "content":
                                    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert fallback.messages[3] == {"role": "user", "content": "The result of get_weather: sunny"}


def test_tool_choice_none_and_a_named_function() -> None:
    none = tools.plan({"messages": ASK, "tools": [WEATHER], "tool_choice": "none"}, "hermes")
    assert none.tools is None and none.grammar is None and none.style is None
    named = tools.plan({"messages": ASK, "tools": [WEATHER, ADD],
                        "tool_choice": {"type": "function", "function": {"name": "add"}}}, "llama3")
    assert not named.lazy and named.tools == [ADD]
    assert named.grammar is not None and "get_weather" not in named.grammar and '\\"parameters\\"' in named.grammar
    with pytest.raises(SchemaRefused, match="nope"):
        tools.plan({"messages": ASK, "tools": [WEATHER], "tool_choice": {"function": {"name": "nope"}}}, None)
    single = tools.plan({"messages": ASK, "tools": [WEATHER], "parallel_tool_calls": False}, None)
    assert single.grammar is not None and "{0,0}" in single.grammar


@pytest.mark.parametrize("style, text, expected", [
    (tools.HERMES, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
                   '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>',
     [("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})]),
    (tools.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather", {"city": "Paris"})]),
    (tools.MISTRAL, '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]', [("add", {"a": 1, "b": 2})]),
])
def test_answers_are_read_back_as_openai_tool_calls(style: tools.Style, text: str,
                                                    expected: list[tuple[str, dict]]) -> None:
    calls = tools.parse(style, text)
    assert calls is not None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == expected
    assert [c["index"] for c in calls] == list(range(len(expected)))
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == len(calls)


def test_what_is_not_a_call_is_not_read_as_one() -> None:
    assert tools.parse(tools.HERMES, "Paris is sunny today.") is None
    assert tools.parse(tools.HERMES, "<tool_call>\n{\"name\": \"get_weath") is None  # cut off
    assert tools.parse(tools.MISTRAL, "[TOOL_CALLS] not json") is None
    assert tools.parse(tools.LLAMA3, '{"city": "Paris"}') is None  # JSON, but no call


def test_lazy_triggers_match_where_a_call_may_start() -> None:
    import re

    hermes = re.compile(tools.HERMES.trigger)  # searched for: the call begins where it matches
    assert hermes.search("Let me look that up. <tool_call>\n{") and not hermes.search("No call here")
    assert hermes.search("x <tool_call>").start() == 2
    llama = tools.LLAMA3.trigger  # matched against the whole answer: the call must start it
    assert llama.startswith("^") and llama.endswith("$")
    assert re.fullmatch(llama, '  {"name": "add"').start(1) == 2
    assert not re.fullmatch(llama, 'Sure: {"name": "add"')


def test_an_answer_cut_off_keeps_its_complete_calls_and_repeats_count_once() -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    calls = tools.parse(tools.HERMES, call + call + '<tool_call>\n{"name": "get_wea')
    assert calls is not None and [c["function"]["name"] for c in calls] == ["get_weather"]
