"""cache_aware: prefix routing of conversations, load balance, spread misses, correction from reported cache use,
bounded memory; and select against a statement of its rule fed with what each target was sent, by brute force
(same decisions, reasons and scores). The prefix tree itself: test_prefix_tree.py."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.routing.strategies import Outcome, RouteContext, Selection, Target
from app.core.routing.strategies.cache_aware import CacheAware
from app.core.routing.strategies.common import DEGRADED_PENALTY, pct
from app.core.runtime.slots import SlotReport
from tests.support.examples import examples

SYSTEM = "<|system|>\nYou are a careful assistant. Answer briefly and cite sources when you can.\n"


def T(key: str, in_flight: int = 0, **kw: object) -> Target:
    return Target(key, key.split("#")[0], in_flight=in_flight, **kw)  # type: ignore[arg-type]


def C(text: str, rid: str = "") -> RouteContext:
    return RouteContext(text=text, request_id=rid)


def route(s: CacheAware, targets: Sequence[Target], text: str, rid: str = "") -> Selection:
    sel = s.select(targets, C(text, rid))
    s.on_start(next(t for t in targets if t.key == sel.key), C(text, rid))
    return sel


def turn(text: str, user: str, reply: str = "Sure, here is what I found about that.") -> str:
    return f"{text}<|user|>\n{user}\n<|assistant|>\n{reply}\n"


def test_next_turn_goes_where_the_conversation_is() -> None:
    s = CacheAware()
    ts = [T("a"), T("b"), T("c")]
    # Openings whose own text outweighs the shared system prompt: first turns are misses.
    convs = [turn(SYSTEM, f"{topic} " * 12) for topic in ("Volcanoes?", "Bread baking!", "Chess openings")]
    first = [route(s, ts, c).key for c in convs]
    assert sorted(first) == ["a", "b", "c"]  # misses spread over idle targets
    for _ in range(3):
        convs = [turn(c, "And then? Please go on with more details.") for c in convs]
        again = [route(s, ts, c) for c in convs]
        assert [sel.key for sel in again] == first
        assert all(sel.reason.startswith("prefix match") and sel.detail["branch"] == "hit" for sel in again)
        assert all(sel.scores[sel.key] == max(sel.scores.values()) for sel in again)


def test_matches_the_whole_conversation_not_the_first_message() -> None:
    s = CacheAware()
    ts = [T("a"), T("b")]
    opening = turn(SYSTEM, "Hi! Can you help me plan a trip to Lisbon in the spring?")
    x = turn(opening, "I like museums and quiet cafes most of all, so plan around those.")
    y = turn(opening, "We travel with two small children and need short walking days.")
    s.on_start(ts[0], C(x))
    s.on_start(ts[1], C(y))
    # Both hold the opening; only b holds y's later turns.
    sel = s.select(ts, C(turn(y, "What about rainy days?")))
    assert sel.key == "b"
    assert sel.scores["b"] > sel.scores["a"] > 0


def test_goes_least_loaded_when_imbalanced() -> None:
    s = CacheAware()  # abs 4, rel 1.5
    conv = turn(SYSTEM, "Summarise the following report for me, it is long: " + "data " * 200)
    s.on_start(T("a"), C(conv))
    nxt = turn(conv, "Shorter please.")
    assert s.select([T("a", 4), T("b", 0)], C(nxt)).key == "a"  # 4 - 0 is not > 4: still the cache
    assert s.select([T("a", 6), T("b", 3)], C(nxt)).key == "a"  # 6 - 3 <= 4
    sel = s.select([T("a", 9), T("b", 1)], C(nxt))
    assert sel.key == "b" and sel.detail["branch"] == "balance"
    assert sel.reason.startswith("load imbalanced (9 vs 1 in flight): least loaded")
    assert s.select([T("a", 12), T("b", 9)], C(nxt)).key == "a"  # 12 < 1.5 * 9: relatively balanced


def test_misses_spread_and_respect_load() -> None:
    s = CacheAware()
    ts = [T("a"), T("b"), T("c")]
    rng = random.Random(5)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    counts = Counter(
        route(s, ts, " ".join(rng.choice(words) for _ in range(30)) + f" #{i}").key for i in range(30)
    )
    assert all(n >= 7 for n in counts.values()), counts  # 10 each ideally: no target gets most of them
    # A miss never goes to a busier target just because its cache is emptier (no death spiral).
    fresh = CacheAware()
    for i in range(20):
        fresh.on_start(T("a"), C(f"{i} old text that fills a's cache " * 10))
    assert fresh.select([T("a", 0), T("b", 1)], C("something new")).key == "a"
    assert fresh.select([T("a", 0), T("b", 0)], C("something new")).key == "b"  # equal load: emptier cache


def test_correction_lowers_a_target_whose_cache_is_gone() -> None:
    s = CacheAware.from_params({"correction_alpha": 0.5})
    a, b = T("a"), T("b")
    conv = turn(SYSTEM, "Explain the history of the printing press in Europe, step by step.")
    s.on_start(a, C(conv))
    s.on_start(b, C(conv))
    # a keeps serving this conversation but reports no cached tokens: its worker lost the cache.
    for i in range(6):
        text = turn(conv, f"Follow-up {i}")
        s.on_start(a, C(text, f"r{i}"))
        s.on_complete(a, C(text, f"r{i}"), Outcome(ok=True, prompt_tokens=200, cached_tokens=0))
    nxt = turn(conv, "One more thing.")
    sel = s.select([a, b], C(nxt))
    assert sel.key == "b", sel
    assert sel.scores["a"] < sel.scores["b"]
    stats = s.cache_stats()
    assert stats["a"]["misses"] == 6 and stats["a"]["hits"] == 0 and stats["a"]["correction"] < 0.1
    assert stats["b"]["correction"] == 1.0
    # b reports real reuse: its factor stays high, and hits are counted.
    s.on_start(b, C(nxt, "rb"))
    s.on_complete(b, C(nxt, "rb"), Outcome(ok=True, prompt_tokens=200, cached_tokens=180))
    stats = s.cache_stats()
    assert stats["b"] | {"correction": None, "tree_chars": None} == {
        "hits": 1, "misses": 0, "reused_tokens": 180, "prompt_tokens": 200, "hit_rate": 1.0,
        "correction": None, "tree_chars": None, "source": "prediction",
    }
    assert stats["b"]["correction"] > 0.9


def test_failures_and_unpredicted_reuse_leave_the_factor_alone() -> None:
    s = CacheAware()
    s.on_start(T("a"), C("x" * 100, "r1"))
    s.on_complete(T("a"), C("x" * 100, "r1"), Outcome(ok=False, error="boom"))
    s.on_start(T("a"), C("completely different", "r2"))  # predicted 0: says nothing about the factor
    s.on_complete(T("a"), C("completely different", "r2"), Outcome(ok=True, prompt_tokens=10, cached_tokens=0))
    st_ = s.cache_stats()["a"]
    assert st_["correction"] == 1.0 and st_["misses"] == 1 and st_["hits"] == 0


def test_memory_bound_evicts_least_recently_used() -> None:
    s = CacheAware.from_params({"max_chars_per_target": 1000})
    a = T("a")
    texts = [f"{i:03d} " + "lorem ipsum dolor sit amet " * 4 for i in range(40)]  # ~112 chars each
    for i, text in enumerate(texts):
        s.on_start(a, C(text, f"r{i}"))
        assert s.cache_stats()["a"]["tree_chars"] <= 1000
    # The newest texts are still held, the oldest are gone.
    assert s.select([a, T("b")], C(texts[-1] + " more")).detail["branch"] == "hit"
    assert s.select([a, T("b")], C(texts[0] + " more")).detail["branch"] == "miss"
    # A text longer than the whole budget keeps its start.
    s.on_start(a, C("z" * 5000))
    assert s.cache_stats()["a"]["tree_chars"] <= 1000


def test_forget_drops_a_target() -> None:
    s = CacheAware()
    s.on_start(T("a"), C("hello there, how are you"))
    s.forget("a")
    assert s.cache_stats() == {}
    assert s.select([T("a"), T("b")], C("hello there, how are you")).detail["branch"] == "miss"


def test_empty_text_and_thresholds() -> None:
    s = CacheAware()
    assert s.select([T("a"), T("b")], C("")).detail["branch"] == "miss"
    s.on_start(T("a"), C(""))
    s.on_start(T("a"), C("abcdefghij"))
    assert s.select([T("a"), T("b")], C("abcdeXXXXX")).detail["match"] == 0.5  # 5 of 10
    assert s.select([T("a"), T("b")], C("abcdeXXXXX")).detail["branch"] == "hit"  # 0.5 >= 0.5
    assert CacheAware.from_params({"cache_threshold": 0.6}).select([T("a")], C("abcdeXXXXX")).detail["branch"] == "miss"


def test_params() -> None:
    p = CacheAware().params()
    assert p == {"cache_threshold": 0.5, "balance_abs_threshold": 4.0, "balance_rel_threshold": 1.5,
                 "max_chars_per_target": 1_000_000, "correction_alpha": 0.3, "memory_weight": 2.0}
    with pytest.raises(ValueError, match="cache_threshold"):
        CacheAware.from_params({"cache_threshold": -0.1})
    with pytest.raises(ValueError, match="max_chars"):
        CacheAware.from_params({"max_chars": 10})


# --- select against the rule, fed by brute force ------------------------------------------------------------


class Sent:
    """What the test sent each target (as on_start keeps it: the first max_chars characters), by brute force:
    what its tree holds as long as the target never went over its budget (then eviction decides)."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.texts: dict[str, set[str]] = {}

    def add(self, key: str, text: str) -> None:
        if text:
            self.texts.setdefault(key, set()).add(text[: self.max_chars])

    def size(self, key: str) -> int:
        """Characters held: every distinct prefix is one tree character."""
        return len({t[:i] for t in self.texts.get(key, ()) for i in range(1, len(t) + 1)})

    def within_budget(self) -> bool:
        return all(self.size(k) <= self.max_chars for k in self.texts)

    def held(self, text: str) -> dict[str, int]:
        matches = {k: max(len(os.path.commonprefix([text, t])) for t in texts) for k, texts in self.texts.items()}
        return {k: m for k, m in matches.items() if m}


def reference_select(s: CacheAware, targets: Sequence[Target], ctx: RouteContext, held: Mapping[str, int],
                     sizes: Mapping[str, float]) -> Selection:
    """The rule stated plainly, one pass per quantity, given each target's match (`held`) and tree fill (`sizes`):
    select must give exactly this (same key, reason, scores and detail)."""
    ll, p, c, corr = s._ll, DEGRADED_PENALTY, s.config, s._correction
    pool = [t for t in targets if not t.degraded] or list(targets)  # who may win
    flights = [t.in_flight for t in pool]
    hi, lo = max(max(flights), 0), max(min(flights), 0)
    if hi - lo > c.balance_abs_threshold and hi > c.balance_rel_threshold * lo:
        scores = ll.scores(targets)
        chosen, why = ll.choose(targets, scores)
        return Selection(chosen.key, f"load imbalanced ({hi} vs {lo} in flight): {why}", scores,
                         {"branch": "balance"})
    text = ctx.text
    inv = 1.0 / len(text) if text else 0.0
    ratio = {t.key: held.get(t.key, 0) * inv * corr.get(t.key, 1.0) for t in targets}  # predicted match
    best = max(ratio[t.key] for t in pool)
    if best > 0.0 and best >= c.cache_threshold:
        scores = {t.key: ratio[t.key] - (p if t.degraded else 0.0) for t in targets}
        tied = [t for t in pool if ratio[t.key] == best]
        chosen = min(tied, key=lambda t: (max(t.in_flight, 0), t.key))
        reason = f"prefix match {pct(best)} on {chosen.key}"
        factor = corr.get(chosen.key, 1.0)
        if factor < 0.995:
            reason += f" (after correction x{factor:.2f})"
        return Selection(chosen.key, reason, scores, {"branch": "hit", "match": best})
    scores = ll.scores(targets, sizes, 1.0 / c.max_chars_per_target)
    values = list(scores.values())
    chosen = targets[values.index(max(values))]
    reason = (f"cache miss (best match {pct(best)} < {pct(c.cache_threshold)}): "
              f"{chosen.key} has the least load and cached text")
    return Selection(chosen.key, reason, scores, {"branch": "miss", "match": best})

pressures = st.one_of(st.floats(0, 1), st.sampled_from([-0.5, 1.5, float("nan"), float("inf")]))


@st.composite
def pools(draw: st.DrawFn) -> list[Target]:
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "a#1", "b#1"]), min_size=1, max_size=7,
                         unique=True))
    all_degraded = draw(st.booleans()) and draw(st.booleans())
    return [T(k, draw(st.sampled_from([0, 0, 0, 1, 2, 5, -1])), memory_pressure=draw(pressures),
              degraded=all_degraded or draw(st.integers(0, 4)) == 0) for k in keys]


@settings(max_examples=examples(500), deadline=None)
@given(threshold=st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]), alpha=st.sampled_from([0.3, 0.7, 1.0]),
       max_chars=st.sampled_from([40, 10_000]),
       steps=st.lists(st.tuples(pools(), st.text(alphabet="xy", min_size=0, max_size=3),
                                st.integers(0, 4), st.sampled_from([0.0, 0.1, 0.3, 0.6, 1.0, 1.2]),
                                st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([None, 0.0, 0.3, 0.6, 0.9])),
                      min_size=1, max_size=25))
def test_select_is_the_rule_exactly(threshold: float, alpha: float, max_chars: int,
                                    steps: list[tuple[list[Target], str, int, float, str, float | None]]) -> None:
    s = CacheAware.from_params({"cache_threshold": threshold, "correction_alpha": alpha,
                                "max_chars_per_target": max_chars})
    sent = Sent(max_chars)
    convs = ["", "", ""]
    for i, (targets, turn_text, conv, reuse, key, factor) in enumerate(steps):
        if factor is not None:  # as if that target's reports had driven its factor there
            s._correction[key] = factor
        c = conv % 3
        convs[c] = (convs[c] or SYSTEM[: 20 + 7 * c]) + turn_text * (1 + conv)  # growing conversations
        ctx = C(convs[c] if conv < 3 else turn_text, f"r{i}")
        sel = s.select(targets, ctx)
        if sent.within_budget():  # the caches as sent
            held, sizes = sent.held(ctx.text), {k: float(sent.size(k)) for k in sent.texts}
        else:  # as eviction left them (the tree's eviction is checked against its own reference in test_prefix_tree.py)
            held, sizes = (s._tree.match(ctx.text) if ctx.text else {}), dict(s._tree.size)
        assert sel == reference_select(s, targets, ctx, held, sizes)
        chosen = next(t for t in targets if t.key == sel.key)
        s.on_start(chosen, ctx)
        sent.add(chosen.key, ctx.text)
        prompt = max(len(ctx.text), 1)
        s.on_complete(chosen, ctx, Outcome(ok=True, prompt_tokens=prompt, cached_tokens=int(prompt * reuse)))


def test_a_worker_s_report_replaces_the_prediction() -> None:
    s = CacheAware()
    ts = [T("a"), T("b")]
    opening = turn(SYSTEM, "Tell me everything about the history of the printing press in Europe.")
    s.on_report("a", SlotReport(held={"r1": 1.0}))
    assert route(s, ts, opening, "r1").key == "a"  # idle and equal: the first in turn
    nxt = turn(opening, "And in Asia?")
    assert s.select(ts, C(nxt)).detail["branch"] == "hit"
    # The worker says r1's state is gone (another conversation took its slot): the next turn is a miss, and the
    # correction factor (a remote backend's stand-in for facts) has nothing to do with it.
    s.on_report("a", SlotReport(held={"r2": 1.0}))
    sel = s.select(ts, C(nxt))
    assert sel.detail["branch"] == "miss" and "correction" not in sel.reason
    assert s.cache_stats()["a"]["source"] == "worker report" and s.cache_stats()["a"]["tree_chars"] == 0


def test_a_report_cuts_a_text_to_the_part_held() -> None:
    s = CacheAware()
    ts = [T("a"), T("b")]
    long = turn(SYSTEM, "Please review this: " + "clause " * 300)
    s.on_report("a", SlotReport(held={"r1": 1.0}))
    s.on_start(ts[0], C(long, "r1"))
    # Only a quarter of r1's prompt is still held (the rest was cut off when its slot was reused).
    s.on_report("a", SlotReport(held={"r1": 0.25}))
    sel = s.select(ts, C(turn(long, "Now summarise.")))
    assert sel.detail["branch"] == "miss"  # about a quarter held < the 50% threshold
    assert 0.15 < sel.detail["match"] < 0.3
    # A report that only adds (r2) changes nothing about what is matched for r1.
    s.on_report("a", SlotReport(held={"r1": 0.25, "r2": 1.0}))
    assert s.select(ts, C(turn(long, "Now summarise."))).detail["match"] == sel.detail["match"]


def test_a_target_that_never_reports_keeps_its_prediction_and_correction() -> None:
    s = CacheAware()
    ts = [T("remote"), T("b")]
    conv = turn(SYSTEM, "Explain the offside rule in football with examples." * 3)
    s.on_report("b", SlotReport())
    s.on_start(ts[0], C(conv, "x"))
    nxt = turn(conv, "And the handball rule?")
    s.on_start(ts[0], C(nxt, "y"))  # predicted: most of it is held
    s.on_complete(ts[0], C(nxt, "y"), Outcome(ok=True, prompt_tokens=100, cached_tokens=0))
    assert s.cache_stats()["remote"]["source"] == "prediction"
    assert s.cache_stats()["remote"]["correction"] < 1.0
