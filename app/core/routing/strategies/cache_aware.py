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

Cost of a decision (select + on_start + on_complete): the walk visits the few nodes on the text's path (edges are
compared C-level), not one step per target or per character. A tenant on a node is on all its ancestors, so the
tenant sets along the path shrink: the walk yields a few "levels" (a set of tenants, how much of the text they
hold), and whether a hit is possible at all is decided on them (a level's best correction, C-level) before any
per-target work. Then one pass builds the scores of the branch taken; the reason of a miss takes its best match
from the levels. on_start inserts along the path select just walked when no node changed since. The result is
exactly the rule above, as tests/test_strategy_cache_aware.py checks against a plain version of it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

from app.core.routing.strategies.base import Outcome, RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import DEGRADED_PENALTY, check_params, integer, number, pct, unit
from app.core.routing.strategies.least_loaded import DEFAULT_MEMORY_WEIGHT, LeastLoaded

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
    """Texts per tenant, sharing storage for common prefixes; LRU eviction of leaves per tenant.

    `walk` gives a text's path, `levels` the distinct tenant sets along it, `held` the flat per-tenant match;
    `match` is the three in one."""

    def __init__(self) -> None:
        self.root = _Node("", None)
        self.size: dict[str, int] = {}  # tenant -> characters held
        self._nodes: dict[str, int] = {}  # tenant -> nodes held (to bound its heap)
        self._heaps: dict[str, list[tuple[int, int, _Node]]] = {}  # tenant -> (tick, seq, leaf); lazy deletion
        self._seq = 0
        self._shape = 0  # bumped whenever nodes or edges change: a walk's path stays valid while it is unchanged
        self._walked: tuple[str, int, list[tuple[_Node, int]]] = ("", -1, [])  # the last walk, for insert

    def walk(self, text: str) -> list[tuple[_Node, int]]:
        """The nodes `text` runs through from the root, each with how far into the text the match reaches at its
        end; the last one may match only partly (the text diverges or ends inside its edge)."""
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
        self._walked = (text, self._shape, path)
        return path

    @staticmethod
    def levels(path: list[tuple[_Node, int]]) -> list[tuple[dict[str, int], int]]:
        """The distinct tenant sets along a path, top-down, each with how much of the text its tenants hold.

        A tenant on a node is on all its ancestors, so the sets shrink down the path, and a set's match ends at
        the last node with that many tenants: a tenant's match is the length of the last (smallest) set it is in."""
        out: list[tuple[dict[str, int], int]] = []
        if path:
            prev, end = path[0]
            for node, length in path:
                if len(node.last) != len(prev.last):
                    out.append((prev.last, end))
                prev, end = node, length
            out.append((prev.last, end))
        return out

    @staticmethod
    def held(levels: list[tuple[dict[str, int], int]]) -> dict[str, int]:
        """Per tenant of `levels`, how much of the text it holds (C-level: each deeper set overwrites)."""
        out: dict[str, int] = {}
        for tenants, end in levels:
            out.update(dict.fromkeys(tenants, end))
        return out

    def match(self, text: str) -> dict[str, int]:
        """Per tenant holding a prefix of `text`: the length of the longest one. One walk for all tenants."""
        return self.held(self.levels(self.walk(text)))

    def insert(self, text: str, tenant: str, tick: int) -> int:
        """Record that `tenant` now holds `text`; returns how much of it the tenant held before.

        Follows the path of the last walk when it was of this text and no node changed since (select walks the
        text, then on_start inserts it), else walks again."""
        walked, shape, path = self._walked
        if walked is not text or shape != self._shape:
            path = self.walk(text)
        node, i, n = self.root, 0, len(text)
        before = 0
        for child, end in path:
            step = end - i
            if step < len(child.edge):  # diverges (or ends) inside the edge: split it, the upper part shared
                child = self._split(node, child, step)
            if tenant in child.last:
                before = end
                child.last[tenant] = tick
            else:
                self._add(child, tenant, tick)
            node, i = child, end
        if i < n:
            leaf = _Node(text[i:], node)
            node.children[text[i]] = leaf
            self._shape += 1
            self._add(leaf, tenant, tick)
            node = leaf
        if node is not self.root and not node.kids.get(tenant):
            self._push(tenant, tick, node)  # the end of the text is a leaf for this tenant
        return before

    def _split(self, parent: _Node, child: _Node, at: int) -> _Node:
        # The child object stays the lower half, so heap entries pointing at it stay right.
        self._shape += 1
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
                self._shape += 1
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
        # At 100 targets every pass over them costs microseconds: one for the loads, one for the scores of the
        # branch taken (x - 0.0 is x, so the degraded penalty is applied only when some target is degraded).
        p = DEGRADED_PENALTY
        flights = [t.in_flight for t in targets if not t.degraded]  # the healthy targets' loads
        all_degraded = not flights
        any_degraded = all_degraded or len(flights) < len(targets)
        if len(targets) > 1:
            if all_degraded:
                flights = [t.in_flight for t in targets]
            hi = max(max(flights), 0)
            # lo >= 0, so hi - lo > threshold needs hi > threshold: the minimum is looked for only then.
            if hi > self.balance_abs_threshold and (
                hi - (lo := max(min(flights), 0)) > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo
            ):
                ll = self._ll
                scores = ll.scores(targets)
                chosen, why = ll.choose(targets, scores)
                reason = f"load imbalanced ({hi} vs {lo} in flight): {why}"
                return Selection(chosen.key, reason, scores, {"branch": "balance"})
        text = ctx.text
        tree = self._tree
        levels = tree.levels(tree.walk(text)) if text else []  # the tenants holding each prefix of the text
        inv = 1.0 / len(text) if text else 0.0
        threshold = self.cache_threshold
        cg = self._correction.get
        # Corrections are <= 1, and a level's tenants hold `end` characters: a level may hold a hit only if
        # end * inv * (its best correction) reaches the threshold (C-level max over the level). Deepest level
        # first; without such a level it is a miss for sure, and the hit's scores are not computed. (When every
        # target is degraded the hit's best is (score - penalty) + penalty: the same rounding here.)
        candidate = False
        cap: float | None = None  # bounds every correction: looked up once the deepest level is not a hit
        for tenants, end in reversed(levels):
            x = end * inv
            if (x - p + p if all_degraded else x) < threshold:
                break
            if cap is not None:
                y = x * cap
                if (y - p + p if all_degraded else y) < threshold:
                    break
            x *= max(map(cg, tenants, repeat(1.0)))
            if (x - p + p if all_degraded else x) >= threshold:
                candidate = True
                break
            cap = self._correction_cap()
        best = 0.0
        if candidate:
            # Score = predicted match ratio; healthy [0, 1], degraded [-1, 0], so the top is the best healthy.
            # 0 for every target (C-level), then the holders (often fewer than the targets) get their ratio,
            # level by level: a deeper level's ratio overwrites.
            scores = dict.fromkeys([t.key for t in targets], 0.0)
            for tenants, end in levels:
                x = end * inv
                for k in tenants:
                    if k in scores:
                        scores[k] = x * cg(k, 1.0)
            if any_degraded:
                for k in [t.key for t in targets if t.degraded]:
                    scores[k] -= p
            values = list(scores.values())
            top = max(values)
            best = top + p if all_degraded else top
            if best > 0.0 and best >= threshold:
                if values.count(top) == 1:
                    chosen = targets[values.index(top)]
                else:  # e.g. two replicas hold the whole text: the one with fewer in flight
                    chosen = min((t for t, v in zip(targets, values) if v == top),
                                 key=lambda t: (max(t.in_flight, 0), t.key))
                reason = f"prefix match {pct(best)} on {chosen.key}"
                c = cg(chosen.key, 1.0)
                if c < 0.995:
                    reason += f" (after correction x{c:.2f})"
                return Selection(chosen.key, reason, scores, {"branch": "hit", "match": best})
        # A miss: least_loaded's rule with the target's cache fill (characters held / max_chars_per_target) as
        # extra load. Load counts most (1 per request: never pile every miss onto the emptiest cache, SGLang's
        # "death spiral"), then how full the cache is, which spreads misses over idle targets.
        # LeastLoaded.scores(targets, fill, 1 / max_chars_per_target), value for value, inlined.
        w, fill, scale = self._ll.memory_weight, tree.size.get, 1.0 / self.max_chars_per_target
        if any_degraded:
            scores = {
                t.key: 1.0 / (1.0 + (n if (n := t.in_flight) > 0 else 0)
                              + w * (m if 0.0 <= (m := t.memory_pressure) <= 1.0 else unit(m))
                              + scale * fill(t.key, 0.0)) - (p if t.degraded else 0.0)
                for t in targets
            }
        else:
            scores = {
                t.key: 1.0 / (1.0 + (n if (n := t.in_flight) > 0 else 0)
                              + w * (m if 0.0 <= (m := t.memory_pressure) <= 1.0 else unit(m))
                              + scale * fill(t.key, 0.0))
                for t in targets
            }
        if levels and not candidate:
            best = self._best_match(levels, inv, scores, all_degraded, cap)
        values = list(scores.values())
        chosen = targets[values.index(max(values))]
        reason = (
            f"cache miss (best match {pct(max(best, 0.0))} < {pct(threshold)}): "
            f"{chosen.key} has the least load and cached text"
        )
        return Selection(chosen.key, reason, scores, {"branch": "miss", "match": max(best, 0.0)})

    def _correction_cap(self) -> float:
        """A bound of the correction of every target holding text: the largest factor, or 1.0 while one of them
        has none yet (C-level)."""
        corr = self._correction
        if corr and self._tree.size.keys() <= corr.keys():
            return max(corr.values())
        return 1.0

    def _best_match(self, levels: list[tuple[dict[str, int], int]], inv: float, scores: dict[str, float],
                    all_degraded: bool, cap: float | None) -> float:
        """For the reason of a miss found before scoring a hit: the best match among the targets (the keys of
        `scores`, the miss scores), as the hit's scoring would have reported it. When the raw best reached the
        threshold, the best hit score (held * inv * correction; the degraded ones' score is <= 0, so only healthy
        targets count, miss score > 0, unless all are degraded: then (score - penalty) + penalty); below it,
        the best (held * correction) * inv. A level's tenants hold the same `end` characters, so each level
        needs only its best correction; deepest level first, stopping when end * inv * cap (`cap` bounds every
        correction), which bounds this level and the ones above it, cannot beat the best so far."""
        cg, sg, p = self._correction.get, scores.get, DEGRADED_PENALTY
        raw = levels[-1][1] * inv < self.cache_threshold
        members = raw or all_degraded  # which targets count: all of them, or the healthy ones (miss score > 0)
        best = 0.0
        for tenants, end in reversed(levels):
            x = end * inv
            if best > 0.0:  # something to beat: can this level, or one above it, beat it?
                if cap is None:
                    cap = self._correction_cap()
                y = end * cap * inv if raw else x * cap
                if best >= (y - p + p if all_degraded and not raw else y):
                    break
            if members:
                corrections = [cg(t, 1.0) for t in tenants if t in scores]
            else:
                corrections = [cg(t, 1.0) for t in tenants if sg(t, 0.0) > 0.0]
            if corrections:
                c = max(corrections)
                if raw:
                    v = end * c * inv
                else:
                    v = x * c - p + p if all_degraded else x * c
                if v > best:
                    best = v
        return best

    # --- learning -----------------------------------------------------------------------------------------

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._ll.on_start(target, ctx)
        text = ctx.text
        if not text:
            return
        self._tick += 1
        tree, key, limit = self._tree, target.key, self.max_chars_per_target
        # Longer than the whole budget: keep its start (the part later turns share).
        held = tree.insert(text[:limit], key, self._tick)
        if tree.size[key] > limit:
            tree.evict(key, limit)
        pending = self._pending
        pending[(key, ctx.request_id)] = held / len(text)
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

