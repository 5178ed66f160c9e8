"""The Routing tab's strategy: pick the strategy that routes "auto" requests and edit its parameters (numbers,
affinity pins, weights, quotas, the experiment), then Apply (Services.routing.configure, as PUT /api/router).

Long module: the picker and its parameter pages (numbers, affinity pins, weights, quotas, the experiment) are one
form; apart, the pages would each need the picker's state. The numeric parameters' fields derive from each
strategy's typed parameters (strategies.param_fields): bounds, titles and help are declared once, in
app/core/routing/strategies/params.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QIntValidator
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import SwitchboardError
from app.core.routing import strategies
from app.core.routing.quota import Limits
from app.core.routing.strategies import ParamField
from app.core.routing.strategies.affinity import PIN_KINDS
from app.core.services import Services
from app.ui.routing.experiments import experiment_label
from app.ui.support import error_label, error_text

DESCRIPTIONS = {
    "round_robin": "Each candidate in turn, fairly as the set of models changes.",
    "least_loaded": "Fewest requests in flight and queued, counting memory pressure.",
    "cache_aware": "The worker holding the longest prefix of the conversation, unless the load is imbalanced; "
                   "on a miss, the least loaded.",
    "quota_aware": "The model with the most hourly quota left. Set the quotas below.",
    "latency_based": "Lowest expected time to first token plus time per token, exploring unmeasured models.",
    "affinity": "Sticky per session (x-session-id, else user), plus pins: a session, user, API key or "
                "capability always goes to one model.",
    "weighted_random": "Random, in proportion to the weights.",
    "ab_test": "An experiment's arms by percentage, sticky per session. Create experiments in the A/B tab.",
}


INT_MAX = 2**31 - 1  # what a QSpinBox holds
UNBOUNDED = 1e9  # a number field's top when its parameter has none


def number_field(spec: ParamField) -> QSpinBox | QDoubleSpinBox:
    """A spin box for one numeric parameter: its bounds, a step that suits them, its description as help."""
    field: QSpinBox | QDoubleSpinBox
    low = spec.minimum if spec.minimum is not None else 0.0
    if spec.kind == "integer":
        field = QSpinBox()
        field.setRange(int(low) + (1 if spec.exclusive_minimum else 0),
                       int(min(spec.maximum if spec.maximum is not None else INT_MAX, INT_MAX)))
    else:
        field = QDoubleSpinBox()
        field.setDecimals(2)
        high = spec.maximum if spec.maximum is not None else UNBOUNDED
        field.setRange(low + (0.01 if spec.exclusive_minimum else 0.0), high)
        field.setSingleStep(0.05 if high <= 1 else 0.5)
    field.setToolTip(spec.description)
    return field


class StrategyPage(QWidget):
    """One strategy's parameter form. `edited` fires on any user change."""

    edited = Signal()

    def __init__(self, services: Services, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.name = name
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.fields: dict[str, QSpinBox | QDoubleSpinBox] = {}
        # The numeric parameters get spin boxes derived from the strategy's typed parameters; the others
        # (pins, weights, arms) have editors of their own on the pages below.
        specs = [f for f in strategies.param_fields(name) if f.kind in ("number", "integer") and not f.optional]
        if specs:
            form = QFormLayout()
            for spec in specs:
                field = number_field(spec)
                field.valueChanged.connect(self.edited)
                self.fields[spec.name] = field
                form.addRow(spec.title, field)
            self.layout_.addLayout(form)
        if not specs and name in ("round_robin", "quota_aware"):
            self.layout_.addWidget(QLabel("This strategy has no parameters."))

    def defaults(self) -> dict[str, Any]:
        try:
            return strategies.build(self.name, {}).params()
        except ValueError:
            return {}

    def load(self, params: Mapping[str, Any]) -> None:
        """Show `params` (the strategy's current ones), defaults for anything missing."""
        values = {**self.defaults(), **params}
        for key, field in self.fields.items():
            if values.get(key) is not None:
                field.blockSignals(True)
                field.setValue(values[key])
                field.blockSignals(False)

    def params(self) -> dict[str, Any]:
        return {key: field.value() for key, field in self.fields.items()}

    def apply_side_effects(self) -> None:
        """Changes this page makes outside the strategy's parameters (quotas, model weights), before Apply."""

    def set_models(self, model_ids: Sequence[str]) -> None:
        """The list of models changed."""


class PinsEditor(QWidget):
    """Affinity pins: (kind, value) → model, as the affinity strategy's `pins` parameter."""

    edited = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._models: list[str] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Key", "Value", "Model"])
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        layout.addWidget(self.table)
        buttons = QHBoxLayout()
        self.add_button = QPushButton("Add pin")
        self.remove_button = QPushButton("Remove pin")
        self.add_button.clicked.connect(lambda: self.add_pin("session", "", self._models[0] if self._models else ""))
        self.remove_button.clicked.connect(self.remove_selected)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout.addLayout(buttons)

    def set_models(self, model_ids: Sequence[str]) -> None:
        self._models = list(model_ids)
        for row in range(self.table.rowCount()):
            combo = self._model_combo(row)
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(self._models)
            combo.setCurrentText(current)
            combo.blockSignals(False)

    def add_pin(self, kind: str, value: str, model_id: str) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        kinds = QComboBox()
        kinds.addItems(PIN_KINDS)
        kinds.setCurrentText(kind)
        kinds.currentIndexChanged.connect(self.edited)
        self.table.setCellWidget(row, 0, kinds)
        edit = QLineEdit(value)
        edit.setPlaceholderText("session id, user, API key id or capability")
        edit.textChanged.connect(self.edited)
        self.table.setCellWidget(row, 1, edit)
        models = QComboBox()
        models.setEditable(True)  # an alias, or a model not scanned yet
        models.addItems(self._models)
        models.setCurrentText(model_id)
        models.currentTextChanged.connect(self.edited)
        self.table.setCellWidget(row, 2, models)
        self.edited.emit()

    def remove_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True) or \
            ([self.table.rowCount() - 1] if self.table.rowCount() else [])
        for row in rows:
            self.table.removeRow(row)
        if rows:
            self.edited.emit()

    def set_pins(self, pins: Sequence[Mapping[str, str]]) -> None:
        self.table.setRowCount(0)
        for pin in pins:
            self.add_pin(pin["kind"], pin["value"], pin["model_id"])

    def pins(self) -> list[dict[str, str]]:
        out = []
        for row in range(self.table.rowCount()):
            kind = self.table.cellWidget(row, 0)
            value = self.table.cellWidget(row, 1)
            assert isinstance(kind, QComboBox) and isinstance(value, QLineEdit)
            out.append({"kind": kind.currentText(), "value": value.text().strip(),
                        "model_id": self._model_combo(row).currentText().strip()})
        return out

    def _model_combo(self, row: int) -> QComboBox:
        combo = self.table.cellWidget(row, 2)
        assert isinstance(combo, QComboBox)
        return combo


class AffinityPage(StrategyPage):
    def __init__(self, services: Services, name: str, parent: QWidget | None = None) -> None:
        super().__init__(services, name, parent)
        box = QGroupBox("Pins")
        box_layout = QVBoxLayout(box)
        self.pins = PinsEditor()
        self.pins.edited.connect(self.edited)
        box_layout.addWidget(self.pins)
        self.layout_.addWidget(box)

    def load(self, params: Mapping[str, Any]) -> None:
        super().load(params)
        self.pins.blockSignals(True)
        self.pins.set_pins(params.get("pins") or [])
        self.pins.blockSignals(False)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "pins": self.pins.pins()}

    def set_models(self, model_ids: Sequence[str]) -> None:
        self.pins.set_models(model_ids)


class WeightsPage(StrategyPage):
    """A slider per model; optionally saved as the models' own weights (used where no strategy weight is set)."""

    MAX = 100

    def __init__(self, services: Services, name: str, parent: QWidget | None = None) -> None:
        super().__init__(services, name, parent)
        self.grid = QGridLayout()
        self.layout_.addLayout(self.grid)
        self.sliders: dict[str, QSlider] = {}
        self._labels: dict[str, QLabel] = {}
        self._weights: dict[str, float] = {}
        options = QFormLayout()
        self.seed = QLineEdit()
        self.seed.setValidator(QIntValidator(0, 2**31 - 1))
        self.seed.setPlaceholderText("random")
        self.seed.textChanged.connect(self.edited)
        options.addRow("Seed", self.seed)
        self.save_as_model_weight = QCheckBox("Also save as each model's own weight")
        self.save_as_model_weight.setToolTip("The model weight (as PATCH /api/models/{id} sets it) is used when "
                                             "the strategy has no weight for a model")
        options.addRow(self.save_as_model_weight)
        self.layout_.addLayout(options)

    def set_models(self, model_ids: Sequence[str]) -> None:
        current = {m: float(s.value()) for m, s in self.sliders.items()}
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item is not None and (widget := item.widget()) is not None:
                widget.hide()
                widget.deleteLater()
        self.sliders.clear()
        self._labels.clear()
        for row, model_id in enumerate(model_ids):
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(0, self.MAX)
            slider.setValue(int(round(current.get(model_id, self._model_weight(model_id)))))
            slider.valueChanged.connect(self._changed)
            label = QLabel()
            label.setMinimumWidth(90)
            self.grid.addWidget(QLabel(model_id), row, 0)
            self.grid.addWidget(slider, row, 1)
            self.grid.addWidget(label, row, 2)
            self.sliders[model_id] = slider
            self._labels[model_id] = label
        self._show_shares()

    def _model_weight(self, model_id: str) -> float:
        if model_id in self._weights:
            return self._weights[model_id]
        entry = self.services.models.get(model_id)
        return entry.weight if entry is not None else 1.0

    def _changed(self) -> None:
        self._show_shares()
        self.edited.emit()

    def _show_shares(self) -> None:
        total = sum(s.value() for s in self.sliders.values())
        for model_id, slider in self.sliders.items():
            share = f"{slider.value() / total:.0%}" if total else "even"
            self._labels[model_id].setText(f"{slider.value()} ({share})")

    def set_weight(self, model_id: str, weight: int) -> None:
        self.sliders[model_id].setValue(weight)

    def load(self, params: Mapping[str, Any]) -> None:
        self._weights = {m: float(w) for m, w in (params.get("weights") or {}).items()}
        top = max([self.MAX, *(math.ceil(w) for w in self._weights.values() if math.isfinite(w))])
        for model_id, slider in self.sliders.items():
            slider.blockSignals(True)
            slider.setMaximum(top)
            slider.setValue(int(round(self._model_weight(model_id))))
            slider.blockSignals(False)
        self._show_shares()
        self.seed.blockSignals(True)
        self.seed.setText("" if params.get("seed") is None else str(params["seed"]))
        self.seed.blockSignals(False)

    def params(self) -> dict[str, Any]:
        seed = self.seed.text().strip()
        return {"weights": {m: float(s.value()) for m, s in self.sliders.items()},
                "seed": int(seed) if seed else None}

    def apply_side_effects(self) -> None:
        if self.save_as_model_weight.isChecked():
            for model_id, slider in self.sliders.items():
                self.services.models.set_options(model_id, weight=float(slider.value()))


class QuotaPage(StrategyPage):
    """Hourly token and request quotas per model (0 = unlimited), saved with Apply."""

    def __init__(self, services: Services, name: str, parent: QWidget | None = None) -> None:
        super().__init__(services, name, parent)
        box = QGroupBox("Hourly quotas per model")
        box_layout = QVBoxLayout(box)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Model", "Tokens / hour", "Requests / hour", "Used this hour"])
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        box_layout.addWidget(self.table)
        self.layout_.addWidget(box)
        self._models: list[str] = []

    def set_models(self, model_ids: Sequence[str]) -> None:
        # Unsaved edits survive a change of the model list.
        shown = {m: self.limits(m) for m in self._models}
        self._models = list(model_ids)
        self.table.setRowCount(len(self._models))
        for row, model_id in enumerate(self._models):
            self.table.setCellWidget(row, 0, QLabel(model_id))
            limits = self.services.quota.limits(model_id)
            values = shown.get(model_id, (limits.tokens_per_hour or 0, limits.requests_per_hour or 0))
            for column, value in zip((1, 2), values):
                spin = QSpinBox()
                spin.setRange(0, 2**31 - 1)
                spin.setSingleStep(1000 if column == 1 else 10)
                spin.setSpecialValueText("unlimited")
                spin.setValue(value)
                spin.valueChanged.connect(self.edited)
                self.table.setCellWidget(row, column, spin)
            self.table.setCellWidget(row, 3, QLabel())
        self.refresh_usage()

    def refresh_usage(self) -> None:
        for row, model_id in enumerate(self._models):
            usage = self.services.quota.usage(model_id)
            text = f"{usage['tokens']} tokens, {usage['requests']} requests"
            if usage["remaining"] < 1:
                text += f" ({usage['remaining']:.0%} left)"
            label = self.table.cellWidget(row, 3)
            if isinstance(label, QLabel) and label.text() != text:
                label.setText(text)

    def usage_text(self, model_id: str) -> str:
        label = self.table.cellWidget(self._models.index(model_id), 3)
        return label.text() if isinstance(label, QLabel) else ""

    def limits(self, model_id: str) -> tuple[int, int]:
        row = self._models.index(model_id)
        return self._spin(row, 1).value(), self._spin(row, 2).value()

    def set_limits(self, model_id: str, tokens: int, requests: int) -> None:
        row = self._models.index(model_id)
        self._spin(row, 1).setValue(tokens)
        self._spin(row, 2).setValue(requests)

    def apply_side_effects(self) -> None:
        for row, model_id in enumerate(self._models):
            wanted = Limits(self._spin(row, 1).value() or None, self._spin(row, 2).value() or None)
            self.services.quota.set_limits(model_id, wanted)  # saved only where it changed

    def _spin(self, row: int, column: int) -> QSpinBox:
        spin = self.table.cellWidget(row, column)
        assert isinstance(spin, QSpinBox)
        return spin


class ExperimentPage(StrategyPage):
    """ab_test: which experiment routes "auto" requests."""

    def __init__(self, services: Services, name: str, parent: QWidget | None = None) -> None:
        super().__init__(services, name, parent)
        form = QFormLayout()
        self.experiments = QComboBox()
        self.experiments.currentIndexChanged.connect(self.edited)
        form.addRow("Experiment", self.experiments)
        self.layout_.addLayout(form)
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        select = select or self.experiments.currentData()
        self.experiments.blockSignals(True)
        self.experiments.clear()
        for summary in self.services.experiments.summaries():
            self.experiments.addItem(experiment_label(summary), summary["id"])
        if select is not None and (i := self.experiments.findData(select)) >= 0:
            self.experiments.setCurrentIndex(i)
        self.experiments.blockSignals(False)

    def load(self, params: Mapping[str, Any]) -> None:
        self.refresh(params.get("experiment_id"))

    def params(self) -> dict[str, Any]:
        experiment = self.experiments.currentData()
        return {} if experiment is None else {"experiment_id": experiment}


_PAGES: dict[str, type[StrategyPage]] = {
    "affinity": AffinityPage, "weighted_random": WeightsPage, "quota_aware": QuotaPage, "ab_test": ExperimentPage,
}


class StrategyTab(QWidget):
    """The strategy picker, the picked strategy's page, and Apply / Revert; follows changes made elsewhere."""

    # The strategy now routing "auto" requests, after Apply here.
    strategy_changed = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self._described: dict[str, Any] = {}
        self._dirty = False
        layout = QVBoxLayout(self)
        self.current_label = QLabel()
        self.current_label.setWordWrap(True)
        layout.addWidget(self.current_label)
        form = QFormLayout()
        self.strategy_combo = QComboBox()
        for name in services.routing.strategies():
            self.strategy_combo.addItem(name, name)
        form.addRow("Strategy", self.strategy_combo)
        layout.addLayout(form)
        self.description = QLabel()
        self.description.setWordWrap(True)
        layout.addWidget(self.description)
        self.pages: dict[str, StrategyPage] = {}
        self.stack = QStackedWidget()
        for i in range(self.strategy_combo.count()):
            name = self.strategy_combo.itemData(i)
            page = _PAGES.get(name, StrategyPage)(services, name)
            page.edited.connect(self._edited)
            self.pages[name] = page
            self.stack.addWidget(page)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.stack)
        layout.addWidget(scroll, 1)
        self.strategy_error = error_label()
        layout.addWidget(self.strategy_error)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.revert_button = QPushButton("Revert")
        self.revert_button.clicked.connect(lambda: self.sync(force=True))
        self.apply_button = QPushButton("Apply")
        self.apply_button.setDefault(True)
        self.apply_button.clicked.connect(self.apply)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.apply_button)
        layout.addLayout(buttons)
        self.strategy_combo.currentIndexChanged.connect(self._strategy_picked)

    def _strategy_picked(self) -> None:
        name = self.strategy_combo.currentData()
        self.stack.setCurrentWidget(self.pages[name])
        self.description.setText(DESCRIPTIONS.get(name, ""))
        self._edited()

    def _edited(self) -> None:
        self._dirty = True
        self.strategy_error.hide()

    def select_strategy(self, name: str) -> None:
        """Show `name`'s form (as picking it in the combo does)."""
        self.strategy_combo.blockSignals(True)
        self.strategy_combo.setCurrentIndex(self.strategy_combo.findData(name))
        self.strategy_combo.blockSignals(False)
        self.stack.setCurrentWidget(self.pages[name])
        self.description.setText(DESCRIPTIONS.get(name, ""))

    def apply(self) -> bool:
        """Configure the router with the form; errors are shown, never raised. True when applied."""
        name = self.strategy_combo.currentData()
        page = self.pages[name]
        try:
            page.apply_side_effects()
            self.services.routing.configure(name, page.params())
        except (SwitchboardError, ValueError) as exc:
            self.strategy_error.setText(error_text(exc))
            self.strategy_error.show()
            return False
        self.strategy_error.hide()
        self.sync(force=True)
        self.strategy_changed.emit(name)
        return True

    def sync(self, *, force: bool = False) -> None:
        """Follow the router: the 'now routing' line always, the form when the user is not editing it."""
        described = self.services.routing.describe()
        if described == self._described and not force:
            return
        self._described = described
        name, params = described["strategy"], described["params"]
        shown = ", ".join(f"{k} {v:g}" for k, v in params.items() if isinstance(v, (int, float))
                          and not isinstance(v, bool))
        self.current_label.setText(f"Routing <b>auto</b> requests with <b>{name}</b>"
                                   + (f" ({shown})" if shown else ""))
        if self._dirty and not force:
            return
        for page_name, page in self.pages.items():
            page.load(params if page_name == name else {})
        self.select_strategy(name)
        self._dirty = False
        self.strategy_error.hide()

    def set_models(self, model_ids: Sequence[str]) -> None:
        for page in self.pages.values():
            page.set_models(model_ids)

    def refresh_experiments(self) -> None:
        """The experiments changed: the ab_test page lists them anew."""
        page = self.pages.get("ab_test")
        if isinstance(page, ExperimentPage):
            page.refresh()

    def tick(self) -> None:
        """The panel's timer, while this tab is on screen: the quota page's usage, when it is the one shown."""
        page = self.pages.get("quota_aware")
        if isinstance(page, QuotaPage) and self.stack.currentWidget() is page:
            page.refresh_usage()
