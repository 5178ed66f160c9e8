"""The resources panel: RAM plotted from real samples, per-model bands, and VRAM only where NVML works."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


import psutil
import pytest

from app.core.engine import Engine
from app.core.runtime import gpu
from app.core.runtime.pool import LoadedModel
from app.core.services import Services
from app.ui.resources import panel as resources_view
from app.ui.resources.panel import GIB, ResourcesPanel


def fake_workers(engine: Engine, monkeypatch: pytest.MonkeyPatch, rss: dict[str, int]) -> None:
    """Pretend workers are loaded: the pool's views and sampled RSS, keyed like real worker keys."""
    views = [LoadedModel(key, key.split("#")[0], 0, 1000 + i, "loaded", 0, size, 0, False, 0.0)
             for i, (key, size) in enumerate(rss.items())]
    monkeypatch.setattr(engine.pool, "loaded", lambda: views)
    monkeypatch.setattr(engine.pool, "sample_memory", lambda: dict(rss))


def test_without_nvidia_the_vram_panel_says_so(qtbot, engine: Engine) -> None:
    reason = gpu.unavailable_reason()
    if reason is None:
        pytest.skip("this machine has an NVIDIA GPU")
    panel = ResourcesPanel(Services(engine))
    qtbot.add_widget(panel)
    assert panel.vram_chart is None
    assert reason in panel.vram_summary.text()
    assert "No NVIDIA GPU" in panel.vram_summary.text()


def test_ram_is_plotted_after_a_timer_tick(qtbot, engine: Engine) -> None:
    panel = ResourcesPanel(Services(engine), interval_ms=20)
    qtbot.add_widget(panel)
    panel.show()
    qtbot.waitUntil(lambda: len(panel.history.samples) >= 2, timeout=3000)
    xs, ys = panel.ram_chart.total_curve.getData()
    assert len(xs) >= 2 and xs[-1] == 0 and all(x <= 0 for x in xs)
    total = psutil.virtual_memory().total / GIB
    assert all(0 < y <= total for y in ys)
    assert panel.ram_chart.budget_line.value() == pytest.approx(engine.pool.budget / GIB)
    assert "GiB in use" in panel.ram_summary.text() and "no model loaded" in panel.ram_summary.text()


def test_history_is_about_two_minutes(qtbot, engine: Engine) -> None:
    panel = ResourcesPanel(Services(engine))
    qtbot.add_widget(panel)
    panel.timer.stop()
    for _ in range(200):
        panel.history.sample()
    assert len(panel.history.samples) == resources_view.HISTORY_S + 1


def test_each_loaded_model_is_a_band_within_the_total(qtbot, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_workers(engine, monkeypatch, {"alpha:q4_0": GIB, "alpha:q4_0#1": GIB // 2, "beta:q8_0": 2 * GIB})
    panel = ResourcesPanel(Services(engine))
    qtbot.add_widget(panel)
    panel.timer.stop()
    panel.show()
    panel.tick()
    curves = panel.ram_chart.model_curves
    assert set(curves) == {"alpha:q4_0", "beta:q8_0"}
    # Stacked: alpha (both replicas) at the bottom, beta on top of it.
    assert curves["alpha:q4_0"].getData()[1][-1] == pytest.approx(1.5)
    assert curves["beta:q8_0"].getData()[1][-1] == pytest.approx(3.5)
    assert "alpha:q4_0 1.50 GiB" in panel.ram_summary.text()

    fake_workers(engine, monkeypatch, {"beta:q8_0": 2 * GIB})
    panel.tick()
    # alpha is still in the window's history (as 0 now), so it keeps its band until it scrolls out.
    assert curves["alpha:q4_0"].getData()[1][-1] == 0
    assert curves["beta:q8_0"].getData()[1][-1] == pytest.approx(2.0)


def test_vram_chart_with_a_gpu(qtbot, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "unavailable_reason", lambda: None)
    monkeypatch.setattr(gpu, "devices", lambda: [gpu.GpuMemory(0, "Test GPU", 8 * GIB, 3 * GIB)])
    monkeypatch.setattr(gpu, "process_memory", lambda pids: {pid: GIB for pid in pids})
    fake_workers(engine, monkeypatch, {"alpha:q4_0": GIB})
    panel = ResourcesPanel(Services(engine))
    qtbot.add_widget(panel)
    panel.timer.stop()
    panel.show()
    panel.tick()
    assert panel.vram_chart is not None
    assert panel.vram_chart.total_curve.getData()[1][-1] == pytest.approx(3.0)
    assert panel.vram_chart.model_curves["alpha:q4_0"].getData()[1][-1] == pytest.approx(1.0)
    assert panel.vram_summary.text().startswith("Test GPU: 3.0 of 8.0 GiB in use")
