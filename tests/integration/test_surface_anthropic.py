"""The official anthropic client against the Messages surface of a real `switchboard serve` with the real default
model, streamed and not, tool round trips included."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.support.servers import Served, start_server

DEFAULT_ID = "smollm2-135m-instruct:q4_1"
SYSTEM = "You are a helpful assistant."
ASK = [{"role": "user", "content": "What is the capital of France?"}]
# This SDK no longer takes sampling parameters as arguments; the API still does.
GREEDY = {"extra_body": {"temperature": 0}}
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city", "unit"]}}
TOOL_SYSTEM = "You are a helpful assistant with tools."
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def _text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def _health(server: Served) -> str:
    return str(httpx.get(f"{server.base_url}/api/models/{DEFAULT_ID}", timeout=10).json()["health"])


def test_create_answers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="auto", system=SYSTEM, messages=ASK, max_tokens=32,
                                                   **GREEDY)
    message = raw.parse()
    assert "Paris" in _text(message)
    assert message.id.startswith("msg_") and message.model == DEFAULT_ID and message.role == "assistant"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.cache_creation_input_tokens == 0
    assert raw.headers["x-switchboard-model"] == DEFAULT_ID


def test_stream_equals_create(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=32, **GREEDY)
    with client.messages.stream(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=32, **GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 2, "tokens arrive as separate deltas"
    assert "".join(pieces) == _text(final) == _text(whole)
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens
    # The same prompt again is read from cache: Anthropic counts those tokens apart from input_tokens.
    assert (final.usage.input_tokens + final.usage.cache_read_input_tokens ==
            whole.usage.input_tokens + whole.usage.cache_read_input_tokens)
    assert final.usage.cache_read_input_tokens > 0


def test_count_tokens(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=4, **GREEDY)
    counted = client.messages.count_tokens(model=DEFAULT_ID, system=SYSTEM, messages=ASK)
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens
    with_tools = client.messages.count_tokens(model=DEFAULT_ID, system=SYSTEM, messages=ASK, tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens, "the tools offered are part of the prompt"


def test_stop_sequences(client: anthropic.Anthropic) -> None:
    stopped = client.messages.create(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=32,
                                     stop_sequences=["zebra", "Paris"], **GREEDY)
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris"
    assert "Paris" not in _text(stopped) and _text(stopped)
    with client.messages.stream(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=32,
                                stop_sequences=["zebra", "Paris"], **GREEDY) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence, _text(final)) == ("stop_sequence", "Paris", _text(stopped))
    # A stop sequence that never comes leaves the answer as it was: ended by the model.
    unmet = client.messages.create(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=32,
                                   stop_sequences=["zebra"], **GREEDY)
    assert unmet.stop_reason == "end_turn" and unmet.stop_sequence is None and "Paris" in _text(unmet)


def test_max_tokens(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=3, **GREEDY)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
    # Every client must send max_tokens, so it is a ceiling: one beyond the model's context (4096) is no refusal.
    ceiling = client.messages.create(model="auto", system=SYSTEM, messages=ASK, max_tokens=32000, **GREEDY)
    assert ceiling.stop_reason == "end_turn" and "Paris" in _text(ceiling)


def test_blocks_beta_and_ignored_fields_give_the_same_answer(client: anthropic.Anthropic) -> None:
    plain = client.messages.create(model=DEFAULT_ID, system=SYSTEM, messages=ASK, max_tokens=32, **GREEDY)
    blocks = client.beta.messages.create(
        model=DEFAULT_ID, max_tokens=32, betas=["prompt-caching-2024-07-31"],
        system=[{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": ASK[0]["content"]}]}],
        metadata={"user_id": "tester"}, thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"temperature": 0, "top_k": 40, "no_such_field": True})
    assert _text(blocks) == _text(plain)


def test_image_blocks_ask_for_vision(client: anthropic.Anthropic) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="auto", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
            {"type": "text", "text": "What is this?"}]}])
    assert "vision" in info.value.message


# -- errors ----------------------------------------------------------------------------------

def _refused(error: anthropic.APIStatusError, kind: str) -> str:
    assert isinstance(error.body, dict) and error.body["type"] == "error"
    assert error.body["error"]["type"] == kind
    return str(error.body["error"]["message"])


def test_bad_input_is_400_in_anthropic_shape(client: anthropic.Anthropic, server: Served) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:  # the SDK itself insists on max_tokens
        client.post("/v1/messages", cast_to=anthropic.types.Message, body={"model": DEFAULT_ID, "messages": ASK})
    assert info.value.status_code == 400 and "max_tokens" in _refused(info.value, "invalid_request_error")
    bad_blocks: list[list[dict[str, Any]]] = [
        [{"role": "user", "content": [{"type": "video", "url": "x"}]}],
        [{"role": "user", "content": [{"type": "text"}]}],
        [{"role": "user", "content": [{"type": "tool_result", "content": "18 degrees"}]}],
        [{"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": "x"}]}],
    ]
    for messages in bad_blocks:
        with pytest.raises(anthropic.BadRequestError) as info:
            client.messages.create(model=DEFAULT_ID, max_tokens=8, messages=messages)
        assert "messages[0].content[0]" in _refused(info.value, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=DEFAULT_ID, max_tokens=8, messages=ASK, extra_body={"temperature": 1.5})
    assert "temperature" in _refused(info.value, "invalid_request_error")
    # Found by the fuzz: a tool_choice that needs tools, with none given, is the request's fault (was a 500).
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=DEFAULT_ID, max_tokens=8, messages=ASK, tool_choice={"type": "any"})
    assert "needs tools" in _refused(info.value, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.count_tokens(model=DEFAULT_ID, messages=ASK, tool_choice={"type": "any"})
    assert "needs tools" in _refused(info.value, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=8, messages=ASK)
    assert "no-such-model" in _refused(info.value, "not_found_error")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=ASK)
    assert _health(server) == "healthy"


def test_api_key_as_x_api_key(tmp_path: Path) -> None:
    served = start_server(tmp_path, env={"SWITCHBOARD_API_KEY": "right-key"})
    try:
        right = anthropic.Anthropic(base_url=served.base_url, api_key="right-key", max_retries=0, timeout=120)
        assert right.messages.create(model="auto", max_tokens=2, messages=ASK).content is not None
        wrong = anthropic.Anthropic(base_url=served.base_url, api_key="wrong-key", max_retries=0, timeout=120)
        with pytest.raises(anthropic.AuthenticationError) as info:
            wrong.messages.create(model="auto", max_tokens=2, messages=ASK)
        _refused(info.value, "authentication_error")
    finally:
        served.stop()


# -- tools -----------------------------------------------------------------------------------

def _weather_call(message: anthropic.types.Message) -> anthropic.types.ToolUseBlock:
    """The answer's one tool_use: it names the offered tool and its input satisfies the tool's input_schema."""
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert len(calls) == 1
    call = calls[0]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert isinstance(call.input, dict) and set(call.input) == {"city", "unit"}
    assert isinstance(call.input["city"], str) and call.input["unit"] in ("celsius", "fahrenheit")
    return call


def _answered(call: anthropic.types.ToolUseBlock, is_error: bool = False) -> list[dict[str, Any]]:
    """The conversation with the call made and its result given back."""
    return [*WEATHER_ASK,
            {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name,
                                               "input": call.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "is_error": is_error,
                                          "content": [{"type": "text", "text": "18 degrees and sunny"}]}]}]


def test_tool_round_trip(client: anthropic.Anthropic) -> None:
    asked = client.messages.create(model=DEFAULT_ID, system=TOOL_SYSTEM, messages=WEATHER_ASK, max_tokens=64,
                                   tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                   **GREEDY)
    call = _weather_call(asked)
    named = client.messages.create(model=DEFAULT_ID, system=TOOL_SYSTEM, messages=WEATHER_ASK, max_tokens=64,
                                   tools=[WEATHER], **GREEDY,
                                   tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True})
    assert _weather_call(named).input == call.input
    answer = client.messages.create(model=DEFAULT_ID, system=TOOL_SYSTEM, messages=_answered(call), max_tokens=48,
                                    tools=[WEATHER], tool_choice={"type": "none"}, **GREEDY)
    assert answer.stop_reason in ("end_turn", "max_tokens") and _text(answer).strip()
    assert not [block for block in answer.content if block.type == "tool_use"]
    failed = client.messages.create(model=DEFAULT_ID, system=TOOL_SYSTEM, messages=_answered(call, is_error=True),
                                    max_tokens=48, tools=[WEATHER], tool_choice={"type": "none"},
                                    **GREEDY)
    assert _text(failed).strip()


def test_tool_round_trip_streamed(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = dict(model=DEFAULT_ID, system=TOOL_SYSTEM, messages=WEATHER_ASK, max_tokens=64,
                                  tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                  **GREEDY)
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    call = _weather_call(final)
    assert call.input == _weather_call(whole).input
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "input_json" in kinds
    with client.messages.stream(model=DEFAULT_ID, system=TOOL_SYSTEM, messages=_answered(call), max_tokens=48,
                                tools=[WEATHER], tool_choice={"type": "none"}, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        answer = stream.get_final_message()
    assert text.strip() and text == _text(answer) and answer.stop_reason in ("end_turn", "max_tokens")
