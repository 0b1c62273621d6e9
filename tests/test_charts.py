"""Charts: serialisable specs whose data are the report's numbers; zeros stay visible on log scale, inf/NaN marked."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from gru_explainer import ExplainConfig, explain
from gru_explainer.charts import (
    MAX_HEATMAP_CELLS,
    SERIES,
    STATUS,
    STATUS_SHAPES,
    _band_px,
    gradient_norm_chart,
    heatmap_domain,
    heatmap_rows,
    input_grad_chart,
    norm_rows,
    page_layout,
    puzzle_chart,
    unit_heatmap,
)
from gru_explainer.explain import Limits


@pytest.fixture(scope="module")
def lstm_report():
    return explain(ExplainConfig(cell="lstm", bidirectional=True, target="y[:, 3].sum()"))


@pytest.fixture(scope="module")
def underflow_report():
    """float32 tanh RNN at T = 400: early dL/dh_t are 0 in float32 but have true magnitudes down to ~1e-88."""
    return explain(ExplainConfig(cell="rnn_tanh", hidden_size=32, seq_len=400, batch_size=2, dtype="float32",
                                 target="y[:, -1].sum()"), limits=Limits.local())


@pytest.fixture(scope="module")
def special_frame(lstm_report) -> pd.DataFrame:
    """The LSTM frame with one row of every kind a vanishing / exploding / dead run produces."""
    frame = lstm_report.frame.copy()
    hidden = frame.index[(frame.quantity == "hidden_state") & (frame.layer == 0) & (frame.direction == "forward")]
    cols = ["norm", "max_abs", "log10_norm", "log10_max_abs", "exactly_zero", "underflow", "nonfinite", "zero_cause"]
    frame.loc[hidden[8], cols] = [0.0, 0.0, -50.0, -50.5, True, True, False, "underflow"]
    frame.loc[hidden[7], cols] = [0.0, 0.0, -math.inf, -math.inf, True, False, False, "zero_on_path"]
    frame.loc[hidden[2], cols] = [math.inf, math.inf, 45.0, 44.0, False, False, True, ""]
    frame.loc[hidden[3], cols] = [math.nan, math.nan, math.nan, math.nan, False, False, True, ""]
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


def marker_shapes(s: dict) -> dict[str, str]:
    """The marker legend's label -> shape."""
    shape = next(n for n in walk(s) if n.get("field") == "marker" and "scale" in n)
    return dict(zip(shape["scale"]["domain"], shape["scale"]["range"], strict=True))


def point_layers(s: dict) -> list[dict]:
    """Every point layer of a spec, in drawing order (later ones are drawn on top)."""
    return [n for n in walk(s) if isinstance(n.get("mark"), dict) and n["mark"].get("type") == "point"]


def band_scale(s: dict) -> dict:
    """The pixel-space scale of the zero / inf-NaN bands."""
    return next(n["scale"] for n in walk(s) if n.get("field") == "_band_px")


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


def test_log_scale_draws_true_magnitudes_and_bands(special_frame) -> None:
    rows = norm_rows(special_frame, log_scale=True)
    by_status = {k: g for k, g in rows.groupby("status")}
    assert set(by_status) == {"value", "structural", "zero_on_path", "underflow", "overflow", "nonfinite"}
    # underflow and overflow at their true magnitudes, on the value axis, with the range lines drawn
    assert by_status["underflow"].plot_y.item() == pytest.approx(1e-50, rel=1e-12)
    assert by_status["overflow"].plot_y.item() == pytest.approx(1e45, rel=1e-12)
    assert by_status["underflow"].band_row.isna().all() and by_status["overflow"].band_row.isna().all()
    labels = [text for _, text in rows.attrs["limits"]]
    assert labels == ["below float32's range", "above float32's range"]
    low, high = rows.attrs["domain"]
    assert low < 1e-50 and high > 1e45
    # exact zeros in the zero band (rows 0..), undefined values in the band above (-1): never on the value axis
    for status in ("structural", "zero_on_path"):
        assert (by_status[status].band_row >= 0).all()
        assert by_status[status].line_y.isna().all()
    assert (by_status["nonfinite"].band_row == -1).all()
    assert by_status["value"].band_row.isna().all()
    assert sorted(by_status["nonfinite"].norm_text.tolist() + by_status["overflow"].norm_text.tolist()) == \
        ["NaN", "inf"]
    assert by_status["overflow"].true_text.item() == "1e+45"


def test_zero_marks_sit_in_their_band(special_frame) -> None:
    """The band scale maps rows to pixels below the plot (zeros) and above it (inf/NaN), outside the value axis."""
    for log_scale in (True, False):
        s = spec(gradient_norm_chart(special_frame, log_scale))
        height = next(n["height"] for n in walk(s) if "height" in n)
        scale = band_scale(s)
        assert scale["domain"] == scale["range"]  # identity: the band rows are pixels
        calc = next(n["calculate"] for n in walk(s) if n.get("as") == "_band_px")
        top, first, step = map(int, re.fullmatch(
            r"datum\.band_row < 0 \? (-?\d+) : (\d+) \+ (\d+) \* datum\.band_row", calc).groups())
        rows = data(s)
        assert set(rows.band_row.dropna()) == {-1, *range(3)}  # inf/NaN above; y.grad, dL/dh_t, dL/dc_t below
        for band_row in rows.band_row.dropna().unique():
            px = top if band_row < 0 else first + step * band_row
            assert px == _band_px(int(band_row), height)
            assert (px > height) if band_row >= 0 else (px < 0)
            assert scale["domain"][0] <= px <= scale["domain"][1]
        # the value-axis layers leave band rows out; the band layer draws exactly them
        filters = [json.dumps(n["filter"]) for n in walk(s) if "filter" in n]
        assert any("!isValid(datum.band_row)" in f for f in filters) and any(
            f == '"isValid(datum.band_row)"' for f in filters)
        axis = next(n["axis"] for n in walk(s) if n.get("field") == "_band_px")
        assert axis["orient"] == "right" and "exactly 0" in axis["labelExpr"] and "inf / NaN" in axis["labelExpr"]


def test_each_cause_gets_its_own_shape(special_frame) -> None:
    s = spec(gradient_norm_chart(special_frame, log_scale=True))
    shapes = marker_shapes(s)
    assert len(set(shapes.values())) == len(shapes)
    for status in ("structural", "zero_on_path", "underflow", "overflow", "nonfinite"):
        label = STATUS[status].format(dtype="float32")
        assert shapes[label] == STATUS_SHAPES[status]
    assert {"y.grad", "dL/dh_t", "dL/dc_t"} <= set(shapes)  # series shapes, redundant with colour
    rows = data(s)
    for status in ("structural", "zero_on_path", "underflow", "overflow", "nonfinite"):
        assert set(rows.loc[rows.status == status, "marker"]) == {STATUS[status].format(dtype="float32")}


def test_underflow_points_are_drawn_at_their_true_magnitudes(underflow_report) -> None:
    frame = underflow_report.frame
    assert (frame.zero_cause == "underflow").any()
    s = spec(gradient_norm_chart(frame, log_scale=True, dtype="float32"))
    rows = data(s)
    hidden = frame[frame.quantity != "input"].reset_index(drop=True)
    under = (hidden.zero_cause == "underflow").to_numpy()
    assert (rows.status[under] == "underflow").all() and rows.band_row[under].isna().all()
    np.testing.assert_allclose(np.log10(rows.plot_y[under].to_numpy(float)), hidden.log10_norm[under], rtol=1e-9)
    np.testing.assert_allclose(np.log10(rows.line_y[under].to_numpy(float)), hidden.log10_norm[under], rtol=1e-9)
    assert (rows.plot_y[under] < np.finfo(np.float32).tiny).all()
    assert "below float32's range" in json.dumps(s)
    assert norm_rows(frame, True).attrs["dtype"] == "float32"  # inferred: float64 would have held these values


def test_linear_scale_draws_nothing_below_zero(special_frame, lstm_report) -> None:
    for frame in (special_frame, lstm_report.frame):
        for chart in (gradient_norm_chart(frame, False), puzzle_chart(frame), input_grad_chart(frame)):
            s = spec(chart)
            rows = data(s)
            for column in ("plot_y", "line_y"):
                values = rows[column].dropna().to_numpy(float)
                assert (values >= 0).all(), column
            value_scales = [n["scale"] for n in walk(s) if n.get("field") in ("plot_y", "line_y") and "scale" in n]
            assert value_scales and all(sc["domainMin"] == 0 and "padding" not in sc for sc in value_scales)
            assert not [n for n in walk(s) if "yOffset" in n]  # no marker pushed below the zero line
    rows = norm_rows(lstm_report.frame, log_scale=False)
    zeros = rows[rows.status == "structural"]
    assert len(zeros) and (zeros.line_y == 0).all() and (zeros.band_row >= 0).all()


def _assert_ygrad_on_top(s: dict, read_steps: list[int]) -> None:
    """y.grad's point layer is drawn after dL/dh_t's, larger and hollow; at the read steps both sit on the axis."""
    layers = point_layers(s)
    quantity_of = [next((m.group(1) for n in layer.get("transform", []) if isinstance(n.get("filter"), str)
                         for m in [re.fullmatch(r"\(datum\.quantity === '(\w+)'\)", n["filter"])] if m), None)
                   for layer in layers]
    ygrad, hidden = quantity_of.index("stacked_output"), quantity_of.index("hidden_state")
    assert ygrad > hidden
    assert layers[ygrad]["mark"]["filled"] is False and layers[ygrad]["mark"]["size"] > layers[hidden]["mark"]["size"]
    shapes = marker_shapes(s)
    assert shapes["y.grad"] != shapes["dL/dh_t"]
    rows = data(s)
    for t in read_steps:
        here = rows[(rows.t == t) & rows.quantity.isin(["stacked_output", "hidden_state"])]
        assert here.band_row.isna().all() and set(here.marker) == {"y.grad", "dL/dh_t"}


def test_ygrad_stays_visible_at_the_read_step() -> None:
    report = explain(ExplainConfig.preset("seed-secondmodel"))
    s = spec(puzzle_chart(report.frame, report.config.target))
    _assert_ygrad_on_top(s, [9])
    rows = data(s)
    at9 = rows[rows.t == 9].set_index("quantity")
    assert at9.loc["stacked_output", "plot_y"] == pytest.approx(at9.loc["hidden_state", "plot_y"])  # they coincide
    subtitle = " ".join(s["title"]["subtitle"])
    assert "non-zero only at t = 9, where it equals dL/dh_t" in subtitle and "exactly 0 at t = 0–8" in subtitle
    for log_scale in (False, True):
        last = report.frame[(report.frame.quantity == "hidden_state")]
        _assert_ygrad_on_top(spec(gradient_norm_chart(report.frame, log_scale)), [int(last.t.max())])


def test_puzzle_subtitle_follows_the_numbers() -> None:
    report = explain(ExplainConfig.preset("seed-secondmodel").replace(target="y[:, 4].sum()"))
    subtitle = " ".join(spec(puzzle_chart(report.frame, report.config.target))["title"]["subtitle"])
    assert "non-zero only at t = 4, where it equals dL/dh_t" in subtitle
    assert "exactly 0 at t = 0–3, 5–9" in subtitle


def test_heatmap_is_diverging_and_symmetric_around_zero(lstm_report) -> None:
    unit_frame = lstm_report.unit_frame(1, 1, batch=1)
    s = spec(unit_heatmap(unit_frame))
    color = next(n for n in walk(s) if n.get("field") == "value" and "scale" in n)
    m = float(unit_frame["value"].abs().max())
    assert color["scale"]["domain"] == pytest.approx([-m, m]) and color["scale"]["domainMid"] == 0
    assert color["legend"]["orient"] == "bottom"  # below the panels: it never adds width on the right
    assert s["facet"]["column"]["field"] == "series"
    rows = data(s)
    assert len(rows) == len(unit_frame)
    np.testing.assert_allclose(rows["value"].to_numpy(float), unit_frame["value"].to_numpy(), rtol=1e-12)
    assert set(rows["quantity"]) == {"stacked_output", "hidden_state", "cell_state"}
    assert heatmap_domain(pd.DataFrame({"value": [0.0, None]})) == [-1.0, 1.0]


def test_heatmap_log_magnitude_uses_true_magnitudes(underflow_report) -> None:
    unit_frame = underflow_report.unit_frame(0, 0, 0)
    assert (unit_frame["value"] == 0).any()  # underflowed in float32
    rows, stride = heatmap_rows(unit_frame)
    s = spec(unit_heatmap(unit_frame, log_magnitude=True))
    color = next(n for n in walk(s) if n.get("field") == "log10_magnitude" and "scale" in n)
    drawn = data(s)
    assert color["scale"]["domain"] == pytest.approx([drawn.log10_magnitude.min(), drawn.log10_magnitude.max()])
    assert drawn.log10_magnitude.min() < -80  # far below float32's range, still coloured
    if stride == 1:
        np.testing.assert_allclose(drawn.log10_magnitude.to_numpy(float), unit_frame.log10_magnitude, rtol=1e-12)
    else:  # each bin keeps its largest true magnitude
        binned = unit_frame.assign(t=unit_frame.t // stride * stride).groupby(["quantity", "t", "unit"],
                                                                            sort=False).log10_magnitude.max()
        got = drawn.set_index(["quantity", "t", "unit"]).log10_magnitude
        np.testing.assert_allclose(got.loc[binned.index].to_numpy(float), binned.to_numpy(), rtol=1e-12)


def test_lstm_heatmap_fits_the_explorer_with_its_legend() -> None:
    """Three panels + legend render within the explorer's wide content width (legend below, never cut)."""
    vlc = pytest.importorskip("vl_convert")
    report = explain(ExplainConfig(cell="lstm"))
    for log_magnitude in (False, True):
        svg = vlc.vegalite_to_svg(json.dumps(unit_heatmap(report.unit_frame(1, 0), log_magnitude).to_dict()))
        width = float(re.search(r'<svg[^>]*width="([\d.]+)"', svg).group(1))
        assert width <= 900, width
        assert "gradient value" in svg or "log10" in svg


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


def test_heatmap_crosses_every_cell_without_a_true_size() -> None:
    """Log colours use the true size: a value with none is crossed, whether it is inf/NaN in the dtype or a finite
    number autograd's rules gave through inf/NaN forward states; inf with a true size is coloured, 0 is gray."""
    report = explain(ExplainConfig(cell="rnn_relu", num_layers=1, weight_scale=5.0, seq_len=200))
    rows, stride = heatmap_rows(report.unit_frame(0, 0), max_cells=10**6)
    assert stride == 1
    hidden = rows[rows.quantity == "hidden_state"]
    magnitude = report.log10_magnitude("hidden_state")[0, 0, 0].numpy()  # [T, H] of batch item 0
    undefined = np.isnan(magnitude)
    assert undefined.any() and np.isfinite(report.hidden_grad[0, 0, 0].numpy()[undefined]).any()
    expected = undefined | np.isposinf(magnitude)
    assert hidden.sort_values(["t", "unit"])["nonfinite"].to_numpy().tolist() == expected.flatten().tolist()
    s = json.dumps(spec(unit_heatmap(report.unit_frame(0, 0), log_magnitude=True)))
    assert "Crosses mark values with no true size" in s


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
    cases = [(gradient_norm_chart(special_frame, True), ["Where the gradient lands", "exactly 0", "inf / NaN",
                                                         "below float32's range", "above float32's range"]),
             (gradient_norm_chart(special_frame, False), ["Where the gradient lands", "inf / NaN", "exactly 0"]),
             (unit_heatmap(lstm_report.unit_frame(0, 1)), ["Gradient per time step and hidden unit"]),
             (unit_heatmap(lstm_report.unit_frame(0, 1), log_magnitude=True), ["log10 |gradient value|"]),
             (input_grad_chart(lstm_report.frame), ["Which inputs the target depends on"]),
             (puzzle_chart(lstm_report.frame), ["y.grad is zero before the read step"])]
    for chart, texts in cases:
        svg = vlc.vegalite_to_svg(json.dumps(chart.to_dict()))
        assert svg.startswith("<svg")
        for text in texts:
            assert text in svg, text


def test_decay_rows_use_true_magnitudes_and_the_zero_band() -> None:
    """With the profile's log10_norm / zero_cause / side, underflow is drawn at its true size and exact zeros sit
    in the band; an older profile (no log10_norm) still works, its zeros in the band."""
    from gru_explainer.charts import decay_chart, decay_rows

    base = pd.DataFrame({"cell": "gru", "seq_len": 6, "weight_scale": 1.0, "layer": 0, "direction": "forward",
                         "t": [5, 4, 3, 2, 1, 0], "distance": [0, 1, 2, 3, 4, -1],
                         "norm": [1.0, 0.1, 0.0, 0.0, math.nan, 0.5],
                         "relative": 1.0, "exactly_zero": [False, False, True, True, False, False],
                         "underflow": [False, False, True, False, False, False],
                         "nonfinite": [False, False, False, False, True, False]})
    extended = base.assign(log10_norm=[0.0, -1.0, -50.0, -math.inf, math.nan, math.log10(0.5)],
                           zero_cause=["", "", "underflow", "zero_on_path", "", ""],
                           side=["back", "back", "back", "back", "back", "ahead"])
    rows = decay_rows(extended)
    assert rows.status.tolist() == ["value", "value", "underflow", "zero_on_path", "nonfinite", "value"]
    assert rows.plot_y[2] == pytest.approx(1e-50) and math.isnan(rows.band_row[2])
    assert rows.true_line_y[2] == pytest.approx(1e-50)
    assert rows.band_row[3] == 0 and rows.band_row[4] == -1
    assert rows.side.tolist()[-1] == "ahead" and rows.distance.tolist()[-1] == -1
    s = spec(decay_chart(extended))
    assert "below float32's range" in json.dumps(s) and "negative: steps ahead" in json.dumps(s)
    old = decay_rows(base)
    assert old.status.tolist() == ["value", "value", "underflow", "zero_on_path", "nonfinite", "value"]
    assert old.band_row[2] == 0 and old.band_row[3] == 0 and old.band_row[4] == -1  # no true size: in the band
    assert (old.plot_y[[2, 3]] < old.plot_y[old.status == "value"].min()).all()
    spec(decay_chart(base))


def test_jacobian_chart_shows_the_measured_norm_and_its_bound() -> None:
    from gru_explainer.charts import jacobian_chart, jacobian_rows
    from gru_explainer.flow import jacobian_profile

    report = explain(ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=8, seq_len=12, dtype="float64"))
    frame = jacobian_profile(report, 0, "forward")
    rows = jacobian_rows(frame)
    assert set(rows.curve) == {"measured ‖dL/ds_t‖", "bound: read-step norm × Π σ_max"}
    measured = rows[rows.curve.str.startswith("measured")].sort_values("distance")
    np.testing.assert_allclose(measured.log10, frame.sort_values("distance").log10_state_norm, rtol=1e-12)
    spec = jacobian_chart(frame).to_dict()
    assert len(spec["vconcat"]) == 2 and json.dumps(spec)


# --- page layout: every chart fills its container, facets become panels ---------------------------------------------

def _walk_nodes(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_nodes(value)


def _assert_fluid(panel: dict) -> None:
    """A single or layered view whose width is the container's; no fixed width anywhere inside."""
    assert "facet" not in panel and panel["width"] == "container"
    assert panel["autosize"] == {"type": "fit-x", "contains": "padding"}
    inner = [n for n in _walk_nodes(panel) if n is not panel and isinstance(n.get("width"), int | float)]
    assert not inner, "a fixed inner width would keep the chart from shrinking to a phone's column"
    assert "title" not in panel  # the page shows the title as text that wraps


def test_page_layout_splits_facets_into_fluid_panels(lstm_report) -> None:
    """One panel per layer × direction (top layer first), each over exactly its own rows; together all the rows."""
    chart = spec(gradient_norm_chart(lstm_report.frame, log_scale=True))
    layout = page_layout(chart)
    assert layout["title"] == chart["title"]["text"] and layout["subtitle"] == chart["title"]["subtitle"]
    labels = [[label for label, _ in row] for row in layout["rows"]]
    assert labels == [["layer 1 · forward", "layer 1 · reverse"], ["layer 0 · forward", "layer 0 · reverse"]]
    total = 0
    for row in layout["rows"]:
        for label, panel in row:
            _assert_fluid(panel)
            rows = pd.DataFrame(panel["data"]["values"])
            layer, direction = label.split(" · ")
            assert set(rows["layer_label"]) == {layer} and set(rows["direction"]) == {direction}
            total += len(rows)
    assert total == len(data(chart))
    # One legend for all panels: the first draws it, the others none (the page aligns their plots' bottoms).
    legends = [[n for n in _walk_nodes(p) if "field" in n and isinstance(n.get("legend"), dict)]
               for row in layout["rows"] for _, p in row]
    assert legends[0] and not any(legends[1:]) and layout["align"] == "bottom"


def test_page_layout_heatmap_panels_share_the_symmetric_domain(lstm_report) -> None:
    chart = spec(unit_heatmap(lstm_report.unit_frame(1, 0)))
    layout = page_layout(chart)
    (row,) = layout["rows"]
    assert [label for label, _ in row] == [SERIES[q] for q in ("stacked_output", "hidden_state", "cell_state")]
    domains = {json.dumps(n["scale"]["domain"]) for _, p in row for n in _walk_nodes(p)
               if n.get("field") == "value" and "scale" in n}
    (domain,) = domains
    low, high = json.loads(domain)
    assert low == -high > 0 or low == -high
    assert layout["align"] == "top"  # the heatmap's legend is below its panel


@pytest.mark.parametrize("make", [
    lambda r: puzzle_chart(r.frame), lambda r: input_grad_chart(r.frame),
    lambda r: gradient_norm_chart(r.frame, False),
])
def test_page_layout_of_single_views_and_phone_legends(lstm_report, make) -> None:
    """A single view stays one panel that fills its container; legends get as many columns as fit and break long
    labels into lines on a phone-width plot (never cut)."""
    layout = page_layout(spec(make(lstm_report)))
    for row in layout["rows"]:
        for _, panel in row:
            _assert_fluid(panel)
            for legend in (n["legend"] for n in _walk_nodes(panel) if "field" in n and isinstance(n.get("legend"),
                                                                                                   dict)):
                assert "width <" in legend["labelExpr"] and "width <" in legend["labelLimit"]["expr"]


def test_fluid_panels_render_in_vega_at_phone_and_desktop_widths(lstm_report) -> None:
    """Each panel compiles and renders at a phone's and a desktop's column width, never wider than that."""
    vlc = pytest.importorskip("vl_convert")
    layout = page_layout(spec(gradient_norm_chart(lstm_report.frame, log_scale=True)))
    for width in (358, 900):
        for row in layout["rows"]:
            for _, panel in row:
                fixed = {**panel, "width": width}
                svg = vlc.vegalite_to_svg(json.dumps(fixed))
                drawn = float(re.search(r'<svg[^>]*width="([\d.]+)"', svg).group(1))
                assert drawn <= width + 1, (width, drawn)


@pytest.fixture(scope="module")
def lstm_gru_profile() -> pd.DataFrame:
    """The flow page's decay profile of an LSTM (with its dL/dc_t rows) beside a GRU, top layer."""
    from gru_explainer.flow import cell_config, decay_profile

    base = ExplainConfig(num_layers=1, hidden_size=8, seq_len=12, batch_size=2, dtype="float64")
    return pd.concat([decay_profile(explain(cell_config(base, cell))) for cell in ("lstm", "gru")],
                     ignore_index=True)


def _decay_encodings(chart_spec: dict, channel: str) -> list[dict]:
    return [n["encoding"][channel] for n in _walk_nodes(chart_spec)
            if isinstance(n.get("encoding"), dict) and isinstance(n["encoding"].get(channel), dict)]


def test_decay_chart_draws_the_lstm_cell_state_as_its_own_line(lstm_gru_profile) -> None:
    """dL/dc_t rows become the line "LSTM dL/dc_t": the LSTM's colour, a dash and a point shape of its own, the
    same log value axis, and a fitted line of its own; every plotted value is positive (log axis)."""
    from gru_explainer.charts import (
        CELL_COLORS,
        CELL_DASHES,
        CELL_SHAPES,
        CELL_STATE_DASH,
        CELL_STATE_SHAPE,
        decay_chart,
        decay_rows,
    )
    from gru_explainer.flow import decay_rates

    profile = lstm_gru_profile
    rows = decay_rows(profile)
    cell_rows = rows[rows.quantity == "cell_state"]
    expected = profile[profile.quantity == "cell_state"]
    assert set(cell_rows.series_label) == {"LSTM dL/dc_t"} and len(cell_rows) == len(expected) > 0
    np.testing.assert_allclose(cell_rows.norm.astype(float), expected.norm, rtol=1e-12)
    assert set(rows[rows.quantity == "hidden_state"].series_label) == {"LSTM", "GRU"}
    s = spec(decay_chart(profile, decay_rates(profile)))
    dashes = [e for e in _decay_encodings(s, "strokeDash") if e.get("field") == "series_label"]
    assert dashes
    for dash in dashes:
        by_label = dict(zip(dash["scale"]["domain"], dash["scale"]["range"], strict=True))
        assert by_label == {"LSTM": CELL_DASHES["lstm"], "LSTM dL/dc_t": CELL_STATE_DASH, "GRU": CELL_DASHES["gru"]}
        assert len({json.dumps(v) for v in by_label.values()}) == 3 and CELL_STATE_DASH != [1, 3]  # nor the fit's
    for color in (e for e in _decay_encodings(s, "color") if e.get("field") == "series_label"):
        by_label = dict(zip(color["scale"]["domain"], color["scale"]["range"], strict=True))
        assert by_label["LSTM"] == by_label["LSTM dL/dc_t"] == CELL_COLORS["lstm"] != by_label["GRU"]
    shapes = [e for e in _decay_encodings(s, "shape") if e.get("field") == "marker"]
    assert shapes
    for shape in shapes:
        by_label = dict(zip(shape["scale"]["domain"], shape["scale"]["range"], strict=True))
        assert by_label["LSTM dL/dc_t"] == CELL_STATE_SHAPE != by_label["LSTM"] == CELL_SHAPES["lstm"]
        assert CELL_STATE_SHAPE not in set(CELL_SHAPES.values()) | set(STATUS_SHAPES.values())
    values = [v for d in s["datasets"].values() for v in d]
    fits = {v["series_label"] for v in values if "fit_y" in v}
    assert fits == {"LSTM", "LSTM dL/dc_t", "GRU"}
    plotted = [v[k] for v in values for k in ("plot_y", "true_line_y", "fit_y") if v.get(k) is not None]
    assert plotted and min(plotted) > 0
    assert all(e["scale"]["type"] == "log" for e in _decay_encodings(s, "y")
               if e.get("field") in ("plot_y", "true_line_y", "fit_y"))
    assert "cell-state gradient" in s["title"]["text"] and any("‖dL/dc_t‖" in line for line in s["title"]["subtitle"])
    gru_only = spec(decay_chart(profile[profile.cell == "gru"]))
    assert "dL/dc_t" not in json.dumps(gru_only)


def test_decay_chart_puts_a_zero_cell_state_in_its_own_band_row(lstm_gru_profile) -> None:
    from gru_explainer.charts import decay_chart, decay_rows

    profile = lstm_gru_profile.copy()
    zero = profile.index[(profile.quantity == "cell_state")][3]
    profile.loc[zero, ["norm", "log10_norm", "exactly_zero", "zero_cause"]] = [0.0, -math.inf, True, "zero_on_path"]
    rows = decay_rows(profile)
    assert rows.attrs["band_labels"] == ["LSTM dL/dc_t = 0"]
    assert rows.band_row[zero] == 0 and rows.status[zero] == "zero_on_path"
    assert "LSTM dL/dc_t = 0" in json.dumps(spec(decay_chart(profile)))


def test_decay_chart_with_a_cell_state_fits_a_phone_and_a_desktop(lstm_gru_profile) -> None:
    """The LSTM's longer legend entries wrap: the panel renders no wider than a phone's or a desktop's column."""
    vlc = pytest.importorskip("vl_convert")
    from gru_explainer.charts import decay_chart
    from gru_explainer.flow import decay_rates

    layout = page_layout(spec(decay_chart(lstm_gru_profile, decay_rates(lstm_gru_profile))))
    [[(_, panel)]] = layout["rows"]
    _assert_fluid(panel)
    for width in (358, 900):
        svg = vlc.vegalite_to_svg(json.dumps({**panel, "width": width}))
        drawn = float(re.search(r'<svg[^>]*width="([\d.]+)"', svg).group(1))
        assert drawn <= width + 1, (width, drawn)
        assert "LSTM dL/dc_t" in svg


def test_dict_built_charts_serialise_as_altair_would(special_frame, lstm_gru_profile) -> None:
    """`VegaLiteChart` (the explorer's, puzzle and decay charts, built as dicts for speed) gives what Altair's own
    serialisation of the same spec and data gives: the rows sanitised alike (None for NaN / inf), each data set
    named in `datasets` by the same hash, the theme's config and $schema; and it validates against the schema."""
    import altair as alt

    from gru_explainer.charts import VegaLiteChart, _records, decay_chart, decay_rows, heatmap_rows

    unit_frame = explain(ExplainConfig(cell="lstm")).unit_frame(0, 0)
    cells, _ = heatmap_rows(unit_frame)
    for rows in (norm_rows(special_frame, True), norm_rows(special_frame, False), cells, decay_rows(lstm_gru_profile)):
        assert _records(rows) == alt.data_transformers.get()(rows)["values"]
    for chart, top in ((input_grad_chart(special_frame), alt.LayerChart), (unit_heatmap(unit_frame), alt.FacetChart),
                       (decay_chart(lstm_gru_profile), alt.LayerChart)):
        ours = chart.to_dict()
        theirs = top.from_dict({k: v for k, v in chart.spec.items() if k != "data"}, validate=False)
        theirs.data = chart.spec["data"]
        assert ours == theirs.to_dict()
        assert json.loads(chart.to_json()) == ours
    with pytest.raises(Exception, match="mark"):
        VegaLiteChart({"encoding": {"x": {"field": "t", "type": "quantitative"}}}).to_dict()


def test_dict_built_charts_do_not_import_altair() -> None:
    """Importing the charts module and serialising a dict-built chart (`to_dict(validate=False)`, as the pages do)
    leaves Altair unimported (it cost a cold server's first page ~0.45 s), and gives the same spec as with Altair
    imported: its defaults (schema URL, theme) are the ones `charts` assumes until then."""
    import subprocess
    import sys

    script = """
import json, sys
from gru_explainer import ExplainConfig, explain
from gru_explainer import charts
report = explain(ExplainConfig.preset("seed-secondmodel"))
before = charts.puzzle_chart(report.frame).to_dict(validate=False)
assert "altair" not in sys.modules, "altair was imported"
import altair as alt
assert charts.ALTAIR_SCHEMA_URL == alt.SCHEMA_URL
assert charts.ALTAIR_DEFAULT_THEME == alt.theme.get()()
assert charts.puzzle_chart(report.frame).to_dict(validate=False) == before
assert charts.pad() == alt.AutoSizeParams(type="pad")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
