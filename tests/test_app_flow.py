"""AppTest of the flow page: defaults, widget changes, chart data equal to the core's output, errors shown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig, explain
from gru_explainer.flow import cell_config, decay_profile, decay_rates, describe_cell_path, hidden_rows, sweep

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "flow.py")


def chart_datasets(element) -> list[pd.DataFrame]:
    """The named datasets of a vega_lite_chart element (what the browser receives), as DataFrames."""
    return [convert_arrow_bytes_to_pandas_df(d.data.data) for d in element.proto.datasets]


def chart_spec(element) -> dict:
    return json.loads(element.proto.spec)


def dataset_with(element, *columns: str) -> pd.DataFrame:
    found = [df for df in chart_datasets(element) if set(columns) <= set(df.columns)]
    assert len(found) == 1, [list(df.columns) for df in chart_datasets(element)]
    return found[0]


def _run(config: ExplainConfig | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=90)
    if config is not None:
        at.session_state["gx_config"] = config
    return at.run()


def _assert_profile_matches(chart_rows: pd.DataFrame, cfg: ExplainConfig, cells: list[str], layer: int,
                            direction: str) -> None:
    """The chart's rows of each cell are the core's profile rows, per quantity (an LSTM's dL/dc_t too)."""
    for cell in cells:
        expected = decay_profile(explain(cell_config(cfg, cell)))
        top = int(expected.layer.max())
        expected = expected[(expected.layer == min(layer, top)) & (expected.direction == direction)]
        mine = chart_rows[chart_rows.cell == cell]
        assert set(mine.quantity) == set(expected.quantity) == (
            {"hidden_state", "cell_state"} if cell == "lstm" else {"hidden_state"})
        for quantity in set(expected.quantity):
            got = mine[mine.quantity == quantity].sort_values("distance")
            want = expected[expected.quantity == quantity].sort_values("distance")
            assert list(got.t) == list(want.t)
            assert list(got.distance) == list(want.distance)
            np.testing.assert_allclose(got.norm.astype(float), want.norm, rtol=1e-12)


def test_defaults_run_and_chart_data_matches_the_core() -> None:
    at = _run()
    assert not at.exception
    assert not at.error
    charts = at.get("vega_lite_chart")
    assert len(charts) == 4  # the decay, the step Jacobians (two panels), the sweep
    cfg = ExplainConfig()
    rows = dataset_with(charts[0], "cell", "distance", "norm")
    assert list(dict.fromkeys(rows.cell)) == ["gru", "lstm", "rnn_tanh", "rnn_relu"]
    _assert_profile_matches(rows, cfg, ["gru", "lstm", "rnn_tanh", "rnn_relu"], layer=1, direction="forward")
    spec = chart_spec(charts[0])
    assert "title" not in spec  # the page shows it as text, which wraps at any width
    assert any(m.value.startswith("**How the hidden-state gradient") for m in at.markdown)
    assert any(layer.get("encoding", {}).get("y", {}).get("scale", {}).get("type") == "log"
               for layer in spec["layer"])
    # The step Jacobians: the measured norm and its bound per cell, as the core computes them.
    from gru_explainer.flow import jacobian_profile

    jac_rows = dataset_with(charts[1], "cell", "curve", "log10")
    for cell in ["gru", "lstm", "rnn_tanh", "rnn_relu"]:
        expected = jacobian_profile(explain(cell_config(cfg, cell)), 1, "forward")
        got = jac_rows[(jac_rows.cell == cell) & jac_rows.curve.str.startswith("measured")].sort_values("distance")
        np.testing.assert_allclose(got.log10.astype(float), expected.sort_values("distance").log10_state_norm,
                                   rtol=1e-9)
    assert sum(c.value.startswith(("GRU:", "LSTM:", "RNN")) and "σ_max is" in c.value for c in at.caption) == 4
    # Metrics: the fitted rate of dL/dh_t per cell, equal to the core's fit.
    rates = decay_rates(sweep(cfg, cells=["gru", "lstm", "rnn_tanh", "rnn_relu"]))
    top = hidden_rows(rates[rates.layer == 1]).set_index("cell").rate
    assert [m.label for m in at.metric] == ["GRU", "LSTM", "RNN tanh", "RNN relu"]
    for metric, cell in zip(at.metric, ["gru", "lstm", "rnn_tanh", "rnn_relu"], strict=True):
        assert metric.value == f"×{top[cell]:.3g}"
    # The sweep: rates for weight scales 0.5, 1, 2 at T = 10.
    sweep_rows = dataset_with(charts[3], "cell", "weight_scale", "rate")
    assert sorted(set(sweep_rows.weight_scale)) == [0.5, 1.0, 2.0]
    expected = hidden_rows(decay_rates(sweep(cfg, weight_scales=[0.5, 1.0, 2.0])))
    expected = expected[expected.layer == 1]
    merged = sweep_rows.merge(expected, on=["cell", "seq_len", "weight_scale"], suffixes=("", "_core"))
    assert len(merged) == len(expected) == 12
    np.testing.assert_allclose(merged.rate, merged.rate_core, rtol=1e-12)
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 4


def test_lstm_shows_the_cell_state_line_and_its_rate_beside_the_hidden_state() -> None:
    """The decay chart of an LSTM carries its dL/dc_t line (the core's numbers) with its own dash and shape, and the
    page says how fast each decays, with the core's fitted rates."""
    cfg = ExplainConfig(cell="lstm")
    at = _run(cfg)
    at.multiselect(key="flow.cells").set_value(["lstm", "gru"]).run()
    assert not at.exception and not at.error
    chart = at.get("vega_lite_chart")[0]
    rows = dataset_with(chart, "cell", "distance", "norm")
    _assert_profile_matches(rows, cfg, ["lstm", "gru"], layer=1, direction="forward")
    cell_rows = rows[rows.quantity == "cell_state"]
    assert set(cell_rows.series_label) == {"LSTM dL/dc_t"} and set(cell_rows.cell) == {"lstm"}
    spec = json.dumps(chart_spec(chart))
    assert '"LSTM dL/dc_t"' in spec
    # The page's sentence: the core's rates of both quantities of the top layer.
    rates = decay_rates(decay_profile(explain(cfg)))
    top = rates[rates.layer == 1].set_index("quantity").rate
    expected = describe_cell_path(rates[rates.layer == 1])
    sentences = [c.value for c in at.caption if "‖dL/dc_t‖" in c.value and c.value.startswith("LSTM:")]
    assert sentences == expected
    assert f"×{top.cell_state:.3g} per step" in sentences[0] and f"‖dL/dh_t‖ ×{top.hidden_state:.3g}" in sentences[0]
    assert any("dL/dc_t" in h.value for h in at.subheader)
    # Only dL/dh_t in the metrics and the sweep: one per cell.
    assert [m.label for m in at.metric] == ["LSTM", "GRU"]
    sweep_rows = dataset_with(at.get("vega_lite_chart")[3], "cell", "weight_scale", "rate")
    assert len(sweep_rows) == 2 * 3 and len(at.dataframe[0].value) == 2


def test_without_an_lstm_no_cell_state_is_drawn_or_described() -> None:
    at = _run()
    at.multiselect(key="flow.cells").set_value(["gru", "rnn_tanh"]).run()
    assert not at.exception and not at.error
    rows = dataset_with(at.get("vega_lite_chart")[0], "cell", "distance", "norm")
    assert set(rows.quantity) == {"hidden_state"}
    intro = at.caption[0].value
    assert intro.startswith("Backpropagation through time") and "For an LSTM the chart also draws" in intro
    assert not any("dL/dc_t" in c.value for c in at.caption[1:])  # no chart subtitle or sentence about it
    assert not any("dL/dc_t" in h.value for h in at.subheader)


def test_lstm_bidirectional_reverse_direction_and_target() -> None:
    cfg = ExplainConfig(cell="lstm", bidirectional=True, target="y[:, 3].sum()")
    at = _run(cfg)
    assert not at.exception and not at.error
    at.radio(key="flow_direction").set_value("reverse").run()
    at.multiselect(key="flow.cells").set_value(["lstm", "gru"]).run()
    assert not at.exception and not at.error
    rows = dataset_with(at.get("vega_lite_chart")[0], "cell", "distance", "norm")
    assert set(rows.direction) == {"reverse"}
    _assert_profile_matches(rows, cfg, ["lstm", "gru"], layer=1, direction="reverse")
    # Reverse direction reads y[:, 3]: processed from T-1 down to 0, so steps 3..9 reach the target.
    assert sorted(set(rows.t)) == list(range(3, 10))


def test_widget_changes_rerun_cleanly_and_go_to_the_url() -> None:
    at = _run()
    at.selectbox(key="flow_layer").set_value(0).run()
    assert not at.exception
    rows = dataset_with(at.get("vega_lite_chart")[0], "cell", "distance", "norm")
    assert set(rows.layer) == {0}
    at.selectbox(key="flow_layer").set_value(1).run()  # the top layer: its read step is the target's
    at.multiselect(key="flow.scale").set_value([0.25, 4.0]).run()
    at.multiselect(key="flow.T").set_value([5, 20]).run()
    at.multiselect(key="flow.cells").set_value(["rnn_tanh", "answer_gru"]).run()
    assert not at.exception and not at.error
    sweep_rows = dataset_with(at.get("vega_lite_chart")[3], "cell", "weight_scale", "rate")
    assert set(zip(sweep_rows.cell, sweep_rows.seq_len, sweep_rows.weight_scale, strict=True)) == {
        (c, t, w) for c in ["rnn_tanh", "answer_gru"] for t in [5, 20] for w in [0.25, 4.0]}
    assert at.query_params["flow.cells"] == "rnn_tanh,answer_gru"
    assert at.query_params["flow.T"] == "5,20"
    # Sidebar change (shared config): the weight scale of the comparison follows it.
    at.number_input(key="gx_weight_scale").set_value(2.0).run()
    assert not at.exception
    rows = dataset_with(at.get("vega_lite_chart")[0], "cell", "distance", "norm")
    assert set(rows.weight_scale) == {2.0}


def test_url_values_restore_the_view_and_bad_ones_fall_back() -> None:
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.query_params["flow.cells"] = "lstm"
    at.query_params["flow.scale"] = "0.5,banana"
    at.run()
    assert not at.exception
    assert at.multiselect(key="flow.cells").value == ["lstm"]
    assert at.multiselect(key="flow.scale").value == [0.5, 1.0, 2.0]
    assert any("flow.scale" in w.value for w in at.warning)


def test_bad_target_for_some_cells_shows_errors_and_no_exception() -> None:
    at = _run(ExplainConfig(target="c_n.sum()"))
    assert not at.exception
    messages = [e.value for e in at.error]
    assert any("c_n" in m and "GRU" in m for m in messages)
    rows = dataset_with(at.get("vega_lite_chart")[0], "cell", "distance", "norm")
    assert set(rows.cell) == {"lstm"}  # the LSTM still has c_n and is drawn


def test_too_large_config_shows_the_core_error() -> None:
    at = _run(ExplainConfig(seq_len=512, batch_size=64, hidden_size=256))
    assert not at.exception
    assert at.error and "state-size limit" in at.error[0].value
    assert not at.get("vega_lite_chart")


@pytest.mark.parametrize("scales", [[], [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0]])
def test_empty_or_oversized_sweeps_are_refused_politely(scales: list[float]) -> None:
    at = _run()
    at.multiselect(key="flow.T").set_value([5, 10, 20, 50]).run()
    at.multiselect(key="flow.scale").set_value(scales).run()
    assert not at.exception and not at.error
    assert len(at.get("vega_lite_chart")) == 3  # the sweep is refused; the decay and the Jacobians stay
    assert at.info or at.warning


def test_sweep_over_the_work_budget_is_refused() -> None:
    at = _run(ExplainConfig(hidden_size=256, batch_size=32, num_layers=4, seq_len=10))
    assert not at.exception and not at.error
    at.multiselect(key="flow.T").set_value([10, 200]).run()
    assert not at.exception and not at.error
    assert any("state elements" in w.value for w in at.warning)
    assert len(at.get("vega_lite_chart")) == 3
