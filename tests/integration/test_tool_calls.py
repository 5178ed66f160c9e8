"""Tool calls with the real default model and models derived from it that carry a Hermes/Qwen-style and a
Llama-3-style tool template: the worker's batch engine in this process, and the OpenAI surface of a real server
through the official client, streamed and not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from app.core.runtime.local.batch import BatchEngine
from app.core.runtime.local.llama import load
from tests.integration.test_batch import Outbox, run
from tests.support import templates
from tests.support.models import make_templated_model
from tests.support.servers import Served, start_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
SYSTEM = {"role": "system", "content": "You are a helpful assistant with tools."}
ASK = [SYSTEM, {"role": "user", "content": "What is the weather in Paris?"}]
STYLES = {"default": None, "hermes": templates.HERMES, "llama3": templates.LLAMA3}

pytestmark = pytest.mark.slow


def valid_weather_call(name: str, arguments: str) -> dict[str, Any]:
    """The call names the offered function and its arguments satisfy its schema."""
    assert name == "get_weather"
    args = json.loads(arguments)
    assert set(args) == {"city", "unit"} and isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit")
    return args


@pytest.fixture(scope="module")
def model_files(default_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tool-models")
    files = {"default": default_model}
    for style, template in STYLES.items():
        if template is not None:
            files[style] = make_templated_model(default_model, folder / f"smol-{style}.Q4_1.gguf",
                                                name=f"Smol {style}", template=template)
    return files


@pytest.fixture(scope="module", params=list(STYLES))
def engine(request: pytest.FixtureRequest, model_files: dict[str, Path]) -> Iterator[tuple[BatchEngine, Outbox]]:
    llm = load(str(model_files[request.param]), n_seq_max=2, n_ctx=2 * 2048, verbose=False)
    outbox = Outbox()
    batch = BatchEngine(llm, parallel=2, n_ctx_seq=2048, send=outbox)
    assert batch._chat.tool_style == (None if request.param == "default" else request.param)
    yield batch, outbox
    batch.close()


def calls_of(outbox: Outbox, job: str) -> list[dict[str, Any]]:
    return [call for choice in outbox.choices(job) for call in choice["delta"].get("tool_calls") or ()]


def test_required_gives_a_valid_call_in_every_style(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    batch.submit("call", "chat", {"messages": ASK, "tools": [WEATHER, TIME], "tool_choice": "required",
                                  "temperature": 0, "max_tokens": 80})
    run(batch)
    calls = calls_of(outbox, "call")
    assert calls and outbox.finish("call") == "tool_calls"
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert any(c["function"]["name"] == "get_weather" for c in calls)
    for call in calls:
        if call["function"]["name"] == "get_weather":
            valid_weather_call(call["function"]["name"], call["function"]["arguments"])
    assert outbox.text("call") == ""  # the call is not also sent as text


def test_a_named_function_and_none(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    batch.submit("named", "chat", {"messages": ASK, "tools": [WEATHER, TIME], "parallel_tool_calls": False,
                                   "tool_choice": {"type": "function", "function": {"name": "get_time"}},
                                   "temperature": 0, "max_tokens": 60})
    batch.submit("none", "chat", {"messages": ASK, "tools": [WEATHER], "tool_choice": "none", "temperature": 0,
                                  "max_tokens": 24})
    run(batch)
    named = calls_of(outbox, "named")
    assert [c["function"]["name"] for c in named] == ["get_time"]
    assert isinstance(json.loads(named[0]["function"]["arguments"])["zone"], str)
    assert calls_of(outbox, "none") == [] and outbox.finish("none") in ("stop", "length")
    assert outbox.text("none").strip()


def test_a_tool_result_leads_to_an_answer(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees celsius."}]
    batch.submit("answer", "chat", {"messages": [{**m, "content": m["content"] or ""} for m in messages],
                                    "tools": [WEATHER], "tool_choice": "none", "temperature": 0, "max_tokens": 40})
    run(batch)
    assert outbox.finish("answer") in ("stop", "length") and outbox.text("answer").strip()


@pytest.fixture(scope="module")
def served(model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("tool-server")
    folder = model_files["hermes"].parent
    server = start_server(home, env={"SWITCHBOARD_MODEL_DIRS": json.dumps([str(folder)])})
    yield server
    server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_client_gets_tool_calls_from_every_model(served: Served, stream: bool) -> None:
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    models = {m.id: m for m in client.models.list().data}
    chat_models = [mid for mid in models if "smol" in mid]
    assert len(chat_models) >= 3, models
    for model in chat_models:
        kwargs: dict[str, Any] = {"model": model, "messages": ASK, "tools": [WEATHER], "tool_choice": "required",
                                  "temperature": 0, "max_tokens": 200}
        if stream:
            calls: dict[int, Any] = {}
            finish = None
            for chunk in client.chat.completions.create(**kwargs, stream=True):
                for delta_call in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
                    calls[delta_call.index] = delta_call
                finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
            assert finish == "tool_calls"
            first = calls[0]
            valid_weather_call(first.function.name, first.function.arguments)
        else:
            completion = client.chat.completions.create(**kwargs)
            choice = completion.choices[0]
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            call = choice.message.tool_calls[0]
            valid_weather_call(call.function.name, call.function.arguments)
            assert call.id.startswith("call_")


def test_bad_tools_are_refused_and_the_model_stays_healthy(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = "smollm2-135m-instruct:q4_1"
    bad = [({"tools": [{"type": "retrieval"}]}, "tools"),
           ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
           ({"tool_choice": "required"}, "needs tools"),
           ({"tools": [{"type": "function", "function": {"name": "has spaces"}}]}, "name")]
    for extra, said in bad:
        with pytest.raises(openai.BadRequestError, match=said):
            client.chat.completions.create(model=model, messages=ASK, max_tokens=8, **extra)
    assert client.models.retrieve(model).model_extra["health"] == "healthy"
