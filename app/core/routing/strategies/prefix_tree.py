"""An approximate radix tree over characters: which tenants (targets) hold which texts, with LRU eviction.

cache_aware keeps one for every target: each node records which tenants hold it and when they last used it,
so one walk down the tree gives every tenant's longest prefix of a text. A tenant on a node is on all its
ancestors, so the tenant sets along a path shrink: `levels` gives the few distinct sets with how much of the
text each holds. Memory is bounded per tenant by `evict` (least recently used leaves first).

Cost: a walk visits the few nodes on the text's path (edges compared C-level, never char by char in Python),
not one step per tenant or per character; `insert` follows the path of the walk just made when no node changed
since (a select walks the text, then on_start inserts it).
"""

from __future__ import annotations

import heapq


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
