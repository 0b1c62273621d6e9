"""The explorer page under AppTest: defaults, widget changes, bad input, and chart data equal to explain()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig, explain

from .vega import chart_data as vega_chart_data
from .vega import chart_spec

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "explorer.py")


def chart_data(element) -> tuple[dict, pd.DataFrame]:
    """The Vega-Lite spec of a chart element and its data."""
    return chart_spec(element), vega_chart_data(element)


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def at() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60)


def assert_charts_match(at: AppTest, cfg: ExplainConfig, layer: int | None = None, direction: int = 0,
                        batch: int = 0) -> None:
    """The three charts show exactly what explain(cfg) returns."""
    report = explain(cfg)
    norms, heat, inputs = at.get("vega_lite_chart")
    _, rows = chart_data(norms)
    expected = report.frame[report.frame.quantity != "input"].reset_index(drop=True)
    assert len(rows) == len(expected)
    assert rows[["quantity", "layer", "direction", "t"]].astype(str).values.tolist() == \
        expected[["quantity", "layer", "direction", "t"]].astype(str).values.tolist()
    np.testing.assert_allclose(rows["norm"].to_numpy(float), expected["norm"].to_numpy(), rtol=1e-6, atol=1e-12)
    _, rows = chart_data(heat)
    units = report.unit_frame(cfg.num_layers - 1 if layer is None else layer, direction, batch)
    assert len(rows) == len(units)
    np.testing.assert_allclose(rows["value"].to_numpy(float), units["value"].to_numpy(), rtol=1e-6, atol=1e-12)
    _, rows = chart_data(inputs)
    expected = report.frame[report.frame.quantity == "input"]
    np.testing.assert_allclose(rows["norm"].to_numpy(float), expected["norm"].to_numpy(), rtol=1e-6, atol=1e-12)


def test_defaults_on_first_load(at: AppTest) -> None:
    run(at)
    assert not at.error and not at.warning
    assert len(at.get("vega_lite_chart")) == 3
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
    spec, rows = chart_data(at.get("vega_lite_chart")[0])
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
    scales = lambda: {n["scale"]["type"] for n in _walk(chart_data(at.get("vega_lite_chart")[0])[0])  # noqa: E731
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
def test_bad_target_shows_the_core_error(at: AppTest, target: str, message: str) -> None:
    run(at)
    at.text_input(key="gx_target").set_value(target)
    run(at)
    assert len(at.error) == 1 and message in at.error[0].value
    assert not at.get("vega_lite_chart")
    assert "target" not in at.query_params  # an invalid target is never written to the URL
    at.text_input(key="gx_target").set_value("y.sum()")
    run(at)
    assert not at.error and len(at.get("vega_lite_chart")) == 3


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
    assert not at.get("vega_lite_chart")


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
    _, heat, _ = at.get("vega_lite_chart")
    assert chart_spec(heat)["spec"]["layer"][0]["encoding"]["color"]["field"] == "value"
    at.toggle(key="gx_hm_log").set_value(True)
    run(at)
    assert not at.error
    _, heat, _ = at.get("vega_lite_chart")
    spec, rows = chart_data(heat)
    assert spec["spec"]["layer"][0]["encoding"]["color"]["field"] == "log10_magnitude"
    units = explain(ExplainConfig()).unit_frame(1, 0, 0)
    expected = units["log10_magnitude"].to_numpy()
    expected = np.where(np.isfinite(expected), expected, np.nan)  # exact zeros (-inf) are drawn gray, not coloured
    np.testing.assert_allclose(rows["log10_magnitude"].to_numpy(float), expected, rtol=1e-6)
    assert rows["zero"].to_numpy(bool).tolist() == (units["log10_magnitude"] == -np.inf).tolist()
