"""Vega-Lite charts of a `GradientReport`: pure functions from its DataFrames to charts (no Streamlit here).

The explorer's, puzzle's and decay charts are built as plain Vega-Lite dicts (`VegaLiteChart`: ms, where Altair's
objects took ~0.6 s for the explorer's norm chart) with Altair's `to_dict` / `to_json`; the others are Altair charts.
Altair itself is imported only when an Altair chart is built (importing it took ~0.45 s of a cold server's first page,
whose charts are all dicts): until then nobody can have changed its theme or data transformer, so `VegaLiteChart`
uses their defaults (ALTAIR_SCHEMA_URL, ALTAIR_DEFAULT_THEME; tests/test_charts.py checks them against Altair's).

Exact zeros and non-finite values are never dropped silently. Log scales plot the TRUE magnitudes (the frame's
log10_norm), so a value float32 shows as 0 (underflow) or inf is drawn where it really is, beside a dashed line at
the dtype's range; exact zeros (structural, zero on a path) sit in a labelled band below the plot and undefined
values (NaN) in one above it, one marker shape per cause (the core's zero_cause). Charts carry only aggregate rows
(one per quantity, layer, direction and step), plus time × unit cells for heatmaps (binned over time when large).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .config import CELL_LABELS

if TYPE_CHECKING:
    import altair as alt

SERIES = {
    "stacked_output": "y.grad (stacked output y)",
    "hidden_state": "dL/dh_t (hidden state, total)",
    "cell_state": "dL/dc_t (cell state, total)",
    "input": "dL/dx_t (input)",
}
"""Legend labels per frame quantity: what each curve is, in the seed's notation."""
SERIES_SHORT = {"stacked_output": "y.grad", "hidden_state": "dL/dh_t", "cell_state": "dL/dc_t", "input": "dL/dx_t"}
SERIES_COLORS = {
    "stacked_output": "#D55E00",
    "hidden_state": "#0072B2",
    "cell_state": "#009E73",
    "input": "#CC79A7",
}
"""Okabe–Ito colours (colour-blind safe, ≥ 3:1 against white and against a dark #0e1117 background)."""
SERIES_SHAPES = {"stacked_output": "diamond", "hidden_state": "circle", "cell_state": "triangle-right",
                 "input": "circle"}
"""Marker per series (redundant with colour): y.grad's diamond is drawn larger, hollow and on top."""
SERIES_DASHES = {"stacked_output": [6, 3], "hidden_state": [1, 0], "cell_state": [2, 2], "input": [1, 0]}
"""Line dash per series (redundant with colour)."""
X_SHAPE = "M-1,-0.6L-0.6,-1L0,-0.4L0.6,-1L1,-0.6L0.4,0L1,0.6L0.6,1L0,0.4L-0.6,1L-1,0.6L-0.4,0Z"
"""A filled ×, for undefined (non-finite) values."""
STATUS = {
    "value": "non-zero",
    "structural": "exactly 0: no graph path (structural)",
    "zero_on_path": "exactly 0 on a path (dead unit, zero factor, cancellation)",
    "underflow": "0 in {dtype} (underflow): drawn at its true size",
    "overflow": "inf/NaN in {dtype}: drawn at its true size",
    "nonfinite": "no true value (inf/NaN path)",  # itself inf/NaN, or computed through inf/NaN states (≤ 28
    # characters: one line on a phone, and it fits its legend column beside the others on a wide one)
}
"""Marker legend per row status; {dtype} is filled in with the run's dtype."""
STATUS_SHAPES = {"structural": "square", "zero_on_path": "cross", "underflow": "triangle-down",
                 "overflow": "triangle-up", "nonfinite": X_SHAPE}
"""One shape per cause (the cause comes from the core's zero_cause); values use their series' shape."""
ZERO_STATUSES = ("structural", "zero_on_path")
"""Exact zeros (true value 0): drawn in the band below the plot, never on the value axis."""
DTYPE_LIMITS = {"float32": (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)),
                "float64": (float(np.finfo(np.float64).tiny), float(np.finfo(np.float64).max))}
"""Smallest normal and largest finite value per dtype: where the dashed 'range' lines go on log scale."""
MAX_HEATMAP_CELLS = 6_000
"""Per heatmap panel; longer sequences are binned over time (each bin shows its value of largest magnitude)."""
ALTAIR_MAX_ROWS = 5_000
"""Altair's default row limit for DataFrames; larger data sets are embedded as inline values instead."""
BAND_GAP, BAND_STEP, TOP_BAND = 8, 11, 18
"""Pixels: gap between the plot and the zero band, height of one band row (one per series), top band offset."""
GUIDE_GRAY = "#888888"
"""Non-text guides (dashed lines, band shading, legend symbols): mid gray reads on light and dark themes."""
PLOT_LIMIT = 300.0
"""|log10| beyond which a true magnitude cannot be plotted as a float64 on a log axis (shown in the band)."""


ALTAIR_SCHEMA_URL = "https://vega.github.io/schema/vega-lite/v6.4.1.json"
"""Altair's `SCHEMA_URL` (the Vega-Lite version it writes), for specs built while Altair is not imported."""
ALTAIR_DEFAULT_THEME = {"config": {"view": {"continuousWidth": 300, "continuousHeight": 300}}}
"""What Altair's default theme adds to every spec, for specs built while Altair is not imported."""


@functools.cache
def pad() -> alt.AutoSizeParams:
    """Altair's explicit autosize "pad". Without it Streamlit sizes a layered chart with "fit" and can squeeze its
    plot to a sliver. Made on first use, so that importing this module does not import Altair."""
    import altair as alt

    return alt.AutoSizeParams(type="pad")


def chart_data(rows: pd.DataFrame) -> pd.DataFrame | alt.InlineData:
    """`rows` as chart data: the DataFrame itself when small, else inline JSON values (past Altair's row limit).

    Keeps every chart serialisable with `to_dict()` under Altair's default data transformer, for any config.
    """
    if len(rows) <= ALTAIR_MAX_ROWS:
        return rows
    # The values are set after construction: Altair validates the arguments of every object it constructs against
    # the Vega-Lite schema (its debug mode), which for 17k rows took ~160 MB and seconds (the chart's specs are
    # validated in tests/test_charts.py).
    import altair as alt

    data = alt.InlineData(values=[])
    data.values = json.loads(rows.to_json(orient="records"))
    return data


AUTOSIZE_PAD = {"type": "pad"}
"""`pad()` in a plain spec."""
_TYPES = {"Q": "quantitative", "N": "nominal", "O": "ordinal"}


def _field(shorthand: str, **props: object) -> dict:
    """An encoding of one data field from Altair's shorthand ("t:Q", "series:N", "unit:O") and its properties."""
    name, kind = shorthand.rsplit(":", 1)
    return {"field": name, "type": _TYPES[kind], **props}


def _column_values(column: pd.Series) -> list | None:
    """A column's values as Altair's sanitiser gives them (Python scalars; NaN, inf and missing values None), or
    None for a kind of column it treats otherwise (dates, nullable numbers: left to Altair)."""
    kind = column.dtype.kind
    if kind == "O":  # object, str and categories
        return [None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else
                v.tolist() if isinstance(v, np.ndarray) else v for v in column.tolist()]
    if not isinstance(column.dtype, np.dtype):
        return None
    if kind in "biu":
        return column.tolist()
    if kind == "f":
        return [v if math.isfinite(v) else None for v in column.tolist()]
    return None


def _records(rows: pd.DataFrame) -> list[dict]:
    """The rows as Altair serialises a chart's DataFrame (its sanitised values) up to its row limit, inline JSON
    values past it (as `chart_data`). Sanitised here column by column: Altair's own sanitiser took ~30 ms for the
    explorer's 30 rows."""
    if len(rows) > ALTAIR_MAX_ROWS:
        return json.loads(rows.to_json(orient="records"))
    columns = [_column_values(rows[name]) for name in rows.columns]
    if any(values is None for values in columns) or not all(isinstance(name, str) for name in rows.columns):
        import altair as alt

        return alt.data_transformers.get()(rows)["values"]
    names = list(rows.columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)] if names else [{}] * len(rows)


def _dataset_name(values: list) -> str:
    """A data set's name as Altair gives it (a hash of its values), so specs match Altair's own."""
    text = json.dumps(values, sort_keys=True, default=str)
    return "data-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _merged(base: dict, update: dict) -> dict:
    """`base` updated by `update`, nested dicts merged (`update` wins): how Altair applies its theme."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class VegaLiteChart:
    """A chart built as a plain Vega-Lite dict, its data sets as DataFrames under "data" keys (anywhere in it).

    Building the same charts from Altair objects cost the explorer ~0.7 s per config (Altair deep-copies every
    sub-chart at each layer, facet, resolve and properties step); a dict costs a few ms. It has the part of Altair's
    chart API the pages, the CLI and the tests use: `to_dict` and `to_json` give what Altair would (each data set
    named in `datasets`, the active theme's config, $schema), validated against the same Vega-Lite schema.
    """

    def __init__(self, spec: dict) -> None:
        self.spec = spec

    def _copy(self, node: object, datasets: dict, consolidate: bool = True) -> object:
        """A copy of `node` with every DataFrame moved into `datasets` (and named where it was)."""
        if isinstance(node, dict):
            return {k: self._copy(v, datasets, consolidate) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self._copy(v, datasets, consolidate) for v in node]
        if isinstance(node, pd.DataFrame):
            values = _records(node)
            if not consolidate:
                return {"values": values}
            name = _dataset_name(values)
            datasets[name] = values
            return {"name": name}
        return node

    def to_dict(self, validate: bool = True) -> dict:
        """The Vega-Lite spec as JSON-ready dicts (a fresh copy); `validate` checks it against Vega-Lite's schema."""
        if validate:
            import altair  # noqa: F401 (the schema classes below)
        alt = sys.modules.get("altair")  # not imported: its settings are still the defaults
        datasets: dict = {}
        spec = self._copy(self.spec, datasets, alt is None or alt.data_transformers.consolidate_datasets)
        if validate:  # as Altair: before the data sets, $schema and the theme are added
            top = alt.TopLevelFacetSpec if "facet" in spec else alt.TopLevelLayerSpec if "layer" in spec else \
                alt.TopLevelUnitSpec
            top.validate(spec)
        spec.setdefault("$schema", ALTAIR_SCHEMA_URL if alt is None else alt.SCHEMA_URL)
        theme = ALTAIR_DEFAULT_THEME if alt is None else (active := alt.theme.get()) and active()
        if theme:
            spec = _merged(theme, spec)
        if datasets:
            spec["datasets"] = datasets
        return spec

    def to_json(self, validate: bool = True, indent: int | str | None = 2, sort_keys: bool = True,
                **kwargs: object) -> str:
        """`to_dict` as JSON text (Altair's defaults: indented, keys sorted, non-ASCII kept)."""
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(validate=validate), indent=indent, sort_keys=sort_keys, **kwargs)


def _fmt(value: float) -> str:
    """A number for tooltips, keeping inf / NaN readable (JSON cannot carry them as numbers)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def _fmt_log10(log10: float) -> str:
    """The number 10**log10 as text, also far outside float64's range ("3.2e-412"); 0 for -inf."""
    if math.isnan(log10):
        return "NaN"
    if math.isinf(log10):
        return "inf" if log10 > 0 else "0"
    exponent = math.floor(log10)
    mantissa = 10.0 ** (log10 - exponent)
    if mantissa >= 9.9995:  # rounding carried into the next decade
        mantissa, exponent = 1.0, exponent + 1
    if -4 <= exponent <= 5:
        return f"{10.0 ** log10:.4g}"
    return f"{mantissa:.4g}e{exponent:+03d}"


def _true_log10(rows: pd.DataFrame, column: str = "log10_norm", value: str = "norm") -> np.ndarray:
    """log10 of the TRUE magnitude per row: the core's column when present, else log10 of the dtype value."""
    if column in rows:
        return rows[column].astype(float).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        values = rows[value].astype(float).to_numpy()
        return np.where(np.isfinite(values), np.log10(np.abs(values)), np.nan)


def _row_status(rows: pd.DataFrame, log10: np.ndarray) -> np.ndarray:
    """One status per row (see STATUS), from the core's zero_cause (or, for older frames, the zero flags)."""
    dtype_value = rows["norm"].astype(float).to_numpy()
    nonfinite = rows["nonfinite"].astype(bool).to_numpy() if "nonfinite" in rows else ~np.isfinite(dtype_value)
    if "zero_cause" in rows:
        cause = rows["zero_cause"].fillna("").astype(str).to_numpy()
    else:  # older profile / frame columns
        zero = rows["exactly_zero"].astype(bool).to_numpy()
        structural = (rows["structurally_zero"].astype(bool).to_numpy() if "structurally_zero" in rows
                      else np.zeros(len(rows), bool))
        underflow = rows["underflow"].astype(bool).to_numpy() if "underflow" in rows else zero & ~structural
        cause = np.where(zero & structural, "structural",
                         np.where(zero & underflow, "underflow", np.where(zero, "zero_on_path", "")))
    status = np.full(len(rows), "value", dtype=object)
    status[cause == "structural"] = "structural"
    status[cause == "zero_on_path"] = "zero_on_path"
    status[cause == "underflow"] = "underflow"
    status[nonfinite] = "overflow"
    # No finite true magnitude: exact zeros go to the zero band, undefined / infinite ones to the top band.
    status[(status == "underflow") & (log10 == -math.inf)] = "zero_on_path"
    status[(status == "underflow") & np.isnan(log10)] = "nonfinite"  # through inf/NaN states: no true size
    status[(status == "overflow") & ~np.isfinite(log10)] = "nonfinite"
    status[(status == "value") & ~np.isfinite(log10) & (log10 != -math.inf)] = "nonfinite"
    status[(status == "value") & (log10 == -math.inf)] = "zero_on_path"
    return status


def infer_dtype(rows: pd.DataFrame, log10: np.ndarray | None = None) -> str:
    """The run's dtype: `frame.attrs["dtype"]` when set, else what the out-of-range rows imply (default float32).

    A row that underflowed (overflowed) with a true magnitude float64 can hold must come from a float32 run.
    """
    if rows.attrs.get("dtype") in DTYPE_LIMITS:
        return str(rows.attrs["dtype"])
    log10 = _true_log10(rows) if log10 is None else log10
    status = _row_status(rows, log10)
    lo, hi = (math.log10(v) for v in DTYPE_LIMITS["float64"])
    beyond64 = ((status == "underflow") & (log10 < lo)) | ((status == "overflow") & (log10 > hi))
    return "float64" if beyond64.any() else "float32"


def _magnitude_layout(log10: np.ndarray, status: np.ndarray, log_scale: bool, linear_values: np.ndarray,
                      dtype: str) -> dict:
    """Where each row is drawn: value-axis position (plot_y) or band row, plus the value-axis domain and limits.

    Log scale: every finite true magnitude on the axis (underflow below the dtype's range, overflow above),
    exact zeros in the band below, undefined values in the band above. Linear scale: dtype values ≥ 0 on the
    axis, zero causes in the band below, inf/NaN in the band above.
    """
    if log_scale:
        on_axis = np.isfinite(log10) & (np.abs(log10) <= PLOT_LIMIT) & ~np.isin(status, ZERO_STATUSES)
        below = ~on_axis & ((log10 < 0) | np.isin(status, ZERO_STATUSES))
        above = ~on_axis & ~below
    else:
        finite = np.isfinite(linear_values)
        on_axis = finite
        below = finite & np.isin(status, (*ZERO_STATUSES, "underflow"))
        above = ~finite
    limits: list[tuple[float, str]] = []
    if log_scale:
        small, large = DTYPE_LIMITS.get(dtype, DTYPE_LIMITS["float32"])
        drawn = log10[on_axis]
        if (status[on_axis] == "underflow").any() or (drawn.size and drawn.min() < math.log10(small)):
            limits.append((small, f"below {dtype}'s range"))
        if (status[on_axis] == "overflow").any() or (drawn.size and drawn.max() > math.log10(large)):
            limits.append((large, f"above {dtype}'s range"))
        span = np.concatenate([drawn, [math.log10(v) for v, _ in limits]])
        low, high = (math.floor(span.min()), math.ceil(span.max())) if span.size else (-3, 1)
        if high - low < 1:
            high = low + 1
        margin = 0.04 * (high - low)  # keeps markers at the extremes inside the plot
        domain = (10.0 ** max(low - margin, -PLOT_LIMIT - 7), 10.0 ** min(high + margin, PLOT_LIMIT + 7))
        plot_y = np.where(on_axis, 10.0 ** np.clip(log10, -PLOT_LIMIT, PLOT_LIMIT), np.nan)
    else:
        top = float(linear_values[on_axis].max()) if on_axis.any() else 0.0
        domain = (0.0, top * 1.05 if top > 0 else 1.0)
        plot_y = np.where(on_axis, linear_values, np.nan)
    return {"on_axis": on_axis & ~(below if not log_scale else np.zeros_like(on_axis)), "below": below,
            "above": above, "plot_y": plot_y, "domain": domain, "limits": limits}


def _band_rows(below: np.ndarray, above: np.ndarray, keys: pd.Series, order: list[str]) -> tuple[list, list[str]]:
    """Band row per row (None: on the value axis; -1: the top band; 0, 1, …: one zero-band row per key present)."""
    present = [k for k in order if (below & (keys.to_numpy() == k)).any()]
    index = {k: i for i, k in enumerate(present)}
    band = [(-1 if a else index[k] if b else None) for k, b, a in zip(keys, below, above, strict=True)]
    return band, present


def norm_rows(frame: pd.DataFrame, log_scale: bool, quantities: tuple[str, ...] | None = None,
              dtype: str | None = None) -> pd.DataFrame:
    """Per-step norm rows ready to plot, at their TRUE magnitudes (log10_norm) on log scale.

    Columns: quantity, series, layer, layer_label, direction, t, norm (dtype value, finite or None), log10_norm,
    norm_text, true_text, max_abs_text, status, status_label, marker (shape legend entry), plot_y (value-axis
    position; the domain edge for band rows), line_y (None where the line breaks), band_row (None on the value
    axis, -1 the inf/NaN band above the plot, 0.. one zero-band row per series below it).
    attrs: domain (value axis), limits [(value, label)] of the dtype's range, band_labels, top_band, dtype.
    """
    quantities = quantities or ("stacked_output", "hidden_state", "cell_state")
    rows = frame[frame["quantity"].isin(quantities)].reset_index(drop=True)
    log10 = _true_log10(rows)
    status = _row_status(rows, log10)
    dtype = dtype or infer_dtype(frame, _true_log10(frame))
    norm = rows["norm"].astype(float).to_numpy()
    layout = _magnitude_layout(log10, status, log_scale, norm, dtype)
    band, present = _band_rows(layout["below"], layout["above"], rows["quantity"], list(SERIES))
    low, high = layout["domain"]
    plot_y = np.where(np.isfinite(layout["plot_y"]), layout["plot_y"],
                      np.where(layout["above"], high, low))
    if log_scale:
        line_y = np.where(np.isin(status, ("value", "underflow", "overflow")) & np.isfinite(layout["plot_y"]),
                          layout["plot_y"], np.nan)
    else:
        line_y = np.where(np.isfinite(norm), norm, np.nan)  # zeros sit on the 0 line, inf/NaN break it
    label = {k: v.format(dtype=dtype) for k, v in STATUS.items()}
    if not log_scale:  # nothing is drawn at a true size below / above the dtype's range on a linear axis
        label["underflow"] = f"0 in {dtype} (underflow; true size in the tooltip)"
        label["overflow"] = f"inf/NaN in {dtype} (finite true size in the tooltip)"
    max_abs = rows["max_abs"].astype(float)
    out = pd.DataFrame({
        "quantity": rows["quantity"],
        "series": rows["quantity"].map(SERIES),
        "layer": rows["layer"].astype(int),
        "layer_label": "layer " + rows["layer"].astype(int).astype(str),
        "direction": rows["direction"],
        "t": rows["t"].astype(int),
        "norm": [float(v) if math.isfinite(v) else None for v in norm],
        "log10_norm": [float(v) if math.isfinite(v) else None for v in log10],
        "norm_text": [_fmt(v) for v in norm],
        "true_text": [_fmt_log10(v) for v in log10],
        "max_abs_text": [_fmt_log10(v) for v in _true_log10(rows, "log10_max_abs", "max_abs")]
        if "log10_max_abs" in rows else [_fmt(float(v)) for v in max_abs],
        "status": status,
        "status_label": _labels(status, label, log10, layout["on_axis"]),
        "marker": [SERIES_SHORT[q] if s == "value" else text for q, s, text in zip(
            rows["quantity"], status, _labels(status, label, log10, layout["on_axis"]), strict=True)],
        "plot_y": plot_y.astype(float),
        "line_y": [float(v) if math.isfinite(v) else None for v in line_y],
        "band_row": band,
    })
    out.attrs.update(domain=layout["domain"], limits=layout["limits"],
                     band_labels=[f"{SERIES_SHORT[q]} = 0" for q in present], top_band=bool(layout["above"].any()),
                     dtype=dtype, log_scale=log_scale)
    return out


def _labels(status: np.ndarray, label: dict[str, str], log10: np.ndarray, on_axis: np.ndarray) -> list[str]:
    """Status labels per row; a finite true magnitude too far out to plot says so (its value is in the tooltip)."""
    off = np.isfinite(log10) & ~on_axis & np.isin(status, ("underflow", "overflow"))
    return [f"{label[s].split(':')[0]}: beyond 1e±{PLOT_LIMIT:.0f}, true size in the tooltip" if o else label[s]
            for s, o in zip(status, off, strict=True)]


def _band_height(rows: pd.DataFrame) -> int:
    """Pixels below the plot taken by the zero band (0 without one)."""
    count = len(rows.attrs["band_labels"])
    return BAND_GAP + BAND_STEP * count + 2 if count else 0


def _band_px(row: int, height: int) -> int:
    """Pixel (from the plot's top) of band row `row` (-1: the top band)."""
    return -TOP_BAND // 2 - 2 if row < 0 else height + BAND_GAP + BAND_STEP * row + BAND_STEP // 2


def _value_px(value: float, rows: pd.DataFrame, height: int) -> int:
    """Pixel (from the top) of `value` on the log value axis, whose domain the rows fix."""
    low, high = (math.log10(v) for v in rows.attrs["domain"])
    return round(height * (high - math.log10(value)) / (high - low))


def _marker_scale(rows: pd.DataFrame, series_order: list[str]) -> dict:
    """Shapes of the marker legend: each series' own shape, then one per cause present."""
    present = list(dict.fromkeys(rows["marker"]))
    domain, shapes = [], []
    for quantity in series_order:
        if SERIES_SHORT[quantity] in present:
            domain.append(SERIES_SHORT[quantity])
            shapes.append(SERIES_SHAPES[quantity])
    for status in STATUS_SHAPES:
        for label in dict.fromkeys(rows.loc[rows["status"] == status, "status_label"]):
            if label in present:
                domain.append(label)
                shapes.append(STATUS_SHAPES[status])
    return {"domain": domain or ["none"], "range": shapes or ["circle"]}


def _legend(title: str, **kwargs: object) -> dict:
    """A top legend that wraps into columns (never one long row) and follows the theme's text colour."""
    return {"title": title, "orient": "top", "direction": "horizontal", "labelLimit": 280, "symbolLimit": 0, **kwargs}


COUNT = [{"aggregate": [{"op": "count", "as": "n"}]}]
"""One row (a count): a layer drawn once per panel, not once per data row."""


def _band_group(rows: pd.DataFrame, height: int, width: int, x: dict, color: dict, shape: dict, tooltip: list,
                size: float = 55) -> list[dict] | None:
    """The layers drawn in pixel space beside the value axis: the zero band below the plot (one row per series,
    shaded), the inf/NaN band above it, and the labels of those rows and of the dtype's range lines, all on one
    right-hand axis (its labels follow the theme's text colour). None when there is nothing to draw. The caller's
    layer holds them and sets the plot's `width` × `height`."""
    labels: dict[int, str] = {}
    count = len(rows.attrs["band_labels"])
    if count and rows.attrs.get("band_label"):
        labels[(_band_px(0, height) + _band_px(count - 1, height)) // 2] = rows.attrs["band_label"]
    else:
        for i, text in enumerate(rows.attrs["band_labels"]):
            labels[_band_px(i, height)] = text
    if rows.attrs["top_band"]:
        labels[_band_px(-1, height)] = "inf / NaN"
    for value, text in rows.attrs["limits"]:
        labels[_value_px(value, rows, height)] = text
    if not labels:
        return None
    bottom = height + _band_height(rows)
    top = -TOP_BAND if rows.attrs["top_band"] else 0
    expr = "''"
    for px, text in sorted(labels.items()):
        expr = f"datum.value == {px} ? {json.dumps(text)} : {expr}"
    band_y = {"scale": {"domain": [top, bottom], "range": [top, bottom], "nice": False, "zero": False},
              "axis": {"orient": "right", "values": sorted(labels), "labelExpr": expr, "title": None, "grid": False,
                       "ticks": False, "domain": False, "labelFontSize": 10, "labelPadding": 4, "labelLimit": 160}}
    across = {"x": {"value": 0}, "x2": {"value": "width"}}
    layers: list[dict] = []
    shade = {"mark": {"type": "rect", "color": GUIDE_GRAY, "opacity": 0.12}, "transform": COUNT}
    if rows.attrs["band_labels"]:
        layers.append({**shade, "encoding": {**across, "y": {"datum": height + BAND_GAP - 3, **band_y},
                                             "y2": {"datum": bottom}}})
    if rows.attrs["top_band"]:
        layers.append({**shade, "encoding": {**across, "y": {"datum": top, **band_y}, "y2": {"datum": -2}}})
    rule = {"mark": {"type": "rule", "color": GUIDE_GRAY, "strokeDash": [5, 3], "strokeWidth": 1.2}, "transform": COUNT}
    for value, _ in rows.attrs["limits"]:
        layers.append({**rule, "encoding": {**across, "y": {"datum": _value_px(value, rows, height), **band_y}}})
    band_px = f"datum.band_row < 0 ? {_band_px(-1, height)} : {height + BAND_GAP + BAND_STEP // 2} + " \
              f"{BAND_STEP} * datum.band_row"
    layers.append({"mark": {"type": "point", "size": min(size, 45), "filled": True, "opacity": 0.95},
                   "transform": [{"filter": "isValid(datum.band_row)"}, {"calculate": band_px, "as": "_band_px"}],
                   "encoding": {"x": x, "y": _field("_band_px:Q", **band_y), "color": color, "shape": shape,
                                "tooltip": tooltip}})
    return layers


def _floor_ceiling(positive: pd.Series, log_scale: bool) -> tuple[float, float]:
    """Where zero markers (floor) and non-finite markers (ceiling) sit on a value axis (the devices chart)."""
    if positive.empty:
        return (1e-3, 10.0) if log_scale else (0.0, 1.0)
    low, high = float(positive.min()), float(positive.max())
    if log_scale:
        return 10.0 ** (math.floor(math.log10(low)) - 1), 10.0 ** (math.ceil(math.log10(high)) + 1)
    return 0.0, high * 1.15


def _tooltip(extra: list[dict] | None = None, dtype: str = "float32") -> list[dict]:
    return [
        _field("series:N", title="gradient"),
        *(extra or []),
        _field("t:Q", title="step t"),
        _field("true_text:N", title="L2 norm (true)"),
        _field("norm_text:N", title=f"L2 norm in {dtype}"),
        _field("max_abs_text:N", title="max |value|"),
        _field("status_label:N", title="status"),
    ]


def _series_scales(quantities: list[str]) -> tuple[dict, dict]:
    """Colour and dash scales of the series present (colour-blind safe, dash redundant with colour)."""
    domain = [SERIES[q] for q in quantities]
    return ({"domain": domain, "range": [SERIES_COLORS[q] for q in quantities]},
            {"domain": domain, "range": [SERIES_DASHES[q] for q in quantities]})


LOG_LABEL = ("datum.value >= 0.001 && datum.value < 100000 ? format(datum.value, '~g') "
             ": format(datum.value, '.0e')")
"""Log-axis tick labels: plain numbers near 1, else 1e-40 style."""


def _log_ticks(domain: tuple[float, float]) -> list[float]:
    """At most ~7 tick values over a log domain: every k-th decade, with 2× and 5× when it spans < 2 decades."""
    low, high = math.ceil(math.log10(domain[0]) - 1e-9), math.floor(math.log10(domain[1]) + 1e-9)
    step = next(k for k in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 10**9) if (high - low) / k <= 7)
    low = math.ceil(low / step) * step
    ticks = [10.0 ** k for k in range(low, high + 1, step)]
    if high - low < 2:
        ticks = sorted(t * m for t in [10.0 ** (low - 1), *ticks] for m in (1, 2, 5))
    return [t for t in ticks if domain[0] <= t <= domain[1]]


def _log_axis(rows: pd.DataFrame) -> dict:
    """The log value axis: explicit decade ticks over the rows' fixed domain (no gridline in between)."""
    return {"values": _log_ticks(rows.attrs["domain"]), "labelExpr": LOG_LABEL, "labelOverlap": True}


def _y_scale(rows: pd.DataFrame) -> dict:
    """The value axis: log over the rows' fixed domain, or linear from exactly 0 (nothing drawn below 0)."""
    if rows.attrs["log_scale"]:
        return {"type": "log", "domain": list(rows.attrs["domain"]), "nice": False, "clamp": False}
    return {"type": "linear", "domainMin": 0, "zero": True, "nice": True}


def _norm_layers(rows: pd.DataFrame, log_scale: bool, y_title: str, extra_tooltip: list[dict] | None,
                 width: int, height: int, embed_data: bool) -> dict:
    """Lines + markers on the value axis, and the zero / inf-NaN bands beside it, over `rows` (embedded, or
    supplied by a facet): a layer spec. y.grad is drawn last, larger and hollow, so where it equals dL/dh_t both
    are seen."""
    quantities = [q for q in SERIES if q in set(rows["quantity"])]
    dtype = rows.attrs["dtype"]
    y_scale = _y_scale(rows)
    band_height = _band_height(rows)
    x = _field("t:Q", title="time step t", scale={"nice": False, "padding": 8},
               axis={"tickMinStep": 1, "format": "d", "offset": band_height})
    y_axis = _log_axis(rows) if log_scale else {"format": "~g", "labelOverlap": True}
    color_scale, dash_scale = _series_scales(quantities)
    color = _field("series:N", scale=color_scale, legend=_legend("gradient", symbolType="stroke"))
    dash = _field("series:N", scale=dash_scale, legend=_legend("gradient", symbolType="stroke"))
    shape = _field("marker:N", scale=_marker_scale(rows, quantities),
                   legend=_legend("marker", symbolFillColor=GUIDE_GRAY, symbolStrokeColor=GUIDE_GRAY, columns=3))
    tooltip = _tooltip(extra_tooltip, dtype)
    steps = max(1, int(rows["t"].max()) - int(rows["t"].min()) + 1) if len(rows) else 1
    size = float(np.clip((0.9 * width / steps) ** 2, 10, 55))  # markers shrink on long sequences
    line = {"mark": {"type": "line", "strokeWidth": 2, "clip": True, "invalid": "break-paths-filter-domains"},
            "encoding": {"x": x, "y": _field("line_y:Q", title=y_title, scale=y_scale, axis=y_axis), "color": color,
                         "strokeDash": dash, "detail": _field("series:N")}}
    encoding = {"x": x, "y": _field("plot_y:Q", title=y_title, scale=y_scale, axis=y_axis), "color": color,
                "shape": shape, "tooltip": tooltip}
    main: list[dict] = [line]
    for quantity in sorted(quantities, key=lambda q: q == "stacked_output"):  # y.grad last: on top
        mine = [{"filter": "!isValid(datum.band_row)"}, {"filter": f"(datum.quantity === {quantity!r})"}]
        if quantity == "stacked_output":
            mark = {"type": "point", "size": 2.7 * size, "filled": False, "strokeWidth": 2 if size > 20 else 1.2,
                    "opacity": 1}
        else:
            mark = {"type": "point", "size": size, "filled": True, "opacity": 0.95}
        main.append({"mark": mark, "encoding": encoding, "transform": mine})
    data = {"data": rows} if embed_data else {}
    band = _band_group(rows, height, width, x, color, shape, tooltip, size=size)
    if band is None:
        return {**data, "layer": main, "width": width, "height": height}
    return {**data, "layer": [{"layer": main}, {"layer": band}], "width": width, "height": height,
            "resolve": {"scale": {"y": "independent"}}}


def _norm_title(rows: pd.DataFrame, what: str) -> list[str]:
    """Subtitle lines naming the markers the rows really contain (derived from their statuses)."""
    statuses = set(rows["status"])
    parts = []
    if statuses & set(ZERO_STATUSES) or (not rows.attrs["log_scale"] and "underflow" in statuses):
        parts.append("the shaded band below the plot holds steps that are exactly 0 (one row per gradient, shape "
                     "= cause)")
    if rows.attrs["top_band"]:
        parts.append("the band above holds inf/NaN steps")
    for _, text in rows.attrs["limits"]:
        parts.append(f"points past the dashed line are {text}, drawn at their true size")
    lines = [what]
    if parts:
        lines.append(("; ".join(parts) + ".")[0].upper() + ("; ".join(parts) + ".")[1:])
    return lines


def gradient_norm_chart(frame: pd.DataFrame, log_scale: bool, dtype: str | None = None) -> VegaLiteChart:
    """Per-step gradient norm of y.grad vs dL/dh_t (and dL/dc_t), one panel per layer (rows) and direction.

    Log scale plots true magnitudes (also below / above the dtype's range); `dtype` (default: inferred) names it.
    """
    rows = norm_rows(frame, log_scale, dtype=dtype)
    # Every panel draws the same band rows (y.grad exists only in the last layer): one label for the band.
    rows.attrs["band_label"] = "exactly 0"
    num_dirs = max(1, rows["direction"].nunique())
    y_title = "gradient norm" + (" (log scale)" if log_scale else "")
    layered = _norm_layers(rows, log_scale, y_title, [_field("layer_label:N", title="layer"),
                                                      _field("direction:N", title="direction")],
                           width=520 if num_dirs == 1 else 300, height=170, embed_data=False)
    spacing = 16 + _band_height(rows) + (TOP_BAND if rows.attrs["top_band"] else 0)
    return VegaLiteChart({
        "data": rows,
        "facet": {"row": _field("layer_label:N", title=None, sort="descending",
                                header={"labelAngle": 0, "labelAlign": "left"}),
                  "column": _field("direction:N", title=None, sort=["forward", "reverse"])},
        "spec": layered,
        "spacing": {"row": spacing, "column": 16},
        "title": {"text": "Where the gradient lands, per time step", "subtitle": _norm_title(
            rows, "y.grad is the partial derivative of the stacked output; dL/dh_t is the total derivative the "
                  "recurrence carries back through time. Norm = L2 over batch × units per step.")},
        "resolve": {"scale": {"y": "independent"}},  # the domains are fixed, so the panels still share one axis
    })


def puzzle_chart(frame: pd.DataFrame, target: str = "y[:, -1].sum()") -> VegaLiteChart:
    """The puzzle's answer in one chart: per-step norm of y.grad vs dL/dh_t of the last layer (linear scale)."""
    last = int(frame.loc[frame["quantity"] == "hidden_state", "layer"].max())
    rows = norm_rows(frame[(frame["layer"] == last) & (frame["direction"] == "forward")], log_scale=False,
                     quantities=("stacked_output", "hidden_state"))
    y_title = "‖gradient‖ (L2 over batch × units)"
    stacked = rows[rows["quantity"] == "stacked_output"]
    read = stacked.loc[stacked["status"] == "value", "t"].tolist()
    zero = stacked.loc[stacked["status"].isin(ZERO_STATUSES), "t"].tolist()
    lines = [f"Per-step gradient norm of target = {target}, last layer ({last})."]
    if read:
        lines.append(f"y.grad (hollow diamonds) is non-zero only at t = {_steps(read)}"
                     + (", where it equals dL/dh_t." if _equal_at(rows, read) else "."))
    if zero:
        lines.append(f"Squares in the band below: y.grad is exactly 0 at t = {_steps(zero)} (no graph path).")
    return VegaLiteChart({
        **_norm_layers(rows, False, y_title, None, width=600, height=240, embed_data=True), "autosize": AUTOSIZE_PAD,
        "title": {"text": "y.grad is zero before the read step; the hidden states h_t are not", "subtitle": lines,
                  "anchor": "start"}})


def _steps(steps: list[int]) -> str:
    """Steps as text, runs shortened: [0, 1, 2, 3, 7] -> "0–3, 7"."""
    runs: list[list[int]] = []
    for t in sorted(steps):
        if runs and t == runs[-1][-1] + 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def _equal_at(rows: pd.DataFrame, steps: list[int]) -> bool:
    """Whether y.grad's norm equals dL/dh_t's (to 1e-6) at every one of `steps`."""
    by = rows.set_index(["quantity", "t"])["norm"]
    try:
        return all(math.isclose(float(by[("stacked_output", t)]), float(by[("hidden_state", t)]), rel_tol=1e-6)
                   for t in steps)
    except (KeyError, TypeError):
        return False


def input_grad_chart(frame: pd.DataFrame) -> VegaLiteChart:
    """Per-step norm of dL/dx_t: which inputs the target depends on (exact zeros in a band below, not hidden)."""
    rows = norm_rows(frame, log_scale=False, quantities=("input",))
    height, width = 160, 560
    band_height = _band_height(rows)
    steps = int(rows["t"].max()) + 1 if len(rows) else 1
    every = next(k for k in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000, 10**9) if steps / k <= 20)
    x = _field("t:O", title="time step t", axis={"values": list(range(0, steps, every)), "labelAngle": 0,
                                                  "offset": band_height})
    y_title = "‖dL/dx_t‖ (L2 over batch × features)"
    bars = {"mark": {"type": "bar", "color": SERIES_COLORS["input"], "clip": True},
            "encoding": {"x": x, "y": _field("line_y:Q", title=y_title, scale=_y_scale(rows)), "tooltip": _tooltip()}}
    statuses = [s for s in STATUS_SHAPES if s in set(rows["status"])]
    labels = [rows.loc[rows["status"] == s, "status_label"].iloc[0] for s in statuses]
    shape = _field("status_label:N", scale={"domain": labels or ["none"],
                                            "range": [STATUS_SHAPES[s] for s in statuses] or ["circle"]},
                   legend=_legend("marker", symbolFillColor=GUIDE_GRAY, symbolStrokeColor=GUIDE_GRAY))
    rows.attrs["band_labels"] = ["dL/dx_t = 0"] if rows.attrs["band_labels"] else []
    band = _band_group(rows, height, width, x, {"value": SERIES_COLORS["input"]}, shape, _tooltip())
    chart = {"data": rows, "layer": [bars], "width": width, "height": height} if band is None else {
        "data": rows, "layer": [bars, {"layer": band}], "width": width, "height": height,
        "resolve": {"scale": {"y": "independent"}}}
    subtitle = ["Norm of the input gradient per step; markers in the band below are steps where it is 0."]
    for status, text in (("structural", "no graph path (x_t cannot influence the target: causality, direction)"),
                         ("zero_on_path", "exactly 0 on a path"),
                         ("underflow", f"0 in {rows.attrs['dtype']} although the true value is not (underflow)")):
        steps_of = rows.loc[rows["status"] == status, "t"].tolist()
        if steps_of:
            subtitle.append(f"t = {_steps(steps_of)}: {text}.")
    return VegaLiteChart({**chart, "autosize": AUTOSIZE_PAD, "title": {
        "text": "Which inputs the target depends on", "subtitle": subtitle, "anchor": "start"}})


def heatmap_rows(unit_frame: pd.DataFrame, max_cells: int = MAX_HEATMAP_CELLS) -> tuple[pd.DataFrame, int]:
    """Heatmap cells (quantity, series, t, unit, value, log10_magnitude, value_text, nonfinite (no true size),
    value_nonfinite (inf/NaN in the dtype), zero), binned over time to at most `max_cells`.

    Returns the rows and the bin width in steps (1 = no binning); a bin shows its value of largest magnitude.
    log10_magnitude is the true log10 |value| (the core's column; else from the value): None where 0 or inf/NaN.
    """
    frame = unit_frame.copy()
    if "log10_magnitude" not in frame:
        with np.errstate(divide="ignore", invalid="ignore"):
            frame["log10_magnitude"] = np.log10(frame["value"].astype(float).abs())
    steps = int(frame["t"].max()) + 1 if len(frame) else 1
    units = int(frame["unit"].max()) + 1 if len(frame) else 1
    stride = max(1, math.ceil(steps * units / max_cells))
    if stride > 1:
        frame["t"] = (frame["t"] // stride) * stride
        magnitude = frame["log10_magnitude"].astype(float)
        frame["_key"] = magnitude.where(np.isfinite(frame["value"].astype(float)), np.inf).fillna(np.inf)
        idx = frame.groupby(["quantity", "t", "unit"], sort=False)["_key"].idxmax()
        frame = frame.loc[idx].drop(columns="_key")
    values = frame["value"].astype(float)
    magnitude = frame["log10_magnitude"].astype(float)
    return pd.DataFrame({
        "quantity": frame["quantity"].to_numpy(),
        "series": frame["quantity"].map(SERIES).to_numpy(),
        "t": frame["t"].astype(int).to_numpy(),
        "unit": frame["unit"].astype(int).to_numpy(),
        "value": [v if math.isfinite(v) else None for v in values],
        "log10_magnitude": [m if math.isfinite(m) else None for m in magnitude],
        "value_text": [_fmt(v) for v in values],
        "magnitude_text": [_fmt_log10(m) for m in magnitude],
        # no true size: inf/NaN with none, or computed through inf/NaN forward states (finite in the dtype)
        "nonfinite": ~np.isfinite(magnitude.to_numpy()) & (magnitude.to_numpy() != -math.inf),
        "value_nonfinite": ~np.isfinite(values.to_numpy()),  # inf/NaN in the dtype (a true size may still exist)
        "zero": (magnitude == -math.inf).to_numpy(),
    }), stride


def heatmap_domain(rows: pd.DataFrame) -> list[float]:
    """The linear heatmap's colour domain: symmetric [-m, m] around 0, m = the largest finite |value| (1 if none)."""
    values = pd.to_numeric(rows["value"], errors="coerce").abs()
    m = float(values.max()) if values.notna().any() else 0.0
    m = m if m > 0 else 1.0
    return [-m, m]


def unit_heatmap(unit_frame: pd.DataFrame, log_magnitude: bool = False) -> VegaLiteChart:
    """Time × hidden unit heatmaps, one panel per quantity: the signed value on a diverging scale symmetric around
    0, or (`log_magnitude`) log10 |true value| so vanishing gradients stay visible; non-finite crossed."""
    rows, stride = heatmap_rows(unit_frame)
    quantities = [q for q in SERIES if q in set(rows["quantity"])]
    tooltip = [_field("series:N", title="gradient"), _field("t:Q", title="step t"),
               _field("unit:Q", title="hidden unit"), _field("value_text:N", title="value"),
               _field("magnitude_text:N", title="|value| (true)")]
    x = _field("t:O", title="time step t" + (f" (bins of {stride})" if stride > 1 else ""),
               axis={"labelOverlap": True})
    y = _field("unit:O", title="hidden unit", axis={"labelOverlap": True})
    legend = {"orient": "bottom", "direction": "horizontal", "gradientLength": 260, "titleLimit": 400}
    cell = {"x": x, "y": y, "tooltip": tooltip}
    if log_magnitude:
        finite = pd.to_numeric(rows["log10_magnitude"], errors="coerce").dropna()
        low, high = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 0.0)
        high = high if high > low else low + 1
        color = _field("log10_magnitude:Q", title="log10 |gradient value| (true magnitude)",
                       scale={"scheme": "viridis", "domain": [low, high]}, legend=legend)
        layers = [{"mark": {"type": "rect"}, "transform": [{"filter": "isValid(datum.log10_magnitude)"}],
                   "encoding": {**cell, "color": color}}]
        if rows["zero"].any():
            layers.append({"mark": {"type": "rect", "color": GUIDE_GRAY, "opacity": 0.35},
                           "transform": [{"filter": "datum.zero"}], "encoding": cell})
        subtitle = [f"Colour: log10 of the true |value| ({_fmt_log10(low)} to {_fmt_log10(high)}), also below the "
                    "dtype's range; the sign is not shown."]
        if rows["zero"].any():
            subtitle.append("Gray cells are exactly 0.")
    else:
        color = _field("value:Q", title="gradient value (diverging, symmetric around 0)",
                       scale={"scheme": "blueorange", "domain": heatmap_domain(rows), "domainMid": 0}, legend=legend)
        layers = [{"mark": {"type": "rect"}, "encoding": {**cell, "color": color}}]
        m = heatmap_domain(rows)[1]
        subtitle = [f"Colour: the value on a diverging scale from −{_fmt(m)} (blue) through 0 (light) to {_fmt(m)} "
                    "(orange)."]
    # Linear colours need a value in the dtype: every inf/NaN cell is crossed. Log colours use the true size: only
    # cells without one (undefined) are crossed.
    crossed = "nonfinite" if log_magnitude else "value_nonfinite"
    if rows[crossed].any():
        layers.append({"mark": {"type": "point", "shape": "cross", "color": GUIDE_GRAY, "filled": True},
                       "transform": [{"filter": f"datum[{crossed!r}]"}], "encoding": cell})
        subtitle.append("Crosses mark values with no true size (undefined)." if log_magnitude else
                        "Crosses mark inf/NaN in the dtype (the tooltip gives the true size where there is one).")
    if stride > 1:
        subtitle.append(f"Each column shows the value of largest magnitude in {stride} steps.")
    return VegaLiteChart({
        "data": rows, "facet": {"column": _field("series:N", title=None, sort=[SERIES[q] for q in quantities])},
        "spec": {"layer": layers, "width": 300 if len(quantities) <= 2 else 230, "height": 240}, "spacing": 12,
        "title": {"text": "Gradient per time step and hidden unit", "subtitle": subtitle}})


# --- flow / devices charts ------------------------------------------------------------------------------------------
# Pages 3 (gradient flow through time) and 5 (devices & engines). Inputs are the DataFrames of
# `gru_explainer.flow` (decay_profile / sweep, decay_rates) and `gru_explainer.compare.compare`.

CELL_COLORS = {"gru": "#0072B2", "lstm": "#009E73", "rnn_tanh": "#E69F00", "rnn_relu": "#D55E00",
               "answer_gru": "#CC79A7"}
"""Okabe–Ito colours per cell (colour-blind safe); shapes and dashes repeat the distinction."""
CELL_SHAPES = {"gru": "circle", "lstm": "diamond", "rnn_tanh": "triangle-right", "rnn_relu": "triangle-left",
               "answer_gru": "wedge"}
CELL_DASHES = {"gru": [1, 0], "lstm": [7, 3], "rnn_tanh": [3, 2], "rnn_relu": [8, 3, 2, 3], "answer_gru": [4, 4]}
STAR_SHAPE = ("M0,-1L0.294,-0.405L0.951,-0.309L0.476,0.155L0.588,0.809L0,0.5L-0.588,0.809L-0.476,0.155L-0.951,-0.309"
              "L-0.294,-0.405Z")
"""A five-pointed star (inner radius 0.5: about as much ink as the other shapes), a shape no cell or cause uses."""
CELL_STATE_SHAPE = STAR_SHAPE
CELL_STATE_DASH = [10, 3, 2, 3, 2, 3]
"""The decay chart's ‖dL/dc_t‖ line (LSTM): the cell's colour with a dash-dot-dot no cell line and no fitted
(dotted) line uses, and a star for its points."""
ENGINE_COLORS = {"fused": "#4c78a8", "twin": "#f58518"}
DIFF_SERIES = {"hidden_grad_diff": "dL/dh_t (hidden_grad)", "stacked_grad_diff": "y.grad (stacked_grad)",
               "input_grad_diff": "dL/dx_t (input_grad)"}
DIFF_STATUS = {"value": "non-zero", "zero": "exactly 0 (identical)", "nonfinite": "inf/NaN mismatch"}
DIFF_SHAPES = {DIFF_STATUS["value"]: "circle", DIFF_STATUS["zero"]: "triangle-down", DIFF_STATUS["nonfinite"]: "cross"}


def _cell_scale(cells: list[str]) -> alt.Scale:
    import altair as alt

    return alt.Scale(domain=[CELL_LABELS.get(c, c) for c in cells],
                     range=[CELL_COLORS.get(c, "#888888") for c in cells])


def _with_quantity(profile: pd.DataFrame) -> pd.DataFrame:
    """A decay profile with its `quantity` column: profiles made before the cell state was added are ‖dL/dh_t‖ only
    (as `flow.with_quantity`; charts keep to pandas and altair)."""
    return profile if "quantity" in profile else profile.assign(quantity="hidden_state")


def series_label(cell: str, quantity: str = "hidden_state") -> str:
    """The decay chart's name of one line: the cell's label for ‖dL/dh_t‖ ("LSTM"), "LSTM dL/dc_t" for its cell."""
    label = CELL_LABELS.get(cell, cell)
    return label if quantity == "hidden_state" else f"{label} {SERIES_SHORT.get(quantity, quantity)}"


def _series_order(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(cell, quantity) of the decay chart's lines: by cell in order of appearance, ‖dL/dh_t‖ before ‖dL/dc_t‖."""
    pairs = list(dict.fromkeys(zip(rows["cell"].astype(str), rows["quantity"].astype(str), strict=True)))
    cells = list(dict.fromkeys(c for c, _ in pairs))
    return sorted(pairs, key=lambda p: (cells.index(p[0]), p[1] != "hidden_state"))


def _line_scales(order: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Colour (the cell's) and dash (the cell's for ‖dL/dh_t‖, CELL_STATE_DASH for ‖dL/dc_t‖) per decay line."""
    domain = [series_label(c, q) for c, q in order]
    colors = [CELL_COLORS.get(c, GUIDE_GRAY) for c, _ in order]
    dashes = [CELL_DASHES.get(c, [1, 0]) if q == "hidden_state" else CELL_STATE_DASH for c, q in order]
    return {"domain": domain, "range": colors}, {"domain": domain, "range": dashes}


def decay_rows(profile: pd.DataFrame, dtype: str | None = None) -> pd.DataFrame:
    """Rows of the decay chart: one per (cell, layer, direction, quantity, step), at TRUE magnitudes when the profile
    has a `log10_norm` column (underflow / overflow drawn where they are), exact zeros in a band below the plot.

    Columns: cell, cell_label, quantity ("hidden_state"; "cell_state" for an LSTM's ‖dL/dc_t‖), series_label (the
    line: `series_label`), gradient ("dL/dh_t" / "dL/dc_t"), seq_len, weight_scale, layer, direction, side ("back" /
    "ahead"; "back" for older profiles), t, distance, norm (dtype value, finite or None), log10_norm, norm_text,
    true_text, status, status_label, marker, plot_y (value-axis position; the domain edge for band rows: below /
    above every value), line_y (finite non-zero dtype values only), true_line_y (every point on the value axis),
    band_row (None on the axis, -1 the inf/NaN band above, 0.. one zero-band row per line). attrs: as
    `norm_rows`, and series: the lines' (cell, quantity) in legend order.
    """
    rows = _with_quantity(profile.reset_index(drop=True))
    true = "log10_norm" in rows
    log10 = _true_log10(rows)
    status = _row_status(rows, log10)
    if not true:  # older profiles: a zero on a path is underflow there, with no true magnitude to draw
        status[(status == "zero_on_path") & rows["underflow"].astype(bool).to_numpy()] = "underflow"
    dtype = dtype or (infer_dtype(rows, log10) if true else "float32")
    layout = _magnitude_layout(log10, status, True, rows["norm"].astype(float).to_numpy(), dtype)
    below = layout["below"] | (status == "underflow") & ~layout["on_axis"]
    order = _series_order(rows)
    lines = pd.Series([series_label(c, q) for c, q in zip(rows["cell"].astype(str), rows["quantity"].astype(str),
                                                          strict=True)], dtype=object)
    band, present = _band_rows(below, layout["above"] & ~below, lines, [series_label(c, q) for c, q in order])
    low, high = layout["domain"]
    on_axis = np.isfinite(layout["plot_y"])
    plot_y = np.where(on_axis, layout["plot_y"], np.where(layout["above"] & ~below, high, low))
    norm = rows["norm"].astype(float).to_numpy()
    label = {k: v.format(dtype=dtype) for k, v in STATUS.items()}
    if not true:
        label["underflow"] = "exactly 0: underflow"
    out = pd.DataFrame({
        "cell": rows["cell"].astype(str),
        "cell_label": rows["cell"].map(lambda c: CELL_LABELS.get(c, c)),
        "quantity": rows["quantity"].astype(str),
        "series_label": lines,
        "gradient": rows["quantity"].map(lambda q: SERIES_SHORT.get(q, q)),
        "seq_len": rows["seq_len"].astype(int),
        "weight_scale": rows["weight_scale"].astype(float),
        "layer": rows["layer"].astype(int),
        "direction": rows["direction"].astype(str),
        "side": rows["side"].astype(str) if "side" in rows else "back",
        "t": rows["t"].astype(int),
        "distance": rows["distance"].astype(int),
        "norm": [float(v) if math.isfinite(v) else None for v in norm],
        "log10_norm": [float(v) if math.isfinite(v) else None for v in log10],
        "norm_text": [_fmt(float(v)) for v in norm],
        "true_text": [_fmt_log10(v) for v in log10],
        "status": status,
        "status_label": _labels(status, label, log10, on_axis),
        "marker": [line if s == "value" else text for line, s, text in zip(
            lines, status, _labels(status, label, log10, on_axis), strict=True)],
        "plot_y": plot_y.astype(float),
        "line_y": [float(v) if s == "value" else None for v, s in zip(plot_y, status, strict=True)],
        "true_line_y": [float(v) if ok else None for v, ok in zip(plot_y, on_axis, strict=True)],
        "band_row": band,
    })
    out.attrs.update(domain=layout["domain"], limits=layout["limits"],
                     band_labels=[f"{line} = 0" for line in present],
                     top_band=bool((layout["above"] & ~below).any()), dtype=dtype, log_scale=True, series=order)
    return out


def fit_rows(rates: pd.DataFrame, profile: pd.DataFrame) -> pd.DataFrame:
    """The fitted lines norm = 10**log10_intercept · rate**distance, over the distances of the fitted points; one
    per rate row, i.e. per (cell, …, quantity): an LSTM's ‖dL/dc_t‖ gets its own."""
    rows = []
    profile = _with_quantity(profile)
    for rate in rates.itertuples(index=False):
        if not (math.isfinite(rate.rate) and math.isfinite(rate.log10_intercept)):
            continue
        quantity = getattr(rate, "quantity", "hidden_state")
        group = profile[(profile["cell"] == rate.cell) & (profile["layer"] == rate.layer)
                        & (profile["direction"] == rate.direction) & (profile["seq_len"] == rate.seq_len)
                        & (profile["weight_scale"] == rate.weight_scale) & (profile["quantity"] == quantity)]
        norm = group["norm"].astype(float)
        used = group[np.isfinite(norm.to_numpy()) & (norm.to_numpy() > 0)]
        if used.empty:
            continue
        for d in (int(used["distance"].min()), int(used["distance"].max())):
            rows.append({"cell": rate.cell, "cell_label": CELL_LABELS.get(rate.cell, rate.cell),
                         "quantity": quantity, "series_label": series_label(rate.cell, quantity),
                         "gradient": SERIES_SHORT.get(quantity, quantity), "distance": d,
                         "fit_y": 10.0 ** (rate.log10_intercept + rate.log10_rate * d),
                         "rate_text": f"{rate.rate:.4g}"})
    return pd.DataFrame(rows, columns=["cell", "cell_label", "quantity", "series_label", "gradient", "distance",
                                       "fit_y", "rate_text"])


def decay_chart(profile: pd.DataFrame, rates: pd.DataFrame | None = None, dtype: str | None = None) -> VegaLiteChart:
    """‖dL/dh_t‖ vs distance from the target step, one line per cell on one log scale, at true magnitudes (when
    the profile has them); exact zeros in a band below the plot, inf/NaN in a band above. An LSTM's ‖dL/dc_t‖
    rows (quantity "cell_state") get a line of their own beside its ‖dL/dh_t‖: the cell's colour, CELL_STATE_DASH
    and star points, legend entry "LSTM dL/dc_t".

    `profile` holds one layer and direction (and one seq_len / weight_scale) per cell; `rates` (decay_rates of
    it) adds the fitted geometric lines, dotted.
    """
    rows = decay_rows(profile, dtype)
    order = rows.attrs["series"]
    has_cell = any(q != "hidden_state" for _, q in order)
    height, width = 300, 620
    band_height = _band_height(rows)
    ahead = bool((rows["distance"] < 0).any())
    x = _field("distance:Q", title="steps back from the target step (distance)" if not ahead else
               "steps back from the read step (distance; negative: steps ahead of it)",
               scale={"nice": False, "padding": 8}, axis={"tickMinStep": 1, "format": "d", "offset": band_height})
    y_title = ("‖dL/dh_t‖, ‖dL/dc_t‖" if has_cell else "‖dL/dh_t‖") + " (L2 over batch × units, log scale)"
    y_scale, y_axis = _y_scale(rows), _log_axis(rows)
    color_scale, dash_scale = _line_scales(order)
    # Long legend strokes (20 px): enough of each dash pattern to tell an LSTM's two lines apart.
    line_legend = _legend("cell", symbolType="stroke", symbolSize=400)
    color = _field("series_label:N", scale=color_scale, legend=line_legend)
    dash = _field("series_label:N", scale=dash_scale, legend=line_legend)
    present = list(dict.fromkeys(rows["marker"]))
    domain, shapes = [], []
    for cell, quantity in order:
        if series_label(cell, quantity) in present:
            domain.append(series_label(cell, quantity))
            shapes.append(CELL_SHAPES.get(cell, "circle") if quantity == "hidden_state" else CELL_STATE_SHAPE)
    for status in STATUS_SHAPES:
        for label in dict.fromkeys(rows.loc[rows["status"] == status, "status_label"]):
            domain.append(label)
            shapes.append(STATUS_SHAPES[status])
    shape = _field("marker:N", scale={"domain": domain or ["none"], "range": shapes or ["circle"]},
                   legend=_legend("marker", symbolFillColor=GUIDE_GRAY, symbolStrokeColor=GUIDE_GRAY, columns=3))
    tooltip = [_field("cell_label:N", title="cell"), _field("gradient:N", title="gradient"),
               _field("t:Q", title="step t"), _field("distance:Q", title="steps back"),
               _field("true_text:N", title="norm (true)"),
               _field("norm_text:N", title=f"norm in {rows.attrs['dtype']}"),
               _field("status_label:N", title="status")]
    steps = max(1, int(rows["distance"].max() - rows["distance"].min()) + 1) if len(rows) else 1
    size = float(np.clip((0.9 * width / steps) ** 2, 10, 50))
    main: list[dict] = [
        {"mark": {"type": "line", "strokeWidth": 2, "clip": True, "invalid": "break-paths-filter-domains"},
         "encoding": {"x": x, "y": _field("true_line_y:Q", title=y_title, scale=y_scale, axis=y_axis),
                      "color": color, "strokeDash": dash, "detail": _field("series_label:N")}},
        {"mark": {"type": "point", "size": size, "filled": True, "opacity": 0.95},
         "transform": [{"filter": "!isValid(datum.band_row)"}],
         "encoding": {"x": x, "y": _field("plot_y:Q", title=y_title, scale=y_scale, axis=y_axis), "color": color,
                      "shape": shape, "tooltip": tooltip}},
    ]
    if rates is not None:
        fitted_side = profile[profile["side"] == "back"] if "side" in profile else profile  # where the rate is fitted
        fits = fit_rows(rates, fitted_side)
        if not fits.empty:
            main.append({"data": fits, "mark": {"type": "line", "strokeDash": [1, 3], "strokeWidth": 1.5,
                                                "opacity": 0.9, "clip": True},
                         "encoding": {"x": x, "y": _field("fit_y:Q", title=y_title, scale=y_scale, axis=y_axis),
                                      "color": color, "detail": _field("series_label:N"),
                                      "tooltip": [_field("cell_label:N", title="cell"),
                                                  _field("gradient:N", title="gradient"),
                                                  _field("rate_text:N", title="fitted rate per step")]}})
    band = _band_group(rows, height, width, x, color, shape, tooltip, size=size)
    chart = {"data": rows, "layer": main, "width": width, "height": height} if band is None else {
        "data": rows, "layer": [{"layer": main, "encoding": {"x": x}}, {"layer": band, "encoding": {"x": x}}],
        "width": width, "height": height, "resolve": {"scale": {"y": "independent"}}}
    subtitle = ["Solid/dashed per cell: ‖dL/dh_t‖ per step; dotted: the fitted geometric decay norm ≈ C·rate^k. "
                "A straight line on this log scale means a constant per-step factor."]
    if has_cell:
        subtitle.append("Dash-dot-dot with stars, in the cell's colour: the LSTM's cell-state gradient ‖dL/dc_t‖ at "
                        "the same steps (c_t = f_t·c_{t-1} + i_t·g_t: each step back multiplies it by the forget "
                        "gate, plus what reaches it through h_t).")
    notes = []
    if rows["status"].isin(["underflow", "overflow"]).any() and rows.attrs["limits"]:
        notes.append("points past the dashed line are outside " + rows.attrs["dtype"] + "'s range, drawn at their "
                     "true size")
    if rows.attrs["band_labels"]:
        notes.append("the band below holds exact zeros")
    if rows.attrs["top_band"]:
        notes.append("the band above holds inf/NaN")
    if notes:
        text = "; ".join(notes) + "."
        subtitle.append(text[0].upper() + text[1:])
    what = "hidden-state gradient (and the LSTM's cell-state gradient)" if has_cell else "hidden-state gradient"
    return VegaLiteChart({**chart, "autosize": AUTOSIZE_PAD, "title": {
        "text": f"How the {what} changes with distance from the target step", "subtitle": subtitle}})


def jacobian_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Long rows of `flow.jacobian_profile` frames (one or more cells): the measured ‖dL/ds_t‖, its Jacobian bound
    and sigma_max per step, as log10 values (finite only: a zero or undefined value leaves a gap)."""
    rows = frame[frame["distance"] >= 0]
    parts = []
    for column, curve in (("log10_state_norm", "measured ‖dL/ds_t‖"),
                          ("log10_bound", "bound: read-step norm × Π σ_max")):
        parts.append(pd.DataFrame({"cell": rows["cell"],
                                   "cell_label": rows["cell"].map(lambda c: CELL_LABELS.get(c, c)),
                                   "t": rows["t"].astype(int), "distance": rows["distance"].astype(int),
                                   "curve": curve, "log10": rows[column].astype(float)}))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["cell", "cell_label", "t", "distance", "curve", "log10"])
    out = out[np.isfinite(out["log10"].to_numpy(dtype=float))].reset_index(drop=True)
    out["value_text"] = [_fmt_log10(v) for v in out["log10"]]
    return out


def jacobian_chart(frame: pd.DataFrame) -> alt.VConcatChart:
    """Why the gradient shrinks or grows: the measured ‖dL/ds_t‖ beside its bound (read-step norm × the running
    product of the step Jacobians' largest singular values), and sigma_max per step with the line sigma = 1."""
    import altair as alt

    rows = jacobian_rows(frame)
    cells = list(dict.fromkeys(rows["cell"])) or list(dict.fromkeys(frame["cell"]))
    color = alt.Color("cell_label:N", title="cell", scale=_cell_scale(cells), legend=alt.Legend(orient="top"))
    x = alt.X("distance:Q", title="steps back from the read step", axis=alt.Axis(tickMinStep=1, format="d"))
    dash = alt.StrokeDash("curve:N", title=None, legend=alt.Legend(orient="top", labelLimit=300),
                          scale=alt.Scale(domain=["measured ‖dL/ds_t‖", "bound: read-step norm × Π σ_max"],
                                          range=[[1, 0], [6, 4]]))
    top = alt.Chart(rows).mark_line(strokeWidth=2).encode(
        x=x, y=alt.Y("log10:Q", title="log10 of the norm"), color=color, strokeDash=dash,
        detail="cell_label:N",
        tooltip=[alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("curve:N", title="curve"),
                 alt.Tooltip("t:Q", title="step t"), alt.Tooltip("value_text:N", title="value")],
    ).properties(width="container", height=220, title=alt.Title(
        "Measured gradient vs the Jacobian bound",
        subtitle="‖dL/ds_{t-1}‖ <= ‖∂s_t/∂s_{t-1}‖₂ · ‖dL/ds_t‖ where only the read step injects gradient "
                 "(s = h, or (h, c) for LSTM; batch item shown)."))
    sigma = frame[(frame["distance"] >= 0) & np.isfinite(frame["log10_sigma_max"].astype(float))].copy()
    sigma["cell_label"] = sigma["cell"].map(lambda c: CELL_LABELS.get(c, c))
    sigma["sigma_text"] = [_fmt(float(v)) for v in sigma["sigma_max"]]
    per_step = alt.Chart(sigma).mark_line(point=True, strokeWidth=1.5).encode(
        x=x, y=alt.Y("sigma_max:Q", title="σ_max(∂s_t/∂s_{t-1})", scale=alt.Scale(type="log")),
        color=color, tooltip=[alt.Tooltip("cell_label:N", title="cell"), alt.Tooltip("t:Q", title="step t"),
                              alt.Tooltip("sigma_text:N", title="σ_max")])
    one = alt.Chart(pd.DataFrame({"one": [1.0]})).mark_rule(strokeDash=[4, 4], color=GUIDE_GRAY).encode(
        y="one:Q")
    bottom = alt.layer(per_step, one).properties(width="container", height=160, title=alt.Title(
        "Largest singular value of each step's Jacobian", subtitle="Above the dashed line 1 a step can grow the "
        "gradient; below it every step shrinks it."))
    return alt.vconcat(top, bottom).resolve_scale(color="shared")


def rate_chart(rates: pd.DataFrame) -> alt.LayerChart:
    """Fitted per-step rate of ‖dL/dh_t‖ vs weight scale, one line per cell (dash per sequence length), rate 1
    marked; an LSTM's cell-state rates (quantity "cell_state"), if any, are not drawn."""
    import altair as alt

    hidden = rates[rates["quantity"] == "hidden_state"] if "quantity" in rates else rates
    rows = hidden[np.isfinite(hidden["rate"].astype(float))].copy()
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
        autosize=pad(),
        title=alt.Title("Fitted per-step rate of the hidden-state gradient",
                        subtitle="The gray line is rate 1: the gradient keeps its size however far back it goes."))


def _device_rows(table: pd.DataFrame) -> pd.DataFrame:
    rows = table.copy()
    rows["run"] = rows["engine"] + " on " + rows["device"]
    return rows


def timing_chart(table: pd.DataFrame) -> alt.Chart:
    """Median wall time of `explain` per device and engine (horizontal bars)."""
    import altair as alt

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
    ).properties(width=560, height=alt.Step(26), autosize=pad(), title=alt.Title(
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
    import altair as alt

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
    return alt.layer(*layers).properties(autosize=pad(), title=alt.Title(
        "Do the engines and devices agree?",
        subtitle="Points: largest absolute difference per gradient; gray ticks: the tolerance. Exact zeros sit on "
                 "the dashed floor line."))


# --- page layout ------------------------------------------------------------------------------------------------------
# A page shows a chart's spec through `page_layout`: the title apart (text that wraps at any width), and the facet
# panels as separate single views that fill their container. What the charts encode is unchanged; only sizes move.

PHONE_PLOT_PX = 420
"""Below this plot width (a phone's column) legends stack into one column."""
LEGEND_LABEL_PX = 280
"""A legend label's width limit on wide screens; on a phone the plot's width minus a margin."""


def _title_lines(title: object) -> tuple[str, list[str]]:
    """A Vega-Lite title (text or {text, subtitle}) as (title, subtitle lines)."""
    if isinstance(title, dict):
        text, subtitle = title.get("text", ""), title.get("subtitle", [])
    else:
        text, subtitle = title or "", []
    text = " ".join(text) if isinstance(text, list) else str(text)
    return text, [subtitle] if isinstance(subtitle, str) else [str(line) for line in subtitle]


def _fluid(spec: dict) -> dict:
    """`spec` (a single or layered view) filling its container's width: the width moves to the top as "container",
    autosize fit-x counts axes and labels in, and legends stack into one column on a phone-width plot."""
    def walk(node: object, top: bool) -> None:
        if isinstance(node, dict):
            if not top:
                node.pop("width", None)
            for key, value in node.items():
                if key == "legend" and isinstance(value, dict):
                    _fluid_legend(value, node)
                elif key not in DATA_KEYS:
                    walk(value, False)
        elif isinstance(node, list):
            for item in node:
                walk(item, False)

    out = _spec_copy(spec)
    walk(out, True)
    # Several top (bottom) legends go one under the other at any width: each may then use the whole width its
    # columns are sized for (`_fluid_legend`); side by side the second one ran past the plot's edge, cut off.
    out.setdefault("config", {}).setdefault("legend", {})["layout"] = {
        "top": {"anchor": "start", "direction": "vertical", "margin": 6},
        "bottom": {"anchor": "start", "direction": "vertical", "margin": 6}}
    out["width"] = "container"
    out["autosize"] = {"type": "fit-x", "contains": "padding"}
    out.pop("title", None)
    return out


DATA_KEYS = ("data", "datasets")
"""Where a spec keeps its data rows: never changed by the layout, so shared by its copies (not copied)."""


def _spec_copy(node: object) -> object:
    """A deep copy of a spec's dicts and lists, except its data rows (shared: the layout never changes them)."""
    if isinstance(node, dict):
        return {k: v if k in DATA_KEYS else _spec_copy(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_spec_copy(v) for v in node]
    return node


LABEL_CHAR_PX = 6.5
"""A conservative width of one legend label character (11 px font), to size legend columns."""


def _break_title(title: object) -> object:
    """A long legend title broken into two lines before its parenthesis (Vega draws a list as lines)."""
    if isinstance(title, str) and len(title) > 28 and " (" in title:
        head, tail = title.split(" (", 1)
        return [head, "(" + tail]
    return title


def _fluid_legend(legend: dict, channel: dict) -> None:
    """Make a legend fit a plot of any width (legends sit above or below the plot, outside what fit-x sizes): as
    many columns as its longest label allows, long labels broken into lines at ': ' and ' (' on a phone-width plot
    instead of cut, a colour bar no longer than the plot and its title on two lines."""
    narrow = f"width < {PHONE_PLOT_PX}"
    domain = channel.get("scale", {}).get("domain")
    longest = max((len(str(v)) for v in domain), default=12) if isinstance(domain, list) else 24
    entry = round(LABEL_CHAR_PX * longest + 36)
    if "gradientLength" in legend or channel.get("type") == "quantitative":  # a colour bar
        legend["gradientLength"] = {"expr": f"min({legend.get('gradientLength', 200)}, max(width - 30, 80))"}
        legend["title"] = _break_title(legend.get("title", channel.get("title")))
        return
    if legend.get("orient", "right") in ("top", "bottom") or "columns" in legend:
        cap = legend.get("columns") or 6
        legend["columns"] = {"expr": f"min({cap}, max(1, floor((width + 40) / {entry})))"}
    legend["labelLimit"] = {"expr": f"{narrow} ? max(width + 40, 160) : {max(entry, LEGEND_LABEL_PX)}"}
    legend["labelExpr"] = (f"{narrow} && length(datum.label) > 28 ? split(replace(replace(datum.label, ': ', ':\\n'), "
                           f"' (', '\\n('), '\\n') : datum.label")


def _sorted_values(values: list, sort: object) -> list:
    """Facet header values in the facet's sort order (a list, "ascending" or "descending")."""
    present = list(dict.fromkeys(values))
    if isinstance(sort, list):
        return [v for v in sort if v in present] + [v for v in present if v not in sort]
    return sorted(present, key=str, reverse=sort == "descending")


def page_layout(spec: dict) -> dict:
    """How a page draws a chart spec (`chart.to_dict()`) at any width: its title and subtitle lines as text, and
    the chart as rows of panels, each a single view that fills its container.

    A facet becomes one panel per (row, column) value over its own rows of the data (same scales: the charts fix
    their domains), labelled with the facet's header values; the page places each row's panels side by side, and
    they stack on a narrow screen. Returns {"title": str, "subtitle": [lines], "rows": [[(label, spec), ...]]}.
    """
    title, subtitle = _title_lines(spec.get("title"))
    concat = "vconcat" if "vconcat" in spec else "hconcat" if "hconcat" in spec else None
    if concat:  # each view of a concatenation is a panel: one per row (vconcat) or side by side (hconcat)
        shared = {k: v for k, v in spec.items() if k in ("$schema", "config", "data", "datasets", "transform")}
        views = [("", {**_fluid({**shared, **view}), **({"title": view["title"]} if "title" in view else {})})
                 for view in spec[concat]]
        return {"title": title, "subtitle": subtitle, "rows": [[v] for v in views] if concat == "vconcat" else [views],
                "align": "top"}
    if "facet" not in spec:
        return {"title": title, "subtitle": subtitle, "rows": [[("", _fluid(spec))]], "align": "top"}
    facet, inner = spec["facet"], spec["spec"]
    datasets = spec.get("datasets", {})
    name = spec.get("data", {}).get("name")
    values = datasets[name] if name in datasets else spec.get("data", {}).get("values", [])
    row_def, col_def = facet.get("row"), facet.get("column")
    row_values = _sorted_values([v.get(row_def["field"]) for v in values], row_def.get("sort")) if row_def else [None]
    col_values = _sorted_values([v.get(col_def["field"]) for v in values], col_def.get("sort")) if col_def else [None]
    shared = {k: v for k, v in spec.items() if k in ("$schema", "config")}
    rows = []
    for row_value in row_values:
        panels = []
        for col_value in col_values:
            subset = [v for v in values if (row_def is None or v.get(row_def["field"]) == row_value)
                      and (col_def is None or v.get(col_def["field"]) == col_value)]
            if not subset:
                continue
            panel = {**shared, **inner, "data": {"values": subset}}
            if "resolve" in spec and "resolve" not in inner:
                panel["resolve"] = spec["resolve"]
            label = " · ".join(str(v) for v in (row_value, col_value) if v is not None)
            panels.append((label, panel))
        if panels:
            rows.append(panels)
    # The panels share their scales, so one legend tells all: the first panel draws it, the others none. The page
    # aligns side-by-side panels at the edge away from the legend, so their plots stay level.
    legend_at_top = all(leg.get("orient", "right") == "top" for leg in _legends(rows[0][0][1])) if rows else True
    rows = [[(label, panel if (i, j) == (0, 0) else _without_legends(panel)) for j, (label, panel) in enumerate(row)]
            for i, row in enumerate(rows)]
    return {"title": title, "subtitle": subtitle, "rows": [[(label, _fluid(p)) for label, p in row] for row in rows],
            "align": "bottom" if legend_at_top else "top"}


LEGEND_CHANNELS = ("color", "fill", "stroke", "strokeDash", "shape", "size", "opacity")


def _leaves(node: object) -> list[dict]:
    """Every unit spec (a dict with a mark) inside a layered spec."""
    if isinstance(node, dict):
        if "mark" in node:
            return [node]
        return [leaf for child in node.get("layer", []) for leaf in _leaves(child)]
    return []


def _legend_defs(spec: dict) -> list[dict]:
    """The encoding definitions of `spec` that can draw a legend (a field on a legend channel)."""
    return [d for leaf in _leaves(spec) for c, d in leaf.get("encoding", {}).items()
            if c in LEGEND_CHANNELS and isinstance(d, dict) and "field" in d]


def _legends(spec: dict) -> list[dict]:
    """The legend definitions `spec` draws."""
    return [d["legend"] for d in _legend_defs(spec) if isinstance(d.get("legend"), dict)]


def _without_legends(spec: dict) -> dict:
    """`spec` with every legend switched off (the layout's first panel draws them)."""
    out = _spec_copy(spec)
    for definition in _legend_defs(out):
        definition["legend"] = None
    return out
