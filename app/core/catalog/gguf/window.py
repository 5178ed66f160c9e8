"""Opening a file and reading it by position through a window of a reused per-thread buffer.

Positioned reads rather than mmap: a file truncated by another process while mapped would kill the
whole app with SIGBUS.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from app.core.catalog.gguf.header import GGUFError

__all__ = ["READ_AHEAD", "WINDOW_BYTES", "Scratch", "Window", "open_file", "scratch", "truncated"]

WINDOW_BYTES = 1 << 20  # size of the reused read buffer (and of one vectorised string-walk window)
READ_AHEAD = 64 << 10  # bytes read at a time while parsing scalars and tensor infos


def open_file(path: str) -> int:
    """A read-only descriptor of `path`; GGUFError saying why not (broken link, directory, no permission...)."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    # O_NONBLOCK: opening a FIFO named *.gguf must not hang the scan
    flags |= getattr(os, "O_NONBLOCK", 0)
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise GGUFError(f"broken symbolic link: target {target!r} does not exist") from None
        raise GGUFError("no such file") from None
    except IsADirectoryError:
        raise GGUFError("is a directory, not a GGUF file") from None
    except PermissionError:
        if os.path.isdir(path):
            raise GGUFError("is a directory, not a GGUF file") from None
        raise GGUFError("permission denied: the file is not readable") from None
    except OSError as e:
        if os.path.islink(path):
            raise GGUFError(f"cannot follow symbolic link: {e.strerror or e}") from None
        raise GGUFError(f"cannot open: {e.strerror or e}") from None


class Scratch:
    """Per-thread buffers reused across files: fresh multi-MB allocations page-fault on every call.

    `raw` is the read window; the numpy arrays are the work space of the string walk (strings.py).
    """

    def __init__(self, cap: int = WINDOW_BYTES) -> None:
        self.cap = cap
        self.raw = bytearray(cap + 16)
        self.view = memoryview(self.raw)
        self.a = np.frombuffer(self.raw, dtype=np.uint8)
        pad = cap + 16
        self.z = np.zeros(pad, dtype=np.bool_)
        self.t1 = np.zeros(pad, dtype=np.bool_)
        self.t2 = np.zeros(pad, dtype=np.bool_)
        nw = pad // 8
        self.wn = np.zeros(nw, dtype=np.bool_)
        self.w = np.zeros(nw, dtype=np.uint64)
        self.c = np.zeros(nw, dtype=np.int64)
        self.n = np.zeros(nw, dtype=np.int64)
        self.ln = np.zeros(nw, dtype=np.uint8)
        self.ok = np.zeros(nw, dtype=np.bool_)


_local = threading.local()


def scratch() -> Scratch:
    s = getattr(_local, "scratch", None)
    if s is None:
        s = _local.scratch = Scratch()
    return s


class Window:
    """Positioned reads of one open file through a window of the scratch buffer.

    `buf[pos - base]` is the byte at file offset `pos` for base <= pos < end.
    """

    __slots__ = ("fd", "size", "s", "buf", "base", "end")

    def __init__(self, fd: int, size: int, s: Scratch) -> None:
        self.fd = fd
        self.size = size
        self.s = s
        self.buf: bytearray | bytes = s.raw
        self.base = 0
        self.end = 0

    def fill(self, pos: int, n: int, ahead: int = READ_AHEAD) -> None:
        """Make [pos, pos + n) readable (the caller has checked it lies inside the file)."""
        want = min(max(n, ahead), self.size - pos)
        if want <= self.s.cap:
            got = _pread_into(self.fd, self.s.view[:want], pos)
            self.buf = self.s.raw
        else:  # a long chat template: a one-off buffer, bounded by the string caps
            data = _pread(self.fd, want, pos)
            got = len(data)
            self.buf = data
        if got < n:
            raise GGUFError(f"truncated: file shrank while reading (offset {pos + got} of {self.size})")
        self.base = pos
        self.end = pos + got


def _pread_into(fd: int, view: memoryview, pos: int) -> int:
    done = 0
    total = len(view)
    while done < total:
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], pos + done)
        else:  # pragma: no cover - Windows
            os.lseek(fd, pos + done, os.SEEK_SET)
            got = os.readv(fd, [view[done:]])
        if got <= 0:
            break
        done += got
    return done


def _pread(fd: int, n: int, pos: int) -> bytes:
    chunks = []
    done = 0
    while done < n:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, n - done, pos + done)
        else:  # pragma: no cover - Windows
            os.lseek(fd, pos + done, os.SEEK_SET)
            chunk = os.read(fd, n - done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def truncated(what: str, pos: int, need: int, size: int) -> GGUFError:
    return GGUFError(f"truncated: {what} at offset {pos} needs {need} bytes but {max(0, size - pos)} remain")

