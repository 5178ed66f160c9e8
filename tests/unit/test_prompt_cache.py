"""The worker's prompt cache: which state serves a prompt and what is evicted (test_batch.py restores one)."""

from __future__ import annotations

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


def test_holdings_name_each_state_s_request_and_forget_evicted_ones() -> None:
    cache = PromptCache(25)
    cache.put([1, 2], b"x" * 10, "turn-1", 1.0)
    cache.put([1, 2, 3, 4], b"y" * 10, "turn-2", 0.5)  # supersedes turn-1's state
    cache.put([5], b"z" * 10, "other", 1.0)
    assert cache.holdings() == {"turn-2": 0.5, "other": 1.0}
    cache.put([6], b"w" * 10, "newest", 1.0)  # evicts turn-2's, the least recently used
    assert cache.holdings() == {"other": 1.0, "newest": 1.0}
    cache.put([8], b"v" * 10)  # untagged: held, but named by no request
    assert "" not in cache.holdings()
