"""A worker's log file: its stdout and stderr (llama.cpp's own log, Python's), one file per worker key, kept
bounded; and its last lines, which a model's details show."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from app.core.paths import data_dir

LIMIT_BYTES = 1 << 20  # a log past this starts over when its worker next starts
TAIL_LINES = 20
TAIL_BYTES = 4096


def path_of(key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return data_dir() / "logs" / f"{safe}.log"


def open_for_worker(path: Path | None) -> BinaryIO:
    """The file a starting worker writes to: appended to, so a log keeps the loads before (None: nowhere)."""
    if path is None:
        return open(os.devnull, "ab")
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "ab")
    if log.tell() > LIMIT_BYTES:
        log.truncate(0)
    return log


def tail(paths: Iterable[Path]) -> list[str]:
    """The last lines (at most TAIL_LINES, TAIL_BYTES) of the most recently written of these logs. Blocking."""
    newest: tuple[float, Path] | None = None
    for path in paths:
        try:
            written = path.stat().st_mtime
        except OSError:
            continue
        if newest is None or written > newest[0]:
            newest = (written, path)
    if newest is None:
        return []
    try:
        with open(newest[1], "rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - TAIL_BYTES))
            lines = file.read(TAIL_BYTES).decode(errors="replace").splitlines()
    except OSError:
        return []
    if size > TAIL_BYTES:
        lines = lines[1:]  # cut off at its start
    return lines[-TAIL_LINES:]
