"""cache_aware: send a request where its prompt prefix is probably still in the worker's KV cache (SGLang-style).

One approximate radix tree over characters holds the request texts sent to every target; each node records which
targets ("tenants") hold it and when they last used it, so one walk down the tree gives every target's match.
The match is on the whole conversation text, so a conversation's next turn finds the target that served the
previous one. Predicted match ratio = longest prefix of ctx.text the target holds / len(ctx.text), times a
per-target correction factor learned from what workers report (cached_tokens / prompt_tokens), so a worker that
lost its cache stops attracting requests.

Rule (healthy targets first; degraded ones only when every target is):
1. load imbalanced (max - min in flight > balance_abs_threshold and max > balance_rel_threshold * min)
   -> the least loaded target;
2. best predicted match >= cache_threshold -> that target;
3. a miss -> the lowest load + tree fill (characters held / max_chars_per_target): load first (SGLang's "death
   spiral": don't pile every miss onto the emptiest cache), then the least cached text, which spreads misses.
Memory is bounded per target (`max_chars_per_target`): the target's least recently used leaves are dropped.
"""

from __future__ import annotations

import heapq
from itertools import repeat
from operator import mul
from collections.abc import Mapping, Sequence
from typing import Any

from app.core.strategies.base import Outcome, RouteContext, Selection, Strategy, Target
from app.core.strategies.common import DEGRADED_PENALTY, check_params, integer, number, pct, unit
from app.core.strategies.least_loaded import DEFAULT_MEMORY_WEIGHT, LeastLoaded

MIN_PREDICTION = 0.05  # below this predicted ratio a report says nothing about the correction factor
MAX_PENDING = 10_000  # predictions awaiting on_complete (requests that never complete are dropped, oldest first)


class _Node:
    __slots__ = ("edge", "children", "parent", "last", "kids")

    def __init__(self, edge: str, parent: _Node | None) -> None:
        self.edge = edge
        self.children: dict[str, _Node] = {}  # by the first character of the child's edge
        self.parent = parent
        self.last: dict[str, int] = {}  # tenant -> tick of its last use of this node
        self.kids: dict[str, int] = {}  # tenant -> how many children it holds (0/absent: a leaf for it)


def _common_prefix(edge: str, text: str, start: int) -> int:
    """How many leading characters of `edge` equal text[start:] (edge[0] is known to match).

    Texts usually diverge early in an edge, so gallop forward in growing chunks, then bisect the last chunk:
    every comparison is a C-level startswith on a short slice, never a char-by-char Python loop."""
    end = min(len(edge), len(text) - start)
    lo, step = 1, 16
    while lo < end:
        hi = min(lo + step, end)
        if not text.startswith(edge[lo:hi], start + lo):
            break
        lo, step = hi, step * 4
    else:
        return end
    # edge[:lo] matches, edge[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if text.startswith(edge[lo:mid], start + lo):
            lo = mid
        else:
            hi = mid
    return lo


class PrefixTree:
    """Texts per tenant, sharing storage for common prefixes; LRU eviction of leaves per tenant."""

    def __init__(self) -> None:
        self.root = _Node("", None)
        self.size: dict[str, int] = {}  # tenant -> characters held
        self._nodes: dict[str, int] = {}  # tenant -> nodes held (to bound its heap)
        self._heaps: dict[str, list[tuple[int, int, _Node]]] = {}  # tenant -> (tick, seq, leaf); lazy deletion
        self._seq = 0

    def match(self, text: str) -> dict[str, int]:
        """Per tenant holding a prefix of `text`: the length of the longest one. One walk for all tenants."""
        node, i, n = self.root, 0, len(text)
        path: list[tuple[_Node, int]] = []
        while i < n:
            child = node.children.get(text[i])
            if child is None:
                break
            edge = child.edge
            if text.startswith(edge, i):
                i += len(edge)
                path.append((child, i))
                node = child
                continue
            path.append((child, i + _common_prefix(edge, text, i)))
            break
        out: dict[str, int] = {}
        # A tenant on a node is on all its ancestors, so walking up, each level adds only new tenants.
        for node, length in reversed(path):
            if len(node.last) > len(out):
                out.update(dict.fromkeys(node.last.keys() - out.keys(), length))
        return out

    def insert(self, text: str, tenant: str, tick: int) -> int:
        """Record that `tenant` now holds `text`; returns how much of it the tenant held before."""
        node, i, n = self.root, 0, len(text)
        before = 0
        while i < n:
            child = node.children.get(text[i])
            if child is None:
                leaf = _Node(text[i:], node)
                node.children[text[i]] = leaf
                self._add(leaf, tenant, tick)
                node, i = leaf, n
                break
            edge = child.edge
            if text.startswith(edge, i):
                step = len(edge)
            else:  # diverges (or ends) inside the edge: split it, the upper part shared
                step = _common_prefix(edge, text, i)
                child = self._split(node, child, step)
            if tenant in child.last:
                before = i + step
                child.last[tenant] = tick
            else:
                self._add(child, tenant, tick)
            node, i = child, i + step
        if node is not self.root and not node.kids.get(tenant):
            self._push(tenant, tick, node)  # the end of the text is a leaf for this tenant
        return before

    def _split(self, parent: _Node, child: _Node, at: int) -> _Node:
        # The child object stays the lower half, so heap entries pointing at it stay right.
        upper = _Node(child.edge[:at], parent)
        child.edge = child.edge[at:]
        child.parent = upper
        upper.children[child.edge[0]] = child
        parent.children[upper.edge[0]] = upper
        upper.last = dict(child.last)
        upper.kids = dict.fromkeys(child.last, 1)
        for tenant in child.last:
            self._nodes[tenant] += 1
        return upper

    def _add(self, node: _Node, tenant: str, tick: int) -> None:
        node.last[tenant] = tick
        parent = node.parent
        if parent is not None and parent is not self.root:
            parent.kids[tenant] = parent.kids.get(tenant, 0) + 1
        self.size[tenant] = self.size.get(tenant, 0) + len(node.edge)
        self._nodes[tenant] = self._nodes.get(tenant, 0) + 1

    def _push(self, tenant: str, tick: int, node: _Node) -> None:
        heap = self._heaps.setdefault(tenant, [])
        self._seq += 1
        heapq.heappush(heap, (tick, self._seq, node))
        if len(heap) > 4 * self._nodes.get(tenant, 0) + 64:  # too many stale entries: rebuild
            self._heaps[tenant] = self._leaves(tenant)

    def _leaves(self, tenant: str) -> list[tuple[int, int, _Node]]:
        out: list[tuple[int, int, _Node]] = []
        stack = [c for c in self.root.children.values() if tenant in c.last]
        while stack:
            node = stack.pop()
            if node.kids.get(tenant):
                stack.extend(c for c in node.children.values() if tenant in c.last)
            else:
                self._seq += 1
                out.append((node.last[tenant], self._seq, node))
        heapq.heapify(out)
        return out

    def evict(self, tenant: str, limit: int) -> None:
        """Drop the tenant's least recently used leaves until it holds at most `limit` characters."""
        heap = self._heaps.get(tenant)
        while self.size.get(tenant, 0) > limit and heap:
            tick, _, node = heapq.heappop(heap)
            if node.last.get(tenant) != tick or node.kids.get(tenant):
                continue  # stale: used again since, or no longer a leaf for this tenant
            parent = node.parent
            if parent is None:  # cannot happen (only the root has no parent, and it holds no text): be safe
                continue
            del node.last[tenant]
            node.kids.pop(tenant, None)
            self.size[tenant] -= len(node.edge)
            self._nodes[tenant] -= 1
            if parent is not self.root:
                left = parent.kids[tenant] - 1
                if left:
                    parent.kids[tenant] = left
                else:
                    del parent.kids[tenant]
                    self._seq += 1
                    heapq.heappush(heap, (parent.last[tenant], self._seq, parent))  # now a leaf for it
            if not node.last:  # nobody holds it (so no child either): unlink it
                del parent.children[node.edge[0]]
                node.parent = None
        if self.size.get(tenant, 1) == 0:
            self.size.pop(tenant, None)
            self._nodes.pop(tenant, None)
            self._heaps.pop(tenant, None)

    def forget(self, tenant: str) -> None:
        self.evict(tenant, 0)


class CacheAware(Strategy):
    name = "cache_aware"

    def __init__(
        self,
        cache_threshold: float = 0.5,
        balance_abs_threshold: float = 4,
        balance_rel_threshold: float = 1.5,
        max_chars_per_target: int = 1_000_000,
        correction_alpha: float = 0.3,
        memory_weight: float = DEFAULT_MEMORY_WEIGHT,
    ) -> None:
        self.cache_threshold = number("cache_threshold", cache_threshold, minimum=0.0, maximum=1.0)
        self.balance_abs_threshold = number("balance_abs_threshold", balance_abs_threshold, minimum=0.0)
        self.balance_rel_threshold = number("balance_rel_threshold", balance_rel_threshold, minimum=0.0)
        self.max_chars_per_target = integer("max_chars_per_target", max_chars_per_target, minimum=1)
        self.correction_alpha = number("correction_alpha", correction_alpha, minimum=0.0, maximum=1.0,
                                       min_exclusive=True)
        self._ll = LeastLoaded(memory_weight)
        self._tree = PrefixTree()
        self._tick = 0
        self._correction: dict[str, float] = {}  # tenant -> EWMA of reported / predicted reuse, in [0, 1]
        self._pending: dict[tuple[str, str], float] = {}  # (target, request id) -> predicted ratio (raw)
        self._stats: dict[str, list[int]] = {}  # tenant -> [hits, misses, reused tokens, prompt tokens]

    # --- deciding -----------------------------------------------------------------------------------------

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        ll, p = self._ll, DEGRADED_PENALTY
        degraded = [t.degraded for t in targets]
        all_degraded = False not in degraded
        if len(targets) > 1:
            flights = ([t.in_flight for t in targets] if all_degraded or True not in degraded
                       else [t.in_flight for t in targets if not t.degraded])
            hi, lo = max(max(flights), 0), max(min(flights), 0)
            if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
                scores = ll.scores(targets)
                chosen, why = ll.choose(targets, scores)
                reason = f"load imbalanced ({hi} vs {lo} in flight): {why}"
                return Selection(chosen.key, reason, scores, {"branch": "balance"})
        text = ctx.text
        held = self._tree.match(text) if text else {}  # tenant -> characters of the text it holds
        best = 0.0
        inv = 1.0 / len(text) if text else 0.0
        # Corrections are <= 1, so the raw best bounds the corrected one: below the threshold it is a miss for
        # sure, and this pass over the targets is skipped.
        if held and max(held.values()) * inv >= self.cache_threshold:
            corr = self._correction
            # Score = predicted match ratio; healthy [0, 1], degraded [-1, 0], so the top is the best healthy.
            scores = {
                t.key: held.get(t.key, 0) * inv * corr.get(t.key, 1.0) - (p if t.degraded else 0.0)
                for t in targets
            }
            values = list(scores.values())
            top = max(values)
            best = top + p if all_degraded else top
            if best > 0.0 and best >= self.cache_threshold:
                if values.count(top) == 1:
                    chosen = targets[values.index(top)]
                else:  # e.g. two replicas hold the whole text: the one with fewer in flight
                    chosen = min((t for t, v in zip(targets, values) if v == top),
                                 key=lambda t: (max(t.in_flight, 0), t.key))
                reason = f"prefix match {pct(best)} on {chosen.key}"
                c = corr.get(chosen.key, 1.0)
                if c < 0.995:
                    reason += f" (after correction x{c:.2f})"
                return Selection(chosen.key, reason, scores, {"branch": "hit", "match": best})
        elif held:  # for the reason: the best corrected match among these targets (C-level lookups)
            keys = [t.key for t in targets]
            corr = self._correction
            best = max(map(mul, map(held.get, keys, repeat(0)), map(corr.get, keys, repeat(1.0)))) * inv
        # A miss: least_loaded's rule with the target's cache fill (characters held / max_chars_per_target) as
        # extra load. Load counts most (1 per request: never pile every miss onto the emptiest cache, SGLang's
        # "death spiral"), then how full the cache is, which spreads misses over idle targets.
        scores = ll.scores(targets, self._tree.size, 1.0 / self.max_chars_per_target)
        values = list(scores.values())
        chosen = targets[values.index(max(values))]
        reason = (
            f"cache miss (best match {pct(max(best, 0.0))} < {pct(self.cache_threshold)}): "
            f"{chosen.key} has the least load and cached text"
        )
        return Selection(chosen.key, reason, scores, {"branch": "miss", "match": max(best, 0.0)})

    # --- learning -----------------------------------------------------------------------------------------

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._ll.on_start(target, ctx)
        text = ctx.text
        if not text:
            return
        self._tick += 1
        # Longer than the whole budget: keep its start (the part later turns share).
        held = self._tree.insert(text[: self.max_chars_per_target], target.key, self._tick)
        self._tree.evict(target.key, self.max_chars_per_target)
        pending = self._pending
        pending[(target.key, ctx.request_id)] = held / len(text)
        if len(pending) > MAX_PENDING:
            del pending[next(iter(pending))]

    def on_complete(self, target: Target, ctx: RouteContext, outcome: Outcome) -> None:
        predicted = self._pending.pop((target.key, ctx.request_id), None)
        if not outcome.ok or outcome.prompt_tokens <= 0:
            return  # failures say nothing about the cache
        cached = max(outcome.cached_tokens, 0)
        stats = self._stats.setdefault(target.key, [0, 0, 0, 0])
        stats[0 if cached > 0 else 1] += 1
        stats[2] += cached
        stats[3] += outcome.prompt_tokens
        if predicted is None or predicted < MIN_PREDICTION:
            return
        actual = unit(cached / outcome.prompt_tokens)
        sample = min(actual / predicted, 1.0)  # how much of the predicted reuse the worker really had
        a = self.correction_alpha
        self._correction[target.key] = (1.0 - a) * self._correction.get(target.key, 1.0) + a * sample

    def forget(self, key: str) -> None:
        """Drop everything known about a target's cache (e.g. its worker restarted)."""
        self._tree.forget(key)
        self._correction.pop(key, None)

    # --- reporting ----------------------------------------------------------------------------------------

    def cache_stats(self) -> dict[str, dict[str, Any]]:
        """Per target, over its successful requests: hits/misses (hit = the worker reported cached tokens > 0),
        reused and prompt token sums, hit rate, the correction factor and how many characters its tree holds."""
        keys = sorted(set(self._stats) | set(self._tree.size) | set(self._correction))
        out: dict[str, dict[str, Any]] = {}
        for k in keys:
            hits, misses, reused, prompt = self._stats.get(k, (0, 0, 0, 0))
            out[k] = {
                "hits": hits,
                "misses": misses,
                "reused_tokens": reused,
                "prompt_tokens": prompt,
                "hit_rate": hits / (hits + misses) if hits + misses else None,
                "correction": self._correction.get(k, 1.0),
                "tree_chars": self._tree.size.get(k, 0),
            }
        return out

    def params(self) -> dict[str, Any]:
        return {
            "cache_threshold": self.cache_threshold,
            "balance_abs_threshold": self.balance_abs_threshold,
            "balance_rel_threshold": self.balance_rel_threshold,
            "max_chars_per_target": self.max_chars_per_target,
            "correction_alpha": self.correction_alpha,
            "memory_weight": self._ll.memory_weight,
        }

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> CacheAware:
        return cls(**check_params(cls.name, params, (
            "cache_threshold", "balance_abs_threshold", "balance_rel_threshold", "max_chars_per_target",
            "correction_alpha", "memory_weight",
        )))

