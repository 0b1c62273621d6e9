"""Gradient flow through time: how dL/dh_t (and an LSTM's dL/dc_t) decays or grows with the distance from the step
the target reads."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

import ui
from gru_explainer import Limits
from gru_explainer.budget import BudgetError, check_flow
from gru_explainer.charts import decay_chart, jacobian_chart, rate_chart
from gru_explainer.flow import (
    cell_config,
    cell_label,
    decay_rates,
    describe_cell_path,
    describe_jacobians,
    describe_rate,
    describe_sweep,
    hidden_rows,
    sweep,
)
from gru_explainer.urlstate import Notice, Quote, ViewParam, view_from_query, view_to_query

CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu", "answer_gru")
DEFAULT_CELLS = ["gru", "lstm", "rnn_tanh", "rnn_relu"]
SEQ_LENS = (5, 10, 20, 50, 100, 200)
WEIGHT_SCALES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
MAX_SWEEP_RUNS = 60
"""Bounded work: the sweep refuses more (cell, T, weight scale) combinations than this."""
MAX_SWEEP_STATES = 16 * 1_048_576
"""...and more state elements in total (runs × batch × T × layers × directions × hidden) than this."""


def _from_url(key: str, options: list, default: list) -> None:
    """Initialise a multiselect from the URL (key "flow.…") once; unknown values fall back with a notice."""
    if key in st.session_state:
        return
    raw = st.query_params.get(key)
    if raw is None:
        st.session_state[key] = default
        return
    by_text = {str(o): o for o in options}
    values = [by_text.get(part.strip()) for part in raw.split(",") if part.strip()]
    if values and all(v is not None for v in values):
        st.session_state[key] = list(dict.fromkeys(values))
    else:
        ui.show_notice(Notice(f"The URL's {key}=", Quote(raw), f" is not a list of {', '.join(map(str, options))}; "
                              "using the default."))
        st.session_state[key] = default


def _keep_offered(key: str, options: list) -> None:
    """Drop selections that are not among `options` (a multiselect would hand them back as text)."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in options and type(v) is type(options[0])]


def _to_url(key: str, values: list, default: list) -> None:
    text = ",".join(map(str, values))
    if values == default:
        st.query_params.pop(key, None)
    elif st.query_params.get(key) != text:
        st.query_params[key] = text


VIEW = "gx_flow_view"
"""The layer / direction the page follows, by URL key (kept across page switches, mirrored in the URL)."""
VIEW_PARAMS = (ViewParam("flow.layer", int, None, low=0, high=Limits.from_env().max_num_layers - 1),
               ViewParam("flow.direction", str, "forward", choices=("forward", "reverse")))


def _view_from_url() -> None:
    """On the page's first run in a session, read the followed layer and direction from the URL (with notices)."""
    if VIEW not in st.session_state:
        values, notices = view_from_query(st.query_params.to_dict(), VIEW_PARAMS)
        for notice in notices:
            ui.show_notice(notice)
        st.session_state[VIEW] = values


def _view_to_url() -> None:
    """Mirror the non-default followed layer / direction in the URL."""
    wanted = view_to_query(st.session_state[VIEW], VIEW_PARAMS)
    ui.mirror_view(wanted, VIEW_PARAMS)


def _pick(profile: pd.DataFrame, layer: int, direction: str) -> pd.DataFrame:
    """The rows of the chosen layer and direction; a cell with fewer layers shows its top layer."""
    parts = []
    for _, rows in profile.groupby("cell", sort=False):
        top = int(rows["layer"].max())
        parts.append(rows[(rows["layer"] == min(layer, top)) & (rows["direction"] == direction)])
    return pd.concat(parts, ignore_index=True) if parts else profile.iloc[0:0]


def _rate_text(rate: float) -> str:
    return f"×{rate:.3g}" if math.isfinite(rate) else "n/a"


cfg = ui.config_sidebar()
title_col, glossary_col = st.columns([5, 1], vertical_alignment="bottom")
title_col.title("Gradient flow through time")
with glossary_col:
    ui.glossary(("anchor / read step", "structural zero", "underflow"))
st.caption("Backpropagation through time multiplies dL/dh_t by one Jacobian ∂h_t/∂h_{t-1} per step back, so its "
           "size changes roughly geometrically with the distance from the step the target reads. For an LSTM the "
           "chart also draws dL/dc_t: its cell path c_t = f_t·c_{t-1} + i_t·g_t multiplies the gradient by the "
           "forget gate at each step back instead. Compare cells, then sweep the sequence length and the weight "
           "scale.")

_from_url("flow.cells", list(CELLS), DEFAULT_CELLS)
cells = st.multiselect("Cells to compare", CELLS, key="flow.cells", format_func=cell_label,
                       help="Each cell runs with the sidebar's sizes, seed, target and device; the seed answer's GRU "
                            "always has one layer.")
cells = [c for c in cells if c in CELLS]  # a value decoded against stale options comes back as text: drop it
_to_url("flow.cells", cells, DEFAULT_CELLS)
if not cells:
    st.info("Choose at least one cell to compare.", icon=":material/info:")
    st.stop()

col_layer, col_dir = st.columns(2)
layers = list(range(cfg.num_layers))
_view_from_url()
if "flow_layer" not in st.session_state:  # first run, or back from another page: the stored view
    st.session_state["flow_layer"] = st.session_state[VIEW].get("flow.layer", layers[-1])
if st.session_state["flow_layer"] not in layers:
    st.session_state["flow_layer"] = layers[-1]
layer = col_layer.selectbox("Layer", layers, key="flow_layer", help="Layer of h_t to follow (top = the one y stacks).")
direction = "forward"
if cfg.bidirectional:
    st.session_state.setdefault("flow_direction", st.session_state[VIEW].get("flow.direction", "forward"))
    direction = col_dir.radio("Direction", ["forward", "reverse"], key="flow_direction", horizontal=True,
                              help="Distance counts processing steps: the reverse direction runs from t = T-1 to 0.")
    st.session_state[VIEW]["flow.direction"] = direction
st.session_state[VIEW]["flow.layer"] = None if layer == layers[-1] else int(layer)
_view_to_url()

try:  # bounded work: the profiles and Jacobians of every cell, estimated before any of them runs
    check_flow(cfg, cells)
    profile = sweep(cfg, cells=cells, profile=ui.cached_profile, skip_errors=True)
except Exception as err:  # never a traceback: unexpected failures (e.g. out of memory) are shown as errors
    ui.show_error(err)
    st.stop()
for cell, _, _, message in profile.attrs.get("skipped", []):
    st.error(ui.md_escape(f"{cell_label(cell)}: {message}"), icon=":material/error:")
if profile.empty:
    st.stop()

shown = _pick(profile, int(layer), direction)
all_rates = decay_rates(shown)  # ‖dL/dh_t‖ per cell, and ‖dL/dc_t‖ for an LSTM
rates = hidden_rows(all_rates)
cell_path = describe_cell_path(all_rates)
drawn = "‖dL/dh_t‖ and the LSTM's ‖dL/dc_t‖" if cell_path else "‖dL/dh_t‖"
st.subheader(f"{drawn} vs steps back, T = {cfg.seq_len}, weight scale {cfg.weight_scale:g}")
ui.show_chart(decay_chart(shown, all_rates))
for line in cell_path:
    st.caption(line)

with st.expander("How this is measured"):
    st.markdown(
        "- **Distance** k counts processing steps back from the *read step*: the step where the most gradient is "
        "read directly (from y, h_n or the layer above). For `y[:, -1].sum()` that is t = T-1 of a forward "
        "direction; a reverse direction runs from t = T-1 down to 0, so its distance grows with t. Steps that "
        "cannot influence the target (structural zeros) are not drawn. Steps with a negative distance get their "
        "gradient only from the layer above (a lower layer of a bidirectional model), not through this "
        "direction's recurrence.\n"
        "- **‖dL/dh_t‖** is the total derivative's L2 norm over the batch and the hidden units, exactly the "
        "explorer's hidden-state curve, at its true magnitude (also where float32 shows 0 or inf).\n"
        "- **‖dL/dc_t‖** (LSTM only) is the same norm of the cell state's total derivative, the explorer's "
        "cell-state curve, at the hidden state's distances. Its rate is fitted the same way.\n"
        "- **Rate**: the least-squares slope b of log10‖dL/dh_t‖ against k ≥ 0 gives the per-step factor 10^b. "
        "Exact zeros and undefined (NaN) values carry no magnitude and are left out of the fit, but stay on the "
        "chart as markers.")

st.markdown("**Fitted per-step rate** ×r: each step further back from the read step multiplies ‖dL/dh_t‖ by "
            "about r (least squares of log10‖dL/dh_t‖ against the distance). Below 1 the gradient vanishes with "
            "distance, above 1 it explodes.")
metric_cols = st.columns(len(rates) or 1)
for col, row in zip(metric_cols, rates.itertuples(index=False), strict=False):
    zeros = f" {row.zero_steps} step(s) are exactly 0 in {cfg.dtype}." if row.zero_steps else ""
    col.metric(cell_label(row.cell), _rate_text(row.rate), help=describe_rate(row) + zeros, border=True)
for row in rates.itertuples(index=False):
    st.caption(f"{cell_label(row.cell)}: {describe_rate(row)}")

st.subheader("Why: the Jacobian of each step")
st.caption("Each step back multiplies the gradient by the transpose of that step's Jacobian ∂s_t/∂s_{t-1} "
           "(s = h, or (h, c) for LSTM). Its largest singular value σ_max bounds how much one step can change the "
           "gradient's norm; their running product bounds the whole decay. Batch item 0.")
try:
    jacobians = pd.concat([ui.cached_jacobians(cell_config(cfg, cell), int(layer), direction) for cell in cells],
                          ignore_index=True)
except Exception as err:  # never a traceback
    ui.show_error(err)
else:
    if not jacobians.empty:
        ui.show_chart(jacobian_chart(jacobians))
        for line in describe_jacobians(jacobians):
            st.caption(line)

st.subheader("Sweep: sequence length × weight scale")
limits = Limits.from_env()
# Options: the fixed choices, the sidebar's current value, and what this session picked before (the sidebar's value
# may have moved on since), so a selection never points at a value that is no longer offered.
picked_lens = {t for t in st.session_state.get("flow.T", []) if type(t) is int and 1 <= t <= limits.max_seq_len}
picked_scales = {s for s in st.session_state.get("flow.scale", [])
                 if type(s) is float and 0 < s <= limits.max_weight_scale}
seq_options = sorted({t for t in SEQ_LENS if t <= limits.max_seq_len} | {cfg.seq_len} | picked_lens)
scale_options = sorted(set(WEIGHT_SCALES) | {float(cfg.weight_scale)} | picked_scales)
_keep_offered("flow.T", seq_options)
_keep_offered("flow.scale", scale_options)
default_lens, default_scales = [cfg.seq_len], sorted({0.5, 1.0, 2.0, float(cfg.weight_scale)})
_from_url("flow.T", seq_options, default_lens)
_from_url("flow.scale", scale_options, default_scales)
c1, c2 = st.columns(2)
seq_lens = c1.multiselect("Sequence lengths T", seq_options, key="flow.T")
scales = c2.multiselect("Weight scales", scale_options, key="flow.scale", format_func=lambda v: f"{v:g}",
                        help="Multiplies PyTorch's init range U(±1/√H): above 1 gradients tend to explode, "
                             "below 1 to vanish.")
seq_lens = [t for t in seq_lens if t in seq_options and type(t) is int]  # (as for the cells)
scales = [w for w in scales if w in scale_options and type(w) is float]
_to_url("flow.T", seq_lens, default_lens)
_to_url("flow.scale", scales, default_scales)
runs = len(cells) * len(seq_lens) * len(scales)
if not seq_lens or not scales:
    st.info("Choose at least one sequence length and one weight scale.", icon=":material/info:")
    st.stop()
states = len(cells) * len(scales) * sum(cfg.replace(seq_len=t).state_elements for t in seq_lens)
if runs > MAX_SWEEP_RUNS or states > MAX_SWEEP_STATES:
    st.warning(f"That is {runs} runs over {states:,} state elements; choose at most {MAX_SWEEP_RUNS} runs "
               f"(cells × lengths × scales) and {MAX_SWEEP_STATES:,} elements (fewer or shorter sequences, or a "
               "smaller model in the sidebar).", icon=":material/warning:")
    st.stop()
try:  # the whole page run within the CPU budget (gru_explainer.budget), refused before the sweep starts
    check_flow(cfg, cells, seq_lens, scales)
except BudgetError as err:
    ui.show_error(err)
    st.stop()

bar = st.progress(0.0, text="Sweeping…")
try:
    swept = sweep(cfg, cells=cells, seq_lens=sorted(seq_lens), weight_scales=sorted(scales),
                  progress=lambda done, message: bar.progress(min(max(done, 0.0), 1.0), text=message),
                  profile=ui.cached_profile, skip_errors=True)
except Exception as err:
    bar.empty()
    ui.show_error(err)
    st.stop()
bar.empty()
skipped = swept.attrs.get("skipped", [])
if skipped:
    listed = "; ".join(f"{cell_label(c)} T={t} scale {w:g}: {m}" for c, t, w, m in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    st.warning(ui.md_escape(f"Skipped {len(skipped)} combination(s): {listed}{more}"), icon=":material/warning:")
if swept.empty:
    st.stop()
swept_rates = hidden_rows(decay_rates(_pick(swept, int(layer), direction)))  # the table compares ‖dL/dh_t‖
ui.show_chart(rate_chart(swept_rates))
table = swept_rates.assign(cell=swept_rates["cell"].map(cell_label)).pivot(
    index=["cell", "seq_len"], columns="weight_scale", values="rate").reset_index()
table.columns = ["cell", "T", *[f"scale {c:g}" for c in table.columns[2:]]]
st.dataframe(table, hide_index=True, column_config={
    c: st.column_config.NumberColumn(c, format="%.4g", help="fitted rate per step") for c in table.columns[2:]})
blank = "" if np.isfinite(swept_rates["rate"].astype(float)).all() else (
    " A blank cell has no rate: fewer than two steps with a magnitude lie behind the read step (in a lower layer "
    "the most gradient can enter at its last processed step).")
st.caption("Fitted rate per step for each cell (rows) and weight scale (columns)." + blank
           + describe_sweep(swept_rates))
