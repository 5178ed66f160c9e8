"""Skipping a large array of GGUF strings (the tokenizer vocabulary) without decoding it.

The vocabulary is most of a header's bytes: tens of thousands of short length-prefixed strings, each
length to be read only to find where the next one starts. The walk is vectorised with numpy over a
window of the file; skip_strings says how.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import numpy as np

from app.core.catalog.gguf.header import GGUFError
from app.core.catalog.gguf.window import READ_AHEAD, Scratch, Window, truncated

__all__ = ["Cursor", "skip_strings"]

_U64 = struct.Struct("<Q")
_SCALAR_WALK_MAX = 32  # string arrays this short are walked with a plain loop
_BYTE_POS = np.uint64(0x0001020304050607)  # multiply trick: byte index of the one set byte of a word
_SHIFT56 = np.uint64(56)


class Cursor(Protocol):
    """The parser as the walk uses it: its window, its position, and its one-string careful step."""

    r: Window
    size: int
    pos: int

    def skip_string(self, what: str, cap: int) -> None: ...


def skip_strings(pr: Cursor, pos: int, count: int, what: str, cap: int) -> int:
    """Offset just past `count` length-prefixed strings starting at `pos`, each at most `cap` bytes.

    Vectorised: in a window of the file, a string record [u64 length < 256][text] shows up as
    seven zero bytes followed by a non-zero byte. Those candidate starts are found with numpy,
    each candidate's successor (start + 8 + length) is computed at once, and the records are
    accepted only while successors land exactly on the next candidate, starting from `pos`.
    Anything else (long strings, empty strings, text with NUL bytes) is stepped over one
    record at a time with full checks, then the fast chain resumes.
    """
    r = pr.r
    s = r.s
    size = pr.size
    done = 0
    while done < count:
        left = count - done
        if left <= _SCALAR_WALK_MAX:
            pr.pos = pos
            for _ in range(left):
                pr.skip_string(what, cap)
            return pr.pos
        # one window: enough for the remaining strings at ~16 bytes each, bounded by the buffer
        want = min(size - pos, s.cap, max(left * 16, READ_AHEAD))
        if want < 8:
            raise truncated(what, pos, 8, size)
        r.fill(pos, want, ahead=want)
        buf = r.buf
        base = r.base
        width = r.end - base
        rel = pos - base
        walked, rel = _walk_window(s, buf, width, rel, left, what, size, base, cap)
        done += walked
        pos = base + rel
        if pos > size:
            raise GGUFError(f"truncated: {what} ends at offset {pos} but the file has {size} bytes")
    return pos


def _walk_window(
    s: Scratch, buf: Any, width: int, rel: int, left: int, what: str, size: int, base: int, cap: int
) -> tuple[int, int]:
    """Walk up to `left` records from buf[rel] inside buf[:width]: (records walked, new rel)."""
    u64 = _U64.unpack_from
    done = 0
    chain = None  # (c, n, ok, breaks) lists, computed lazily on the first fast-path use
    while done < left:
        if rel + 8 > width:
            return done, rel  # the next length prefix is past the window: caller refills
        if chain is None:
            chain = _candidates(s, width) if buf is s.raw else ((), (), None)
        c, nxt, breaks = chain
        i = _find(c, rel) if len(c) else -1
        if i < 0:
            # not a fast-path record: one careful step
            length = u64(buf, rel)[0]
            if base + rel + 8 + length > size:
                raise GGUFError(
                    f"truncated: {what} at offset {base + rel} claims {length} bytes "
                    f"but {size - base - rel - 8} remain"
                )
            if length > cap:
                raise GGUFError(f"{what} at offset {base + rel} is {length} bytes, over the {cap}-byte limit")
            rel += 8 + length
            done += 1
            continue
        # records c[i], c[i+1], ... chain correctly up to the next break
        b = _next_break(breaks, i, len(c))
        want = left - done
        if b - i + 1 >= want:
            last = i + want - 1
            return left, int(nxt[last])
        done += b - i + 1
        rel = int(nxt[b])
    return done, rel


def _find(c: Any, rel: int) -> int:
    i = int(np.searchsorted(c, rel))
    return i if i < len(c) and int(c[i]) == rel else -1


def _next_break(breaks: Any, i: int, n: int) -> int:
    """Index of the first candidate at or after i whose successor is not the next candidate."""
    if breaks is None:
        return n - 1
    j = int(np.searchsorted(breaks, i))
    return int(breaks[j]) if j < len(breaks) else n - 1


def _candidates(s: Scratch, width: int) -> tuple[Any, Any, Any]:
    """Candidate record starts in s.raw[:width] and their successors (both sorted int64 arrays)."""
    if width < 16:
        return (), (), None
    a = s.a
    z, t1, t2 = s.z, s.t1, s.t2
    # z[i]: byte i is zero; t2[i]: bytes i..i+6 are all zero (built by doubling)
    np.equal(a[:width], 0, out=z[:width])
    np.logical_and(z[: width - 1], z[1:width], out=t1[: width - 1])
    np.logical_and(t1[: width - 3], t1[2 : width - 1], out=t2[: width - 3])
    np.logical_and(t2[: width - 6], t2[3 : width - 3], out=t1[: width - 6])
    # record start i: bytes i+1..i+7 zero (length < 256) and byte i+8 not zero (first text byte)
    m = width - 8  # candidates i in [0, m)
    np.greater(t1[1 : m + 1], z[8 : m + 8], out=t2[:m])
    padded = (m + 7) & ~7
    t2[m:padded] = False
    # compact: at most one candidate per aligned 8-byte word for valid records (each >= 9 bytes)
    nw = padded // 8
    words = t2[:padded].view(np.uint64)
    wn = s.wn[:nw]
    np.not_equal(words, 0, out=wn)
    k = int(np.count_nonzero(wn))
    if k < 2:
        return (), (), None
    idx = np.flatnonzero(wn)  # (np.compress with out= is ten times slower here)
    # Candidates are >= 8 bytes apart (byte i+8 is non-zero, bytes j+1..j+7 of a later one are
    # zero), so every such word holds exactly one set byte: w == 1 << 8*b. Its index b comes
    # from one multiplication: the top byte of (w * 0x0001020304050607) is b.
    w = s.w[:k]
    np.take(words, idx, out=w, mode="clip")
    np.multiply(w, _BYTE_POS, out=w)
    np.right_shift(w, _SHIFT56, out=w)
    c = s.c[:k]
    np.multiply(idx, 8, out=c)
    np.add(c, w.view(np.int64), out=c)
    k = len(c)
    ln = s.ln[:k]
    np.take(a, c, out=ln, mode="clip")  # the length's low byte; the other seven are zero by construction
    nxt = s.n[:k]
    np.add(c, 8, out=nxt)
    np.add(nxt, ln, out=nxt)
    ok = s.ok[: k - 1]
    np.equal(nxt[: k - 1], c[1:], out=ok)
    breaks = None if ok.all() else np.flatnonzero(~ok)
    return c, nxt, breaks

