"""A worker's cache of conversation states: llama.cpp KV data keyed by the tokens it holds.

llama.cpp keeps one sequence per context, so by itself a worker only reuses the prefix of the request it
served last. This cache keeps recent conversations' KV data (not the logits: llama-cpp-python's own
LlamaRAMCache copies a vocabulary-sized row of floats per token, which costs more to restore than to
recompute a short turn), so that the next turn of any cached conversation only evaluates what is new.
Least recently used states go first when the byte budget is reached.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def best(self, tokens: Sequence[int]) -> tuple[tuple[int, ...], bytes, int] | None:
        """The cached state sharing the longest prefix with `tokens`: (its tokens, its data, prefix length)."""
        best_key, best_len = None, 0
        for key in self._states:
            length = common_prefix(key, tokens)
            if length > best_len:
                best_key, best_len = key, length
        if best_key is None:
            return None
        self._states.move_to_end(best_key)
        return best_key, self._states[best_key], best_len

    def put(self, tokens: Sequence[int], data: bytes) -> None:
        key = tuple(tokens)
        if not key or len(data) > self.capacity_bytes:
            return
        # A state that extends a cached one supersedes it: the longer one serves both.
        for old in [k for k in self._states if len(k) <= len(key) and key[: len(k)] == k]:
            self._bytes -= len(self._states.pop(old))
        self._states[key] = data
        self._bytes += len(data)
        while self._bytes > self.capacity_bytes:
            _, evicted = self._states.popitem(last=False)
            self._bytes -= len(evicted)
