"""The official ollama client against a real `switchboard serve` with the real default model and an embedding
model, its Ollama API on the main port and on the second, Ollama's, port."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support.models import make_embedding_model
from tests.support.servers import Served, free_port, start_server

DEFAULT_ID = "smollm2-135m-instruct:q4_1"
EMBED_ID = "smol-embed:q4_1"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CAPITAL = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 32}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, default_model: Path) -> Iterator[tuple[Served, int]]:
    tmp = tmp_path_factory.mktemp("ollama")
    (tmp / "models").mkdir()
    make_embedding_model(default_model, tmp / "models" / "smol-embed.Q4_1.gguf")
    ollama_port = free_port()
    server = start_server(tmp, "--model-dir", str(tmp / "models"),
                          env={"SWITCHBOARD_OLLAMA_PORT": str(ollama_port)})
    yield server, ollama_port
    server.stop()


@pytest.fixture(scope="module")
def client(served: tuple[Served, int]) -> ollama.Client:
    return ollama.Client(host=served[0].base_url, timeout=120)


def health(served: tuple[Served, int]) -> str:
    return httpx.get(f"{served[0].base_url}/api/models/{DEFAULT_ID}", timeout=10).json()["health"]


def test_version_and_list(client: ollama.Client, served: tuple[Served, int]) -> None:
    assert httpx.get(f"{served[0].base_url}/api/version", timeout=10).json()["version"].count(".") == 2
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {DEFAULT_ID, EMBED_ID}
    model = listed[DEFAULT_ID]
    assert model.details.format == "gguf" and model.details.family == "llama"
    assert model.details.parameter_size == "135M" and model.details.quantization_level == "Q4_1"
    assert model.size > 50_000_000 and len(model.digest) == 64 and model.modified_at.year >= 2024


def test_show_reads_the_gguf_header(client: ollama.Client) -> None:
    shown = client.show(DEFAULT_ID)
    assert set(shown.capabilities) == {"completion", "tools"}
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["general.parameter_count"] > 100_000_000
    assert "<|im_start|>" in shown.template and "num_ctx 4096" in shown.parameters
    assert client.show(EMBED_ID).capabilities == ["embedding"]


def test_chat_not_streamed(client: ollama.Client) -> None:
    answer = client.chat(model=DEFAULT_ID, messages=CAPITAL, options=GREEDY, stream=False)
    assert "Paris" in answer.message.content and answer.message.role == "assistant"
    assert answer.done and answer.done_reason in ("stop", "length")
    assert answer.prompt_eval_count > 0 and answer.eval_count > 0
    assert answer.total_duration >= answer.eval_duration > 0


def test_chat_streamed(client: ollama.Client) -> None:
    parts = list(client.chat(model=DEFAULT_ID, messages=CAPITAL, options=GREEDY, stream=True))
    assert len(parts) > 2, "tokens arrive as separate objects"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "Paris" in "".join(p.message.content for p in parts)
    assert parts[-1].eval_count > 0 and parts[-1].done_reason in ("stop", "length")


def test_generate_templated_and_raw(client: ollama.Client) -> None:
    answer = client.generate(model=DEFAULT_ID, prompt="What is the capital of France?",
                             system="You are a helpful assistant.", options=GREEDY)
    assert "Paris" in answer.response and answer.done
    raw = client.generate(model=DEFAULT_ID, prompt="One, two, three,", raw=True,
                          options={"temperature": 0, "num_predict": 6})
    assert raw.eval_count == 6 and raw.done_reason == "length" and raw.response.strip()


def test_format_json_and_schema(client: ollama.Client) -> None:
    ask = [SYSTEM, {"role": "user", "content": "Reply with a JSON object with one key, capital, whose value is the "
                                               "capital of France."}]
    loose = client.chat(model=DEFAULT_ID, messages=ask, format="json", options={"temperature": 0, "num_predict": 60})
    assert loose.done_reason == "stop", loose.message.content
    assert isinstance(json.loads(loose.message.content), dict)
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    strict = client.chat(model=DEFAULT_ID, messages=ask, format=schema, options={"temperature": 0, "num_predict": 40})
    assert isinstance(json.loads(strict.message.content)["capital"], str)


def test_tool_call_round_trip(client: ollama.Client, served: tuple[Served, int]) -> None:
    ask = [{"role": "system", "content": "You are a helpful assistant with tools."},
           {"role": "user", "content": "What is the weather in Paris?"}]
    # Ollama's API lets the model decide; tool_choice is Switchboard's extension, which its client cannot send.
    first = httpx.post(f"{served[0].base_url}/api/chat", timeout=120, json={
        "model": DEFAULT_ID, "messages": ask, "tools": [WEATHER], "tool_choice": "required", "stream": False,
        "options": {"temperature": 0, "num_predict": 60}}).json()
    calls = first["message"]["tool_calls"]
    assert calls and calls[0]["function"]["name"] == "get_weather"
    assert isinstance(calls[0]["function"]["arguments"]["city"], str)  # an object, as Ollama sends it
    # The client sends the call back as it got it, and the result as a tool message with no call id.
    answer = client.chat(model=DEFAULT_ID, options=GREEDY, messages=[
        *ask, first["message"], {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 24 degrees celsius."}])
    assert answer.message.content.strip() and not answer.message.tool_calls and answer.done


def test_embed_and_the_older_embeddings(client: ollama.Client) -> None:
    result = client.embed(model=EMBED_ID, input=["The cat sat.", "A dog ran.", "The cat sat."])
    vectors = result.embeddings
    assert [len(v) for v in vectors] == [576, 576, 576]
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-5) and vectors[0] != vectors[1]
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-4)  # unit vectors, as Ollama's
    assert result.prompt_eval_count > 0
    assert len(client.embed(model=EMBED_ID, input="The cat sat.", dimensions=64).embeddings[0]) == 64
    assert len(client.embeddings(model=EMBED_ID, prompt="The cat sat.").embedding) == 576
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=DEFAULT_ID, input="The cat sat.")
    assert refused.value.status_code == 404 and "embeddings" in refused.value.error


def test_bad_input_is_an_ollama_error_and_not_the_models_fault(client: ollama.Client,
                                                                served: tuple[Served, int]) -> None:
    client.chat(model=DEFAULT_ID, messages=CAPITAL, options={"temperature": 0, "num_predict": 4})
    assert health(served) == "healthy"
    not_png = base64.b64encode(b"plain text").decode()
    cases = [
        (404, "does not exist", lambda: client.chat(model="no-such-model", messages=CAPITAL)),
        (400, "temperature", lambda: client.chat(model=DEFAULT_ID, messages=CAPITAL, options={"temperature": 5})),
        (400, "n_ctx", lambda: client.chat(model=DEFAULT_ID, messages=CAPITAL, options={"num_ctx": 100_000})),
        (400, "keep_alive", lambda: client.chat(model=DEFAULT_ID, messages=CAPITAL, keep_alive="soon")),
        (400, "images[0]", lambda: client.generate(model=DEFAULT_ID, prompt="What is this?", images=[not_png])),
        (400, "suffix", lambda: client.generate(model=DEFAULT_ID, prompt="def f(", suffix="    return 1")),
        (400, "format", lambda: client.generate(model=DEFAULT_ID, prompt="Hi", raw=True, format="json")),
    ]
    for status, words, call in cases:
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert (refused.value.status_code, words in refused.value.error) == (status, True), refused.value.error
    assert client.chat(model=DEFAULT_ID, messages=CAPITAL, options={"num_ctx": 2048, "num_predict": 4}).done
    assert health(served) == "healthy"


def test_keep_alive(client: ollama.Client) -> None:
    def running() -> dict[str, datetime]:
        return {m.model: m.expires_at for m in client.ps().models}

    client.chat(model=DEFAULT_ID, messages=CAPITAL, options={"num_predict": 4}, keep_alive=-1)
    assert running()[DEFAULT_ID] > datetime.now(UTC) + timedelta(days=365 * 100)
    client.chat(model=DEFAULT_ID, messages=CAPITAL, options={"num_predict": 4}, keep_alive="10m")
    left = running()[DEFAULT_ID] - datetime.now(UTC)
    assert timedelta(minutes=5) < left <= timedelta(minutes=10)
    client.chat(model=DEFAULT_ID, messages=CAPITAL, options={"num_predict": 4}, keep_alive=0)
    assert DEFAULT_ID not in running()
    # `ollama run` preloads with an empty request; `ollama stop` sends keep_alive 0 alone.
    assert client.generate(model=DEFAULT_ID).done_reason == "load" and DEFAULT_ID in running()
    assert client.generate(model=DEFAULT_ID, keep_alive=0).done_reason == "unload"
    assert DEFAULT_ID not in running()


def test_the_second_listener_serves_the_same_api(served: tuple[Served, int]) -> None:
    second = ollama.Client(host=f"http://127.0.0.1:{served[1]}", timeout=60)
    assert DEFAULT_ID in [m.model for m in second.list().models]
    assert httpx.get(f"http://127.0.0.1:{served[1]}/api/version", timeout=10).status_code == 200


def test_a_taken_ollama_port_refuses_to_start(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = start_server(tmp_path, env={"SWITCHBOARD_OLLAMA_PORT": str(port)}, wait=False)
        try:
            assert server.process.wait(60) == 2
        except subprocess.TimeoutExpired:
            server.stop()
            raise
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert f"Cannot listen on 127.0.0.1:{port}" in log and "ollama_port" in log
