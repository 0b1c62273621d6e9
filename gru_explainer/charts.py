"""Altair charts of a `GradientReport`: pure functions from its DataFrames to `alt.Chart` (no Streamlit here).

Exact zeros and non-finite values are never dropped silently. On a log scale a zero cannot be drawn, so every
exactly-zero step is drawn as an explicit marker on an "exactly 0" floor line below the smallest non-zero value
(square: no graph path, a structural zero; triangle: underflow, zero although a path exists), and every
non-finite step (inf/NaN) as a cross on a ceiling line above the largest value. Charts carry only aggregate rows
(one per quantity, layer, direction and step), plus time × unit cells for heatmaps (binned over time when large).
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

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
MAX_HEATMAP_CELLS = 30_000
"""Per heatmap panel; longer sequences are binned over time (each bin shows its value of largest magnitude)."""


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
    base = (alt.Chart(rows) if embed_data else alt.Chart()).properties(width=width, height=height)
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
        data=rows,
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
        title=alt.Title("y.grad is zero before the read step; the hidden states h_t are not",
                        subtitle=f"Per-step gradient norm of target = {target}, "
                                 f"last layer ({last}): squares mark exact zeros with no graph path."),
    )


def input_grad_chart(frame: pd.DataFrame) -> alt.LayerChart:
    """Per-step norm of dL/dx_t: which inputs the target depends on (exact zeros marked, not hidden)."""
    rows = norm_rows(frame, log_scale=False, quantities=("input",))
    base = alt.Chart(rows).properties(width=560, height=160)
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
        data=rows, column=alt.Column("series:N", title=None, sort=[SERIES[q] for q in quantities]),
    ).properties(title=alt.Title("Gradient per time step and hidden unit", subtitle=subtitle.strip()))
