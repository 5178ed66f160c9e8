"""The Routing tab's A/B experiments: create one (arms whose split always sums to 100 %), route by it, delete it,
and read its live per-arm results with their significance.

Results come from Services.experiments.info, whose bootstrap runs in a thread: the tab asks for them and shows
them when they arrive, never blocking the Qt thread, and asks again only after a pause ten times as long as the
last computation took.

Long module: the tab, its arms editor and the split arithmetic the editor keeps at 100 % are one feature; the
pure split functions stay here beside the one editor that uses them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import SwitchboardError
from app.core.observe.experiments import METRICS
from app.core.services import Services
from app.ui.rows_model import ReplacedRowsModel
from app.ui.support import error_label, error_text, spawn, table_view

MIN_PERCENT = 1  # every arm keeps at least this share: an arm at 0 % is no arm
MAX_ARMS = 10


METRIC_LABELS = {
    "ttft_ms": "time to first token (lower is better)",
    "tokens_per_s": "tokens per second (higher is better)",
    "error_rate": "error rate (lower is better)",
    "feedback": "user feedback from /v1/feedback (higher is better)",
}


# -- the split: pure functions, so the 100 % invariant is easy to check ------------------------------------

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


class ArmResultsModel(ReplacedRowsModel):
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


def experiment_label(summary: Mapping[str, Any]) -> str:
    """An experiment as its pickers list it: name, arms with their shares, id."""
    arms = " / ".join(f"{a['name']} {a['percent']:g}%" for a in summary["arms"])
    return f"{summary['name']} ({arms}) · {summary['id']}"


# -- the arms editor --------------------------------------------------------------------------------------

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
        taken = {r[1] for r in rows}
        model = next((m for m in self._models if m not in taken), self._models[0] if self._models else None)
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
            for column, cell in enumerate((name_edit, models, spin, remove)):
                self.grid.addWidget(cell, i + 1, column)
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


class ExperimentsTab(QWidget):
    """Create, pick, route by and delete experiments; the picked one's live results."""

    # The list of experiments was reloaded (created, deleted, or changed elsewhere).
    experiments_changed = Signal()
    # Something here may have changed the router (an experiment routes, or the routing one was deleted).
    router_changed = Signal()
    # An experiment now routes "auto" requests (the strategy is ab_test).
    strategy_changed = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self._results_due = 0.0  # monotonic time of the next results refresh
        self._results_asked = 0  # counts requests for results: only the newest one's answer is shown
        self.results_task: asyncio.Task[Any] | None = None  # the newest request, while and after it runs
        layout = QVBoxLayout(self)
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
        self.experiment_error = error_label()
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
        self.results_view = table_view(self.results_model, 1)
        live_layout.addWidget(self.results_view, 1)
        self.significance_label = QLabel()
        self.significance_label.setWordWrap(True)
        self.significance_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        live_layout.addWidget(self.significance_label)
        layout.addWidget(live, 1)
        self._check_experiment()

    def set_models(self, model_ids: Sequence[str]) -> None:
        self.arms_editor.set_models(model_ids)

    def _check_experiment(self) -> None:
        problem = self.arms_editor.problem()
        if problem is None and not self.experiment_name.text().strip():
            problem = "Name the experiment."
        self.create_button.setEnabled(problem is None)
        self.create_problem.setText(problem or "")

    def _show_error(self, exc: BaseException) -> None:
        self.experiment_error.setText(error_text(exc))
        self.experiment_error.show()

    # -- actions -------------------------------------------------------------------------------
    def create_experiment(self) -> str | None:
        """Create the experiment in the editor; its id, or None (and the reason shown) when it fails."""
        if not self.create_button.isEnabled():
            return None
        try:
            experiment = self.services.experiments.create(
                self.experiment_name.text().strip(), self.arms_editor.arms(), self.metric_combo.currentData(),
                activate=self.activate_check.isChecked())
        except (SwitchboardError, ValueError, KeyError) as exc:
            self._show_error(exc)
            return None
        self.experiment_error.hide()
        self.experiment_name.clear()
        self.refresh_experiments(select=experiment["id"])
        self.router_changed.emit()
        if self.activate_check.isChecked():
            self.strategy_changed.emit("ab_test")
        return str(experiment["id"])

    def _route_by_selected(self) -> None:
        experiment = self.experiment_combo.currentData()
        if experiment is None:
            return
        try:
            self.services.experiments.route_by(experiment)
        except (SwitchboardError, ValueError) as exc:
            self._show_error(exc)
            return
        self.router_changed.emit()
        self.refresh_results()
        self.strategy_changed.emit("ab_test")

    def delete_selected(self) -> None:
        experiment = self.experiment_combo.currentData()
        if experiment is None:
            return
        try:
            self.services.experiments.delete(experiment)
        except SwitchboardError as exc:
            self._show_error(exc)
        self.refresh_experiments()
        self.router_changed.emit()

    # -- refreshing ----------------------------------------------------------------------------
    def refresh_experiments(self, select: str | None = None) -> None:
        """Reload the list (keeping the selection, else `select`, else the newest), then its results."""
        select = select or self.experiment_combo.currentData()
        self.experiment_combo.blockSignals(True)
        self.experiment_combo.clear()
        for summary in self.services.experiments.summaries():
            self.experiment_combo.addItem(experiment_label(summary), summary["id"])
        if select is not None and (i := self.experiment_combo.findData(select)) >= 0:
            self.experiment_combo.setCurrentIndex(i)
        elif self.experiment_combo.count():
            self.experiment_combo.setCurrentIndex(self.experiment_combo.count() - 1)
        self.experiment_combo.blockSignals(False)
        self.experiments_changed.emit()
        self.refresh_results()

    def tick(self) -> None:
        """The panel's timer, while this tab is on screen: follow experiments made elsewhere, refresh results."""
        if time.monotonic() < self._results_due:
            return
        if self.experiment_combo.count() != len(self.services.experiments.ids()):
            self.refresh_experiments()
        else:
            self.refresh_results()

    def refresh_results(self) -> None:
        """Ask for the picked experiment's live results; they are shown when they arrive (see _load_results)."""
        experiment = self.experiment_combo.currentData()
        self.route_button.setEnabled(experiment is not None)
        self.delete_button.setEnabled(experiment is not None)
        self._results_asked += 1
        if experiment is None:
            self.results_model.set_rows([])
            self.significance_label.setText("No experiment yet.")
            self.experiment_state.setText("")
            return
        self._results_due = math.inf  # no tick asks again while this bootstrap runs
        self.results_task = spawn(self._load_results(experiment, self._results_asked), on_error=self._show_error,
                                  name=f"experiment-results-{experiment}")

    async def _load_results(self, experiment_id: str, asked: int) -> None:
        started = time.monotonic()
        info: dict[str, Any] | None = None
        try:
            info = await self.services.experiments.info(experiment_id)
        except SwitchboardError:
            pass  # deleted elsewhere (through the API): the list follows below
        finally:
            if asked == self._results_asked:
                # A bootstrap over many samples takes a while: never spend more than ~10 % of the time on it.
                self._results_due = time.monotonic() + 10 * (time.monotonic() - started)
        if asked != self._results_asked:
            return  # another experiment was picked, or the list changed, meanwhile: a newer answer is due
        if info is None:
            self.refresh_experiments()
            return
        results = info["results"]
        self.results_model.set_rows(results["arms"])
        self.experiment_state.setText(
            f"Metric: {results['metric']} ({'higher' if results['higher_is_better'] else 'lower'} is better) · "
            + ("<b>routing auto requests now</b>" if info["routing"] else "not routing (the strategy is "
               f"{self.services.routing.strategy})"))
        self.significance_label.setText("\n".join(_significance(s) for s in results["significance"]))


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
