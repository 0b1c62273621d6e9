"""Charts: serialisable specs whose data are the report's numbers; zeros stay visible on log scale, inf/NaN marked."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from gru_explainer import ExplainConfig, explain
from gru_explainer.charts import (
    MAX_HEATMAP_CELLS,
    STATUS,
    gradient_norm_chart,
    heatmap_rows,
    input_grad_chart,
    norm_rows,
    puzzle_chart,
    unit_heatmap,
)


@pytest.fixture(scope="module")
def lstm_report():
    return explain(ExplainConfig(cell="lstm", bidirectional=True, target="y[:, 3].sum()"))


@pytest.fixture(scope="module")
def special_frame(lstm_report) -> pd.DataFrame:
    """The LSTM frame with an underflow zero, an inf and a NaN injected (what vanishing/exploding runs produce)."""
    frame = lstm_report.frame.copy()
    hidden = frame.index[(frame.quantity == "hidden_state") & (frame.layer == 0) & (frame.direction == "forward")]
    frame.loc[hidden[8], ["norm", "max_abs", "exactly_zero", "underflow"]] = [0.0, 0.0, True, True]
    frame.loc[hidden[2], ["norm", "max_abs", "nonfinite"]] = [math.inf, math.inf, True]
    frame.loc[hidden[3], ["norm", "max_abs", "nonfinite"]] = [math.nan, math.nan, True]
    return frame


def spec(chart) -> dict:
    """The chart as Vega-Lite JSON; refuses NaN/inf, which JSON cannot carry."""
    return json.loads(json.dumps(chart.to_dict(), allow_nan=False))


def data(spec_dict: dict) -> pd.DataFrame:
    """The single data set of a spec (named in `datasets`, or inline values when large)."""
    if "datasets" in spec_dict:
        (rows,) = spec_dict["datasets"].values()
    else:
        rows = spec_dict["data"]["values"]
    return pd.DataFrame(rows)


def walk(node):
    """Every dict inside a spec."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_norm_chart_data_are_the_frame(lstm_report) -> None:
    for log_scale in (False, True):
        s = spec(gradient_norm_chart(lstm_report.frame, log_scale))
        rows = data(s)
        frame = lstm_report.frame[lstm_report.frame.quantity != "input"].reset_index(drop=True)
        assert len(rows) == len(frame)
        np.testing.assert_allclose(rows["norm"].to_numpy(float), frame["norm"].to_numpy(), rtol=1e-12)
        assert rows["t"].tolist() == frame["t"].tolist()
        assert set(rows["quantity"]) == {"stacked_output", "hidden_state", "cell_state"}
        assert s["facet"]["row"]["field"] == "layer_label" and s["facet"]["column"]["field"] == "direction"
        scales = [n["scale"].get("type") for n in walk(s) if n.get("field") in ("plot_y", "line_y") and "scale" in n]
        assert scales and set(scales) == {"log" if log_scale else "linear"}
        tooltips = [n for n in walk(s) if "tooltip" in n]
        assert tooltips and s["title"]["text"]


def test_log_scale_keeps_zeros_visible_and_distinguishes_them(special_frame) -> None:
    rows = norm_rows(special_frame, log_scale=True)
    positive = rows.loc[rows.status == "value", "plot_y"]
    zeros = rows[rows.status.isin(["structural", "underflow"])]
    assert len(zeros) > 0 and (zeros["plot_y"] > 0).all()  # drawable on a log axis
    assert (zeros["plot_y"] < positive.min()).all()  # below every real value, on the "exactly 0" floor
    assert set(zeros.status) == {"structural", "underflow"}
    assert STATUS["structural"] != STATUS["underflow"]
    s = spec(gradient_norm_chart(special_frame, log_scale=True))
    drawn = data(s)
    assert (drawn.status == "underflow").sum() == 1
    shape = next(n for n in walk(s) if n.get("field") == "status_label" and "scale" in n)
    shapes = dict(zip(shape["scale"]["domain"], shape["scale"]["range"], strict=True))
    assert len(set(shapes.values())) == len(shapes)  # structural, underflow, non-finite: different markers
    texts = [n.get("text", {}).get("value") for n in walk(s) if isinstance(n.get("text"), dict)]
    assert "exactly 0" in texts and "inf / NaN" in texts
    # every zero and non-finite row is drawn by a marker layer: no filter drops them
    filters = [n["filter"] for n in walk(s) if "filter" in n]
    assert any("structural" in json.dumps(f) for f in filters) and any("nonfinite" in json.dumps(f) for f in filters)


def test_non_finite_values_are_marked_not_dropped(special_frame) -> None:
    for log_scale in (False, True):
        rows = norm_rows(special_frame, log_scale)
        bad = rows[rows.status == "nonfinite"]
        assert sorted(bad.norm_text) == ["NaN", "inf"]
        assert bad["norm"].isna().all()
        assert (bad["plot_y"] == rows.attrs["ceiling"]).all()
        assert rows.attrs["ceiling"] > rows.loc[rows.status == "value", "plot_y"].max()
        assert bad["line_y"].isna().all()


def test_linear_scale_draws_zeros_at_zero(lstm_report) -> None:
    rows = norm_rows(lstm_report.frame, log_scale=False)
    zeros = rows[rows.status == "structural"]
    assert len(zeros) and (zeros.plot_y == 0).all() and (zeros.line_y == 0).all()


def test_heatmap_is_diverging_around_zero(lstm_report) -> None:
    unit_frame = lstm_report.unit_frame(1, 1, batch=1)
    s = spec(unit_heatmap(unit_frame))
    color = next(n for n in walk(s) if n.get("field") == "value" and "scale" in n)
    assert color["scale"] == {"scheme": "redblue", "domainMid": 0}
    assert s["facet"]["column"]["field"] == "series"
    rows = data(s)
    assert len(rows) == len(unit_frame)
    np.testing.assert_allclose(rows["value"].to_numpy(float), unit_frame["value"].to_numpy(), rtol=1e-12)
    assert set(rows["quantity"]) == {"stacked_output", "hidden_state", "cell_state"}


def test_heatmap_marks_non_finite_and_bins_long_sequences() -> None:
    cells = pd.DataFrame({"quantity": "hidden_state", "t": np.repeat(np.arange(120), 100),
                          "unit": np.tile(np.arange(100), 120), "value": np.linspace(-1, 1, 12_000)})
    cells.loc[5, "value"] = math.inf
    rows, stride = heatmap_rows(cells)
    assert stride == 2 and len(rows) <= MAX_HEATMAP_CELLS
    assert rows.loc[(rows.t == 0) & (rows.unit == 5), "value_text"].item() == "inf"  # a bin keeps its extreme
    assert rows["nonfinite"].sum() == 1 and rows.loc[rows.nonfinite, "value_text"].item() == "inf"
    s = spec(unit_heatmap(cells))
    assert "bins of 2" in json.dumps(s)


@pytest.mark.slow
def test_largest_hosted_config_serialises() -> None:
    """At the hosted limits every chart still serialises under Altair's default data transformer."""
    report = explain(ExplainConfig(cell="lstm", num_layers=4, bidirectional=True, hidden_size=256, seq_len=256,
                                   batch_size=1, target="y[:, 0].sum()"))
    for chart in (gradient_norm_chart(report.frame, True), unit_heatmap(report.unit_frame(3, 1)),
                  input_grad_chart(report.frame), puzzle_chart(report.frame)):
        assert len(data(spec(chart))) > 0
    assert len(data(spec(gradient_norm_chart(report.frame, True)))) == (2 + 4 * 2 * 2) * 256


def test_input_chart(lstm_report) -> None:
    s = spec(input_grad_chart(lstm_report.frame))
    rows = data(s)
    inputs = lstm_report.frame[lstm_report.frame.quantity == "input"]
    assert len(rows) == lstm_report.config.seq_len
    np.testing.assert_allclose(rows["norm"].to_numpy(float), inputs["norm"].to_numpy(), rtol=1e-12)
    assert s["title"]["text"]


def test_input_chart_marks_structural_zeros() -> None:
    report = explain(ExplainConfig(target="y[:, 4].sum()"))  # unidirectional: x_t for t > 4 cannot matter
    rows = data(spec(input_grad_chart(report.frame)))
    assert rows.loc[rows.t > 4, "status"].eq("structural").all() and rows.loc[rows.t <= 4, "status"].eq("value").all()


def test_puzzle_chart_is_the_seed_answer() -> None:
    report = explain(ExplainConfig.preset("seed-secondmodel"))
    s = spec(puzzle_chart(report.frame, report.config.target))
    rows = data(s)
    assert set(rows["quantity"]) == {"stacked_output", "hidden_state"} and set(rows["layer"]) == {1}
    stacked = rows[rows.quantity == "stacked_output"].set_index("t")
    hidden = rows[rows.quantity == "hidden_state"].set_index("t")
    assert (stacked.loc[:8, "status"] == "structural").all() and stacked.loc[9, "status"] == "value"
    assert (hidden["status"] == "value").all()
    np.testing.assert_allclose(hidden["norm"].to_numpy(float), report.hidden_grad[1, 0].double().norm(dim=(0, 2)))


def test_specs_compile_and_render_in_vega(lstm_report, special_frame) -> None:
    """Every chart renders with the real Vega-Lite compiler (catches specs Altair accepts but Vega rejects)."""
    vlc = pytest.importorskip("vl_convert")
    cases = [(gradient_norm_chart(special_frame, True), ["Where the gradient lands", "exactly 0", "inf / NaN"]),
             (gradient_norm_chart(special_frame, False), ["Where the gradient lands", "inf / NaN"]),
             (unit_heatmap(lstm_report.unit_frame(0, 1)), ["Gradient per time step and hidden unit"]),
             (input_grad_chart(lstm_report.frame), ["Which inputs the target depends on"]),
             (puzzle_chart(lstm_report.frame), ["y.grad is zero before the read step"])]
    for chart, texts in cases:
        svg = vlc.vegalite_to_svg(json.dumps(chart.to_dict()))
        assert svg.startswith("<svg")
        for text in texts:
            assert text in svg, text
