"""The worker's prompt cache: which state serves a prompt, what is evicted, and that a restored state works."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.runtime.local.prompt_cache import PromptCache, common_prefix


def test_longest_common_prefix_wins() -> None:
    cache = PromptCache(1000)
    cache.put([1, 2, 3], b"a" * 10)
    cache.put([1, 2, 9, 9], b"b" * 10)
    key, data, length = cache.best([1, 2, 9, 9, 5])
    assert (key, data, length) == ((1, 2, 9, 9), b"b" * 10, 4)
    assert cache.best([7]) is None
    assert common_prefix([1, 2, 3], [1, 2]) == 2


def test_a_longer_turn_supersedes_its_prefix_and_lru_evicts() -> None:
    cache = PromptCache(25)
    cache.put([1, 2], b"x" * 10)
    cache.put([1, 2, 3, 4], b"y" * 10)
    assert len(cache) == 1 and cache.size_bytes == 10
    cache.put([5], b"z" * 10)
    cache.best([1, 2, 3, 4, 5])  # touch: [5] is now the least recently used
    cache.put([6], b"w" * 10)
    assert cache.best([5]) is None and cache.best([1, 2, 3, 4])[2] == 4
    cache.put([7], b"too big" * 10)
    assert cache.best([7]) is None


@pytest.mark.slow
def test_interleaved_conversations_reuse_their_own_prefix(default_model: Path) -> None:
    from app.core.runtime.local.llama import MeteredLlama

    llm = MeteredLlama(model_path=str(default_model), n_ctx=2048, verbose=False)
    llm.prompt_cache = PromptCache(64 * 2**20)
    system = {"role": "system", "content": "You are a helpful assistant."}
    conversations = {country: [system, {"role": "user", "content": f"What is the capital of {country}?"}]
                     for country in ("France", "Germany")}

    def ask(country: str) -> tuple[str, dict]:
        reply = llm.create_chat_completion(messages=conversations[country], temperature=0, max_tokens=16)
        llm.save_state_to_cache()
        text = reply["choices"][0]["message"]["content"]
        conversations[country].append({"role": "assistant", "content": text})
        return text, llm.usage()

    assert "Paris" in ask("France")[0]
    first_germany, usage_germany = ask("Germany")
    assert "Berlin" in first_germany
    # France's state was pushed out of llama.cpp's single sequence by Germany's; the cache brings it back.
    conversations["France"].append({"role": "user", "content": "What is the capital of Italy?"})
    text, usage = ask("France")
    assert "Rome" in text
    assert usage["cached_tokens"] > usage_germany["prompt_tokens"], usage
