"""The prefix tree cache_aware keeps: matches, inserts and LRU eviction against a brute-force reference, its
invariants after every step, and insert following the walk just made."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.routing.strategies.prefix_tree import PrefixTree
from tests.support.examples import examples


def common(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def check_invariants(tree: PrefixTree) -> None:
    sizes: Counter[str] = Counter()
    stack = [tree.root]
    while stack:
        node = stack.pop()
        for ch, child in node.children.items():
            assert child.parent is node and child.edge and child.edge[0] == ch
            assert child.last, "a node nobody holds is unlinked"
            assert set(child.last) <= set(node.last) or node is tree.root  # a tenant holds all ancestors
            for tenant in child.last:
                sizes[tenant] += len(child.edge)
            kids = Counter(t for c in child.children.values() for t in c.last)
            assert {t: n for t, n in child.kids.items() if n} == dict(kids)
            stack.append(child)
    assert dict(sizes) == {t: n for t, n in tree.size.items() if n}


@settings(max_examples=examples(150), deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("xyz"), st.text(alphabet="ab", max_size=12)), max_size=40),
       probe=st.text(alphabet="ab", max_size=14))
def test_tree_matches_brute_force(ops: list[tuple[str, str]], probe: str) -> None:
    tree = PrefixTree()
    held: dict[str, list[str]] = {}
    for tick, (tenant, text) in enumerate(ops, 1):
        before = max((common(text, h) for h in held.get(tenant, [])), default=0)
        assert tree.insert(text, tenant, tick) == before
        if text:
            held.setdefault(tenant, []).append(text)
        check_invariants(tree)
    expected = {t: m for t, texts in held.items() if (m := max(common(probe, h) for h in texts))}
    assert tree.match(probe) == expected


@settings(max_examples=examples(150), deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("xy"), st.text(alphabet="abc", min_size=1, max_size=15)),
                    max_size=40),
       limit=st.integers(0, 30))
def test_tree_eviction_bounds_and_keeps_the_newest(ops: list[tuple[str, str]], limit: int) -> None:
    tree = PrefixTree()
    last: dict[str, str] = {}
    for tick, (tenant, text) in enumerate(ops, 1):
        tree.insert(text, tenant, tick)
        tree.evict(tenant, limit)
        last[tenant] = text
        assert tree.size.get(tenant, 0) <= limit
        check_invariants(tree)
        # The most recently used text survives whenever it fits on its own.
        if len(text) <= limit:
            assert tree.match(text).get(tenant) == len(text)
    for tenant in list(last):
        tree.forget(tenant)
    assert tree.size == {} and tree.root.children == {}


def shape(node: object) -> tuple:
    """The whole subtree: edges, who holds what (with ticks) and child counts, in a comparable form."""
    return (node.edge, sorted(node.last.items()), sorted(node.kids.items()),  # type: ignore[attr-defined]
            sorted(shape(c) for c in node.children.values()))  # type: ignore[attr-defined]


@settings(max_examples=examples(200), deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["walk", "insert", "insert", "evict"]), st.sampled_from("xy"),
                              st.text(alphabet="ab", max_size=10)), max_size=40),
       limit=st.integers(0, 20), probe=st.text(alphabet="ab", max_size=12))
def test_insert_after_a_walk_is_the_same(ops: list[tuple[str, str, str]], limit: int, probe: str) -> None:
    # insert follows the path of the last walk of the same text while no node changed since (select walks the
    # text, on_start inserts it); a walk made stale by a split, a new leaf or an eviction is not followed.
    walked, plain = PrefixTree(), PrefixTree()
    for tick, (op, tenant, text) in enumerate(ops, 1):
        if op == "walk":
            walked.walk(text)
        elif op == "insert":
            assert walked.insert(text, tenant, tick) == plain.insert(text, tenant, tick)
        else:
            walked.evict(tenant, limit)
            plain.evict(tenant, limit)
        check_invariants(walked)
        assert walked.size == plain.size and shape(walked.root) == shape(plain.root)
    assert walked.match(probe) == plain.match(probe)
