"""The official openai client against a real `switchboard serve` with the real default model."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support.servers import Served

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
DEFAULT_ID = "smollm2-135m-instruct:q4_1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_lists_the_default_model(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert DEFAULT_ID in ids
    model = client.models.retrieve(DEFAULT_ID)
    assert model.id == DEFAULT_ID
    # As llama-server reports a model: what it takes in, what it can do, the context a request gets.
    extra = model.model_extra
    assert extra["input_modalities"] == ["text"] and {"chat", "tools"} <= set(extra["capabilities"])
    assert extra["context_length"] == extra["meta"]["n_ctx"] == 4096 and extra["meta"]["n_ctx_train"] == 8192
    assert extra["meta"]["n_params"] > 100_000_000


def test_answers_capital_of_france(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[SYSTEM, {"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=32,
    )
    completion = raw.parse()
    assert "Paris" in completion.choices[0].message.content
    assert completion.model == DEFAULT_ID
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert raw.headers["x-switchboard-model"] == DEFAULT_ID
    assert raw.headers["x-switchboard-route"].startswith("least_loaded; ")
    assert len(raw.headers["x-request-id"]) == 32


def test_named_model_and_absent_model_field(server: Served) -> None:
    body = {"messages": [SYSTEM, {"role": "user", "content": "Say hi."}], "max_tokens": 4}
    for extra in ({}, {"model": DEFAULT_ID}):
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json={**body, **extra}, timeout=60)
        assert response.status_code == 200
        assert response.headers["x-switchboard-model"] == DEFAULT_ID


def test_stream_with_usage_and_prompt_reuse(client: openai.OpenAI) -> None:
    messages = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
    stream = client.chat.completions.create(
        model=DEFAULT_ID, messages=messages, temperature=0, max_tokens=32, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len([c for c in chunks if c.choices]) > 2, "tokens arrive as separate chunks"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens > 0
    # The next turn of the same conversation reuses the prefix computed for this one.
    follow = client.chat.completions.create(
        model=DEFAULT_ID, temperature=0, max_tokens=8,
        messages=[*messages, {"role": "assistant", "content": text}, {"role": "user", "content": "And Germany?"}],
    )
    cached = follow.usage.prompt_tokens_details.cached_tokens
    assert cached >= usage.prompt_tokens, (cached, usage.prompt_tokens)


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=DEFAULT_ID, prompt="One, two, three,", max_tokens=6, temperature=0)
    assert completion.choices[0].text.strip()
    assert completion.usage.completion_tokens == 6
    assert completion.choices[0].finish_reason == "length"


def test_json_response_format(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=DEFAULT_ID, temperature=0, max_tokens=40, response_format={"type": "json_object"},
        messages=[SYSTEM, {"role": "user", "content": "Give the capital of France as JSON."}],
    )
    json.loads(completion.choices[0].message.content)


def test_logprobs(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=DEFAULT_ID, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2,
        messages=[SYSTEM, {"role": "user", "content": "What is the capital of France?"}])
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in choice.logprobs.content)


def test_legacy_completion_logprobs(client: openai.OpenAI, server: Served) -> None:
    completion = client.completions.create(model=DEFAULT_ID, prompt="One, two, three,", max_tokens=5, temperature=0,
                                           logprobs=2)
    choice = completion.choices[0]
    assert choice.logprobs is not None and "".join(choice.logprobs.tokens) == choice.text
    assert len(choice.logprobs.token_logprobs) == len(choice.logprobs.top_logprobs) == 5
    assert choice.logprobs.text_offset[0] == 0 and all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    streamed = client.completions.create(model=DEFAULT_ID, prompt="One, two, three,", max_tokens=5, temperature=0,
                                         logprobs=2, stream=True)
    tokens = [t for chunk in streamed for t in (chunk.choices[0].logprobs.tokens if chunk.choices
                                                  and chunk.choices[0].logprobs else [])]
    assert tokens == choice.logprobs.tokens
    refused = httpx.post(f"{server.base_url}/v1/completions", timeout=30, json={
        "model": DEFAULT_ID, "prompt": "Hi", "logprobs": 1, "echo": True})
    assert refused.status_code == 400 and "echo with logprobs" in refused.json()["error"]["message"]


def test_stop_and_seed(client: openai.OpenAI) -> None:
    kwargs = dict(model=DEFAULT_ID, prompt="Count: 1, 2, 3, 4,", max_tokens=20, temperature=0.9, seed=7)
    first = client.completions.create(**kwargs).choices[0].text
    assert first == client.completions.create(**kwargs).choices[0].text, "same seed, same text"
    stopped = client.completions.create(**{**kwargs, "stop": [","]}).choices[0]
    assert "," not in stopped.text and stopped.finish_reason == "stop"


# -- errors ----------------------------------------------------------------------------------

def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "x-request-id" in response.headers
    return error


def test_malformed_json_is_400(server: Served) -> None:
    response = httpx.post(f"{server.base_url}/v1/chat/completions", content=b'{"messages": [', timeout=10,
                          headers={"content-type": "application/json"})
    assert "not valid JSON" in _error(response, 400)["message"]


def test_schema_violation_names_the_field(server: Served) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 7}
    error = _error(httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=10), 400)
    assert error["param"] == "temperature"
    error = _error(httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "auto"}, timeout=10), 400)
    assert error["param"] == "messages"


def test_openai_client_sees_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"capabilities": ["vision"]})
    assert "vision" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model=DEFAULT_ID, input="hello")
    assert "embeddings" in info.value.message


def test_body_over_limit_is_413(server: Served) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (9 * 1024 * 1024)}]}
    assert _error(httpx.post(f"{server.base_url}/v1/chat/completions", json=big, timeout=30), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(9):
            yield b" " * (1024 * 1024)

    response = httpx.post(f"{server.base_url}/v1/chat/completions", content=chunks(), timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_foreign_host_header_is_refused(server: Served) -> None:
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host header.
    response = httpx.get(f"{server.base_url}/v1/models", headers={"host": "evil.example"}, timeout=10)
    assert "not allowed" in _error(response, 403)["message"]
    assert httpx.get(f"{server.base_url}/v1/models", headers={"host": f"localhost:{server.port}"}).status_code == 200


def test_no_cors_by_default(server: Served) -> None:
    response = httpx.options(f"{server.base_url}/v1/models", timeout=10, headers={
        "origin": "https://evil.example", "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in response.headers
    response = httpx.get(f"{server.base_url}/v1/models", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
