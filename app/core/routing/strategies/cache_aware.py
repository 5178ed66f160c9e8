"""cache_aware: send a request where its prompt prefix is probably still in the worker's KV cache (SGLang-style).

One approximate radix tree over characters (prefix_tree.py) holds the request texts sent to every target, so one
walk down it gives every target's match. The match is on the whole conversation text, so a conversation's next
turn finds the target that served the previous one. Match ratio = longest prefix of ctx.text the target holds /
len(ctx.text).

For a local worker the tree holds facts, as llm-d's precise prefix scorer does: the worker reports which requests'
prompts its slots and RAM cache still hold, and how much of each (`on_report`), and the target's texts in the tree
become exactly those, cut to what is held. A remote backend reports nothing: its texts are a prediction (what was
sent there, least recently used dropped first), times a correction factor learned from what it says it reused
(cached_tokens / prompt_tokens), so a backend that lost its cache stops attracting requests.

Rule (healthy targets first; degraded ones only when every target is):
1. load imbalanced (max - min in flight > balance_abs_threshold and max > balance_rel_threshold * min)
   -> the least loaded target;
2. best predicted match >= cache_threshold -> that target (ties: the one with fewer in flight);
3. a miss -> least_loaded's rule with tree fill (characters held / max_chars_per_target) as extra load: load
   first (SGLang's "death spiral": don't pile every miss onto the emptiest cache), then the least cached text,
   which spreads misses.
Memory is bounded per target (`max_chars_per_target`): the target's least recently used leaves are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.core.routing.strategies.base import Outcome, RouteContext, Selection, Strategy, Target
from app.core.routing.strategies.common import pct, penalise, unit
from app.core.routing.strategies.least_loaded import LeastLoaded
from app.core.routing.strategies.params import CacheAwareParams, LeastLoadedParams
from app.core.routing.strategies.prefix_tree import PrefixTree
from app.core.runtime.slots import SlotReport

MIN_PREDICTION = 0.05  # below this predicted ratio a report says nothing about the correction factor
MAX_PENDING = 10_000  # predictions awaiting on_complete (requests that never complete are dropped, oldest first)
MAX_HELD_TEXTS = 4096  # texts kept per reporting target, in case a report names them (a bound, never reached)


class CacheAware(Strategy):
    name = "cache_aware"
    Params = CacheAwareParams
    config: CacheAwareParams

    def __init__(self, config: CacheAwareParams | None = None) -> None:
        super().__init__(config)
        self._ll = LeastLoaded(LeastLoadedParams(memory_weight=self.config.memory_weight))
        self._tree = PrefixTree()
        self._tick = 0
        self._correction: dict[str, float] = {}  # tenant -> EWMA of reported / predicted reuse, in [0, 1]
        self._pending: dict[tuple[str, str], float] = {}  # (target, request id) -> predicted ratio (raw)
        self._stats: dict[str, list[int]] = {}  # tenant -> [hits, misses, reused tokens, prompt tokens]
        # Reporting targets (local workers) -> request id -> its text, for the requests the worker may still hold.
        self._texts: dict[str, dict[str, str]] = {}
        self._held: dict[str, dict[str, float]] = {}  # reporting target -> its last report's holdings

    # --- deciding -----------------------------------------------------------------------------------------

    def select(self, targets: Sequence[Target], ctx: RouteContext) -> Selection:
        imbalance = self._imbalance(targets)
        if imbalance is not None:
            scores = self._ll.scores(targets)
            chosen, why = self._ll.choose(targets, scores)
            reason = f"load imbalanced ({imbalance[0]} vs {imbalance[1]} in flight): {why}"
            return Selection(chosen.key, reason, scores, {"branch": "balance"})
        text = ctx.text
        held = self._tree.match(text) if text else {}  # target -> characters of the text it holds
        inv = 1.0 / len(text) if text else 0.0
        # The predicted match of each target that may win (healthy first) and holds some of the text.
        any_healthy = not all(t.degraded for t in targets)
        corr = self._correction
        predicted = {t.key: held[t.key] * inv * corr.get(t.key, 1.0) for t in targets
                     if t.key in held and not (any_healthy and t.degraded)}
        best = max(predicted.values(), default=0.0)
        if best > 0.0 and best >= self.config.cache_threshold:
            return self._hit(targets, held, inv, predicted, best)
        return self._miss(targets, best)

    def _imbalance(self, targets: Sequence[Target]) -> tuple[int, int] | None:
        """(most, fewest) in flight when the load is imbalanced, else None; over the healthy targets, or all of
        them when none is."""
        flights = [t.in_flight for t in targets if not t.degraded] or [t.in_flight for t in targets]
        hi, lo = max(max(flights), 0), max(min(flights), 0)
        c = self.config
        if hi - lo > c.balance_abs_threshold and hi > c.balance_rel_threshold * lo:
            return hi, lo
        return None

    def _hit(self, targets: Sequence[Target], held: Mapping[str, int], inv: float, predicted: dict[str, float],
             best: float) -> Selection:
        """The target whose predicted match is `best`; of several (e.g. two replicas hold the whole text), the one
        with fewer in flight.

        Score = predicted match less the degraded penalty: healthy [0, 1], degraded [-1, 0]."""
        corr = self._correction
        scores = dict.fromkeys([t.key for t in targets], 0.0)  # 0 for a target holding none of the text
        scores.update(predicted)
        for t in targets:  # degraded holders when a healthy target exists are not in `predicted`: they score too
            if t.degraded and t.key in held and t.key not in predicted:
                scores[t.key] = held[t.key] * inv * corr.get(t.key, 1.0)
        best_keys = [k for k, v in predicted.items() if v == best]
        key = best_keys[0]
        if len(best_keys) > 1:
            key = min((t for t in targets if t.key in best_keys), key=lambda t: (max(t.in_flight, 0), t.key)).key
        reason = f"prefix match {pct(best)} on {key}"
        c = corr.get(key, 1.0)
        if c < 0.995:
            reason += f" (after correction x{c:.2f})"
        return Selection(key, reason, penalise(scores, targets), {"branch": "hit", "match": best})

    def _miss(self, targets: Sequence[Target], best: float) -> Selection:
        """least_loaded's rule with each target's tree fill as extra load; `best` (the best predicted match) is
        for the reason."""
        scores = self._ll.scores(targets, self._tree.size, 1.0 / self.config.max_chars_per_target)
        values = list(scores.values())
        chosen = targets[values.index(max(values))]
        reason = (f"cache miss (best match {pct(best)} < {pct(self.config.cache_threshold)}): "
                  f"{chosen.key} has the least load and cached text")
        return Selection(chosen.key, reason, scores, {"branch": "miss", "match": best})

    # --- learning -----------------------------------------------------------------------------------------

    def on_start(self, target: Target, ctx: RouteContext) -> None:
        self._ll.on_start(target, ctx)
        text = ctx.text
        if not text:
            return
        self._tick += 1
        tree, key, limit = self._tree, target.key, self.config.max_chars_per_target
        # Longer than the whole budget: keep its start (the part later turns share).
        held = tree.insert(text[:limit], key, self._tick)
        if tree.size[key] > limit:
            tree.evict(key, limit)
        texts = self._texts.get(key)
        if texts is not None:
            texts[ctx.request_id] = text
            if len(texts) > MAX_HELD_TEXTS:
                del texts[next(iter(texts))]
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
        if predicted is None or predicted < MIN_PREDICTION or target.key in self._held:
            return  # too small to learn from, or a reporting worker's (facts, not predictions)
        actual = unit(cached / outcome.prompt_tokens)
        sample = min(actual / predicted, 1.0)  # how much of the predicted reuse the worker really had
        a = self.config.correction_alpha
        self._correction[target.key] = (1.0 - a) * self._correction.get(target.key, 1.0) + a * sample

    def on_report(self, key: str, report: SlotReport) -> None:
        """The worker's own word on what it holds: its texts in the tree become the reported requests' texts, cut
        to the reported fraction. Only a report that drops or shortens something rebuilds the target's part of
        the tree; one that only adds (the usual case: a request started or finished) changes nothing there, as
        on_start inserted the text already."""
        first = key not in self._held
        texts = self._texts.setdefault(key, {})
        held = dict(report.held)
        before = self._held.get(key, {})
        self._held[key] = held
        for request_id in [r for r in texts if r not in held]:
            del texts[request_id]
        if not first and all(held.get(r, 0.0) >= fraction for r, fraction in before.items()):
            return
        tree, limit = self._tree, self.config.max_chars_per_target
        tree.forget(key)
        self._tick += 1
        for request_id, text in texts.items():
            tree.insert(text[:min(limit, round(len(text) * held[request_id]))], key, self._tick)
        if tree.size.get(key, 0) > limit:
            tree.evict(key, limit)
        self._correction.pop(key, None)  # facts need no correction

    def forget(self, key: str) -> None:
        """Drop everything known about a target's cache (e.g. its worker restarted)."""
        self._tree.forget(key)
        self._correction.pop(key, None)
        self._texts.pop(key, None)
        self._held.pop(key, None)

    # --- reporting ----------------------------------------------------------------------------------------

    def cache_stats(self) -> dict[str, dict[str, Any]]:
        """Per target, over its successful requests: hits/misses (hit = the worker reported cached tokens > 0),
        reused and prompt token sums, hit rate, the correction factor, how many characters its tree holds and whether
        those are the worker's report or a prediction."""
        keys = sorted(set(self._stats) | set(self._tree.size) | set(self._correction) | set(self._held))
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
                "source": "worker report" if k in self._held else "prediction",
            }
        return out
