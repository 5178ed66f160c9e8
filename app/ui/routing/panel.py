"""The routing panel: pick the strategy and its parameters, edit affinity pins and quotas, run A/B experiments,
and try a request without running it.

Everything goes through the same Engine calls as the management API (`configure_router`, `create_experiment`,
`experiment_info`, `route`); the panel keeps no routing state of its own. A 2 s timer follows changes made
elsewhere (the tray, the HTTP API) and refreshes the live experiment results while they are on screen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractTableModel, Qt, QTimer, Signal
from PySide6.QtGui import QFont, QIntValidator, QPalette, QShowEvent
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
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QTableView,
    QTableWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.routing import strategies
from app.core.errors import SwitchboardError
from app.core.observe.experiments import METRICS
from app.core.routing.needs import translate
from app.core.routing.quota import Limits, model_scope
from app.core.routing.router import RouteRequest
from app.core.routing.strategies.affinity import PIN_KINDS
from app.ui.rows_model import RowsTableModel

REFRESH_MS = 2000
MIN_PERCENT = 1  # every arm keeps at least this share: an arm at 0 % is no arm
MAX_ARMS = 10

_ERROR_STYLE = "color: #c0392b;"

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

METRIC_LABELS = {
    "ttft_ms": "time to first token (lower is better)",
    "tokens_per_s": "tokens per second (higher is better)",
    "error_rate": "error rate (lower is better)",
    "feedback": "user feedback from /v1/feedback (higher is better)",
}


# -- A/B split: pure functions, so the 100 % invariant is easy to check ----------------------------------------

def rebalance(percents: Sequence[int], index: int, value: int, minimum: int = MIN_PERCENT) -> list[int]:
    """Set arm `index` to `value` (clamped so every arm keeps `minimum`) and rebalance the others so the split
    still sums to 100: the last arm gives or takes first, then the ones before it."""
    n = len(percents)
    value = max(minimum, min(int(value), 100 - minimum * (n - 1)))
    out = list(percents)
    delta = value - out[index]
    out[index] = value
    for j in reversed(range(n)):
        if delta == 0:
            break
        if j == index:
            continue
        if delta > 0:
            take = min(delta, out[j] - minimum)
            out[j] -= take
            delta -= take
        else:
            out[j] -= delta
            delta = 0
    return out


def add_arm(percents: Sequence[int], minimum: int = MIN_PERCENT) -> list[int] | None:
    """A new arm taking half of the largest one; None when no arm can spare a share."""
    out = list(percents)
    largest = max(range(len(out)), key=out.__getitem__)
    if out[largest] < 2 * minimum or len(out) >= MAX_ARMS:
        return None
    share = out[largest] // 2
    out[largest] -= share
    return [*out, share]


def remove_arm(percents: Sequence[int], index: int) -> list[int]:
    """Drop arm `index`; its share goes to the last remaining arm."""
    out = list(percents)
    share = out.pop(index)
    out[-1] += share
    return out


def even_split(n: int) -> list[int]:
    base = 100 // n
    return [base + (1 if i < 100 - base * n else 0) for i in range(n)]


# -- item models ---------------------------------------------------------------------------------------------

class _RowsModel(RowsTableModel):
    """Rows replaced wholesale on each refresh (candidates, arm results)."""

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

    def row(self, index: int) -> dict[str, Any]:
        return self._rows[index]


class CandidatesModel(_RowsModel):
    """Every model a routing decision considered: its score, or why it was filtered out."""

    COLUMNS = ("Model", "Replica", "Score", "Status", "Reason")

    def cell(self, row: dict[str, Any], column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return row["model_id"]
            if column == 1:
                return str(row.get("replica", 0))
            if column == 2:
                return "—" if row["filtered"] else f"{row['score']:.3f}"
            if column == 3:
                return "filtered out" if row["filtered"] else ("chosen" if row["reason"] == "chosen" else "candidate")
            if column == 4:
                return row["reason"]
        if role == Qt.ItemDataRole.ToolTipRole and column == 4:
            return row["reason"]
        if role == Qt.ItemDataRole.FontRole and row["reason"] == "chosen" and not row["filtered"]:
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.ForegroundRole and row["filtered"]:
            return QPalette().brush(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (1, 2):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class ArmResultsModel(_RowsModel):
    """Per-arm results of an experiment, as `Experiments.results()["arms"]` gives them."""

    COLUMNS = ("Arm", "Model", "Share", "Requests", "Errors", "TTFT p50", "TTFT p95", "Tokens/s", "Feedback")

    def cell(self, row: dict[str, Any], column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return row["name"]
            if column == 1:
                return row["model_id"]
            if column == 2:
                return f"{row['percent']:g} %"
            if column == 3:
                return str(row["requests"])
            if column == 4:
                rate = row.get("error_rate")
                return str(row["errors"]) + ("" if rate is None else f" ({rate:.0%})")
            if column in (5, 6):
                value = row.get("ttft_p50_ms" if column == 5 else "ttft_p95_ms")
                return "—" if value is None else f"{value:.0f} ms"
            if column == 7:
                value = row.get("tokens_per_s")
                return "—" if value is None else f"{value:.1f}"
            if column == 8:
                mean = row.get("feedback_mean")
                return "—" if mean is None else f"{mean:+.2f} (n={row.get('feedback_count', 0)})"
        if role == Qt.ItemDataRole.TextAlignmentRole and column >= 2:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


def _table(model: QAbstractTableModel, stretch: int) -> QTableView:
    view = QTableView()
    view.setModel(model)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.verticalHeader().hide()
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    return view


def _error_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(_ERROR_STYLE)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, SwitchboardError) else str(exc)


# -- strategy parameter pages ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NumberParam:
    key: str
    label: str
    minimum: float
    maximum: float
    step: float
    decimals: int  # 0: a whole number
    help: str = ""


_MEMORY_WEIGHT = NumberParam("memory_weight", "Memory weight", 0, 1000, 0.5, 2,
                             "a worker at full memory pressure counts like this many requests in flight")
NUMBER_PARAMS: dict[str, tuple[NumberParam, ...]] = {
    "least_loaded": (_MEMORY_WEIGHT,),
    "cache_aware": (
        NumberParam("cache_threshold", "Cache threshold", 0, 1, 0.05, 2,
                    "share of the prompt a worker must already hold to win on its cache"),
        NumberParam("balance_abs_threshold", "Imbalance: absolute", 0, 10_000, 1, 1,
                    "requests in flight between the busiest and the idlest worker before load wins"),
        NumberParam("balance_rel_threshold", "Imbalance: relative", 0, 1000, 0.1, 2,
                    "ratio busiest / idlest before load wins"),
        NumberParam("max_chars_per_target", "Prefix tree size", 1, 1e9, 10_000, 0,
                    "characters remembered per worker"),
        NumberParam("correction_alpha", "Correction rate", 0.01, 1, 0.05, 2,
                    "how fast reported cache use corrects the prediction"),
        _MEMORY_WEIGHT,
    ),
    "latency_based": (
        NumberParam("expected_tokens", "Expected tokens", 0, 1e6, 16, 0,
                    "answer length used to weigh time per token against time to first token"),
        NumberParam("min_samples", "Samples before trusting", 0, 10_000, 1, 0,
                    "requests measured before a model's latency is used"),
        NumberParam("explore_every", "Explore every", 0, 1_000_000, 1, 0,
                    "every N-th request tries a model without enough samples (0: never)"),
    ),
    "affinity": (
        NumberParam("ttl_s", "Session TTL (s)", 1, 1e7, 60, 0, "how long a session stays on its model"),
        NumberParam("max_sessions", "Sessions remembered", 1, 1e7, 1000, 0, ""),
        _MEMORY_WEIGHT,
    ),
}


class StrategyPage(QWidget):
    """One strategy's parameter form. `edited` fires on any user change."""

    edited = Signal()

    def __init__(self, engine: Any, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.name = name
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.fields: dict[str, QSpinBox | QDoubleSpinBox] = {}
        specs = NUMBER_PARAMS.get(name, ())
        if specs:
            form = QFormLayout()
            for spec in specs:
                field: QSpinBox | QDoubleSpinBox
                if spec.decimals == 0:
                    field = QSpinBox()
                    field.setRange(int(spec.minimum), int(min(spec.maximum, 2**31 - 1)))
                    field.setSingleStep(int(spec.step))
                else:
                    field = QDoubleSpinBox()
                    field.setDecimals(spec.decimals)
                    field.setRange(spec.minimum, spec.maximum)
                    field.setSingleStep(spec.step)
                field.setToolTip(spec.help)
                field.valueChanged.connect(self.edited)
                self.fields[spec.key] = field
                form.addRow(spec.label, field)
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
        """The registry's models changed."""


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
    def __init__(self, engine: Any, name: str, parent: QWidget | None = None) -> None:
        super().__init__(engine, name, parent)
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

    def __init__(self, engine: Any, name: str, parent: QWidget | None = None) -> None:
        super().__init__(engine, name, parent)
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
        entry = self.engine.registry.get(model_id)
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
                self.engine.registry.set_options(model_id, weight=float(slider.value()))


class QuotaPage(StrategyPage):
    """Hourly token and request quotas per model (0 = unlimited), saved with Apply."""

    def __init__(self, engine: Any, name: str, parent: QWidget | None = None) -> None:
        super().__init__(engine, name, parent)
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
            limits = self.engine.quota.limits(model_scope(model_id))
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
            usage = self.engine.quota.usage(model_scope(model_id))
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
            scope = model_scope(model_id)
            if self.engine.quota.limits(scope) != wanted:
                self.engine.quota.set_limits(scope, wanted)

    def _spin(self, row: int, column: int) -> QSpinBox:
        spin = self.table.cellWidget(row, column)
        assert isinstance(spin, QSpinBox)
        return spin


class ExperimentPage(StrategyPage):
    """ab_test: which experiment routes "auto" requests."""

    def __init__(self, engine: Any, name: str, parent: QWidget | None = None) -> None:
        super().__init__(engine, name, parent)
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
        for experiment in self.engine.experiments.list():
            self.experiments.addItem(_experiment_label(experiment), experiment.id)
        if select is not None and (i := self.experiments.findData(select)) >= 0:
            self.experiments.setCurrentIndex(i)
        self.experiments.blockSignals(False)

    def load(self, params: Mapping[str, Any]) -> None:
        self.refresh(params.get("experiment_id"))

    def params(self) -> dict[str, Any]:
        experiment = self.experiments.currentData()
        return {} if experiment is None else {"experiment_id": experiment}


def _experiment_label(experiment: Any) -> str:
    arms = " / ".join(f"{a.name} {a.percent:g}%" for a in experiment.arms)
    return f"{experiment.name} ({arms}) · {experiment.id}"


_PAGES: dict[str, type[StrategyPage]] = {
    "affinity": AffinityPage, "weighted_random": WeightsPage, "quota_aware": QuotaPage, "ab_test": ExperimentPage,
}


# -- A/B arms editor -------------------------------------------------------------------------------------------

class ArmsEditor(QWidget):
    """Arms (name, model, percent) whose split always sums to 100 %: editing one percent rebalances the others
    (the last arm first), adding an arm takes half of the largest, removing one gives its share to the last."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._models: list[str] = []
        self._rows: list[tuple[QLineEdit, QComboBox, QSpinBox, QPushButton]] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.grid = QGridLayout()
        for column, title in enumerate(("Arm", "Model", "Share", "")):
            self.grid.addWidget(QLabel(f"<b>{title}</b>"), 0, column)
        self.grid.setColumnStretch(1, 1)
        layout.addLayout(self.grid)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add arm")
        self.add_button.clicked.connect(self.add_arm)
        self.total_label = QLabel()
        row.addWidget(self.add_button)
        row.addStretch(1)
        row.addWidget(self.total_label)
        layout.addLayout(row)
        self._build([("A", None, 50), ("B", None, 50)])

    # -- state ---------------------------------------------------------------------------------
    def percents(self) -> list[int]:
        return [spin.value() for _, _, spin, _ in self._rows]

    def arms(self) -> list[dict[str, Any]]:
        return [{"name": name.text().strip(), "model_id": model.currentText().strip(), "percent": spin.value()}
                for name, model, spin, _ in self._rows]

    def problem(self) -> str | None:
        """Why these arms cannot make an experiment; None when they can."""
        arms = self.arms()
        if len(arms) < 2:
            return "An experiment needs at least 2 arms."
        if sum(a["percent"] for a in arms) != 100:  # cannot happen through the editor; checked all the same
            return "The shares must sum to 100 %."
        names = [a["name"] for a in arms]
        if not all(names):
            return "Every arm needs a name."
        if len(set(names)) != len(names):
            return "Arm names must differ."
        if not all(a["model_id"] for a in arms):
            return "Every arm needs a model."
        return None

    # -- edits ---------------------------------------------------------------------------------
    def set_percent(self, index: int, value: int) -> None:
        """What typing a share into arm `index` does."""
        # The edited spin box already shows its new value; `_last` is the split before the edit.
        self._apply(rebalance(self._last, index, value))

    def add_arm(self) -> None:
        split = add_arm(self.percents())
        if split is None:
            return
        rows = [(n.text(), m.currentText(), p) for (n, m, _, _), p in zip(self._rows, split)]
        used = {name for name, _, _ in rows}
        name = next(chr(c) for c in range(ord("A"), ord("Z") + 1) if chr(c) not in used)
        model = next((m for m in self._models if m not in {r[1] for r in rows}), self._models[0] if self._models else None)
        self._build([*rows, (name, model, split[-1])])

    def remove_arm(self, index: int) -> None:
        if len(self._rows) <= 2:
            return
        split = remove_arm(self.percents(), index)
        rows = [(n.text(), m.currentText()) for i, (n, m, _, _) in enumerate(self._rows) if i != index]
        self._build([(name, model, p) for (name, model), p in zip(rows, split)])

    def set_models(self, model_ids: Sequence[str]) -> None:
        self._models = list(model_ids)
        chosen = [m.currentText() for _, m, _, _ in self._rows]
        defaults = iter(self._models)
        rows = []
        for (name, _, spin, _), model in zip(self._rows, chosen):
            rows.append((name.text(), model if model in self._models else next(defaults, None), spin.value()))
        self._build(rows)

    def reset(self) -> None:
        n = len(self._rows)
        names = [chr(ord("A") + i) for i in range(n)]
        self._build([(name, self._models[i] if i < len(self._models) else None, p)
                     for i, (name, p) in enumerate(zip(names, even_split(n)))])

    # -- internals -----------------------------------------------------------------------------
    def _build(self, rows: Sequence[tuple[str, str | None, int]]) -> None:
        for widgets in self._rows:
            for widget in widgets:
                self.grid.removeWidget(widget)
                widget.hide()
                widget.deleteLater()
        self._rows = []
        n = len(rows)
        for i, (name, model_id, percent) in enumerate(rows):
            name_edit = QLineEdit(name)
            name_edit.textChanged.connect(self.changed)
            models = QComboBox()
            models.addItems(self._models)
            if model_id is None and i < len(self._models):
                model_id = self._models[i]
            if model_id is not None:
                models.setCurrentText(model_id)
            models.currentIndexChanged.connect(self.changed)
            spin = QSpinBox()
            spin.setRange(MIN_PERCENT, 100 - MIN_PERCENT * (n - 1))
            spin.setSuffix(" %")
            spin.setValue(percent)
            spin.setKeyboardTracking(False)  # rebalance once the number is typed, not at every digit
            spin.valueChanged.connect(lambda value, index=i: self.set_percent(index, value))
            remove = QPushButton("Remove")
            remove.setEnabled(n > 2)
            remove.clicked.connect(lambda _=False, index=i: self.remove_arm(index))
            for column, widget in enumerate((name_edit, models, spin, remove)):
                self.grid.addWidget(widget, i + 1, column)
            self._rows.append((name_edit, models, spin, remove))
        self._last = self.percents()
        self.add_button.setEnabled(add_arm(self._last) is not None)
        self._show_total()
        self.changed.emit()

    def _apply(self, split: Sequence[int]) -> None:
        for (_, _, spin, _), value in zip(self._rows, split):
            if spin.value() != value:
                spin.blockSignals(True)
                spin.setValue(value)
                spin.blockSignals(False)
        self._last = self.percents()
        self.add_button.setEnabled(add_arm(self._last) is not None)
        self._show_total()
        self.changed.emit()

    def _show_total(self) -> None:
        total = sum(self.percents())
        self.total_label.setText(f"Total: {total} %")


# -- the panel -------------------------------------------------------------------------------------------------

class RoutingPanel(QWidget):
    # The strategy now routing "auto" requests, after this panel changed it.
    strategy_changed = Signal(str)

    def __init__(self, engine: Any, parent: QWidget | None = None, *, refresh_ms: int = REFRESH_MS) -> None:
        super().__init__(parent)
        self.engine = engine
        self._models: list[str] = []
        self._models_stale = True
        self._described: dict[str, Any] = {}
        self._dirty = False
        self._results_due = 0.0  # monotonic time of the next experiment results refresh
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget()
        layout.addWidget(self.tabs)
        self.tabs.addTab(self._strategy_tab(), "Strategy")
        self.tabs.addTab(_scrolling(self._experiment_tab()), "A/B experiments")
        self.tabs.addTab(self._try_tab(), "Try a request")
        self.tabs.currentChanged.connect(lambda _: self._tick())

        unsubscribe = engine.registry.subscribe(self._registry_event)
        self.destroyed.connect(lambda *_: unsubscribe())
        self._refresh_models()
        self._sync_router(force=True)
        self._refresh_experiments()

        self.timer = QTimer(self)
        self.timer.setObjectName("routing-refresh")
        self.timer.setInterval(refresh_ms)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    # -- strategy tab ----------------------------------------------------------------------------
    def _strategy_tab(self) -> QWidget:
        tab = QWidget()
        layout = QVBoxLayout(tab)
        self.current_label = QLabel()
        self.current_label.setWordWrap(True)
        layout.addWidget(self.current_label)
        form = QFormLayout()
        self.strategy_combo = QComboBox()
        for name in self.engine.router.describe()["available"]:
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
            page = _PAGES.get(name, StrategyPage)(self.engine, name)
            page.edited.connect(self._edited)
            self.pages[name] = page
            self.stack.addWidget(page)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.stack)
        layout.addWidget(scroll, 1)
        self.strategy_error = _error_label()
        layout.addWidget(self.strategy_error)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.revert_button = QPushButton("Revert")
        self.revert_button.clicked.connect(lambda: self._sync_router(force=True))
        self.apply_button = QPushButton("Apply")
        self.apply_button.setDefault(True)
        self.apply_button.clicked.connect(self.apply)
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.apply_button)
        layout.addLayout(buttons)
        self.strategy_combo.currentIndexChanged.connect(self._strategy_picked)
        return tab

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
            self.engine.configure_router(name, page.params())
        except (SwitchboardError, ValueError) as exc:
            self.strategy_error.setText(_message(exc))
            self.strategy_error.show()
            return False
        self.strategy_error.hide()
        self._sync_router(force=True)
        self.strategy_changed.emit(name)
        return True

    def _sync_router(self, *, force: bool = False) -> None:
        """Follow the router: the 'now routing' line always, the form when the user is not editing it."""
        described = self.engine.router.describe()
        if described == self._described and not force:
            return
        self._described = described
        name, params = described["strategy"], described["params"]
        shown = ", ".join(f"{k} {v:g}" for k, v in params.items() if isinstance(v, (int, float))
                          and not isinstance(v, bool))
        self.current_label.setText(f"Routing <b>auto</b> requests with <b>{name}</b>" + (f" ({shown})" if shown else ""))
        if self._dirty and not force:
            return
        for page_name, page in self.pages.items():
            page.load(params if page_name == name else {})
        self.select_strategy(name)
        self._dirty = False
        self.strategy_error.hide()

    # -- A/B tab ---------------------------------------------------------------------------------
    def _experiment_tab(self) -> QWidget:
        tab = QWidget()
        layout = QVBoxLayout(tab)
        create = QGroupBox("New experiment")
        form = QFormLayout(create)
        self.experiment_name = QLineEdit()
        self.experiment_name.setPlaceholderText("e.g. small vs large")
        self.experiment_name.textChanged.connect(self._check_experiment)
        form.addRow("Name", self.experiment_name)
        self.metric_combo = QComboBox()
        for metric in METRICS:
            self.metric_combo.addItem(f"{metric}: {METRIC_LABELS.get(metric, '')}", metric)
        form.addRow("Metric", self.metric_combo)
        self.arms_editor = ArmsEditor()
        self.arms_editor.changed.connect(self._check_experiment)
        form.addRow(self.arms_editor)
        self.activate_check = QCheckBox("Route auto requests by it now (switches the strategy to ab_test)")
        self.activate_check.setChecked(True)
        form.addRow(self.activate_check)
        self.create_problem = QLabel()
        self.create_problem.setWordWrap(True)
        self.create_button = QPushButton("Create experiment")
        self.create_button.clicked.connect(self.create_experiment)
        row = QHBoxLayout()
        row.addWidget(self.create_problem, 1)
        row.addWidget(self.create_button)
        form.addRow(row)
        self.experiment_error = _error_label()
        form.addRow(self.experiment_error)
        layout.addWidget(create)

        live = QGroupBox("Results")
        live_layout = QVBoxLayout(live)
        row = QHBoxLayout()
        self.experiment_combo = QComboBox()
        self.experiment_combo.currentIndexChanged.connect(lambda _: self.refresh_results())
        self.route_button = QPushButton("Route by it")
        self.route_button.clicked.connect(self._route_by_selected)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.delete_selected)
        row.addWidget(self.experiment_combo, 1)
        row.addWidget(self.route_button)
        row.addWidget(self.delete_button)
        live_layout.addLayout(row)
        self.experiment_state = QLabel()
        live_layout.addWidget(self.experiment_state)
        self.results_model = ArmResultsModel(self)
        self.results_view = _table(self.results_model, 1)
        live_layout.addWidget(self.results_view, 1)
        self.significance_label = QLabel()
        self.significance_label.setWordWrap(True)
        self.significance_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        live_layout.addWidget(self.significance_label)
        layout.addWidget(live, 1)
        self._check_experiment()
        return tab

    def _check_experiment(self) -> None:
        problem = self.arms_editor.problem()
        if problem is None and not self.experiment_name.text().strip():
            problem = "Name the experiment."
        self.create_button.setEnabled(problem is None)
        self.create_problem.setText(problem or "")

    def create_experiment(self) -> str | None:
        """Create the experiment in the editor; its id, or None (and the reason shown) when it fails."""
        if not self.create_button.isEnabled():
            return None
        try:
            experiment = self.engine.create_experiment(
                self.experiment_name.text().strip(), self.arms_editor.arms(), self.metric_combo.currentData(),
                activate=self.activate_check.isChecked())
        except (SwitchboardError, ValueError, KeyError) as exc:
            self.experiment_error.setText(_message(exc))
            self.experiment_error.show()
            return None
        self.experiment_error.hide()
        self.experiment_name.clear()
        self._refresh_experiments(select=experiment.id)
        self._sync_router(force=True)
        if self.activate_check.isChecked():
            self.strategy_changed.emit("ab_test")
        return str(experiment.id)

    def _refresh_experiments(self, select: str | None = None) -> None:
        select = select or self.experiment_combo.currentData()
        self.experiment_combo.blockSignals(True)
        self.experiment_combo.clear()
        for experiment in self.engine.experiments.list():
            self.experiment_combo.addItem(_experiment_label(experiment), experiment.id)
        if select is not None and (i := self.experiment_combo.findData(select)) >= 0:
            self.experiment_combo.setCurrentIndex(i)
        elif self.experiment_combo.count():
            self.experiment_combo.setCurrentIndex(self.experiment_combo.count() - 1)
        self.experiment_combo.blockSignals(False)
        page = self.pages.get("ab_test")
        if isinstance(page, ExperimentPage):
            page.refresh()
        self.refresh_results()

    def _route_by_selected(self) -> None:
        experiment = self.experiment_combo.currentData()
        if experiment is None:
            return
        try:
            self.engine.configure_router("ab_test", {"experiment_id": experiment})
        except (SwitchboardError, ValueError) as exc:
            self.experiment_error.setText(_message(exc))
            self.experiment_error.show()
            return
        self._sync_router(force=True)
        self.refresh_results()
        self.strategy_changed.emit("ab_test")

    def delete_selected(self) -> None:
        experiment = self.experiment_combo.currentData()
        if experiment is None:
            return
        try:
            self.engine.delete_experiment(experiment)
        except SwitchboardError as exc:
            self.experiment_error.setText(_message(exc))
            self.experiment_error.show()
        self._refresh_experiments()
        self._sync_router(force=True)

    def refresh_results(self) -> None:
        """Read the selected experiment's live results (a bootstrap: throttled by how long the last one took)."""
        experiment = self.experiment_combo.currentData()
        self.route_button.setEnabled(experiment is not None)
        self.delete_button.setEnabled(experiment is not None)
        if experiment is None:
            self.results_model.set_rows([])
            self.significance_label.setText("No experiment yet.")
            self.experiment_state.setText("")
            return
        started = time.monotonic()
        try:
            info = self.engine.experiment_info(experiment)
        except SwitchboardError:
            self._refresh_experiments()
            return
        took = time.monotonic() - started
        # An experiment with many samples takes a while to bootstrap: never spend more than ~10 % of the time.
        self._results_due = time.monotonic() + max(0.0, 10 * took)
        results = info["results"]
        self.results_model.set_rows(results["arms"])
        self.experiment_state.setText(
            f"Metric: {results['metric']} ({'higher' if results['higher_is_better'] else 'lower'} is better) · "
            + ("<b>routing auto requests now</b>" if info["routing"] else "not routing (the strategy is "
               f"{self.engine.router.describe()['strategy']})"))
        self.significance_label.setText("\n".join(_significance(s) for s in results["significance"]))

    # -- try a request ---------------------------------------------------------------------------
    def _try_tab(self) -> QWidget:
        tab = QWidget()
        layout = QVBoxLayout(tab)
        form = QFormLayout()
        self.try_prompt = QPlainTextEdit()
        self.try_prompt.setPlaceholderText("A user message, e.g. Write a Python function that reverses a list")
        self.try_prompt.setMaximumHeight(110)
        form.addRow("Prompt", self.try_prompt)
        self.try_capabilities = QLineEdit()
        self.try_capabilities.setPlaceholderText("comma-separated, e.g. vision, tools")
        form.addRow("Capabilities", self.try_capabilities)
        self.try_session = QLineEdit()
        self.try_session.setPlaceholderText("optional x-session-id (affinity and A/B are sticky per session)")
        form.addRow("Session", self.try_session)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(QLabel("A dry run: the router decides, nothing is generated."), 1)
        self.try_button = QPushButton("Route")
        self.try_button.clicked.connect(self.try_request)
        row.addWidget(self.try_button)
        layout.addLayout(row)
        self.try_error = _error_label()
        layout.addWidget(self.try_error)
        self.decision_label = QLabel()
        self.decision_label.setWordWrap(True)
        self.decision_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.decision_label)
        self.candidates_model = CandidatesModel(self)
        self.candidates_view = _table(self.candidates_model, 4)
        layout.addWidget(self.candidates_view, 1)
        return tab

    def try_request(self) -> dict[str, Any] | None:
        """Route the prompt as a chat request would be, without running it; the decision, or None on an error."""
        prompt = self.try_prompt.toPlainText()
        capabilities = tuple(c.strip() for c in self.try_capabilities.text().split(",") if c.strip())
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
        if capabilities:
            body["capabilities"] = list(capabilities)
        session = self.try_session.text().strip() or None
        try:
            decision = self.engine.route(RouteRequest("chat", None, capabilities, translate("chat", body),
                                                      session_key=session))
        except (SwitchboardError, ValueError) as exc:
            self.try_error.setText(_message(exc))
            self.try_error.show()
            self.decision_label.setText("")
            self.candidates_model.set_rows([])
            return None
        self.try_error.hide()
        explained: dict[str, Any] = decision.explain()
        self.decision_label.setText(
            f"Chosen: <b>{explained['model_id']}</b> · strategy <b>{explained['strategy']}</b> · "
            f"score {explained['total_score']:.3f}<br>Reason: {_escape(explained['reason'])}")
        self.candidates_model.set_rows(explained["candidates"])
        return explained

    # -- models and refresh ----------------------------------------------------------------------
    def _registry_event(self, event: str, entry: Any) -> None:
        # Called by the registry (on the loop, which is the Qt thread): only note it; the timer rebuilds.
        if event in ("added", "removed"):
            self._models_stale = True

    def _refresh_models(self) -> None:
        models = sorted(e.id for e in self.engine.registry.list())
        self._models_stale = False
        if models == self._models:
            return
        self._models = models
        for page in self.pages.values():
            page.set_models(models)
        self.arms_editor.set_models(models)

    def _tick(self) -> None:
        if self._models_stale:
            self._refresh_models()
        self._sync_router()
        if not self.isVisible():
            return
        current = self.tabs.currentIndex()
        if current == 0 and isinstance(page := self.pages.get("quota_aware"), QuotaPage) \
                and self.stack.currentWidget() is page:
            page.refresh_usage()
        if current == 1 and time.monotonic() >= self._results_due:
            if self.experiment_combo.count() != len(self.engine.experiments.list()):
                self._refresh_experiments()
            else:
                self.refresh_results()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self._tick()

    @property
    def models(self) -> list[str]:
        return list(self._models)


def _scrolling(widget: QWidget) -> QScrollArea:
    """`widget` in a frameless scroll area, so a tall form does not force a tall window."""
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QScrollArea.Shape.NoFrame)
    scroll.setWidget(widget)
    return scroll


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _significance(s: Mapping[str, Any]) -> str:
    """One line per arm against the baseline, in words."""
    head = f"{s['arm']} vs {s['baseline']}"
    if s.get("ci95") is None:
        return f"{head}: {s.get('method', 'no data yet')}"
    low, high = s["ci95"]
    unit = {"ttft_ms": " ms", "tokens_per_s": " tok/s"}.get(s["metric"], "")
    scale, fmt = (100.0, "{:+.1f} pt") if s["metric"] == "error_rate" else (1.0, "{:+.2f}" + unit)
    verdict = "no significant difference" if not s["significant"] else \
        ("significantly better" if s["better"] else "significantly worse")
    return (f"{head}: {s['metric']} {fmt.format(s['difference'] * scale)} "
            f"(95% CI {fmt.format(low * scale)} … {fmt.format(high * scale)}, n={s['n']}/{s['baseline_n']}): "
            f"{verdict}")

