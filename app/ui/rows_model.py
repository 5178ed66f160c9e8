"""A read-only Qt table over a list of dicts: the one base the panels' small tables share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt

_Index = QModelIndex | QPersistentModelIndex


class RowsTableModel(QAbstractTableModel):
    """A read-only table over a list of dicts; subclasses say how each column reads."""

    COLUMNS: tuple[str, ...] = ()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[dict[str, Any]] = []

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal \
                and 0 <= section < len(self.COLUMNS):
            return self.COLUMNS[section]
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        return self.cell(self._rows[index.row()], index.column(), role)

    def cell(self, row: dict[str, Any], column: int, role: int) -> Any:
        raise NotImplementedError

    def row(self, index: int) -> dict[str, Any]:
        return self._rows[index]


class ReplacedRowsModel(RowsTableModel):
    """Rows replaced wholesale on each refresh (a routing decision's candidates, an experiment's arm results)."""

    def set_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows == self._rows:
            return
        if len(rows) == len(self._rows) and self._rows:
            self._rows = rows  # same shape (a refresh of live numbers): no reset, the selection stays
            self.dataChanged.emit(self.index(0, 0), self.index(len(rows) - 1, len(self.COLUMNS) - 1))
            return
        self.beginResetModel()
        self._rows = rows
        self.endResetModel()
