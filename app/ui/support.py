"""What every tab shares: starting coroutines from Qt slots, the packaged icons, and how errors and small tables
look. Nothing here imports another app.ui module, so any module of the window may import it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Any

from PySide6.QtCore import QAbstractItemModel, Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableView

from app.core.errors import SwitchboardError

log = logging.getLogger(__name__)

ICONS = "app.ui.icons"
ICON_SIZES = (16, 32, 64, 128, 256)
ERROR_STYLE = "color: #c0392b;"
_TASKS: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], *, on_error: Callable[[BaseException], None] | None = None,
          name: str | None = None) -> asyncio.Task[Any]:
    """Start `coro` on the running loop from a Qt slot, keeping a strong reference until it ends.

    A failure goes to `on_error` (shown by the caller), else to the log; it never vanishes silently.
    """
    task = asyncio.ensure_future(coro)
    if name:
        task.set_name(name)
    _TASKS.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _TASKS.discard(t)
        if t.cancelled():
            return
        exc = t.exception()
        if exc is None:
            return
        if on_error is not None:
            on_error(exc)
        else:
            log.error("background task %s failed", t.get_name(), exc_info=exc)

    task.add_done_callback(done)
    return task


def icon(name: str = "switchboard") -> QIcon:
    """A packaged icon (app/ui/icons): the SVG, with the rendered PNG sizes added where they exist."""
    result = QIcon()
    # A regular package, from the source tree or a wheel: its files are plain files on disk, which QIcon needs
    # (it reads them lazily, so a temporary copy from resources.as_file would be gone by then).
    folder = resources.files(ICONS)
    for file in (f"{name}.svg", *(f"{name}-{size}.png" for size in ICON_SIZES)):
        entry = folder / file
        if entry.is_file():
            result.addFile(str(entry))
    return result


def error_text(exc: BaseException) -> str:
    """What the user reads about a failure: the core's own message, else the exception's text or type."""
    return exc.message if isinstance(exc, SwitchboardError) else str(exc) or type(exc).__name__


def error_label() -> QLabel:
    """A hidden, wrapping, selectable red line for a tab's last error."""
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


def table_view(model: QAbstractItemModel, stretch: int) -> QTableView:
    """A read-only, row-selecting view of `model`, columns fitted to their contents but `stretch`."""
    view = QTableView()
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().hide()
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    return view
