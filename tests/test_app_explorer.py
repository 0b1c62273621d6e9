"""The explorer page under AppTest: defaults, widget changes, bad input, and chart data equal to explain()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig, explain

from .markdown import plain_text
from .vega import chart_spec, element_data, explorer_charts, joined

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "explorer.py")


def chart_data(element) -> tuple[dict, pd.DataFrame]:
    """The Vega-Lite spec of a chart element and its data."""
    return chart_spec(element), element_data(element)


charts = explorer_charts


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def at() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60)


def assert_charts_match(at: AppTest, cfg: ExplainConfig, layer: int | None = None, direction: int = 0,
                        batch: int = 0) -> None:
    """The charts show exactly what explain(cfg) returns: every norm row once (over the panels), the heatmap's
    cells of the chosen layer, direction and batch item, the input norms."""
    report = explain(cfg)
    groups = charts(at)
    assert len(groups["norm"]) == cfg.num_layers * cfg.num_directions and len(groups["input"]) == 1
    rows = joined(groups["norm"])
    key = ["quantity", "layer", "direction", "t"]
    expected = report.frame[report.frame.quantity != "input"].sort_values(key).reset_index(drop=True)
    rows = rows.sort_values(key).reset_index(drop=True)
    assert len(rows) == len(expected)
    assert rows[key].astype(str).values.tolist() == expected[key].astype(str).values.tolist()
    np.testing.assert_allclose(rows["norm"].to_numpy(float), expected["norm"].to_numpy(), rtol=1e-6, atol=1e-12)
    units = report.unit_frame(cfg.num_layers - 1 if layer is None else layer, direction, batch)
    rows = joined(groups["heatmap"])
    assert len(groups["heatmap"]) == units["quantity"].nunique() and len(rows) == len(units)
    rows = rows.set_index(["quantity", "t", "unit"]).loc[units.set_index(["quantity", "t", "unit"]).index]
    np.testing.assert_allclose(rows["value"].to_numpy(float), units["value"].to_numpy(), rtol=1e-6, atol=1e-12)
    rows = element_data(groups["input"][0])
    expected = report.frame[report.frame.quantity == "input"]
    np.testing.assert_allclose(rows["norm"].to_numpy(float), expected["norm"].to_numpy(), rtol=1e-6, atol=1e-12)


def test_defaults_on_first_load(at: AppTest) -> None:
    run(at)
    assert not at.error and not at.warning
    assert_charts_match(at, ExplainConfig())
    assert "y.grad" in at.markdown[-1].value or any("y.grad" in m.value for m in at.markdown)  # the verdict
    assert any("torch.autograd.grad" in c.value for c in at.code)  # the reproduce snippet
    assert at.get("download_button") and at.dataframe
    assert dict(at.query_params) == {}


def test_lstm_bidirectional_step_3(at: AppTest) -> None:
    run(at)
    at.selectbox(key="gx_cell").set_value("lstm")
    at.toggle(key="gx_bidirectional").set_value(True)
    at.text_input(key="gx_target").set_value("y[:, 3].sum()")
    run(at)
    assert not at.error
    cfg = ExplainConfig(cell="lstm", bidirectional=True, target="y[:, 3].sum()")
    assert_charts_match(at, cfg)
    assert at.selectbox(key="gx_target_preset").value.startswith("step k")
    assert at.number_input(key="gx_target_k").value == 3
    rows = joined(charts(at)["norm"])
    assert set(rows["quantity"]) == {"stacked_output", "hidden_state", "cell_state"}
    assert set(rows["direction"]) == {"forward", "reverse"}
    assert {k: at.query_params[k] for k in at.query_params} == {"cell": "lstm", "bidirectional": "true",
                                                                 "target": "y[:, 3].sum()"}
    # the heatmap follows its selectors
    at.selectbox(key="gx_hm_layer").set_value(0)
    at.selectbox(key="gx_hm_direction").set_value(1)
    at.number_input(key="gx_hm_batch").set_value(1)
    run(at)
    assert_charts_match(at, cfg, layer=0, direction=1, batch=1)


def test_log_toggle_switches_the_scale(at: AppTest) -> None:
    run(at)
    scales = lambda: {n["scale"]["type"] for e in charts(at)["norm"] for n in _walk(chart_spec(e))  # noqa: E731
                      if n.get("field") == "plot_y" and "scale" in n}
    assert scales() == {"log"}
    at.toggle(key="gx_log").set_value(False)
    run(at)
    assert scales() == {"linear"}


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.mark.parametrize(("target", "message"), [
    ("y[:, 3]", "scalar"),
    ("__import__('os').system('id')", "not allowed"),
    ("y[:, 99].sum()", "99"),
    ("y[:, -1].sum(", "syntax error"),
])
def test_bad_target_keeps_the_last_result_marked(at: AppTest, target: str, message: str) -> None:
    """A bad target shows the core's error, and under it the last valid result, marked as such (with the settings
    it was computed with); the URL keeps the last valid target; fixing the target clears both."""
    run(at)
    at.text_input(key="gx_target").set_value(target)
    run(at)
    assert len(at.error) == 1 and message in plain_text(at.error[0].value)
    (notice,) = at.warning
    assert "last valid result" in notice.value and "'y[:, -1].sum()'" in plain_text(notice.value)
    assert_charts_match(at, ExplainConfig())  # the last valid result, all of it
    assert "target" not in at.query_params  # an invalid target is never written to the URL
    assert at.text_input(key="gx_target").value == target  # what was typed stays in the box
    at.text_input(key="gx_target").set_value("y.sum()")
    run(at)
    assert not at.error and not at.warning
    assert_charts_match(at, ExplainConfig(target="y.sum()"))


def test_no_control_changes_by_itself(at: AppTest) -> None:
    """Typing y[:, 99].sum() at T = 10 sets step k to 99 (what was typed), never to 9; a shorter T keeps k too."""
    run(at)
    at.text_input(key="gx_target").set_value("y[:, 99].sum()")
    run(at)
    assert at.number_input(key="gx_target_k").value == 99
    assert at.selectbox(key="gx_target_preset").value.startswith("step k")
    assert at.text_input(key="gx_target").value == "y[:, 99].sum()"
    at.text_input(key="gx_target").set_value("y[:, 7].sum()")
    run(at)
    assert not at.error
    at.number_input(key="gx_seq_len").set_value(5)
    run(at)
    assert at.number_input(key="gx_target_k").value == 7 and at.text_input(key="gx_target").value == "y[:, 7].sum()"
    assert len(at.error) == 1 and "7" in at.error[0].value
    assert "seq_len = 10" in at.warning[0].value  # the result shown was computed at T = 10, and says so
    assert_charts_match(at, ExplainConfig(target="y[:, 7].sum()"))


def test_presets_fill_the_target(at: AppTest) -> None:
    run(at)
    at.selectbox(key="gx_target_preset").set_value("final cell state (LSTM): c_n.sum()")
    run(at)
    assert at.text_input(key="gx_target").value == "c_n.sum()"
    assert len(at.error) == 1 and "lstm" in at.error[0].value  # c_n exists only for LSTMs: the core says so
    at.selectbox(key="gx_cell").set_value("lstm")
    run(at)
    assert not at.error
    at.selectbox(key="gx_target_preset").set_value("step k: y[:, k].sum()")
    at.number_input(key="gx_target_k").set_value(-4)
    run(at)
    assert at.text_input(key="gx_target").value == "y[:, -4].sum()" and not at.error


def test_sizes_beyond_the_limits_show_the_core_error(at: AppTest) -> None:
    run(at)
    for key, value in [("gx_batch_size", 64), ("gx_seq_len", 512), ("gx_hidden_size", 256), ("gx_num_layers", 4)]:
        at.number_input(key=key).set_value(value)
    run(at)
    assert len(at.error) == 1 and "state-size limit" in at.error[0].value
    assert "last valid result" in at.warning[0].value
    assert_charts_match(at, ExplainConfig())  # the last valid result stays, marked


def test_query_params_round_trip(at: AppTest) -> None:
    query = {"cell": "rnn_relu", "num_layers": "3", "hidden_size": "8", "head": "linear", "seed": "5",
             "weight_scale": "0.5", "target": "out[:, -1].sum()"}
    for key, value in query.items():
        at.query_params[key] = value
    run(at)
    assert not at.error and not at.warning
    assert at.selectbox(key="gx_cell").value == "rnn_relu" and at.number_input(key="gx_num_layers").value == 3
    assert at.text_input(key="gx_target").value == "out[:, -1].sum()"
    assert {k: at.query_params[k] for k in at.query_params} == query
    cfg = ExplainConfig(cell="rnn_relu", num_layers=3, hidden_size=8, head="linear", seed=5, weight_scale=0.5,
                        target="out[:, -1].sum()")
    assert_charts_match(at, cfg)


def test_bad_query_params_fall_back_with_notices(at: AppTest) -> None:
    for key, value in {"num_layers": "99", "cell": "gpt", "target": "open('x')", "zzz": "1"}.items():
        at.query_params[key] = value
    run(at)
    assert len(at.warning) == 4 and not at.error
    assert_charts_match(at, ExplainConfig())
    assert dict(at.query_params) == {}  # the stale values are removed from the URL
    run(at)
    assert not at.warning  # notices are shown once


def test_answer_gru_disables_layers(at: AppTest) -> None:
    run(at)
    at.selectbox(key="gx_cell").set_value("answer_gru")
    run(at)
    assert not at.error and at.number_input(key="gx_num_layers").disabled
    assert_charts_match(at, ExplainConfig(cell="answer_gru", num_layers=1))


def test_an_invalid_shared_config_shows_the_error_not_a_traceback(at: AppTest) -> None:
    """Another page may store a config the widgets cannot show (e.g. hidden_size 0): the core's error, no crash."""
    at.session_state["gx_config"] = ExplainConfig(hidden_size=0, seq_len=10_000, cell="nope", device="tpu")
    run(at)
    assert at.error and "must be" in at.error[0].value


def test_heatmap_log_magnitude_toggle(at: AppTest) -> None:
    """The toggle switches the heatmap to the true log10 magnitudes of the same cells (the unit frame's)."""
    run(at)
    colour = lambda e: chart_spec(e)["layer"][0]["encoding"]["color"]["field"]  # noqa: E731
    assert {colour(e) for e in charts(at)["heatmap"]} == {"value"}
    at.toggle(key="gx_hm_log").set_value(True)
    run(at)
    assert not at.error
    heat = charts(at)["heatmap"]
    assert {colour(e) for e in heat} == {"log10_magnitude"}
    units = explain(ExplainConfig()).unit_frame(1, 0, 0)
    rows = joined(heat).set_index(["quantity", "t", "unit"]).loc[units.set_index(["quantity", "t", "unit"]).index]
    expected = units["log10_magnitude"].to_numpy()
    expected = np.where(np.isfinite(expected), expected, np.nan)  # exact zeros (-inf) are drawn gray, not coloured
    np.testing.assert_allclose(rows["log10_magnitude"].to_numpy(float), expected, rtol=1e-6)
    assert rows["zero"].to_numpy(bool).tolist() == (units["log10_magnitude"] == -np.inf).tolist()
    assert at.query_params["explorer.hm_log"] == "true"


VIEW_CASES = [
    ("gx_log", "toggle", False, "explorer.log", "false"),
    ("gx_hm_log", "toggle", True, "explorer.hm_log", "true"),
    ("gx_hm_layer", "selectbox", 0, "explorer.layer", "0"),
    ("gx_hm_batch", "number_input", 1, "explorer.batch", "1"),
    ("gx_target_k", "number_input", 4, "explorer.k", "4"),  # the default target (last step) does not imply k
]


@pytest.mark.parametrize(("key", "kind", "value", "param", "text"), VIEW_CASES)
def test_each_view_control_round_trips_through_the_url(key: str, kind: str, value, param: str, text: str) -> None:
    """Changing a view control writes its URL key; a fresh session opened on that URL shows the same value."""
    first = AppTest.from_file(PAGE, default_timeout=60)
    run(first)
    getattr(first, kind)(key=key).set_value(value)
    run(first)
    query = {k: first.query_params[k] for k in first.query_params}
    assert query == {param: text}
    fresh = AppTest.from_file(PAGE, default_timeout=60)
    for k, v in query.items():
        fresh.query_params[k] = v
    run(fresh)
    assert getattr(fresh, kind)(key=key).value == value and not fresh.warning
    assert {k: fresh.query_params[k] for k in fresh.query_params} == query


def test_the_whole_view_round_trips_through_the_url(at: AppTest) -> None:
    """Config, target (preset step k with its k), log toggle and the heatmap's layer, direction, batch item and log
    magnitude: a fresh session on the URL shows every control as it was."""
    run(at)
    at.selectbox(key="gx_cell").set_value("lstm")
    at.toggle(key="gx_bidirectional").set_value(True)
    run(at)
    at.selectbox(key="gx_target_preset").set_value("step k: y[:, k].sum()")
    at.number_input(key="gx_target_k").set_value(3)
    at.toggle(key="gx_log").set_value(False)
    at.selectbox(key="gx_hm_layer").set_value(0)
    at.selectbox(key="gx_hm_direction").set_value(1)
    at.number_input(key="gx_hm_batch").set_value(1)
    at.toggle(key="gx_hm_log").set_value(True)
    run(at)
    assert not at.error
    query = {k: at.query_params[k] for k in at.query_params}
    fresh = AppTest.from_file(PAGE, default_timeout=60)
    for k, v in query.items():
        fresh.query_params[k] = v
    run(fresh)
    assert not fresh.warning and not fresh.error
    assert fresh.selectbox(key="gx_target_preset").value.startswith("step k")
    assert fresh.number_input(key="gx_target_k").value == 3
    assert fresh.text_input(key="gx_target").value == "y[:, 3].sum()"
    assert fresh.toggle(key="gx_log").value is False and fresh.toggle(key="gx_hm_log").value is True
    assert fresh.selectbox(key="gx_hm_layer").value == 0 and fresh.selectbox(key="gx_hm_direction").value == 1
    assert fresh.number_input(key="gx_hm_batch").value == 1
    assert {k: fresh.query_params[k] for k in fresh.query_params} == query


def test_a_step_k_target_in_the_url_brings_its_k(at: AppTest) -> None:
    """A shared URL with target=y[:, 3].sum() shows preset "step k" with k = 3, not "custom" with k = 0."""
    at.query_params["target"] = "y[:, 3].sum()"
    run(at)
    assert at.selectbox(key="gx_target_preset").value.startswith("step k")
    assert at.number_input(key="gx_target_k").value == 3


def test_bad_view_params_fall_back_with_notices(at: AppTest) -> None:
    at.query_params["explorer.log"] = "maybe"
    at.query_params["explorer.batch"] = "-3"
    run(at)
    text = " ".join(w.value for w in at.warning)
    assert "explorer.log" in text and "explorer.batch" in text and not at.error
    assert at.toggle(key="gx_log").value is True and at.number_input(key="gx_hm_batch").value == 0


def test_downloads_name_the_config_and_carry_it() -> None:
    """The CSV and JSON are named after the config; the CSV's leading config.* columns carry it, target included."""
    import io
    import json

    import ui

    cfg = ExplainConfig(cell="lstm", bidirectional=True, seq_len=7, target="y[:, 2].sum()")
    report = explain(cfg)
    assert ui.file_stem(cfg) == "lstm_L2_bi_I3_H32_T7_B2_seed0_float32_ws1_y-2-sum"
    rows = pd.read_csv(io.BytesIO(ui.report_csv(report)))
    assert (rows["config.target"] == "y[:, 2].sum()").all() and (rows["config.seq_len"] == 7).all()
    assert (rows["config.cell"] == "lstm").all() and len(rows) == len(report.frame)
    np.testing.assert_allclose(rows["norm"], report.frame["norm"], rtol=1e-6)
    document = json.loads(ui.report_json(report))
    assert document["config"] == report.config.to_dict() and document["target"] == cfg.target


def test_glossary_defines_the_terms() -> None:
    import ui

    for term in ("twin", "adjoint", "anchor / read step", "TF32", "reserve space", "structural zero",
                 "zero on a path", "underflow"):
        assert len(ui.GLOSSARY[term]) > 40


def test_every_chart_draws_its_text_in_the_theme_colour(at: AppTest) -> None:
    """Each chart the page sends carries ui.CHART_TEXT_CONFIG: axis, legend and title text in the page's own text
    colour (currentColor, so it follows the light / dark theme), labels muted; tests/e2e/test_contrast.py measures
    the contrast in a browser."""
    import ui

    run(at)
    elements = at.get("vega_lite_chart")
    assert elements
    for element in elements:
        config = chart_spec(element)["config"]
        for section, wanted in ui.CHART_TEXT_CONFIG.items():
            assert wanted.items() <= config[section].items(), (section, config.get(section))


def test_themed_spec_keeps_a_charts_own_config() -> None:
    """themed_spec adds the text colours under the chart's own config: its settings win, the input is not changed."""
    import ui

    spec = {"mark": "line", "config": {"axis": {"labelColor": "red", "grid": False}, "legend": {"orient": "top"}}}
    themed = ui.themed_spec(spec)
    assert themed["config"]["axis"] == {**ui.CHART_TEXT_CONFIG["axis"], "labelColor": "red", "grid": False}
    assert themed["config"]["legend"]["orient"] == "top" and themed["config"]["legend"]["labelColor"] == "currentColor"
    assert themed["config"]["title"]["subtitleColor"] == "currentColor" and themed["mark"] == "line"
    assert spec["config"] == {"axis": {"labelColor": "red", "grid": False}, "legend": {"orient": "top"}}
