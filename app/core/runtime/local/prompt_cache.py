"""A worker's cache of conversation states: llama.cpp KV data keyed by the tokens it holds.

llama.cpp keeps one sequence per context, so by itself a worker only reuses the prefix of the request it
served last. This cache keeps recent conversations' KV data (not the logits: llama-cpp-python's own
LlamaRAMCache copies a vocabulary-sized row of floats per token, which costs more to restore than to
recompute a short turn), so that the next turn of any cached conversation only evaluates what is new.
Least recently used states go first when the byte budget is reached. Each state remembers whose request it
came from (a tag) and how much of that request's prompt it holds, for the worker's report of what it holds.
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
        self._tags: dict[tuple[int, ...], tuple[str, float]] = {}  # state -> (its request's tag, prompt held)
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

    def put(self, tokens: Sequence[int], data: bytes, tag: str = "", held: float = 1.0) -> None:
        """Keep a state; `tag` names the request it came from, `held` the fraction of that request's prompt."""
        key = tuple(tokens)
        if not key or len(data) > self.capacity_bytes:
            return
        # A state that extends a cached one supersedes it: the longer one serves both.
        for old in [k for k in self._states if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(old)
        self._states[key] = data
        self._tags[key] = (tag, held)
        self._bytes += len(data)
        while self._bytes > self.capacity_bytes:
            self._drop(next(iter(self._states)))

    def _drop(self, key: tuple[int, ...]) -> None:
        self._bytes -= len(self._states.pop(key))
        del self._tags[key]

    def holdings(self) -> dict[str, float]:
        """Per tagged request with a state here, the largest fraction of its prompt one holds."""
        out: dict[str, float] = {}
        for tag, held in self._tags.values():
            if tag and held > out.get(tag, 0.0):
                out[tag] = held
        return out
