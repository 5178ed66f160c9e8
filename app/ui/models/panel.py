"""The Models tab: filter, table, actions on the selected model, add a folder, details of the selection.

Every action calls the same Services methods as the management API. Loading, unloading and scanning are
coroutines started with `spawn` on the qasync loop, so the window keeps painting while a worker starts;
dialogs are opened with open() (never exec() inside a coroutine) and report through their signals.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QItemSelection, QSortFilterProxyModel, Qt, QTimer, QUrl
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QTextBrowser,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from app.core.config import MAX_PARALLEL
from app.core.errors import SwitchboardError
from app.core.services import Services
from app.ui.models.details import RETRY_LINK, details_html
from app.ui.models.table import ID_ROLE, SORT_ROLE, ModelsTableModel
from app.ui.support import error_text, spawn

if TYPE_CHECKING:
    from app.core.catalog.model import ModelEntry


class ModelsPanel(QWidget):
    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.model = ModelsTableModel(services, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.busy_tasks = 0
        # The selected model's worker log, as last read off the Qt thread: (model id, its last lines).
        self.log_tail: tuple[str, list[str]] | None = None
        self._log_read: asyncio.Task[None] | None = None

        self.filter = QLineEdit(placeholderText="Filter models (name, source, architecture, capability…)")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.clicked.connect(self.choose_folder)
        self.rescan_button = QPushButton("Rescan")
        self.rescan_button.clicked.connect(lambda: self.start_rescan())
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(160)
        self.progress.setTextVisible(False)
        self.progress.setRange(0, 0)  # busy
        self.progress.hide()

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # registry order until the user sorts
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(24)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.model.refreshed.connect(self._model_refreshed)

        self.details = QTextBrowser()
        self.details.setOpenLinks(False)
        self.details.anchorClicked.connect(self._link_clicked)
        self.details.setMinimumWidth(260)

        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.actions_bar = QToolBar("Model actions")
        self.act_enable = self._action("Enable", "Route requests to this model (or stop)", self.toggle_enabled,
                                       checkable=True)
        self.act_load = self._action("Load", "Start a worker for this model", lambda: self._run(self.load))
        self.act_unload = self._action("Unload", "Stop its workers and give back their memory",
                                       lambda: self._run(self.unload))
        self.act_pin = self._action("Pin", "Keep it loaded: never evicted or unloaded when idle", self.toggle_pin,
                                    checkable=True)
        self.act_default = self._action("Set as default", "Serve requests that name no model with it",
                                        self.make_default)
        self.act_aliases = self._action("Aliases…", "Other names requests may use for it", self.edit_aliases)
        self.act_caps = self._action("Capabilities…", "Capability tags used by routing", self.edit_capabilities)
        self.act_parallel = self._action("Parallel…", "Requests each worker decodes together (from its next load)",
                                         self.edit_parallel)

        top = QHBoxLayout()
        top.addWidget(self.filter, 1)
        top.addWidget(self.progress)
        top.addWidget(self.rescan_button)
        top.addWidget(self.add_folder_button)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.actions_bar)
        left_layout.addWidget(self.table, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.details)
        # The table takes what the window gains; the details keep their width.
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setSizes([900, 300])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.message)
        self._fit_columns()
        if self.proxy.rowCount():
            self.select(self.model.row_at(0).id)
        self._update_actions()

    def _action(self, text: str, tip: str, slot: Callable[[], Any], *, checkable: bool = False) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        action.setCheckable(checkable)
        action.triggered.connect(lambda _checked=False: slot())
        self.actions_bar.addAction(action)
        self.table.addAction(action)
        return action

    def _fit_columns(self) -> None:
        self.table.resizeColumnsToContents()
        header = self.table.horizontalHeader()
        for column in range(self.model.columnCount()):
            header.resizeSection(column, min(header.sectionSize(column), 300))

    # -- selection -----------------------------------------------------------------------------
    def selected_id(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].data(ID_ROLE) if rows else None

    def selected_entry(self) -> ModelEntry | None:
        model_id = self.selected_id()
        return None if model_id is None else self.services.models.get(model_id)

    def select(self, model_id: str) -> bool:
        row = self.model.row_of(model_id)
        if row < 0:
            return False
        index = self.proxy.mapFromSource(self.model.index(row, 0))
        if not index.isValid():
            return False
        self.table.selectRow(index.row())
        self.table.scrollTo(index)
        return True

    def _selection_changed(self, _selected: QItemSelection, _deselected: QItemSelection) -> None:
        self._update_actions()
        self._show_details()

    def _model_refreshed(self) -> None:
        self._update_actions()
        self._show_details()

    def _update_actions(self) -> None:
        entry = self.selected_entry()
        info = None if entry is None else self.services.models.info(entry.id)
        for action in (self.act_enable, self.act_load, self.act_unload, self.act_pin, self.act_default,
                       self.act_aliases, self.act_caps, self.act_parallel):
            action.setEnabled(info is not None)
        if info is None:
            return
        self.act_enable.setChecked(info["enabled"])
        self.act_enable.setText("Enabled" if info["enabled"] else "Enable")
        self.act_load.setEnabled(info["state"] == "unloaded" and not info["missing"])
        self.act_unload.setEnabled(info["state"] == "loaded")
        self.act_pin.setChecked(info["pinned"])
        self.act_pin.setText("Pinned" if info["pinned"] else "Pin")
        self.act_default.setEnabled(not info["default"])
        self.act_parallel.setEnabled(info["parallel_effective"] is not None)  # a remote backend runs no worker

    def _show_details(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            self.details.setHtml("<p style='color:gray'>Select a model to see its details.</p>")
            return
        self._render_details(self.services.models.info(entry.id))
        # Its log is read in a thread, then shown; one read at a time (the next refresh reads it again).
        if self._log_read is None or self._log_read.done():
            self._log_read = spawn(self._read_log(entry.id), on_error=self.show_error, name=f"log-of-{entry.id}")

    def _render_details(self, info: dict[str, Any]) -> None:
        known = self.log_tail[1] if self.log_tail is not None and self.log_tail[0] == info["id"] else []
        bar = self.details.verticalScrollBar()
        position = bar.value()
        self.details.setHtml(details_html(info, self.services.models.memory_budget, known))
        bar.setValue(position)

    async def _read_log(self, model_id: str) -> None:
        try:
            details = await self.services.models.details(model_id)
        except SwitchboardError:
            return  # removed meanwhile (a remote backend, through the API): the table follows
        changed = self.log_tail != (model_id, details["log_tail"])
        self.log_tail = (model_id, details["log_tail"])
        if changed and self.selected_id() == model_id:
            self._render_details(details)

    def _link_clicked(self, url: QUrl) -> None:
        if url.toString() == RETRY_LINK:
            self._run(self.load)

    # -- actions -------------------------------------------------------------------------------
    def _run(self, action: Callable[[str], Coroutine[Any, Any, Any]]) -> None:
        model_id = self.selected_id()
        if model_id is not None:
            self.run_task(action(model_id))

    def run_task(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Start a coroutine for an action; the busy bar shows while any runs, errors land in the message line."""
        self._busy(+1)
        task = spawn(coro, on_error=self.show_error)
        task.add_done_callback(lambda _t: self._busy(-1))
        return task

    def _busy(self, delta: int) -> None:
        self.busy_tasks += delta
        self.progress.setVisible(self.busy_tasks > 0)
        self.rescan_button.setEnabled(self.busy_tasks == 0)
        self.add_folder_button.setEnabled(self.busy_tasks == 0)
        if delta < 0:
            self.model.refresh()
            self._update_actions()
            self._show_details()

    def show_error(self, exc: BaseException) -> None:
        text = error_text(exc)
        self.message.setStyleSheet("color: #c62828")
        self.message.setText(text)

    def show_info(self, text: str) -> None:
        self.message.setStyleSheet("")
        self.message.setText(text)

    def _guard(self, change: Callable[[], Any]) -> bool:
        try:
            change()
        except SwitchboardError as exc:
            self.show_error(exc)
            return False
        self.model.refresh()
        self._update_actions()
        self._show_details()
        return True

    def toggle_enabled(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.set_enabled(entry.id, not entry.enabled)

    def set_enabled(self, model_id: str, enabled: bool) -> bool:
        return self._guard(lambda: self.services.models.set_enabled(model_id, enabled))

    async def load(self, model_id: str) -> None:
        self.show_info(f"Loading {model_id}…")
        self.model.refresh()
        await self.services.models.load(model_id)
        self.show_info(f"Loaded {model_id}.")

    async def unload(self, model_id: str) -> None:
        self.show_info(f"Unloading {model_id}…")
        await self.services.models.unload(model_id)
        self.show_info(f"Unloaded {model_id}.")

    def toggle_pin(self) -> None:
        model_id = self.selected_id()
        if model_id is not None:
            self.set_pinned(model_id, not self.services.models.is_pinned(model_id))

    def set_pinned(self, model_id: str, pinned: bool) -> bool:
        return self._guard(lambda: self.services.models.pin(model_id, pinned))

    def make_default(self) -> None:
        model_id = self.selected_id()
        if model_id is not None:
            self.set_default(model_id)

    def set_default(self, model_id: str) -> bool:
        return self._guard(lambda: self.services.models.set_default(model_id))

    def edit_aliases(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        self._ask(f"Aliases of {entry.id}", "Other names for this model, separated by commas:",
                  ", ".join(entry.aliases), functools.partial(self.apply_aliases, entry.id))

    def apply_aliases(self, model_id: str, text: str) -> bool:
        aliases = [a.strip() for a in text.split(",") if a.strip()]
        return self._guard(lambda: self.services.models.set_aliases(model_id, aliases))

    def edit_capabilities(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        self._ask(f"Capabilities of {entry.id}",
                  "Capability tags, separated by commas (empty: back to the inferred ones):",
                  ", ".join(entry.capabilities), functools.partial(self.apply_capabilities, entry.id))

    def apply_capabilities(self, model_id: str, text: str) -> bool:
        tags = [t.strip() for t in text.split(",") if t.strip()]
        return self._guard(lambda: self.services.models.set_capabilities(model_id, tags or None))

    def edit_parallel(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        current = "" if entry.parallel is None else str(entry.parallel)
        self._ask(f"Parallel requests of {entry.id}",
                  f"Requests each worker decodes together, 1-{MAX_PARALLEL} (empty: the server's default). "
                  "It applies at the next load:", current, functools.partial(self.apply_parallel, entry.id))

    def apply_parallel(self, model_id: str, text: str) -> bool:
        value = text.strip()
        if value and not value.isdecimal():
            self.show_error(ValueError(f"'{value}' is not a number of requests"))
            return False
        if not self._guard(lambda: self.services.models.set_parallel(model_id, int(value) if value else None)):
            return False
        if self.services.models.info(model_id)["state"] != "unloaded":
            self.show_info(f"The parallel requests of {model_id} change when it next loads (unload it to apply).")
        return True

    def _ask(self, title: str, label: str, value: str, done: Callable[[str], Any]) -> QInputDialog:
        dialog = QInputDialog(self)
        dialog.setWindowTitle(title)
        dialog.setLabelText(label)
        dialog.setTextValue(value)
        dialog.resize(460, dialog.sizeHint().height())
        dialog.textValueSelected.connect(done)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    # -- folders and scans ---------------------------------------------------------------------
    def choose_folder(self) -> QFileDialog:
        dialog = QFileDialog(self, "Add a folder of GGUF models")
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.fileSelected.connect(self.add_folder)
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    def add_folder(self, path: str) -> Any:
        """Remember the folder (this run and the saved config), then rescan."""
        problem = self.services.models.add_folder(path)
        if problem is not None:
            self.show_error(RuntimeError(f"The folder is used for this run but could not be saved: {problem}"))
        return self.start_rescan()

    def start_rescan(self) -> Any:
        return self.run_task(self._rescan())

    async def _rescan(self) -> None:
        self.show_info("Scanning…")
        before = {e.id for e in self.services.models.all()}
        result = await self.services.models.rescan()
        new = [m.id for m in result.models if m.id not in before]
        text = f"Scan done: {len(result.models)} model(s), {len(new)} new"
        if result.problems:
            text += f", {len(result.problems)} problem(s) (first: {result.problems[0].path}: " \
                    f"{result.problems[0].reason})"
        self.show_info(text + ".")
        QTimer.singleShot(0, self._fit_columns)
