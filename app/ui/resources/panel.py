"""Live memory: system RAM and, with an NVIDIA GPU, VRAM, with each loaded model's worker memory inside the total.

`MemoryHistory` samples (no Qt): psutil for RAM, each worker's RSS (`Services.memory()`, a few syscalls),
NVML for VRAM. `ResourcesPanel` draws it with pyqtgraph once a second from one QTimer, never per token or per
request, and only while it is visible; about two minutes of history are kept.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QGroupBox, QLabel, QVBoxLayout, QWidget

from app.core.runtime import gpu
from app.core.services import Services

GIB = 2**30
INTERVAL_MS = 1000
HISTORY_S = 120

# Distinct, readable on light and dark backgrounds; a model keeps its colour while it stays loaded.
_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f")


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # monotonic seconds
    ram_total: int
    ram_used: int  # total - available: what the system could not hand out now
    budget: int  # the pool's memory budget for loaded models
    models_ram: dict[str, int] = field(default_factory=dict)  # model id -> RSS of its workers
    gpus: tuple[gpu.GpuMemory, ...] | None = None  # None: no NVIDIA GPU / NVML
    models_vram: dict[str, int] = field(default_factory=dict)  # model id -> VRAM of its workers

    @property
    def vram_total(self) -> int:
        return sum(d.total_bytes for d in self.gpus or ())

    @property
    def vram_used(self) -> int:
        return sum(d.used_bytes for d in self.gpus or ())


class MemoryHistory:
    """The last `seconds` of samples, oldest first."""

    def __init__(self, services: Services, *, seconds: float = HISTORY_S, interval_s: float = INTERVAL_MS / 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._services = services
        self._clock = clock
        self.samples: deque[Sample] = deque(maxlen=max(2, int(seconds / interval_s) + 1))
        self.gpu_reason = gpu.unavailable_reason()  # NVML is initialised (or found missing) once

    def sample(self) -> Sample:
        memory = self._services.memory()
        models_ram: dict[str, int] = {}
        pids: dict[int, str] = {}
        for view in memory.workers:
            models_ram[view.model_id] = models_ram.get(view.model_id, 0) + memory.rss.get(view.key, 0)
            if view.pid is not None:
                pids[view.pid] = view.model_id
        gpus: tuple[gpu.GpuMemory, ...] | None = None
        models_vram: dict[str, int] = {}
        if self.gpu_reason is None:
            gpus = tuple(gpu.devices() or ())
            for pid, used in gpu.process_memory(pids).items():
                models_vram[pids[pid]] = models_vram.get(pids[pid], 0) + used
        vm = psutil.virtual_memory()
        sample = Sample(self._clock(), int(vm.total), int(vm.total - vm.available), int(memory.budget), models_ram,
                        gpus, models_vram)
        self.samples.append(sample)
        return sample


class MemoryChart(pg.PlotWidget):
    """Each model's memory stacked from the bottom, the total in use as a line, the budget as a dashed line."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent, background=None)
        item = self.getPlotItem()
        item.setTitle(title)
        item.setLabel("left", "GiB")
        item.setLabel("bottom", "seconds ago")
        item.showGrid(x=True, y=True, alpha=0.2)
        item.setMouseEnabled(x=False, y=False)
        item.hideButtons()
        item.setXRange(-HISTORY_S, 0, padding=0)
        self.legend = item.addLegend(offset=(10, 10))
        self.total_curve = item.plot(name="in use (all processes)", pen=pg.mkPen(color="#888888", width=2))
        self.total_curve.setZValue(1000)
        self.budget_line = pg.InfiniteLine(angle=0, movable=False,
                                           pen=pg.mkPen(color="#d62728", width=1, style=Qt.PenStyle.DashLine),
                                           label="budget", labelOpts={"position": 0.05, "color": "#d62728"})
        self.budget_line.hide()
        item.addItem(self.budget_line)
        self.model_curves: dict[str, pg.PlotDataItem] = {}
        self._colours: dict[str, str] = {}

    def show_series(self, xs: Sequence[float], total: Sequence[float], models: dict[str, list[float]],
                    capacity: float, budget: float | None) -> None:
        """Values in bytes; `models` maps each model to one value per x (0 where it was not loaded)."""
        item = self.getPlotItem()
        for gone in set(self.model_curves) - set(models):
            curve = self.model_curves.pop(gone)
            item.removeItem(curve)
            self.legend.removeItem(curve)
            self._colours.pop(gone, None)
        running = [0.0] * len(xs)
        ordered = sorted(models)
        for rank, model_id in enumerate(ordered):
            running = [r + v / GIB for r, v in zip(running, models[model_id])]
            curve = self.model_curves.get(model_id)
            if curve is None:
                colour = self._colour_for(model_id)
                curve = item.plot(name=model_id, pen=pg.mkPen(colour, width=1), fillLevel=0,
                                  brush=pg.mkBrush(colour + "b0"))
                self.model_curves[model_id] = curve
            # Cumulative areas filled down to 0: the lower models are drawn over the higher sums, so the
            # bands read as a stack.
            curve.setZValue(len(ordered) - rank)
            curve.setData(list(xs), running)
        self.total_curve.setData(list(xs), [v / GIB for v in total])
        if budget is not None:
            self.budget_line.setPos(budget / GIB)
            self.budget_line.show()
        if capacity > 0:
            item.setYRange(0, capacity / GIB, padding=0.02)

    def _colour_for(self, model_id: str) -> str:
        used = set(self._colours.values())
        colour = next((c for c in _PALETTE if c not in used), _PALETTE[len(self._colours) % len(_PALETTE)])
        self._colours[model_id] = colour
        return colour


class ResourcesPanel(QWidget):
    def __init__(self, services: Services, parent: QWidget | None = None, *, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__(parent)
        self.services = services
        self.history = MemoryHistory(services, interval_s=interval_ms / 1000)
        layout = QVBoxLayout(self)

        ram_box = QGroupBox("System RAM")
        ram_layout = QVBoxLayout(ram_box)
        self.ram_summary = QLabel("Sampling…")
        self.ram_summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.ram_chart = MemoryChart("RAM")
        ram_layout.addWidget(self.ram_summary)
        ram_layout.addWidget(self.ram_chart, 1)
        layout.addWidget(ram_box, 1)

        vram_box = QGroupBox("GPU memory (VRAM)")
        vram_layout = QVBoxLayout(vram_box)
        self.vram_summary = QLabel()
        self.vram_summary.setWordWrap(True)
        self.vram_summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        vram_layout.addWidget(self.vram_summary)
        self.vram_chart: MemoryChart | None = None
        if self.history.gpu_reason is not None:
            self.vram_summary.setText(f"{self.history.gpu_reason}. VRAM is shown only for NVIDIA GPUs; "
                                      "models run on the CPU and use system RAM.")
            layout.addWidget(vram_box, 0)
        else:
            self.vram_summary.setText("Sampling…")
            self.vram_chart = MemoryChart("VRAM")
            vram_layout.addWidget(self.vram_chart, 1)
            layout.addWidget(vram_box, 1)

        self.timer = QTimer(self)
        self.timer.setObjectName("resources-refresh")
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.tick)
        self.timer.start()

    # -- refresh -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Take one sample (cheap: psutil and cached worker RSS); redraw only while someone can see it."""
        self.history.sample()
        if self.isVisible():
            self.redraw()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self.history.samples:
            self.redraw()

    def redraw(self) -> None:
        samples = list(self.history.samples)
        if not samples:
            return
        last = samples[-1]
        xs = [s.t - last.t for s in samples]
        ram_models = _series(samples, lambda s: s.models_ram)
        self.ram_chart.show_series(xs, [s.ram_used for s in samples], ram_models, last.ram_total, last.budget)
        self.ram_summary.setText(_summary(last.ram_used, last.ram_total, last.models_ram, budget=last.budget))
        if self.vram_chart is not None:
            vram_models = _series(samples, lambda s: s.models_vram)
            self.vram_chart.show_series(xs, [s.vram_used for s in samples], vram_models, last.vram_total, None)
            names = ", ".join(d.name for d in last.gpus or ()) or "no device"
            self.vram_summary.setText(f"{names}: " + _summary(last.vram_used, last.vram_total, last.models_vram))


def _series(samples: Sequence[Sample], pick: Callable[[Sample], dict[str, int]]) -> dict[str, list[float]]:
    """One list per model seen in the window, with 0 where it was not loaded."""
    names = sorted({m for s in samples for m in pick(s)})
    return {m: [float(pick(s).get(m, 0)) for s in samples] for m in names}


def _summary(used: int, total: int, models: dict[str, int], *, budget: int | None = None) -> str:
    text = f"{used / GIB:.1f} of {total / GIB:.1f} GiB in use"
    if models:
        each = ", ".join(f"{m} {b / GIB:.2f} GiB" for m, b in sorted(models.items()))
        text += f" · models {sum(models.values()) / GIB:.2f} GiB ({each})"
    else:
        text += " · no model loaded"
    if budget is not None:
        text += f" · budget {budget / GIB:.1f} GiB"
    return text
