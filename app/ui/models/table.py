"""The models table: a Qt item model adapting the core's models and their workers, refreshed on a timer.

The core's model events only mark the model dirty; a 500 ms timer rebuilds the rows and tells the view what
changed (rows inserted, removed, or cells changed), so a burst of requests or tokens costs at most one update
per tick. Loaded workers change without model events (memory, use counts), so while any worker exists the
timer also refreshes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QFont, QIcon, QPainter, QPixmap

from app.core.routing.health import Health
from app.core.services import Services

Index = QModelIndex | QPersistentModelIndex

REFRESH_MS = 500
# The model id of a row, whatever the column.
ID_ROLE = Qt.ItemDataRole.UserRole + 1
# A sortable value (numbers stay numbers) for the proxy model.
SORT_ROLE = Qt.ItemDataRole.UserRole + 2

COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "Name"),
    ("source", "Source"),
    ("architecture", "Arch"),
    ("quantization", "Quant"),
    ("size", "Size"),
    ("context", "Context"),
    ("capabilities", "Capabilities"),
    ("health", "Health"),
    ("state", "State"),
    ("memory", "Memory"),
    ("requests", "Requests"),
    ("last_used", "Last used"),
)
COLUMN = {key: i for i, (key, _) in enumerate(COLUMNS)}
_NUMERIC = {"size", "context", "memory", "requests"}

SOURCE_LABELS = {
    "hf": "HF",
    "ollama": "Ollama",
    "lmstudio": "LM Studio",
    "folder": "folder",
    "remote": "remote",
    "embedded": "embedded",
}

HEALTH_COLOURS = {
    Health.UNKNOWN.value: "#9e9e9e",
    "loading": "#1e88e5",  # a worker state, shown in the health column while the model's workers start
    Health.HEALTHY.value: "#43a047",
    Health.DEGRADED.value: "#fb8c00",
    Health.UNHEALTHY.value: "#e53935",
}

if TYPE_CHECKING:
    from app.core.catalog.model import ModelEntry


def human_bytes(n: int | None) -> str:
    if not n:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    local = time.localtime(timestamp)
    fmt = "%H:%M:%S" if time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d") else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, local)


@dataclass(frozen=True, slots=True)
class Row:
    """Everything one row shows, as plain values: two rows compare equal exactly when nothing changed."""

    id: str
    display_name: str
    path: str
    source: str
    architecture: str
    quantization: str
    size: int
    context: int
    capabilities: tuple[str, ...]
    health: str  # as Services.models.shown_health says: a Health value, or "loading"
    health_reason: str
    state: str
    memory: int
    requests: int
    last_used: float | None
    enabled: bool
    missing: bool
    default: bool
    pinned: bool

    def text(self, key: str) -> str:
        if key == "name":
            return self.id + ("  (default)" if self.default else "")
        if key == "source":
            return SOURCE_LABELS.get(self.source, self.source)
        if key == "size":
            return human_bytes(self.size)
        if key == "context":
            return f"{self.context:,}" if self.context else "—"
        if key == "capabilities":
            return ", ".join(self.capabilities)
        if key == "health":
            return self.health
        if key == "state":
            return "missing" if self.missing else self.state
        if key == "memory":
            return human_bytes(self.memory)
        if key == "requests":
            return str(self.requests)
        if key == "last_used":
            return when(self.last_used)
        return str(getattr(self, key) or "—")

    def sort_key(self, key: str) -> Any:
        if key in _NUMERIC:
            return getattr(self, key)
        if key == "last_used":
            return self.last_used or 0.0
        return self.text(key).lower()

    def tooltip(self, key: str) -> str:
        if key == "name":
            flags = [f for f, on in (("disabled", not self.enabled), ("files missing", self.missing),
                                     ("pinned", self.pinned), ("default model", self.default)) if on]
            return f"{self.display_name}\n{self.path}" + (f"\n{', '.join(flags)}" if flags else "")
        if key == "health":
            return self.health + (f": {self.health_reason}" if self.health_reason else "")
        return self.text(key)


def build_rows(services: Services) -> list[Row]:
    models = services.models
    workers: dict[str, list[tuple[str, str]]] = {}
    for view in models.loaded():
        workers.setdefault(view.model_id, []).append((view.state, view.key))
    default = models.default_id
    return [_row(services, entry, workers.get(entry.id, []), default) for entry in models.all()]


def _row(services: Services, entry: ModelEntry, workers: list[tuple[str, str]], default: str | None) -> Row:
    meta = entry.metadata
    states = {state for state, _ in workers}
    state = "loaded" if "loaded" in states else "loading" if states else "unloaded"
    health, health_reason = services.models.shown_health(entry.id)
    return Row(
        id=entry.id,
        display_name=entry.display_name,
        path=entry.path,
        source=entry.source,
        architecture=str(meta.get("architecture") or ""),
        quantization=str(meta.get("quantization") or ""),
        size=entry.size,
        context=int(meta.get("context_length") or 0),
        capabilities=tuple(entry.capabilities),
        health=health,
        health_reason=health_reason or "",
        state=state,
        memory=sum(services.models.memory_of(key) for _, key in workers),
        requests=entry.use_count,
        last_used=entry.last_used,
        enabled=entry.enabled,
        missing=entry.missing,
        default=entry.id == default,
        pinned=services.models.is_pinned(entry.id),
    )


def _badge(colour: str) -> QIcon:
    pixmap = QPixmap(12, 12)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(colour))
    painter.drawEllipse(1, 1, 10, 10)
    painter.end()
    return QIcon(pixmap)


class ModelsTableModel(QAbstractTableModel):
    """One row per model. The name column's check box is the model's `enabled` flag."""

    # After a refresh that changed something (the details panel follows it).
    refreshed = Signal()

    def __init__(self, services: Services, parent: QObject | None = None, *, interval_ms: int = REFRESH_MS) -> None:
        super().__init__(parent)
        self._services = services
        self._rows: list[Row] = build_rows(services)
        self._dirty = False
        self._badges: dict[str, QIcon] = {}
        self._unsubscribe = services.models.subscribe(self._mark_dirty)
        self._timer = QTimer(self)
        self._timer.setObjectName("models-refresh")
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    # -- refreshing ----------------------------------------------------------------------------
    def _mark_dirty(self, _event: str, _entry: ModelEntry) -> None:
        self._dirty = True

    def _tick(self) -> None:
        if self._dirty or self._services.models.loaded():
            self.refresh()

    def detach(self) -> None:
        """Stop listening and refreshing (the core is closing)."""
        self._timer.stop()
        self._unsubscribe()
        self._unsubscribe = lambda: None

    def refresh(self) -> bool:
        """Bring the rows up to date; True if anything changed."""
        self._dirty = False
        fresh = build_rows(self._services)
        changed = False
        fresh_ids = {row.id for row in fresh}
        # Removed: from the bottom up, so earlier indexes stay valid.
        for i in range(len(self._rows) - 1, -1, -1):
            if self._rows[i].id not in fresh_ids:
                self.beginRemoveRows(QModelIndex(), i, i)
                del self._rows[i]
                self.endRemoveRows()
                changed = True
        known = {row.id: i for i, row in enumerate(self._rows)}
        added = [row for row in fresh if row.id not in known]
        by_id = {row.id: row for row in fresh}
        last = len(COLUMNS) - 1
        for i, row in enumerate(self._rows):
            new = by_id[row.id]
            if new != row:
                self._rows[i] = new
                self.dataChanged.emit(self.index(i, 0), self.index(i, last))
                changed = True
        if added:
            start = len(self._rows)
            self.beginInsertRows(QModelIndex(), start, start + len(added) - 1)
            self._rows.extend(added)
            self.endInsertRows()
            changed = True
        if changed:
            self.refreshed.emit()
        return changed

    # -- reading -------------------------------------------------------------------------------
    def row_of(self, model_id: str) -> int:
        for i, row in enumerate(self._rows):
            if row.id == model_id:
                return i
        return -1

    def row_at(self, row: int) -> Row:
        return self._rows[row]

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and 0 <= section < len(COLUMNS):
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section][1]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == COLUMN["name"]:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        return flags

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows) or not 0 <= index.column() < len(COLUMNS):
            return None
        row = self._rows[index.row()]
        key = COLUMNS[index.column()][0]
        if role == Qt.ItemDataRole.DisplayRole:
            return row.text(key)
        if role == ID_ROLE:
            return row.id
        if role == SORT_ROLE:
            return row.sort_key(key)
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.tooltip(key)
        if role == Qt.ItemDataRole.CheckStateRole and key == "name":
            return Qt.CheckState.Checked if row.enabled else Qt.CheckState.Unchecked
        if role == Qt.ItemDataRole.DecorationRole and key == "health":
            return self._badge(row.health)
        if role == Qt.ItemDataRole.BackgroundRole and key == "health":
            tint = QColor(HEALTH_COLOURS[row.health])
            tint.setAlpha(40)
            return QBrush(tint)
        if role == Qt.ItemDataRole.ForegroundRole and (not row.enabled or row.missing):
            return QBrush(QColor("#8a8a8a"))
        if role == Qt.ItemDataRole.FontRole and key == "name" and row.default:
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and key in _NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        """Checking or unchecking the name column enables or disables the model."""
        if not index.isValid() or role != Qt.ItemDataRole.CheckStateRole or index.column() != COLUMN["name"]:
            return False
        checked = Qt.CheckState(value) == Qt.CheckState.Checked if not isinstance(value, bool) else value
        self._services.models.set_enabled(self._rows[index.row()].id, checked)
        self.refresh()
        return True

    def _badge(self, health: str) -> QIcon:
        badge = self._badges.get(health)
        if badge is None:
            badge = self._badges[health] = _badge(HEALTH_COLOURS[health])
        return badge
