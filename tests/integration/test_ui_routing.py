"""The routing panel over Services on a real Engine: every change is checked by a dry run through engine.route."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import qasync

from app.core.config import Config
from app.core.engine import Engine
from app.core.routing.needs import translate
from app.core.routing.quota import Limits
from app.core.routing.request import RouteRequest, RoutingDecision
from app.core.routing.strategies.base import Outcome
from app.core.services import Services
from app.ui.routing.experiments import MIN_PERCENT, ArmResultsModel, add_arm, rebalance, remove_arm
from app.ui.routing.panel import RoutingPanel
from app.ui.routing.strategy import QuotaPage, WeightsPage
from app.ui.routing.try_route import CandidatesModel
from tests.support.gguf_files import write_gguf

SMOL = "smollm2-135m-instruct:q4_1"
ALPHA = "alpha:q4_0"
BETA = "beta:q8_0"  # the only model whose template calls tools itself (native_tools)


@pytest.fixture
def engine(sb_home: Path, tmp_path: Path) -> Iterator[Engine]:
    models = tmp_path / "models"
    write_gguf(models / "alpha-Q4_0.gguf", name="Alpha", chat_template="{{ messages }}", file_type=2)
    write_gguf(models / "beta-Q8_0.gguf", name="Beta", chat_template="{{ tools }}<tool_call>{{ messages }}", file_type=7)
    engine = Engine(Config(discovery=False, model_dirs=[str(models)]))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.rescan())
    yield engine
    loop.run_until_complete(engine.close())
    loop.close()


@pytest.fixture
def panel(qtbot, engine: Engine) -> RoutingPanel:
    panel = RoutingPanel(Services(engine))
    qtbot.add_widget(panel)
    panel.timer.stop()  # the tests tick by hand
    return panel


def decide(engine: Engine, prompt: str = "Hello there", *, session: str | None = None,
           capabilities: tuple[str, ...] = ()) -> RoutingDecision:
    body = {"messages": [{"role": "user", "content": prompt}]}
    return engine.route(RouteRequest("chat", None, capabilities, translate("chat", body), session_key=session))


def dry_run(engine: Engine, prompt: str = "Hello there", *, session: str | None = None,
            capabilities: tuple[str, ...] = ()) -> str:
    return decide(engine, prompt, session=session, capabilities=capabilities).model_id


def pick(panel: RoutingPanel, name: str) -> None:
    """What a user does: choose the strategy in the combo box."""
    panel.strategy_tab.strategy_combo.setCurrentIndex(panel.strategy_tab.strategy_combo.findData(name))


@pytest.fixture
def loop(qapp) -> Iterator[qasync.QEventLoop]:
    """The window's loop: experiment results arrive on it (Services.experiments.info computes them in a thread)."""
    loop = qasync.QEventLoop(qapp)
    yield loop
    loop.close()


def test_the_panel_lists_every_strategy_and_model(panel: RoutingPanel, engine: Engine) -> None:
    combo = panel.strategy_tab.strategy_combo
    names = [combo.itemData(i) for i in range(combo.count())]
    assert names == engine.router.describe()["available"]
    assert panel.strategy_tab.strategy_combo.currentData() == "least_loaded"
    assert "least_loaded" in panel.strategy_tab.current_label.text()
    assert panel.models == sorted([SMOL, ALPHA, BETA])


def test_changing_the_strategy_changes_routing(panel: RoutingPanel, engine: Engine) -> None:
    pick(panel, "round_robin")
    assert panel.strategy_tab.apply()
    assert engine.router.describe()["strategy"] == "round_robin"
    decisions = []
    for _ in range(3):
        decisions.append(decide(engine))
        engine.router.started(decisions[-1])  # what a request that runs does: the turn moves on
    assert all(d.strategy == "round_robin" for d in decisions)
    assert {d.model_id for d in decisions} == {SMOL, ALPHA, BETA}

    pick(panel, "weighted_random")
    page = panel.strategy_tab.pages["weighted_random"]
    assert isinstance(page, WeightsPage)
    for model in (SMOL, ALPHA, BETA):
        page.set_weight(model, 0)
    page.set_weight(ALPHA, 100)
    panel.strategy_tab.apply_button.click()
    assert engine.router.describe()["params"]["weights"] == {SMOL: 0.0, ALPHA: 100.0, BETA: 0.0}
    assert Counter(dry_run(engine) for _ in range(30)) == {ALPHA: 30}
    assert "weighted_random" in panel.strategy_tab.current_label.text()


def test_weights_can_be_saved_as_the_models_own(panel: RoutingPanel, engine: Engine) -> None:
    pick(panel, "weighted_random")
    page = panel.strategy_tab.pages["weighted_random"]
    assert isinstance(page, WeightsPage)
    page.set_weight(BETA, 7)
    page.save_as_model_weight.setChecked(True)
    assert panel.strategy_tab.apply()
    assert engine.registry.get(BETA).weight == 7.0


def test_cache_aware_thresholds(panel: RoutingPanel, engine: Engine) -> None:
    pick(panel, "cache_aware")
    fields = panel.strategy_tab.pages["cache_aware"].fields
    assert fields["cache_threshold"].value() == 0.5  # the strategy's default
    fields["cache_threshold"].setValue(0.8)
    fields["balance_abs_threshold"].setValue(8)
    assert panel.strategy_tab.apply()
    params = engine.router.describe()["params"]
    assert engine.router.describe()["strategy"] == "cache_aware"
    assert params["cache_threshold"] == 0.8 and params["balance_abs_threshold"] == 8
    assert dry_run(engine) in {SMOL, ALPHA, BETA}


def test_validation_errors_are_shown_not_raised(panel: RoutingPanel, engine: Engine) -> None:
    panel.show()
    pick(panel, "ab_test")
    assert not panel.strategy_tab.apply()  # no experiment yet
    assert panel.strategy_tab.strategy_error.isVisible()
    assert "ab_test needs an experiment" in panel.strategy_tab.strategy_error.text()
    assert engine.router.describe()["strategy"] == "least_loaded"

    pick(panel, "affinity")
    assert not panel.strategy_tab.strategy_error.isVisible()
    panel.strategy_tab.pages["affinity"].pins.add_pin("user", "", ALPHA)  # no value
    assert not panel.strategy_tab.apply()
    assert "pins[0].value" in panel.strategy_tab.strategy_error.text()


def test_affinity_pins(panel: RoutingPanel, engine: Engine) -> None:
    pick(panel, "affinity")
    pins = panel.strategy_tab.pages["affinity"].pins
    pins.add_pin("session", "s-1", ALPHA)
    pins.add_pin("capability", "tools", BETA)
    assert panel.strategy_tab.apply()
    assert engine.router.describe()["params"]["pins"] == [
        {"kind": "session", "value": "s-1", "model_id": ALPHA},
        {"kind": "capability", "value": "tools", "model_id": BETA},
    ]
    assert {dry_run(engine, session="s-1") for _ in range(5)} == {ALPHA}
    assert dry_run(engine, capabilities=("tools",)) == BETA
    # Reopening the panel shows the saved pins.
    again = RoutingPanel(Services(engine))
    try:
        assert again.strategy_tab.pages["affinity"].pins.pins() == engine.router.describe()["params"]["pins"]
    finally:
        again.deleteLater()


def test_quota_editor_sets_limits_and_quota_aware_routes_away(panel: RoutingPanel, engine: Engine) -> None:
    pick(panel, "quota_aware")
    page = panel.strategy_tab.pages["quota_aware"]
    assert isinstance(page, QuotaPage)
    page.set_limits(ALPHA, 1000, 0)
    page.set_limits(BETA, 0, 50)
    assert panel.strategy_tab.apply()
    assert engine.router.describe()["strategy"] == "quota_aware"
    assert engine.quota.limits(f"model:{ALPHA}") == Limits(1000, None)
    assert engine.quota.limits(f"model:{BETA}") == Limits(None, 50)
    assert engine.quota.limits(f"model:{SMOL}") == Limits()

    engine.quota.record(ALPHA, None, 1000)
    panel.tabs.setCurrentIndex(2)
    panel.try_tab.try_prompt.setPlainText("Hello")
    panel.try_tab.try_button.click()
    rows = {panel.try_tab.candidates_model.row(i)["model_id"]: panel.try_tab.candidates_model.row(i)
            for i in range(panel.try_tab.candidates_model.rowCount())}
    assert rows[ALPHA]["filtered"] and rows[ALPHA]["reason"] == "quota exhausted"
    page.refresh_usage()
    assert page.usage_text(ALPHA) == "1000 tokens, 1 requests (0% left)"
    assert page.usage_text(SMOL) == "0 tokens, 0 requests"


def test_the_panel_follows_changes_made_elsewhere(panel: RoutingPanel, engine: Engine) -> None:
    engine.configure_router("latency_based", {"expected_tokens": 128})
    panel._tick()
    assert panel.strategy_tab.strategy_combo.currentData() == "latency_based"
    assert panel.strategy_tab.pages["latency_based"].fields["expected_tokens"].value() == 128
    assert "latency_based" in panel.strategy_tab.current_label.text()
    # While the user is editing, the form is left alone (the 'now routing' line still follows).
    pick(panel, "round_robin")
    engine.configure_router("least_loaded")
    panel._tick()
    assert panel.strategy_tab.strategy_combo.currentData() == "round_robin"
    assert "least_loaded" in panel.strategy_tab.current_label.text()


def test_models_found_later_appear(panel: RoutingPanel, engine: Engine, tmp_path: Path) -> None:
    write_gguf(tmp_path / "models" / "gamma-Q4_0.gguf", name="Gamma", chat_template="{{ messages }}", file_type=2)
    asyncio.new_event_loop().run_until_complete(engine.rescan())
    panel._tick()
    assert "gamma:q4_0" in panel.models
    assert "gamma:q4_0" in panel.strategy_tab.pages["weighted_random"].sliders


# -- A/B ----------------------------------------------------------------------------------------------------

def test_split_functions_keep_100_percent() -> None:
    rng = random.Random(4)
    split = [50, 50]
    for _ in range(2000):
        op = rng.random()
        if op < 0.6:
            split = rebalance(split, rng.randrange(len(split)), rng.randint(-20, 130))
        elif op < 0.8:
            split = add_arm(split) or split
        elif len(split) > 2:
            split = remove_arm(split, rng.randrange(len(split)))
        assert sum(split) == 100 and min(split) >= MIN_PERCENT and len(split) >= 2
    # The last arm gives and takes first, then the ones before it; every arm keeps its minimum.
    assert rebalance([50, 30, 20], 0, 70) == [70, 29, 1]
    assert rebalance([50, 30, 20], 0, 40) == [40, 30, 30]
    assert rebalance([50, 30, 20], 2, 100) == [1, 1, 98]
    assert add_arm([60, 40]) == [30, 40, 30] and remove_arm([30, 40, 30], 0) == [40, 60]


def test_ab_editor_keeps_100_percent_under_random_edits(panel: RoutingPanel) -> None:
    editor = panel.experiments_tab.arms_editor
    panel.experiments_tab.experiment_name.setText("random edits")
    rng = random.Random(7)
    for step in range(150):
        op = rng.random()
        n = len(editor.percents())
        if op < 0.6:
            # As typed into a share's spin box (the spin box clamps to its range first).
            editor._rows[rng.randrange(n)][2].setValue(rng.randint(0, 100))
        elif op < 0.8:
            editor.add_button.click()
        elif n > 2:
            editor._rows[rng.randrange(n)][3].click()
        percents = editor.percents()
        assert sum(percents) == 100, (step, percents)
        assert min(percents) >= MIN_PERCENT and 2 <= len(percents)
        assert editor.total_label.text() == "Total: 100 %"
        assert panel.experiments_tab.create_button.isEnabled()


def test_create_is_disabled_until_the_experiment_makes_sense(panel: RoutingPanel) -> None:
    assert not panel.experiments_tab.create_button.isEnabled()  # no name
    panel.experiments_tab.experiment_name.setText("x")
    assert panel.experiments_tab.create_button.isEnabled()
    panel.experiments_tab.arms_editor._rows[1][0].setText("A")  # two arms named A
    assert not panel.experiments_tab.create_button.isEnabled()
    assert "differ" in panel.experiments_tab.create_problem.text()
    panel.experiments_tab.arms_editor._rows[1][0].setText("B")
    assert panel.experiments_tab.create_button.isEnabled()


def test_creating_an_experiment_switches_routing_to_ab_test(panel: RoutingPanel, engine: Engine,
                                                             loop: qasync.QEventLoop) -> None:
    async def then_results(action: Callable[[], object]) -> None:
        """Do `action`, then wait for the results it asked for: they are computed off the Qt thread."""
        action()
        task = panel.experiments_tab.results_task
        assert task is not None
        await task

    panel.tabs.setCurrentIndex(1)
    panel.show()
    panel.experiments_tab.experiment_name.setText("alpha vs beta")
    panel.experiments_tab.metric_combo.setCurrentIndex(panel.experiments_tab.metric_combo.findData("ttft_ms"))
    rows = panel.experiments_tab.arms_editor._rows
    rows[0][1].setCurrentText(ALPHA)
    rows[1][1].setCurrentText(BETA)
    rows[0][2].setValue(70)
    assert panel.experiments_tab.arms_editor.percents() == [70, 30]
    loop.run_until_complete(then_results(panel.experiments_tab.create_button.click))
    described = engine.router.describe()
    assert described["strategy"] == "ab_test"
    experiment_id = described["params"]["experiment_id"]
    assert [(a["model_id"], a["percent"]) for a in described["params"]["arms"]] == [(ALPHA, 70), (BETA, 30)]
    chosen = Counter(dry_run(engine, session=f"s{i}") for i in range(200))
    assert set(chosen) == {ALPHA, BETA} and chosen[ALPHA] > chosen[BETA]
    assert panel.strategy_tab.strategy_combo.currentData() == "ab_test"
    assert panel.experiments_tab.experiment_combo.currentData() == experiment_id

    # The live results: what engine.experiment_info reports, per arm, with the significance readout.
    assert panel.experiments_tab.results_model.rowCount() == 2
    assert "too few samples" in panel.experiments_tab.significance_label.text()
    assert "routing auto requests now" in panel.experiments_tab.experiment_state.text()
    for i in range(12):
        for arm, ttft in (("A", 0.100), ("B", 0.300)):
            engine.experiments.record(experiment_id, arm, f"{arm}{i}",
                                      Outcome(ok=True, ttft_s=ttft + i / 1000, duration_s=1.0, completion_tokens=20))
    engine.store.flush()
    panel.experiments_tab._results_due = 0
    loop.run_until_complete(then_results(panel._tick))
    assert [panel.experiments_tab.results_model.index(r, 3).data() for r in range(2)] == ["12", "12"]
    assert panel.experiments_tab.results_model.index(0, 5).data() == "106 ms"
    assert "significantly worse" in panel.experiments_tab.significance_label.text()

    panel.experiments_tab.delete_button.click()
    assert engine.experiments.list() == []
    assert engine.router.describe()["strategy"] == "least_loaded"
    assert panel.experiments_tab.experiment_combo.count() == 0


def test_an_experiment_error_is_shown(panel: RoutingPanel, engine: Engine) -> None:
    panel.experiments_tab.experiment_name.setText("gone")
    panel.experiments_tab.arms_editor._rows[0][1].setEditable(True)
    panel.experiments_tab.arms_editor._rows[0][1].setCurrentText("no-such-model")
    assert panel.experiments_tab.create_experiment() is None
    assert "no-such-model" in panel.experiments_tab.experiment_error.text()
    assert engine.experiments.list() == []


# -- try a request ------------------------------------------------------------------------------------------

def test_try_a_request_shows_candidates_and_filter_reasons(panel: RoutingPanel, engine: Engine) -> None:
    panel.tabs.setCurrentIndex(2)
    panel.try_tab.try_prompt.setPlainText("Call the weather tool for Paris")
    panel.try_tab.try_capabilities.setText("native_tools")
    panel.try_tab.try_button.click()
    assert not panel.try_tab.try_error.isVisible()
    model = panel.try_tab.candidates_model
    rows = {model.index(r, 0).data(): [model.index(r, c).data() for c in range(1, 5)] for r in range(model.rowCount())}
    assert rows[BETA][2] == "chosen"
    assert rows[SMOL][1:] == ["—", "filtered out", "lacks native_tools"]
    assert rows[ALPHA][1:] == ["—", "filtered out", "lacks native_tools"]
    assert BETA in panel.try_tab.decision_label.text() and "least_loaded" in panel.try_tab.decision_label.text()
    assert dry_run(engine, capabilities=("native_tools",)) == BETA  # the same decision as the router's

    panel.try_tab.try_capabilities.setText("vision")
    assert panel.try_tab.try_request() is None
    assert "No available model has the capability: vision" in panel.try_tab.try_error.text()
    assert model.rowCount() == 0


def test_item_models(qtmodeltester, panel: RoutingPanel) -> None:
    panel.try_tab.try_prompt.setPlainText("hi")
    panel.try_tab.try_capabilities.setText("tools")
    panel.try_tab.try_request()
    qtmodeltester.check(panel.try_tab.candidates_model, force_py=True)
    results = ArmResultsModel()
    results.set_rows([{"name": "A", "model_id": ALPHA, "percent": 60.0, "requests": 3, "errors": 1, "error_rate": 1 / 3,
                       "ttft_p50_ms": 12.0, "ttft_p95_ms": 30.0, "tokens_per_s": 55.5, "prompt_tokens": 9,
                       "completion_tokens": 40, "feedback_mean": 0.5, "feedback_count": 2},
                      {"name": "B", "model_id": BETA, "percent": 40.0, "requests": 0, "errors": 0, "error_rate": None,
                       "ttft_p50_ms": None, "ttft_p95_ms": None, "tokens_per_s": None, "prompt_tokens": 0,
                       "completion_tokens": 0, "feedback_mean": None, "feedback_count": 0}])
    qtmodeltester.check(results, force_py=True)
    assert [results.index(0, c).data() for c in range(9)] == [
        "A", ALPHA, "60 %", "3", "1 (33%)", "12 ms", "30 ms", "55.5", "+0.50 (n=2)"]
    assert results.index(1, 5).data() == "—"
    empty = CandidatesModel()
    qtmodeltester.check(empty, force_py=True)
