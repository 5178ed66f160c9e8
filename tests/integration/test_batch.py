"""The batched decode loop on the real default model, in this process: requests decoded together answer as each
one alone does, sample with their own settings, stop on their own terms and share the prefixes they have in
common."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.runtime.local.batch import BatchEngine, RequestError
from app.core.runtime.local.llama import load
from app.core.runtime.local.prompt_cache import PromptCache

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one word."}
QUESTIONS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid"}
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to paint."}]


class Outbox:
    """What the engine sends, per job: the text, the finish reason and the usage."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def text(self, job_id: str) -> str:
        chunks = self.choices(job_id)
        return "".join(c.get("delta", {}).get("content") or c.get("text") or "" for c in chunks)

    def choices(self, job_id: str) -> list[dict[str, Any]]:
        return [m["data"]["choices"][0] for m in self.messages if m.get("id") == job_id and m["type"] == "chunk"]

    def finish(self, job_id: str) -> str | None:
        chunks = self.choices(job_id)
        return next((c["finish_reason"] for c in reversed(chunks) if c["finish_reason"]), None)

    def done(self, job_id: str) -> dict[str, Any] | None:
        return next((m for m in self.messages if m.get("id") == job_id and m["type"] == "done"), None)

    def reports(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "slots"]


@pytest.fixture(scope="module")
def llm(default_model: Path) -> Any:
    return load(str(default_model), n_seq_max=4, n_ctx=4 * 2048, verbose=False)


@pytest.fixture
def engine(llm: Any) -> Iterator[tuple[BatchEngine, Outbox]]:
    outbox = Outbox()
    # A fresh engine per test, on the model's one context: start from empty cells.
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)
    engine = BatchEngine(llm, parallel=4, n_ctx_seq=2048, send=outbox, prompt_cache=PromptCache(64 * 2**20))
    yield engine, outbox
    engine.close()


def run(engine: BatchEngine) -> None:
    steps = 0
    while engine.busy:
        engine.step()
        steps += 1
        assert steps < 10_000


def ask(country: str) -> dict[str, Any]:
    return {"messages": [SYSTEM, {"role": "user", "content": f"What is the capital of {country}?"}],
            "temperature": 0, "max_tokens": 12}


def test_requests_decoded_together_answer_as_each_one_alone(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    alone = {}
    for country in QUESTIONS:
        batch.submit(f"alone-{country}", "chat", ask(country))
        run(batch)
        alone[country] = outbox.text(f"alone-{country}")
        assert QUESTIONS[country] in alone[country]
    for country in QUESTIONS:
        batch.submit(f"together-{country}", "chat", ask(country))
    run(batch)
    assert {c: outbox.text(f"together-{c}") for c in QUESTIONS} == alone
    for country in QUESTIONS:
        done = outbox.done(f"together-{country}")
        assert done is not None and done["usage"]["completion_tokens"] > 0
        assert outbox.finish(f"together-{country}") == "stop"


def test_identical_prompts_arriving_together_all_answer(engine: tuple[BatchEngine, Outbox]) -> None:
    """Four prompts in one step: llama.cpp prefilling three at once in one batch got the third wrong."""
    batch, outbox = engine
    for job in "abcd":
        batch.submit(job, "chat", ask("France"))
    run(batch)
    assert all("Paris" in outbox.text(job) for job in "abcd"), [outbox.text(job) for job in "abcd"]


def test_seeded_sampling_repeats_per_request_under_concurrency(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    seeded = {"messages": STORY, "temperature": 1.0, "max_tokens": 24, "seed": 42}
    batch.submit("alone", "chat", seeded)
    run(batch)
    batch.submit("with-7", "chat", {**seeded, "seed": 7})
    batch.submit("again", "chat", seeded)
    batch.submit("greedy", "chat", {"messages": STORY, "temperature": 0, "max_tokens": 24})
    run(batch)
    assert outbox.text("again") == outbox.text("alone")
    assert outbox.text("with-7") != outbox.text("alone")


def test_stop_strings_max_tokens_and_json_schema_are_per_request(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    batch.submit("short", "chat", {"messages": STORY, "temperature": 0, "max_tokens": 5})
    batch.submit("stopped", "completion", {"prompt": "Count: 1, 2, 3, 4,", "temperature": 0, "max_tokens": 20,
                                           "stop": [","]})
    batch.submit("json", "chat", {**ask("France"), "max_tokens": 40,
                                  "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
    batch.submit("free", "chat", {"messages": STORY, "temperature": 0, "max_tokens": 30})
    run(batch)
    assert outbox.finish("short") == "length" and outbox.done("short")["usage"]["completion_tokens"] == 5
    assert outbox.finish("stopped") == "stop" and "," not in outbox.text("stopped")
    assert outbox.done("stopped")["stop_sequence"] == "," and outbox.done("short")["stop_sequence"] is None
    assert set(json.loads(outbox.text("json"))) == {"city"}
    assert outbox.done("free")["usage"]["completion_tokens"] == 30


def test_cancelling_one_request_leaves_the_others_running(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    for job in ("a", "b", "c"):
        batch.submit(job, "chat", {"messages": STORY, "temperature": 0, "max_tokens": 40})
    for _ in range(5):
        batch.step()
    batch.cancel({"b"})
    run(batch)
    assert outbox.done("b")["finish_reason"] == "cancelled"
    assert outbox.done("a")["usage"]["completion_tokens"] == 40 == outbox.done("c")["usage"]["completion_tokens"]
    assert outbox.text("a") == outbox.text("c")


def test_a_shared_prefix_is_evaluated_once(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    system = {"role": "system", "content": "You are a helpful assistant who knows geography well. " * 8}
    first = {"messages": [system, {"role": "user", "content": "What is the capital of France?"}],
             "temperature": 0, "max_tokens": 4}
    batch.submit("first", "chat", first)
    run(batch)
    second = {**first, "messages": [system, {"role": "user", "content": "What is the capital of Spain?"}]}
    batch.submit("second", "chat", second)
    run(batch)
    usage = outbox.done("second")["usage"]
    assert usage["cached_tokens"] >= 80, usage  # the long system prompt, copied from the first request's cells


def test_a_conversation_pushed_out_of_the_slots_comes_back_from_the_ram_cache(llm: Any) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)
    outbox = Outbox()
    single = BatchEngine(llm, parallel=1, n_ctx_seq=2048, send=outbox, prompt_cache=PromptCache(64 * 2**20))
    try:
        single.submit("france", "chat", ask("France"))
        run(single)
        single.submit("germany", "chat", ask("Germany"))  # takes the one slot: France's cells go to RAM
        run(single)
        again = ask("France")
        again["messages"] = [*again["messages"], {"role": "assistant", "content": outbox.text("france")},
                             {"role": "user", "content": "What is the capital of Italy?"}]
        single.submit("italy", "chat", again)
        run(single)
        assert "Rome" in outbox.text("italy")
        assert outbox.done("italy")["usage"]["cached_tokens"] > outbox.done("germany")["usage"]["prompt_tokens"]
    finally:
        single.close()


def test_a_prompt_longer_than_the_context_is_refused_before_it_runs(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, _ = engine
    with pytest.raises(RequestError, match="exceed context window"):
        batch.submit("long", "chat", {"messages": [{"role": "user", "content": "word " * 5000}]})
    assert not batch.busy


def test_logprobs_are_per_request(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    batch.submit("with", "chat", {**ask("France"), "top_logprobs": 3})
    batch.submit("without", "chat", ask("Germany"))
    run(batch)
    entries = [e for c in outbox.choices("with") for e in ((c["logprobs"] or {}).get("content") or [])]
    assert len(entries) == outbox.done("with")["usage"]["completion_tokens"]
    assert "".join(e["token"] for e in entries) == outbox.text("with")
    for entry in entries:  # greedy: the chosen token is the likeliest
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][1]["logprob"]
    assert all(c["logprobs"] is None for c in outbox.choices("without"))


def test_legacy_completion_logprobs_come_as_columns(engine: tuple[BatchEngine, Outbox]) -> None:
    batch, outbox = engine
    batch.submit("c", "completion", {"prompt": "The capital of France is", "temperature": 0, "max_tokens": 6,
                                     "top_logprobs": 2})
    run(batch)
    columns: dict[str, list[Any]] = {}
    for choice in outbox.choices("c"):
        for name, values in (choice["logprobs"] or {}).items():
            columns.setdefault(name, []).extend(values)
    text = outbox.text("c")
    n = outbox.done("c")["usage"]["completion_tokens"]
    assert n >= 2 and len(columns["tokens"]) == n
    assert "".join(columns["tokens"]) == text
    # Each token's text starts where the tokens before it end.
    assert columns["text_offset"] == [len("".join(columns["tokens"][:i])) for i in range(n)]
    for logprob, top in zip(columns["token_logprobs"], columns["top_logprobs"], strict=True):
        assert logprob <= 0 and len(top) == 2 and max(top.values()) == pytest.approx(logprob)


def test_reports_say_what_the_slots_and_the_ram_cache_hold(llm: Any) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm._ctx.ctx), True)
    for capacity, france_kept in ((64 * 2**20, True), (1, False)):
        outbox = Outbox()
        single = BatchEngine(llm, parallel=1, n_ctx_seq=2048, send=outbox, prompt_cache=PromptCache(capacity))
        try:
            single.submit("j1", "chat", ask("France"), tag="france")
            single.step()
            placed = outbox.reports()[0]  # sent before the first token
            assert placed["busy"] == [True] and placed["held"] == {"france": 1.0} and placed["pending_tokens"] > 0
            assert outbox.messages.index(placed) < next(i for i, m in enumerate(outbox.messages)
                                                        if m["type"] == "chunk")
            run(single)
            idle = outbox.reports()[-1]
            assert idle["busy"] == [False] and idle["held"] == {"france": 1.0} and idle["pending_tokens"] == 0
            assert idle["tokens"][0] >= outbox.done("j1")["usage"]["prompt_tokens"]
            single.submit("j2", "chat", ask("Germany"), tag="germany")  # takes the one slot
            run(single)
            # France's cells went to the RAM cache, when it has room; its report says so.
            expected = {"germany": 1.0, "france": 1.0} if france_kept else {"germany": 1.0}
            assert outbox.reports()[-1]["held"] == expected
        finally:
            single.close()
