"""Altair charts of a `GradientReport`: pure functions from its DataFrames to `alt.Chart` (no Streamlit here).

Exact zeros and non-finite values are never dropped silently. On a log scale a zero cannot be drawn, so every
exactly-zero step is drawn as an explicit marker on an "exactly 0" floor line below the smallest non-zero value
(square: no graph path, a structural zero; triangle: underflow, zero although a path exists), and every
non-finite step (inf/NaN) as a cross on a ceiling line above the largest value. Charts carry only aggregate rows
(one per quantity, layer, direction and step), plus time × unit cells for heatmaps (binned over time when large).
"""

from __future__ import annotations

import json
import math

import altair as alt
import numpy as np
import pandas as pd

from .config import CELL_LABELS

SERIES = {
    "stacked_output": "y.grad (stacked output y)",
    "hidden_state": "dL/dh_t (hidden state, total)",
    "cell_state": "dL/dc_t (cell state, total)",
    "input": "dL/dx_t (input)",
}
"""Legend labels per frame quantity: what each curve is, in the seed's notation."""
SERIES_COLORS = {
    "stacked_output": "#e45756",
    "hidden_state": "#4c78a8",
    "cell_state": "#54a24b",
    "input": "#b279a2",
}
"""Mid-luminance colours that read on both the light and the dark theme."""
STATUS = {
    "value": "non-zero",
    "structural": "exactly 0: no path (structural)",
    "underflow": "exactly 0: underflow",
    "nonfinite": "non-finite (inf/NaN)",
}
STATUS_SHAPES = {"value": "circle", "structural": "square", "underflow": "triangle-down", "nonfinite": "cross"}
MAX_HEATMAP_CELLS = 6_000
"""Per heatmap panel; longer sequences are binned over time (each bin shows its value of largest magnitude)."""
ALTAIR_MAX_ROWS = 5_000
"""Altair's default row limit for DataFrames; larger data sets are embedded as inline values instead."""


PAD = alt.AutoSizeParams(type="pad")
"""Explicit autosize: without it Streamlit sizes a layered chart with "fit" and can squeeze its plot to a sliver."""

def chart_data(rows: pd.DataFrame) -> pd.DataFrame | alt.InlineData:
    """`rows` as chart data: the DataFrame itself when small, else inline JSON values (past Altair's row limit).

    Keeps every chart serialisable with `to_dict()` under Altair's default data transformer, for any config.
    """
    if len(rows) <= ALTAIR_MAX_ROWS:
        return rows
    return alt.InlineData(values=json.loads(rows.to_json(orient="records")))


def _fmt(value: float) -> str:
    """A number for tooltips, keeping inf / NaN readable (JSON cannot carry them as numbers)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _status(rows: pd.DataFrame) -> pd.Series:
    """One status key per row: nonfinite beats zero flags; zeros split into structural and underflow."""
    status = pd.Series("value", index=rows.index, dtype=object)
    status[rows["exactly_zero"] & rows["structurally_zero"]] = "structural"
    status[rows["exactly_zero"] & ~rows["structurally_zero"]] = "underflow"
    status[rows["nonfinite"]] = "nonfinite"
    return status


def norm_rows(frame: pd.DataFrame, log_scale: bool, quantities: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Per-step norm rows ready to plot: `plot_y` puts zeros on a floor (log scale) and non-finite on a ceiling.

    Columns: quantity, series, layer, layer_label, direction, t, norm (finite or None), norm_text, max_abs_text,
    status, status_label, plot_y (where the marker goes), line_y (None where the line must break).
    """
    quantities = quantities or ("stacked_output", "hidden_state", "cell_state")
    rows = frame[frame["quantity"].isin(quantities)].copy()
    status = _status(rows)
    norm = rows["norm"].astype(float)
    finite = np.isfinite(norm.to_numpy())
    positive = norm[finite & (norm.to_numpy() > 0)]
    floor, ceiling = _floor_ceiling(positive, log_scale)
    plot_y = norm.where(status == "value")
    plot_y[status.isin(["structural", "underflow"])] = floor
    plot_y[status == "nonfinite"] = ceiling
    out = pd.DataFrame({
        "quantity": rows["quantity"],
        "series": rows["quantity"].map(SERIES),
        "layer": rows["layer"].astype(int),
        "layer_label": "layer " + rows["layer"].astype(int).astype(str),
        "direction": rows["direction"],
        "t": rows["t"].astype(int),
        "norm": [float(v) if math.isfinite(v) else None for v in norm],
        "norm_text": [_fmt(v) for v in norm],
        "max_abs_text": [_fmt(float(v)) for v in rows["max_abs"]],
        "status": status,
        "status_label": status.map(STATUS),
        "plot_y": plot_y.astype(float),
        "line_y": [float(v) if s == "value" or (s != "nonfinite" and not log_scale) else None
                   for v, s in zip(plot_y, status, strict=True)],
    })
    out.attrs.update(floor=floor, ceiling=ceiling)
    return out.reset_index(drop=True)


def _floor_ceiling(positive: pd.Series, log_scale: bool) -> tuple[float, float]:
    """Where zero markers (floor) and non-finite markers (ceiling) sit on the value axis."""
    if positive.empty:
        return (1e-3, 10.0) if log_scale else (0.0, 1.0)
    low, high = float(positive.min()), float(positive.max())
    if log_scale:
        return 10.0 ** (math.floor(math.log10(low)) - 1), 10.0 ** (math.ceil(math.log10(high)) + 1)
    return 0.0, high * 1.15


def _tooltip(extra: list[alt.Tooltip] | None = None) -> list[alt.Tooltip]:
    return [
        alt.Tooltip("series:N", title="gradient"),
        *(extra or []),
        alt.Tooltip("t:Q", title="step t"),
        alt.Tooltip("norm_text:N", title="L2 norm"),
        alt.Tooltip("max_abs_text:N", title="max |value|"),
        alt.Tooltip("status_label:N", title="status"),
    ]


def _series_scale(quantities: list[str]) -> alt.Scale:
    return alt.Scale(domain=[SERIES[q] for q in quantities], range=[SERIES_COLORS[q] for q in quantities])


def _status_scale(statuses: list[str]) -> alt.Scale:
    """Marker shapes for the statuses present (so the legend lists only what the chart shows)."""
    statuses = statuses or ["value"]
    return alt.Scale(domain=[STATUS[k] for k in statuses], range=[STATUS_SHAPES[k] for k in statuses])


def _norm_layers(rows: pd.DataFrame, log_scale: bool, y_title: str, extra_tooltip: list[alt.Tooltip] | None,
                 width: int, height: int, embed_data: bool) -> alt.LayerChart:
    """Line + status markers (+ the floor / ceiling guides) over `rows` (embedded, or supplied by a facet)."""
    quantities = [q for q in SERIES if q in set(rows["quantity"])]
    statuses = [k for k in STATUS if k in set(rows["status"])]
    # padding leaves room below the floor / zero line for the offset zero markers.
    y_scale = alt.Scale(type="log", padding=14) if log_scale else alt.Scale(type="linear", zero=True, padding=14)
    x = alt.X("t:Q", title="time step t", axis=alt.Axis(tickMinStep=1, format="d"))
    y = alt.Y("plot_y:Q", title=y_title, scale=y_scale)
    color = alt.Color("series:N", title="gradient", scale=_series_scale(quantities),
                      legend=alt.Legend(orient="top", labelLimit=260))
    shape = alt.Shape("status_label:N", title="marker", scale=_status_scale(statuses),
                      legend=alt.Legend(orient="top", labelLimit=260))
    base = (alt.Chart(chart_data(rows)) if embed_data else alt.Chart()).properties(width=width, height=height)
    line = base.mark_line(strokeWidth=2, invalid="break-paths-filter-domains").encode(
        x=x, y=alt.Y("line_y:Q", title=y_title, scale=y_scale), color=color, detail="series:N")
    marker = dict(size=60, filled=True, opacity=0.95)
    encoding = dict(x=x, y=y, color=color, shape=shape, tooltip=_tooltip(extra_tooltip))
    points = base.transform_filter(alt.FieldOneOfPredicate(field="status", oneOf=["value", "nonfinite"])).mark_point(
        **marker).encode(**encoding)
    layers: list[alt.Chart] = [line, points]
    # Exact zeros of different series would hide each other: each series gets its own row, a few pixels apart.
    for i, quantity in enumerate(quantities):
        zeros = base.transform_filter(
            f"datum.quantity == '{quantity}' && (datum.status == 'structural' || datum.status == 'underflow')")
        layers.append(zeros.mark_point(yOffset=5 * i, **marker).encode(**encoding))
    guide = base.mark_rule(strokeDash=[4, 4], color="gray", opacity=0.7)
    label = base.mark_text(align="left", baseline="bottom", dx=2, dy=-2, color="gray", fontSize=10)
    if log_scale and {"structural", "underflow"} & set(statuses):
        floor = alt.datum(rows.attrs["floor"])
        layers += [guide.encode(y=floor), label.encode(x=alt.value(0), y=floor, text=alt.value("exactly 0"))]
    if "nonfinite" in statuses:
        ceiling = alt.datum(rows.attrs["ceiling"])
        layers += [guide.encode(y=ceiling), label.encode(x=alt.value(0), y=ceiling, text=alt.value("inf / NaN"))]
    return alt.layer(*layers)


def gradient_norm_chart(frame: pd.DataFrame, log_scale: bool) -> alt.FacetChart:
    """Per-step gradient norm of y.grad vs dL/dh_t (and dL/dc_t), one panel per layer (rows) and direction."""
    rows = norm_rows(frame, log_scale)
    num_dirs = max(1, rows["direction"].nunique())
    y_title = "gradient norm" + (" (log scale)" if log_scale else "")
    layered = _norm_layers(rows, log_scale, y_title, [alt.Tooltip("layer_label:N", title="layer"),
                                                      alt.Tooltip("direction:N", title="direction")],
                           width=560 if num_dirs == 1 else 330, height=170, embed_data=False)
    return layered.facet(
        data=chart_data(rows),
        row=alt.Row("layer_label:N", title=None, sort="descending", header=alt.Header(labelAngle=0, labelAlign="left")),
        column=alt.Column("direction:N", title=None, sort=["forward", "reverse"]),
    ).properties(
        title=alt.Title("Where the gradient lands, per time step",
                        subtitle=["y.grad is the partial derivative of the stacked output; dL/dh_t is the total "
                                  "derivative the recurrence carries back through time.",
                                  "Norm = L2 over batch × units at each step; exact zeros and inf/NaN are marked."]),
    ).resolve_scale(y="shared")


def puzzle_chart(frame: pd.DataFrame, target: str = "y[:, -1].sum()") -> alt.LayerChart:
    """The puzzle's answer in one chart: per-step norm of y.grad vs dL/dh_t of the last layer (linear scale)."""
    last = int(frame.loc[frame["quantity"] == "hidden_state", "layer"].max())
    rows = norm_rows(frame[(frame["layer"] == last) & (frame["direction"] == "forward")], log_scale=False,
                     quantities=("stacked_output", "hidden_state"))
    y_title = "‖gradient‖ (L2 over batch × units)"
    return _norm_layers(rows, False, y_title, None, width=640, height=260, embed_data=True).properties(
        autosize=PAD,
        title=alt.Title("y.grad is zero before the read step; the hidden states h_t are not",
                        subtitle=f"Per-step gradient norm of target = {target}, "
                                 f"last layer ({last}): squares mark exact zeros with no graph path."),
    )


def input_grad_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Per-step norm of dL/dx_t: which inputs the target depends on (exact zeros marked, not hidden)."""
    rows = norm_rows(frame, log_scale=False, quantities=("input",))
    base = alt.Chart(chart_data(rows)).properties(width=560, height=160)
    x = alt.X("t:O", title="time step t", axis=alt.Axis(labelOverlap=True))
    y_title = "‖dL/dx_t‖ (L2 over batch × features)"
    bars = base.mark_bar(color=SERIES_COLORS["input"]).encode(
        x=x, y=alt.Y("line_y:Q", title=y_title, scale=alt.Scale(zero=True)), tooltip=_tooltip())
    markers = base.transform_filter(alt.datum.status != "value").mark_point(size=70, filled=True).encode(
        x=x, y=alt.Y("plot_y:Q", title=y_title),
        shape=alt.Shape("status_label:N", title="marker", legend=alt.Legend(orient="top"),
                        scale=_status_scale([k for k in STATUS if k != "value" and k in set(rows["status"])])),
        color=alt.value(SERIES_COLORS["input"]), tooltip=_tooltip())
    return alt.layer(bars, markers).properties(
        autosize=PAD,
        title=alt.Title("Which inputs the target depends on", subtitle="Norm of the input gradient per step; "
                        "a structural zero means x_t cannot influence the target (causality, direction)."),
    )


def heatmap_rows(unit_frame: pd.DataFrame, max_cells: int = MAX_HEATMAP_CELLS) -> tuple[pd.DataFrame, int]:
    """Heatmap cells (quantity, series, t, unit, value, value_text), binned over time to at most `max_cells`.

    Returns the rows and the bin width in steps (1 = no binning); a bin shows its value of largest magnitude.
    """
    frame = unit_frame.copy()
    steps = int(frame["t"].max()) + 1 if len(frame) else 1
    units = int(frame["unit"].max()) + 1 if len(frame) else 1
    stride = max(1, math.ceil(steps * units / max_cells))
    if stride > 1:
        frame["t"] = (frame["t"] // stride) * stride
        frame["_key"] = frame["value"].abs().fillna(np.inf)
        idx = frame.groupby(["quantity", "t", "unit"], sort=False)["_key"].idxmax()
        frame = frame.loc[idx].drop(columns="_key")
    values = frame["value"].astype(float)
    return pd.DataFrame({
        "quantity": frame["quantity"].to_numpy(),
        "series": frame["quantity"].map(SERIES).to_numpy(),
        "t": frame["t"].astype(int).to_numpy(),
        "unit": frame["unit"].astype(int).to_numpy(),
        "value": [v if math.isfinite(v) else None for v in values],
        "value_text": [_fmt(v) for v in values],
        "nonfinite": ~np.isfinite(values.to_numpy()),
    }), stride


def unit_heatmap(unit_frame: pd.DataFrame) -> alt.FacetChart:
    """Time × hidden unit heatmaps, one panel per quantity, diverging colour centred on 0 (non-finite crossed)."""
    rows, stride = heatmap_rows(unit_frame)
    quantities = [q for q in SERIES if q in set(rows["quantity"])]
    tooltip = [alt.Tooltip("series:N", title="gradient"), alt.Tooltip("t:Q", title="step t"),
               alt.Tooltip("unit:Q", title="hidden unit"), alt.Tooltip("value_text:N", title="value")]
    x = alt.X("t:O", title="time step t" + (f" (bins of {stride})" if stride > 1 else ""),
              axis=alt.Axis(labelOverlap=True))
    y = alt.Y("unit:O", title="hidden unit", axis=alt.Axis(labelOverlap=True))
    base = alt.Chart().properties(width=300, height=260)
    cells = base.mark_rect().encode(
        x=x, y=y, tooltip=tooltip,
        color=alt.Color("value:Q", title="gradient value", scale=alt.Scale(scheme="redblue", domainMid=0),
                        legend=alt.Legend(orient="right", gradientLength=200)),
    )
    crosses = base.transform_filter(alt.datum.nonfinite).mark_point(shape="cross", color="black", filled=True).encode(
        x=x, y=y, tooltip=tooltip)
    subtitle = ("Diverging colour centred on 0 (white = exactly 0); crosses mark inf/NaN. "
                + (f"Each column shows the value of largest magnitude in {stride} steps." if stride > 1 else ""))
    return alt.layer(cells, crosses).facet(
        data=chart_data(rows), column=alt.Column("series:N", title=None, sort=[SERIES[q] for q in quantities]),
    ).properties(title=alt.Title("Gradient per time step and hidden unit", subtitle=subtitle.strip()))


# --- flow / devices charts ------------------------------------------------------------------------------------------
# Pages 3 (gradient flow through time) and 5 (devices & engines). Inputs are the DataFrames of
# `gru_explainer.flow` (decay_profile / sweep, decay_rates) and `gru_explainer.compare.compare`.

CELL_COLORS = {"gru": "#4c78a8", "lstm": "#54a24b", "rnn_tanh": "#f58518", "rnn_relu": "#e45756",
               "answer_gru": "#b279a2"}
ENGINE_COLORS = {"fused": "#4c78a8", "twin": "#f58518"}
DIFF_SERIES = {"hidden_grad_diff": "dL/dh_t (hidden_grad)", "stacked_grad_diff": "y.grad (stacked_grad)",
               "input_grad_diff": "dL/dx_t (input_grad)"}
FLOW_STATUS = {"value": "non-zero", "underflow": "exactly 0: underflow", "nonfinite": "non-finite (inf/NaN)"}
DIFF_STATUS = {"value": "non-zero", "zero": "exactly 0 (identical)", "nonfinite": "inf/NaN mismatch"}
DIFF_SHAPES = {DIFF_STATUS["value"]: "circle", DIFF_STATUS["zero"]: "triangle-down", DIFF_STATUS["nonfinite"]: "cross"}
FLOW_SHAPES = {"value": "circle", "underflow": "triangle-down", "nonfinite": "cross"}


def _cell_scale(cells: list[str]) -> alt.Scale:
    return alt.Scale(domain=[CELL_LABELS.get(c, c) for c in cells],
                     range=[CELL_COLORS.get(c, "#888888") for c in cells])


def decay_rows(profile: pd.DataFrame) -> pd.DataFrame:
    """Rows of the decay chart: one per (cell, layer, direction, step) with marker positions for zeros / inf.

    Columns: cell, cell_label, layer, direction, t, distance, norm (finite or None), norm_text, status,
    status_label, plot_y (zeros on a floor, non-finite on a ceiling, below / above every value), line_y
    (None where the line must break).
    """
    norm = profile["norm"].astype(float)
    status = pd.Series("value", index=profile.index, dtype=object)
    status[profile["exactly_zero"].astype(bool)] = "underflow"
    status[profile["nonfinite"].astype(bool)] = "nonfinite"
    finite = np.isfinite(norm.to_numpy())
    floor, ceiling = _floor_ceiling(norm[finite & (norm.to_numpy() > 0)], log_scale=True)
    plot_y = norm.where(status == "value")
    plot_y[status == "underflow"] = floor
    plot_y[status == "nonfinite"] = ceiling
    out = pd.DataFrame({
        "cell": profile["cell"].astype(str),
        "cell_label": profile["cell"].map(lambda c: CELL_LABELS.get(c, c)),
        "seq_len": profile["seq_len"].astype(int),
        "weight_scale": profile["weight_scale"].astype(float),
        "layer": profile["layer"].astype(int),
        "direction": profile["direction"].astype(str),
        "t": profile["t"].astype(int),
        "distance": profile["distance"].astype(int),
        "norm": [float(v) if math.isfinite(v) else None for v in norm],
        "norm_text": [_fmt(float(v)) for v in norm],
        "status": status,
        "status_label": status.map(FLOW_STATUS),
        "plot_y": plot_y.astype(float),
        "line_y": [float(v) if s == "value" else None for v, s in zip(plot_y, status, strict=True)],
    })
    out.attrs.update(floor=floor, ceiling=ceiling)
    return out.reset_index(drop=True)


def fit_rows(rates: pd.DataFrame, profile: pd.DataFrame) -> pd.DataFrame:
    """The fitted lines norm = 10**log10_intercept · rate**distance, over the distances of the fitted points."""
    rows = []
    for rate in rates.itertuples(index=False):
        if not (math.isfinite(rate.rate) and math.isfinite(rate.log10_intercept)):
            continue
        group = profile[(profile["cell"] == rate.cell) & (profile["layer"] == rate.layer)
                        & (profile["direction"] == rate.direction) & (profile["seq_len"] == rate.seq_len)
                        & (profile["weight_scale"] == rate.weight_scale)]
        norm = group["norm"].astype(float)
        used = group[np.isfinite(norm.to_numpy()) & (norm.to_numpy() > 0)]
        if used.empty:
            continue
        for d in (int(used["distance"].min()), int(used["distance"].max())):
            rows.append({"cell": rate.cell, "cell_label": CELL_LABELS.get(rate.cell, rate.cell), "distance": d,
                         "fit_y": 10.0 ** (rate.log10_intercept + rate.log10_rate * d),
                         "rate_text": f"{rate.rate:.4g}"})
    return pd.DataFrame(rows, columns=["cell", "cell_label", "distance", "fit_y", "rate_text"])


def decay_chart(profile: pd.DataFrame, rates: pd.DataFrame | None = None) -> alt.LayerChart:
    """‖dL/dh_t‖ vs distance from the target step, one line per cell on one log scale; zeros and inf/NaN marked.

    `profile` holds one layer and direction (and one seq_len / weight_scale) per cell; `rates` (decay_rates of
    it) adds the fitted geometric lines, dashed.
    """
    rows = decay_rows(profile)
    cells = list(dict.fromkeys(rows["cell"]))
    statuses = [k for k in FLOW_STATUS if k in set(rows["status"])]
    scale = alt.Scale(type="log", padding=14)
    y_title = "‖dL/dh_t‖ (L2 over batch × units, log scale)"
    x = alt.X("distance:Q", title="steps back from the target step (distance)",
              axis=alt.Axis(tickMinStep=1, format="d"))
    color = alt.Color("cell_label:N", title="cell", scale=_cell_scale(cells), legend=alt.Legend(orient="top"))
    tooltip = [alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("t:Q", title="step t"),
               alt.Tooltip("distance:Q", title="steps back"), alt.Tooltip("norm_text:N", title="‖dL/dh_t‖"),
               alt.Tooltip("status_label:N", title="status")]
    y_axis = alt.Axis(format="~g")
    base = alt.Chart(rows).properties(width=620, height=300)
    shape = alt.Shape("status_label:N", title="marker", legend=alt.Legend(orient="top"),
                      scale=alt.Scale(domain=[FLOW_STATUS[k] for k in statuses],
                                      range=[FLOW_SHAPES[k] for k in statuses]))
    encoding = dict(x=x, y=alt.Y("plot_y:Q", title=y_title, scale=scale, axis=y_axis), color=color, shape=shape,
                    tooltip=tooltip)
    marker = dict(size=50, filled=True, opacity=0.95)
    layers: list[alt.Chart] = [
        base.mark_line(strokeWidth=2, invalid="break-paths-filter-domains").encode(
            x=x, y=alt.Y("line_y:Q", title=y_title, scale=scale, axis=y_axis), color=color, detail="cell_label:N"),
        base.transform_filter(alt.datum.status == "value").mark_point(**marker).encode(**encoding),
    ]
    # Zeros (floor) and inf/NaN (ceiling) of different cells would hide each other: a few pixels apart per cell.
    for i, cell in enumerate(cells):
        special = base.transform_filter(f"datum.cell == '{cell}' && datum.status != 'value'")
        layers.append(special.mark_point(yOffset=5 * i - 5 * (len(cells) - 1) / 2, **marker).encode(**encoding))
    guide = base.mark_rule(strokeDash=[4, 4], color="gray", opacity=0.7)
    label = base.mark_text(align="left", baseline="bottom", dx=2, dy=-2, color="gray", fontSize=10)
    if "underflow" in statuses:
        floor = alt.datum(rows.attrs["floor"])
        layers += [guide.encode(y=floor), label.encode(x=alt.value(0), y=floor, text=alt.value("exactly 0"))]
    if "nonfinite" in statuses:
        ceiling = alt.datum(rows.attrs["ceiling"])
        layers += [guide.encode(y=ceiling), label.encode(x=alt.value(0), y=ceiling, text=alt.value("inf / NaN"))]
    if rates is not None:
        fits = fit_rows(rates, profile)
        if not fits.empty:
            layers.append(alt.Chart(fits).mark_line(strokeDash=[6, 4], strokeWidth=1.2, opacity=0.8).encode(
                x=x, y=alt.Y("fit_y:Q", title=y_title, scale=scale, axis=y_axis), color=color, detail="cell_label:N",
                tooltip=[alt.Tooltip("cell_label:N", title="cell"),
                         alt.Tooltip("rate_text:N", title="fitted rate per step")]))
    return alt.layer(*layers).properties(
        autosize=PAD,
        title=alt.Title("How the hidden-state gradient changes with distance from the target step",
                        subtitle=["Solid: ‖dL/dh_t‖ per step; dashed: the fitted geometric decay norm ≈ C·rate^k. "
                                  "A straight line on this log scale means a constant per-step factor.",
                                  "Triangles on the floor are exact zeros (underflow); crosses on the ceiling are "
                                  "inf/NaN. Neither enters the fit."]))


def rate_chart(rates: pd.DataFrame) -> alt.LayerChart:
    """Fitted per-step rate vs weight scale, one line per cell (dash per sequence length), rate 1 marked."""
    rows = rates[np.isfinite(rates["rate"].astype(float))].copy()
    cells = list(dict.fromkeys(rows["cell"]))
    rows["cell_label"] = rows["cell"].map(lambda c: CELL_LABELS.get(c, c))
    rows["T"] = "T = " + rows["seq_len"].astype(int).astype(str)
    rows["rate_text"] = [f"{v:.4g}" for v in rows["rate"]]
    rows = rows[["cell", "cell_label", "T", "seq_len", "weight_scale", "layer", "direction", "rate", "rate_text",
                 "points"]]
    x = alt.X("weight_scale:Q", title="weight scale (× PyTorch's init range, log scale)",
              scale=alt.Scale(type="log", nice=False, padding=20), axis=alt.Axis(format="~g"))
    y = alt.Y("rate:Q", title="fitted rate per step (log scale; < 1 vanishes, > 1 explodes)",
              scale=alt.Scale(type="log", nice=False, padding=20), axis=alt.Axis(format="~g"))
    color = alt.Color("cell_label:N", title="cell", scale=_cell_scale(cells), legend=alt.Legend(orient="top"))
    dash = alt.StrokeDash("T:N", title="sequence length", legend=alt.Legend(orient="top"))
    tooltip = [alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("T:N", title="sequence length"),
               alt.Tooltip("weight_scale:Q", title="weight scale"), alt.Tooltip("rate_text:N", title="rate"),
               alt.Tooltip("points:Q", title="points fitted")]
    base = alt.Chart(rows).properties(width=620, height=260)
    line = base.mark_line(strokeWidth=2).encode(x=x, y=y, color=color, strokeDash=dash)
    points = base.mark_point(size=50, filled=True).encode(x=x, y=y, color=color, tooltip=tooltip)
    one = base.mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(1.0))
    return alt.layer(line, points, one).properties(
        autosize=PAD,
        title=alt.Title("Fitted per-step rate of the hidden-state gradient",
                        subtitle="The gray line is rate 1: the gradient keeps its size however far back it goes."))


def _device_rows(table: pd.DataFrame) -> pd.DataFrame:
    rows = table.copy()
    rows["run"] = rows["engine"] + " on " + rows["device"]
    return rows


def timing_chart(table: pd.DataFrame) -> alt.Chart:
    """Median wall time of `explain` per device and engine (horizontal bars)."""
    rows = _device_rows(table)[["run", "device", "engine", "engine_used", "time_ms"]]
    rows["time_text"] = [f"{v:.3g} ms" for v in rows["time_ms"]]
    return alt.Chart(rows).mark_bar().encode(
        x=alt.X("time_ms:Q", title="median wall time of explain() (ms)", scale=alt.Scale(zero=True)),
        y=alt.Y("run:N", title="engine on device", sort=list(rows["run"])),
        color=alt.Color("engine:N", title="engine", scale=alt.Scale(domain=list(ENGINE_COLORS),
                                                                   range=list(ENGINE_COLORS.values())),
                        legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("device:N", title="device"), alt.Tooltip("engine:N", title="engine"),
                 alt.Tooltip("engine_used:N", title="engine used"), alt.Tooltip("time_text:N", title="median time")],
    ).properties(width=560, height=alt.Step(26), autosize=PAD, title=alt.Title(
        "Time per explanation", subtitle="Model build, forward and gradients; median of the repeats after a warm-up."))


def difference_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Long rows (run, quantity, diff, status, plot_x, tolerance) of the max |difference| to the CPU twin."""
    rows = _device_rows(table)
    long = rows.melt(id_vars=["run", "device", "engine", "tolerance"], value_vars=list(DIFF_SERIES),
                     var_name="column", value_name="diff")
    diff = long["diff"].astype(float)
    status = pd.Series("value", index=long.index, dtype=object)
    status[diff == 0] = "zero"
    status[~np.isfinite(diff)] = "nonfinite"
    positive = pd.concat([diff[(diff > 0) & np.isfinite(diff)], long["tolerance"].astype(float)])
    floor, ceiling = _floor_ceiling(positive[positive > 0], log_scale=True)
    plot_x = diff.where(status == "value")
    plot_x[status == "zero"] = floor
    plot_x[status == "nonfinite"] = ceiling
    out = pd.DataFrame({
        "run": long["run"], "device": long["device"], "engine": long["engine"],
        "quantity": long["column"].map(DIFF_SERIES),
        "diff": [float(v) if math.isfinite(v) else None for v in diff],
        "diff_text": [_fmt(float(v)) for v in diff],
        "status": status.map(DIFF_STATUS),
        "plot_x": plot_x.astype(float),
        "tolerance": long["tolerance"].astype(float),
    })
    out.attrs.update(floor=floor, ceiling=ceiling)
    return out


def difference_chart(table: pd.DataFrame) -> alt.LayerChart:
    """Max |difference| to the CPU twin reference per run and gradient (log scale; exact zeros on a floor)."""
    rows = difference_rows(table)
    runs = list(dict.fromkeys(rows["run"]))
    x_scale = alt.Scale(type="log", padding=14)
    x = alt.X("plot_x:Q", title="max |difference| to the CPU twin (log scale)", scale=x_scale,
              axis=alt.Axis(format=".0e"))
    y = alt.Y("run:N", title="engine on device", sort=runs)
    base = alt.Chart(rows).properties(width=560, height=alt.Step(30))
    statuses = [k for k in DIFF_STATUS.values() if k in set(rows["status"])]
    encoding = dict(
        x=x, y=y,
        color=alt.Color("quantity:N", title="gradient", legend=alt.Legend(orient="top", labelLimit=260),
                        scale=alt.Scale(domain=list(DIFF_SERIES.values()), range=["#4c78a8", "#e45756", "#b279a2"])),
        shape=alt.Shape("status:N", title="marker", legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=statuses, range=[DIFF_SHAPES[k] for k in statuses])),
        tooltip=[alt.Tooltip("run:N", title="run"), alt.Tooltip("quantity:N", title="gradient"),
                 alt.Tooltip("diff_text:N", title="max |difference|"),
                 alt.Tooltip("tolerance:Q", title="tolerance", format=".2g")])
    # Equal values (often exact zeros) of the three gradients would hide each other: a few pixels apart.
    points = [base.transform_filter(alt.datum.quantity == label).mark_point(
        size=70, filled=True, opacity=0.9, yOffset=6 * (i - 1)).encode(**encoding)
        for i, label in enumerate(DIFF_SERIES.values())]
    tol = base.mark_tick(color="gray", thickness=2, size=22).encode(
        x=alt.X("tolerance:Q", scale=x_scale), y=y,
        tooltip=[alt.Tooltip("run:N", title="run"), alt.Tooltip("tolerance:Q", title="tolerance", format=".2g")])
    layers: list[alt.Chart] = [tol, *points]
    if (rows["status"] == DIFF_STATUS["zero"]).any():
        layers.append(base.mark_rule(strokeDash=[4, 4], color="gray", opacity=0.7).encode(
            x=alt.datum(rows.attrs["floor"])))
    return alt.layer(*layers).properties(autosize=PAD, title=alt.Title(
        "Do the engines and devices agree?",
        subtitle="Points: largest absolute difference per gradient; gray ticks: the tolerance. Exact zeros sit on "
                 "the dashed floor line."))
