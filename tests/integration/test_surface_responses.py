"""The official openai client's Responses API against a real `switchboard serve` with the real default model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.support.servers import Served

INSTRUCTIONS = "You are a helpful assistant."
QUESTION = "What is the capital of France?"
DEFAULT_ID = "smollm2-135m-instruct:q4_1"
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER = json.dumps({"city": "Paris", "temperature_c": 21, "sky": "sunny"})

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, input_: Any, **extra: Any) -> Any:
    return client.responses.create(model="auto", instructions=INSTRUCTIONS, input=input_, temperature=0,
                                   max_output_tokens=40, **extra)


def test_create_answers_with_a_response_object(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="auto", instructions=INSTRUCTIONS, input=QUESTION,
                                                    temperature=0, max_output_tokens=32, metadata={"case": "paris"})
    response = raw.parse()
    assert "Paris" in response.output_text
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.model == DEFAULT_ID == raw.headers["x-switchboard-model"]
    assert [item.type for item in response.output] == ["message"]
    assert response.output[0].role == "assistant" and response.output[0].content[0].type == "output_text"
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert response.metadata == {"case": "paris"} and response.instructions == INSTRUCTIONS


def test_stream_sends_the_events_in_order_with_the_same_text(client: openai.OpenAI) -> None:
    answered = ask(client, QUESTION).output_text
    with client.responses.stream(model="auto", instructions=INSTRUCTIONS, input=QUESTION, temperature=0,
                                 max_output_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 2, "tokens arrive as separate deltas"
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(deltas) == final.output_text == answered
    assert final.status == "completed" and final.usage.output_tokens > 0


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI) -> None:
    first = ask(client, QUESTION)
    follow = ask(client, "What country did I ask about?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id
    assert follow.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert "France" in follow.output_text


def test_max_output_tokens_leaves_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="auto", instructions=INSTRUCTIONS, input="Count to fifty.",
                                       temperature=0, max_output_tokens=5)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.usage.output_tokens == 5
    streamed = client.responses.create(model="auto", instructions=INSTRUCTIONS, input="Count to fifty.",
                                       temperature=0, max_output_tokens=5, stream=True)
    last = list(streamed)[-1]
    assert last.type == "response.incomplete" and last.response.output[0].content[0].text == response.output_text


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    unstored = ask(client, QUESTION, store=False)
    assert "Paris" in unstored.output_text
    with pytest.raises(openai.NotFoundError) as refused:
        ask(client, "And Germany?", previous_response_id=unstored.id)
    assert refused.value.body["param"] == "previous_response_id"
    assert f"'{unstored.id}'" in refused.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_retrieve_and_delete(client: openai.OpenAI, server: Served) -> None:
    created = ask(client, QUESTION)
    retrieved = client.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output_text == created.output_text
    assert retrieved.usage == created.usage
    deleted = httpx.delete(f"{server.base_url}/v1/responses/{created.id}", timeout=30)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_input_tokens_counts_what_create_would_read(client: openai.OpenAI) -> None:
    counted = client.responses.input_tokens.count(model="auto", instructions=INSTRUCTIONS, input=QUESTION)
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == ask(client, QUESTION).usage.input_tokens
    longer = client.responses.input_tokens.count(model="auto", instructions=INSTRUCTIONS,
                                                 input=QUESTION + " Please answer in one short sentence.")
    assert longer.input_tokens > counted.input_tokens


def test_json_schema_text_format(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    response = client.responses.create(
        model="auto", instructions=INSTRUCTIONS, input="Name the capital of France and its country as JSON.",
        temperature=0, max_output_tokens=60,
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}})
    answer = json.loads(response.output_text)
    assert set(answer) == {"city", "country"} and all(isinstance(value, str) for value in answer.values())
    assert response.text.format.type == "json_schema"


# -- function tools ------------------------------------------------------------------------------

def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    called = ask(client, "What is the weather in Paris?", tools=[WEATHER_TOOL], tool_choice="required",
                 parallel_tool_calls=False)
    calls = [item for item in called.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    assert json.loads(calls[0].arguments)["city"] == "Paris"
    output = {"type": "function_call_output", "call_id": calls[0].call_id, "output": WEATHER}
    answered = ask(client, [output], previous_response_id=called.id, tools=[WEATHER_TOOL])
    assert [item.type for item in answered.output] == ["message"] and answered.output_text.strip()
    # The model read the call and its output (what it makes of them is the 135M model's own business).
    assert answered.usage.input_tokens >= called.usage.input_tokens + called.usage.output_tokens + 10
    # Sent whole, without the stored state, the same conversation gets the same answer.
    call = {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
            "arguments": calls[0].arguments}
    stateless = ask(client, [{"role": "user", "content": "What is the weather in Paris?"}, call, output],
                    tools=[WEATHER_TOOL], store=False)
    assert stateless.output_text == answered.output_text


def test_function_tool_round_trip_streamed(client: openai.OpenAI) -> None:
    with client.responses.stream(model="auto", instructions=INSTRUCTIONS, input="What is the weather in Paris?",
                                 tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False,
                                 temperature=0) as stream:
        events = list(stream)
        called = stream.get_final_response()
    assert [event.type for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    (call,) = called.output
    assert call.type == "function_call" and json.loads(call.arguments)["city"] == "Paris"
    assert events[4].arguments == call.arguments and events[2].item.call_id == call.call_id
    output = {"type": "function_call_output", "call_id": call.call_id, "output": WEATHER}
    with client.responses.stream(model="auto", instructions=INSTRUCTIONS, input=[output], temperature=0,
                                 max_output_tokens=40, previous_response_id=called.id,
                                 tools=[WEATHER_TOOL]) as stream:
        answered = stream.get_final_response()
    assert [item.type for item in answered.output] == ["message"]
    assert answered.output_text == ask(client, [output], previous_response_id=called.id,
                                       tools=[WEATHER_TOOL]).output_text


# -- errors --------------------------------------------------------------------------------------

def _health(server: Served) -> str:
    return str(httpx.get(f"{server.base_url}/api/models/{DEFAULT_ID}", timeout=30).json()["health"])


def test_bad_input_is_400_and_leaves_the_model_healthy(client: openai.OpenAI, server: Served) -> None:
    assert "Paris" in ask(client, QUESTION).output_text
    refused = [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        ({"input": [{"content": "no role, no type"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": []}, "input"),
        ({"input": 5}, "input"),
        ({"input": ["a bare string"]}, "input[0]"),
        ({"temperature": 7}, "temperature"),
    ]
    for extra, param in refused:
        body = {"model": DEFAULT_ID, "instructions": INSTRUCTIONS, "input": QUESTION, **extra}
        response = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=60)
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["param"] == param, (extra, error)
    with pytest.raises(openai.BadRequestError) as bad:
        ask(client, QUESTION, tools=[{"type": "file_search", "vector_store_ids": ["vs"]}])
    assert "only function tools" in bad.value.message
    assert _health(server) == "healthy"
    assert "Paris" in ask(client, QUESTION).output_text
