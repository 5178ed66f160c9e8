"""The Routing tab: the strategy and its parameters, A/B experiments, and a request tried without running it.

Each sub-tab is its own module (strategy.py, experiments.py, try_route.py) and goes through Services only, the
same calls as the management API; the panel keeps no routing state of its own. It composes the three, tells them
when the list of models changes, and runs one 2 s timer that follows changes made elsewhere (the tray, the HTTP
API) and refreshes the live numbers of the sub-tab on screen.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from app.core.services import Services
from app.ui.routing.experiments import ExperimentsTab
from app.ui.routing.strategy import StrategyTab
from app.ui.routing.try_route import TryTab

REFRESH_MS = 2000


class RoutingPanel(QWidget):
    # The strategy now routing "auto" requests, after this panel changed it.
    strategy_changed = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None, *, refresh_ms: int = REFRESH_MS) -> None:
        super().__init__(parent)
        self.services = services
        self._models: list[str] = []
        self._models_stale = True
        self.strategy_tab = StrategyTab(services)
        self.experiments_tab = ExperimentsTab(services)
        self.try_tab = TryTab(services)
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget()
        layout.addWidget(self.tabs)
        self.tabs.addTab(self.strategy_tab, "Strategy")
        self.tabs.addTab(_scrolling(self.experiments_tab), "A/B experiments")
        self.tabs.addTab(self.try_tab, "Try a request")
        self.tabs.currentChanged.connect(lambda _: self._tick())

        self.strategy_tab.strategy_changed.connect(self.strategy_changed)
        self.experiments_tab.strategy_changed.connect(self.strategy_changed)
        self.experiments_tab.experiments_changed.connect(self.strategy_tab.refresh_experiments)
        self.experiments_tab.router_changed.connect(lambda: self.strategy_tab.sync(force=True))

        unsubscribe = services.models.subscribe(self._model_event)
        self.destroyed.connect(lambda *_: unsubscribe())
        self._refresh_models()
        self.strategy_tab.sync(force=True)
        self.experiments_tab.refresh_experiments()

        self.timer = QTimer(self)
        self.timer.setObjectName("routing-refresh")
        self.timer.setInterval(refresh_ms)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    # -- models and refresh ----------------------------------------------------------------------
    def _model_event(self, event: str, entry: Any) -> None:
        # Called by the core (on the loop, which is the Qt thread): only note it; the timer rebuilds.
        if event in ("added", "removed"):
            self._models_stale = True

    def _refresh_models(self) -> None:
        models = sorted(e.id for e in self.services.models.all())
        self._models_stale = False
        if models == self._models:
            return
        self._models = models
        self.strategy_tab.set_models(models)
        self.experiments_tab.set_models(models)

    def _tick(self) -> None:
        if self._models_stale:
            self._refresh_models()
        self.strategy_tab.sync()
        if not self.isVisible():
            return
        current = self.tabs.currentIndex()
        if current == 0:
            self.strategy_tab.tick()
        elif current == 1:
            self.experiments_tab.tick()

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
