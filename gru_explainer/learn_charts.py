"""Charts of training runs (`gru_explainer.train.TrainResult`): pure functions DataFrame -> alt.Chart, no Streamlit.

The "Watch it learn" page draws them; each takes the concatenated frames of one or more runs (one per cell, a
`cell` column tells them apart). Gradient magnitudes are the TRUE ones (log10 from the rescaled adjoint), also
where float32 shows 0; exact zeros are never dropped silently (gray cells / a marker at the bottom, with a legend
entry), as in `charts`.
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from .charts import CELL_COLORS, CELL_DASHES, GUIDE_GRAY, _fmt_log10, chart_data, pad
from .config import CELL_LABELS

PROFILE_SERIES = {
    "hidden_state": "dL/dh_t (L2 over batch × units)",
    "cell_state": "dL/dc_t (L2 over batch × units)",
    "input_relevant": "dL/dx_t at relevant positions (per example)",
    "input_irrelevant": "dL/dx_t at irrelevant positions (per example)",
}
PROFILE_COLORS = {"hidden_state": "#0072B2", "cell_state": "#009E73", "input_relevant": "#D55E00",
                  "input_irrelevant": "#CC79A7"}
PROFILE_DASHES = {"hidden_state": [1, 0], "cell_state": [2, 2], "input_relevant": [1, 0], "input_irrelevant": [6, 3]}
ZERO_LABEL = "exactly 0 (drawn at the bottom)"
UNDERFLOW_LABEL = "0 in float32 (underflow): drawn at its true size"


def _label(cell: str) -> str:
    return CELL_LABELS.get(cell, cell)


def _cell_scale(cells: list[str]) -> alt.Scale:
    return alt.Scale(domain=[_label(c) for c in cells], range=[CELL_COLORS.get(c, GUIDE_GRAY) for c in cells])


def _cells(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["cell"].astype(str)))


def _log_label_expr() -> str:
    """Axis labels of a log10 axis as powers of ten ("1e-12")."""
    return "datum.value == 0 ? '1' : '1e' + format(datum.value, 'd')"


# --- (a) loss and accuracy over training ------------------------------------------------------------------------------


def learning_rows(history: pd.DataFrame, window: int) -> pd.DataFrame:
    """history (step, cell, loss, accuracy per step) with trailing means over `window` steps per cell, as chart rows."""
    rows = history.copy()
    for column in ("loss", "accuracy"):
        rows[f"{column}_smooth"] = rows.groupby("cell", sort=False)[column].transform(
            lambda s: s.rolling(window, min_periods=1).mean())
    rows["cell_label"] = rows["cell"].map(_label)
    positive = rows["loss_smooth"].where(rows["loss_smooth"] > 0)
    rows["loss_plot"] = positive.astype(float)
    return rows[["step", "cell", "cell_label", "loss", "accuracy", "loss_smooth", "accuracy_smooth", "loss_plot"]]


def learning_chart(history: pd.DataFrame, chance_loss: float, chance_accuracy: float,
                   window: int = 20) -> alt.VConcatChart:
    """Loss (log scale) and accuracy vs training step, one line per cell, against the chance level (dashed)."""
    rows = learning_rows(history, window)
    cells = _cells(rows)
    color = alt.Color("cell_label:N", title="cell", scale=_cell_scale(cells), legend=alt.Legend(orient="top"))
    dash = alt.StrokeDash("cell_label:N", title="cell", legend=alt.Legend(orient="top"), scale=alt.Scale(
        domain=[_label(c) for c in cells], range=[CELL_DASHES.get(c, [1, 0]) for c in cells]))
    x = alt.X("step:Q", title="training step", scale=alt.Scale(nice=False))
    tooltip = [alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("step:Q", title="step"),
               alt.Tooltip("loss_smooth:Q", title=f"loss (mean of {window} steps)", format=".4g"),
               alt.Tooltip("accuracy_smooth:Q", title=f"accuracy (mean of {window} steps)", format=".1%")]
    data = chart_data(rows)
    finite = rows["loss_plot"].dropna()
    low = min(float(finite.min()) if len(finite) else chance_loss, chance_loss) / 1.5
    high = max(float(finite.max()) if len(finite) else chance_loss, chance_loss) * 1.5
    loss_line = alt.Chart(data).mark_line(strokeWidth=2).encode(
        x=x, y=alt.Y("loss_plot:Q", title="loss (log scale)", scale=alt.Scale(type="log", domain=[low, high])),
        color=color, strokeDash=dash, tooltip=tooltip)
    chance = pd.DataFrame({"y": [chance_loss], "text": [f"chance level {chance_loss:.4g}"]})
    rule = alt.Chart(chance).mark_rule(strokeDash=[4, 4], color=GUIDE_GRAY).encode(y=alt.Y("y:Q"))
    label = alt.Chart(chance).mark_text(align="left", dx=4, dy=-6, color=GUIDE_GRAY).encode(
        y=alt.Y("y:Q"), x=alt.datum(float(rows["step"].min()) if len(rows) else 0.0), text="text:N")
    loss = alt.layer(loss_line, rule, label).properties(height=220, title=alt.Title(
        f"Loss (mean of the last {window} steps' batches)",
        subtitle=f"The dashed line is the chance level {chance_loss:.4g}: the best prediction that ignores the input."))
    acc_line = alt.Chart(data).mark_line(strokeWidth=2).encode(
        x=x, y=alt.Y("accuracy_smooth:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]),
                     axis=alt.Axis(format="%")), color=color, strokeDash=dash, tooltip=tooltip)
    chance_acc = pd.DataFrame({"y": [chance_accuracy], "text": [f"chance {chance_accuracy:.1%}"]})
    acc_rule = alt.Chart(chance_acc).mark_rule(strokeDash=[4, 4], color=GUIDE_GRAY).encode(y="y:Q")
    acc_label = alt.Chart(chance_acc).mark_text(align="left", dx=4, dy=-6, color=GUIDE_GRAY).encode(
        y="y:Q", x=alt.datum(float(rows["step"].min()) if len(rows) else 0.0), text="text:N")
    accuracy = alt.layer(acc_line, acc_rule, acc_label).properties(height=160, title=alt.Title(
        f"Accuracy (mean of the last {window} steps' batches)",
        subtitle=f"The dashed line is chance accuracy {chance_accuracy:.1%}."))
    return alt.vconcat(loss, accuracy).resolve_scale(color="shared").properties(
        title=alt.Title("Learning curves against chance"))


# --- (b) heatmap: training step × distance from the target step ---


def heatmap_rows(snapshots: pd.DataFrame) -> pd.DataFrame:
    """log10 ‖dL/dh_t‖ of the top layer per (cell, snapshot step, distance from the target step), with its status.

    status: "value", "underflow" (float32 shows 0; true value drawn) or "zero" (exactly 0: no magnitude).
    """
    hidden = snapshots[snapshots["quantity"] == "hidden_state"]
    parts = []
    for _, rows in hidden.groupby("cell", sort=False):
        parts.append(rows[(rows["layer"] == rows["layer"].max()) & (rows["direction"] == "forward")])
    rows = pd.concat(parts, ignore_index=True) if parts else hidden.iloc[0:0]
    log10 = rows["log10_norm"].astype(float).to_numpy()
    finite = np.isfinite(log10)
    cause = rows["zero_cause"].fillna("").astype(str).to_numpy()
    status = np.where(~finite, "zero", np.where(cause == "underflow", "underflow", "value"))
    return pd.DataFrame({
        "cell": rows["cell"].astype(str).to_numpy(), "cell_label": rows["cell"].map(_label).to_numpy(),
        "step": rows["step"].astype(int).to_numpy(), "t": rows["t"].astype(int).to_numpy(),
        "distance": rows["distance"].astype(int).to_numpy(),
        "log10": [float(v) if f else None for v, f in zip(log10, finite, strict=True)],
        "value_text": [_fmt_log10(float(v)) for v in log10], "status": status,
        "zero_cause": np.where(cause == "", "none", cause),
    })


def _every(values: list[int], labels: int) -> int:
    """A round label stride so that about `labels` of `values` get a label."""
    span = max(values) - min(values) if values else 1
    raw = max(1, span // max(labels, 1))
    for nice in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if nice >= raw:
            return nice
    return raw


def gradient_heatmap(snapshots: pd.DataFrame) -> alt.FacetChart:
    """Training step (rows, first at the top) × steps back from the target step (columns) of log10 ‖dL/dh_t‖, one
    panel per cell on one colour scale; gray cells are exactly 0, triangles mark float32 underflow."""
    rows = heatmap_rows(snapshots)
    cells = _cells(rows) or ["lstm"]
    finite = rows["log10"].dropna().astype(float)
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 0.0)
    high = high if high > low else low + 1
    distances = sorted(set(rows["distance"].tolist())) or [0]
    steps = sorted(set(rows["step"].tolist())) or [0]
    dx, dy = _every(distances, 10), _every(steps, 10)
    x = alt.X("distance:O", title="steps back from the target step (T-1-t)", sort="ascending",
              axis=alt.Axis(labelExpr=f"datum.value % {dx} == 0 ? datum.label : ''", labelAngle=0))
    y = alt.Y("step:O", title="training step", sort="ascending",
              axis=alt.Axis(labelExpr=f"datum.value % {dy} == 0 ? datum.label : ''"))
    tooltip = [alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("step:Q", title="training step"),
               alt.Tooltip("t:Q", title="step t"), alt.Tooltip("distance:Q", title="steps back"),
               alt.Tooltip("value_text:N", title="‖dL/dh_t‖ (true)"), alt.Tooltip("zero_cause:N", title="zero cause")]
    base = alt.Chart().properties(width=300, height=260)
    color = alt.Color("log10:Q", title="log10 ‖dL/dh_t‖ (true magnitude)",
                      scale=alt.Scale(scheme="viridis", domain=[low, high]),
                      legend=alt.Legend(orient="bottom", direction="horizontal", gradientLength=260, titleLimit=400))
    layers = [base.transform_filter("isValid(datum.log10)").mark_rect().encode(x=x, y=y, color=color,
                                                                               tooltip=tooltip)]
    subtitle = [f"Colour: log10 of the true ‖dL/dh_t‖ of the top layer (L2 over batch × units), from "
                f"{_fmt_log10(low)} (dark) to {_fmt_log10(high)} (yellow); one row per snapshot. Left: the step the "
                "head reads; right: the first steps of the sequence."]
    if (rows["status"] == "zero").any():
        layers.append(base.transform_filter("datum.status == 'zero'").mark_rect(color=GUIDE_GRAY, opacity=0.5).encode(
            x=x, y=y, tooltip=tooltip))
        subtitle.append("Gray cells are exactly 0.")
    if (rows["status"] == "underflow").any():
        layers.append(base.transform_filter("datum.status == 'underflow'").mark_point(
            shape="triangle-down", color="white", size=12, filled=True).encode(x=x, y=y, tooltip=tooltip))
        subtitle.append("White triangles: float32 shows 0 there (underflow); the colour is the true size.")
    return alt.layer(*layers).facet(
        data=chart_data(rows), column=alt.Column("cell_label:N", title=None, sort=[_label(c) for c in cells]),
        spacing=12,
    ).properties(title=alt.Title("How far back the gradient reaches, over training", subtitle=subtitle))


# --- (c) input-gradient mass on relevant vs irrelevant positions ---


def mass_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, snapshot): the relevant share of the summed input-gradient norms and the uniform reference."""
    rows = summary[["step", "cell", "relevant_share", "relevant_fraction", "input_relevant_log10",
                    "input_irrelevant_log10"]].copy()
    rows["cell_label"] = rows["cell"].map(_label)
    rows["relevant_text"] = [_fmt_log10(float(v)) for v in rows["input_relevant_log10"]]
    rows["irrelevant_text"] = [_fmt_log10(float(v)) for v in rows["input_irrelevant_log10"]]
    rows["relevant_share"] = rows["relevant_share"].astype(float).where(np.isfinite(rows["relevant_share"]))
    return rows


def input_mass_chart(summary: pd.DataFrame, relevant_text: str) -> alt.LayerChart:
    """Share of the input-gradient mass (Σ ‖dL/dx_{b,t}‖) on the relevant positions over training, per cell, with
    the share a uniform spread would give (dashed)."""
    rows = mass_rows(summary)
    cells = _cells(rows)
    color = alt.Color("cell_label:N", title="cell", scale=_cell_scale(cells), legend=alt.Legend(orient="top"))
    x = alt.X("step:Q", title="training step", scale=alt.Scale(nice=False))
    y = alt.Y("relevant_share:Q", title=f"share on {relevant_text}", scale=alt.Scale(domain=[0, 1]),
              axis=alt.Axis(format="%"))
    tooltip = [alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("step:Q", title="training step"),
               alt.Tooltip("relevant_share:Q", title="share on relevant positions", format=".1%"),
               alt.Tooltip("relevant_text:N", title="Σ ‖dL/dx‖ relevant"),
               alt.Tooltip("irrelevant_text:N", title="Σ ‖dL/dx‖ irrelevant")]
    data = chart_data(rows)
    line = alt.Chart(data).mark_line(strokeWidth=2, point=True).encode(x=x, y=y, color=color, tooltip=tooltip)
    fraction = float(rows["relevant_fraction"].mean()) if len(rows) else 0.0
    ref = pd.DataFrame({"y": [fraction], "text": [f"uniform spread: {fraction:.1%}"]})
    rule = alt.Chart(ref).mark_rule(strokeDash=[4, 4], color=GUIDE_GRAY).encode(y="y:Q")
    label = alt.Chart(ref).mark_text(align="left", dx=4, dy=-6, color=GUIDE_GRAY).encode(
        y="y:Q", x=alt.datum(float(rows["step"].min()) if len(rows) else 0.0), text="text:N")
    return alt.layer(line, rule, label).properties(height=240, autosize=pad(), title=alt.Title(
        "Where the input gradient goes: relevant vs irrelevant positions",
        subtitle=[f"Share of Σ ‖dL/dx_(b,t)‖ over the batch that falls on {relevant_text} of each example (true "
                  "magnitudes). The dashed line is the share of positions that are relevant: what an input gradient "
                  "spread evenly would give."]))


# --- (d) one snapshot's per-step profile ---


def profile_rows(snapshots: pd.DataFrame, inputs: pd.DataFrame, step: int) -> pd.DataFrame:
    """One snapshot's per-step curves per cell: dL/dh_t and dL/dc_t (top layer, L2 over batch × units) and the mean
    ‖dL/dx_t‖ per relevant / irrelevant (example, step) pair; log10 true magnitudes with a status per point."""
    parts = []
    snap = snapshots[snapshots["step"] == step]
    for cell, rows in snap.groupby("cell", sort=False):
        top = rows[(rows["layer"] == rows["layer"].max()) & (rows["direction"] == "forward")]
        for quantity in ("hidden_state", "cell_state"):
            q = top[top["quantity"] == quantity]
            if q.empty:
                continue
            cause = q["zero_cause"].fillna("").astype(str).to_numpy()
            parts.append(pd.DataFrame({"cell": cell, "series": quantity, "t": q["t"].astype(int).to_numpy(),
                                       "distance": q["distance"].astype(int).to_numpy(),
                                       "log10": q["log10_norm"].astype(float).to_numpy(), "underflow": cause ==
                                       "underflow"}))
    for cell, rows in inputs[inputs["step"] == step].groupby("cell", sort=False):
        for name in ("relevant", "irrelevant"):
            has = rows[f"{name}_items"].astype(int) > 0
            r = rows[has]
            parts.append(pd.DataFrame({"cell": cell, "series": f"input_{name}", "t": r["t"].astype(int).to_numpy(),
                                       "distance": (int(rows["t"].max()) - r["t"].astype(int)).to_numpy(),
                                       "log10": r[f"{name}_log10"].astype(float).to_numpy(), "underflow": False}))
    if not parts:
        return pd.DataFrame(columns=["cell", "cell_label", "series", "series_label", "t", "distance", "log10",
                                     "plot_y", "line_y", "value_text", "marker"])
    out = pd.concat(parts, ignore_index=True)
    log10 = out["log10"].astype(float).to_numpy()
    finite = np.isfinite(log10)
    low = float(np.min(log10[finite])) - 1 if finite.any() else -1.0
    out["cell_label"] = out["cell"].map(_label)
    out["series_label"] = out["series"].map(PROFILE_SERIES)
    out["plot_y"] = np.where(finite, log10, math.floor(low))
    out["line_y"] = [float(v) if f else None for v, f in zip(log10, finite, strict=True)]
    out["value_text"] = [_fmt_log10(float(v)) for v in log10]
    out["marker"] = np.where(~finite, ZERO_LABEL, np.where(out["underflow"].astype(bool), UNDERFLOW_LABEL, "value"))
    out["log10"] = [float(v) if f else None for v, f in zip(log10, finite, strict=True)]
    return out[["cell", "cell_label", "series", "series_label", "t", "distance", "log10", "plot_y", "line_y",
                "value_text", "marker"]]


def snapshot_profile_chart(snapshots: pd.DataFrame, inputs: pd.DataFrame, step: int) -> alt.FacetChart:
    """One snapshot's gradients per time step (true magnitudes, log10 axis), one panel per cell, in the explorer's
    style: dL/dh_t, dL/dc_t (LSTM), and dL/dx_t at relevant vs irrelevant positions."""
    rows = profile_rows(snapshots, inputs, step)
    cells = _cells(rows) or ["lstm"]
    present = [s for s in PROFILE_SERIES if s in set(rows["series"])] or ["hidden_state"]
    color = alt.Color("series_label:N", title="gradient", legend=alt.Legend(orient="top", columns=2),
                      scale=alt.Scale(domain=[PROFILE_SERIES[s] for s in present],
                                      range=[PROFILE_COLORS[s] for s in present]))
    dash = alt.StrokeDash("series_label:N", title="gradient", legend=alt.Legend(orient="top", columns=2),
                          scale=alt.Scale(domain=[PROFILE_SERIES[s] for s in present],
                                          range=[PROFILE_DASHES[s] for s in present]))
    x = alt.X("t:Q", title="time step t (the head reads the last)", scale=alt.Scale(nice=False),
              axis=alt.Axis(tickMinStep=1, format="d"))
    finite = rows["plot_y"].astype(float)
    low = float(finite.min()) if len(finite) else -1.0
    high = float(finite.max()) if len(finite) else 0.0
    y_scale = alt.Scale(domain=[math.floor(low), math.ceil(high) if high > low else low + 1])
    y = alt.Y("line_y:Q", title="gradient norm (true, log scale)", scale=y_scale,
              axis=alt.Axis(labelExpr=_log_label_expr(), tickMinStep=1))
    tooltip = [alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("series_label:N", title="gradient"),
               alt.Tooltip("t:Q", title="step t"), alt.Tooltip("distance:Q", title="steps back"),
               alt.Tooltip("value_text:N", title="norm (true)"), alt.Tooltip("marker:N", title="status")]
    base = alt.Chart().properties(width=300, height=240)
    layers = [base.mark_line(strokeWidth=2).encode(x=x, y=y, color=color, strokeDash=dash, detail="series_label:N",
                                                   tooltip=tooltip)]
    subtitle = [f"Snapshot at training step {step}. dL/dh_t and dL/dc_t: L2 over batch × units; dL/dx_t: mean "
                "‖dL/dx_(b,t)‖ over the examples for which step t is relevant (or not)."]
    special = rows[rows["marker"] != "value"]
    if not special.empty:
        shapes = alt.Shape("marker:N", title="marker", legend=alt.Legend(orient="top"), scale=alt.Scale(
            domain=[ZERO_LABEL, UNDERFLOW_LABEL], range=["cross", "triangle-down"]))
        layers.append(base.transform_filter("datum.marker != 'value'").mark_point(size=40, filled=True).encode(
            x=x, y=alt.Y("plot_y:Q", scale=y_scale), color=color, shape=shapes, tooltip=tooltip))
        subtitle.append("Crosses at the bottom are exactly 0; triangles are 0 in float32 but drawn at their true size.")
    return alt.layer(*layers).facet(
        data=chart_data(rows), column=alt.Column("cell_label:N", title=None, sort=[_label(c) for c in cells]),
        spacing=12,
    ).properties(title=alt.Title("One snapshot's gradient per time step", subtitle=subtitle))


__all__ = ["PROFILE_SERIES", "gradient_heatmap", "heatmap_rows", "input_mass_chart", "learning_chart",
           "learning_rows", "mass_rows", "profile_rows", "snapshot_profile_chart"]
