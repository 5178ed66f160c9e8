"""A request's own fault stays the request's: every OpenAI message form is served or refused cleanly, hostile
requests and hostile chat templates get 400s, and the model they were sent to answers normally right after."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.models import make_templated_model
from tests.support.servers import Served, start_server

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one word."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
HOSTILE = "hostile:q4_1"
RAISING = "raising:q4_1"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "models").mkdir()
    # A template that reaches for Python internals, and one that refuses every conversation with a reason.
    make_templated_model(default_model, tmp / "models" / "hostile.Q4_1.gguf", name="Hostile",
                         template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    make_templated_model(default_model, tmp / "models" / "raising.Q4_1.gguf", name="Raising",
                         template="{{ raise_exception('Conversation roles must alternate user/assistant') }}")
    server = start_server(tmp, "--model-dir", str(tmp / "models"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def default_id(served: Served) -> str:
    ids = [m["id"] for m in httpx.get(f"{served.base_url}/v1/models").json()["data"]]
    return next(i for i in ids if i not in (HOSTILE, RAISING))


def _chat(served: Served, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{served.base_url}/v1/chat/completions", json={"temperature": 0, "max_tokens": 8, **body},
                      timeout=120)


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _health(served: Served, model_id: str) -> str:
    return httpx.get(f"{served.base_url}/api/models/{model_id}").json()["health"]


def test_text_parts_are_joined_and_answered(served: Served, default_id: str) -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                         {"type": "text", "text": "of France?"}]}
    response = _chat(served, {"model": default_id, "messages": [SYSTEM, parts]})
    assert response.status_code == 200, response.text
    assert "Paris" in response.json()["choices"][0]["message"]["content"]


def test_developer_role_names_and_tool_turns_are_served(served: Served, default_id: str) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "France"}'}}
    messages = [
        {"role": "developer", "content": "You are a helpful assistant. Answer in one word."},
        {"role": "user", "content": "What is the capital of France?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Paris is the capital of France."},
    ]
    response = _chat(served, {"model": default_id, "messages": messages})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(("message", "param", "words"), [
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]},
     "messages[0].content[0].type", "input_audio"),
    ({"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}, "messages[0].content[0].type", "file"),
    ({"role": "user", "content": [{"type": "video", "video": "x"}]}, "messages[0].content[0].type", "video"),
    ({"role": "user", "content": [{"type": "text", "text": 3}]}, "messages[0].content[0]", "string"),
    ({"role": "user", "content": None}, "messages[0].content", "required"),
    ({"role": "assistant", "content": None}, "messages[0].content", "required"),
    ({"role": "tool", "content": "42"}, "messages[0].tool_call_id", "tool_call_id"),
])
def test_unservable_message_forms_are_400_naming_the_part(served: Served, default_id: str, message: dict,
                                                           param: str, words: str) -> None:
    error = _error(_chat(served, {"model": default_id, "messages": [message]}), 400)
    assert error["param"] == param and words in error["message"]


def test_an_image_needs_a_vision_model(served: Served) -> None:
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
    error = _error(_chat(served, {"model": "auto", "messages": [image]}), 404)
    assert error["code"] == "capability_not_available" and "vision" in error["message"]


def test_a_template_reaching_for_python_internals_is_refused_and_the_worker_lives(served: Served) -> None:
    for _ in range(4):  # more than the breaker's threshold: none of them is the model's fault
        error = _error(_chat(served, {"model": HOSTILE, "messages": [QUESTION]}), 400)
        assert error["code"] == "template_refused" and "unsafe" in error["message"]
    assert _health(served, HOSTILE) != "unhealthy"
    # The same worker still serves a plain completion, which needs no template.
    response = httpx.post(f"{served.base_url}/v1/completions", timeout=120,
                          json={"model": HOSTILE, "prompt": "The capital of France is", "max_tokens": 3})
    assert response.status_code == 200, response.text


def test_a_template_that_refuses_a_conversation_is_a_400_with_its_reason(served: Served) -> None:
    error = _error(_chat(served, {"model": RAISING, "messages": [QUESTION]}), 400)
    assert error["code"] == "template_error" and "must alternate" in error["message"]


def test_a_json_schema_constrains_the_answer(served: Served, default_id: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    response = _chat(served, {"model": default_id, "max_tokens": 40, "messages": [SYSTEM, QUESTION],
                              "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "answer", "schema": schema}}})
    assert response.status_code == 200, response.text
    answer = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"city"} and isinstance(answer["city"], str)


@pytest.mark.parametrize("response_format", [
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}},
])
def test_a_schema_that_cannot_be_a_grammar_is_a_400(served: Served, default_id: str, response_format: dict) -> None:
    error = _error(_chat(served, {"model": default_id, "messages": [QUESTION], "response_format": response_format}),
                   400)
    assert error["code"] == "invalid_schema" and "schema" in error["message"]


def test_twenty_hostile_requests_then_a_normal_answer_at_once(served: Served, default_id: str) -> None:
    long_prompt = {"role": "user", "content": "word " * 20000}  # far beyond the loaded context
    hostile: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "input_audio"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "bogus"}]}]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [long_prompt]},
        {"messages": [QUESTION], "max_tokens": 0},
        {"messages": [QUESTION], "temperature": 7},
        {"messages": [QUESTION], "response_format": {"type": "xml"}},
        {"messages": [QUESTION], "response_format": {"type": "json_schema"}},
        {"messages": [QUESTION], "stop": ["a", "b", "c", "d", "e"]},
        {"messages": [QUESTION], "n": 3},
        {"messages": [QUESTION], "logit_bias": {"not-a-token": 5}},
        {"messages": [QUESTION], "logit_bias": {"99999999": 5}},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "assistant", "content": None}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"messages": [QUESTION], "stream": "sometimes"},
    ]
    assert len(hostile) == 20
    for body in hostile:
        response = _chat(served, {"model": default_id, **body})
        assert response.status_code in (400, 404), (body, response.text)
        assert response.status_code < 500
    assert _health(served, default_id) != "unhealthy"
    answer = _chat(served, {"model": default_id, "messages": [SYSTEM, QUESTION]})
    assert answer.status_code == 200 and "Paris" in answer.json()["choices"][0]["message"]["content"]
    client = openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0, timeout=120)
    streamed = client.chat.completions.create(model="auto", messages=[SYSTEM, QUESTION], temperature=0,  # type: ignore[list-item]
                                              max_tokens=8, stream=True)
    assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)


def test_quota_is_429_with_retry_after_for_named_and_auto(served: Served, default_id: str) -> None:
    """Run last in this module: it leaves the default model's hour used up (its limit is lifted after)."""
    base = served.base_url
    try:
        for other in (HOSTILE, RAISING):  # disabled models are no reason to hide the quota
            assert httpx.patch(f"{base}/api/models/{other}", json={"enabled": False}).status_code == 200
        used = httpx.get(f"{base}/api/quota").json()[f"model:{default_id}"]["requests"]  # earlier tests' requests
        assert httpx.patch(f"{base}/api/models/{default_id}",
                           json={"quota": {"requests_per_hour": used + 1}}).status_code == 200
        assert _chat(served, {"model": default_id, "messages": [SYSTEM, QUESTION]}).status_code == 200
        for model in (default_id, "auto"):
            response = _chat(served, {"model": model, "messages": [SYSTEM, QUESTION]})
            error = _error(response, 429)
            assert error["type"] == "rate_limit_error" and 1 <= int(response.headers["retry-after"]) <= 3600
    finally:
        httpx.patch(f"{base}/api/models/{default_id}", json={"quota": {}})
        for other in (HOSTILE, RAISING):
            httpx.patch(f"{base}/api/models/{other}", json={"enabled": True})
