"""Gradient explorer: pick a model, data, device and target; see where the gradient lands, per step and per unit."""

from __future__ import annotations

import re

import streamlit as st

import ui
from gru_explainer import TargetError
from gru_explainer.charts import unit_heatmap
from gru_explainer.explain import compile_target
from gru_explainer.report import DIRECTIONS
from gru_explainer.snippet import reproduce_snippet

PRESETS = {
    "last step: y[:, -1].sum()": lambda k: "y[:, -1].sum()",
    "step k: y[:, k].sum()": lambda k: f"y[:, {k}].sum()",
    "all steps: y.sum()": lambda k: "y.sum()",
    "final hidden state: h_n.sum()": lambda k: "h_n.sum()",
    "final cell state (LSTM): c_n.sum()": lambda k: "c_n.sum()",
    "head output (linear head): out.sum()": lambda k: "out.sum()",
    "MSE against zeros: (y[:, -1] ** 2).mean()": lambda k: "(y[:, -1] ** 2).mean()",
}
CUSTOM = "custom (type below)"
STEP_K = re.compile(r"y\[:, (-?\d{1,4})\]\.sum\(\)")


DRAFT, K_VALUE, SYNCED = "gx_target_draft", "gx_target_k_value", "gx_target_synced"
"""The target text as typed (valid or not), the step k, and the shared target the draft was last taken from."""


def _on_preset() -> None:
    """Preset picked: its expression becomes the target."""
    preset = st.session_state["gx_target_preset"]
    if preset in PRESETS:
        st.session_state[DRAFT] = PRESETS[preset](st.session_state[K_VALUE])


def _on_k() -> None:
    """Step k changed: remember it; with the step-k preset, it also changes the target."""
    st.session_state[K_VALUE] = int(st.session_state["gx_target_k"])
    _on_preset()


def _on_text() -> None:
    """Target typed: keep the draft; a typed y[:, k].sum() also sets k."""
    st.session_state[DRAFT] = st.session_state["gx_target"]
    step = STEP_K.fullmatch(st.session_state[DRAFT].strip())
    if step and int(step.group(1)) != -1:
        st.session_state[K_VALUE] = int(step.group(1))


def _preset_for(text: str, k: int) -> str:
    """The preset whose expression equals `text` (the first one wins), else "custom"."""
    return next((p for p, f in PRESETS.items() if f(k) == text.strip()), CUSTOM)


def _keep(key: str, options: list, default: object) -> None:
    """Reset a selector whose stored value is no longer among its options (e.g. fewer layers)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


cfg = ui.config_sidebar()
st.title("Gradient explorer")
st.caption("Run backward on the target you choose and see where the gradient lands: the stacked output y "
           "(what `y.retain_grad()` shows) versus the hidden states h_t the recurrence used.")

# Widgets are seeded from session state on every run (the draft is the source of truth), callbacks write back.
if st.session_state.get(SYNCED) != cfg.target or DRAFT not in st.session_state:
    st.session_state[DRAFT] = st.session_state[SYNCED] = cfg.target  # first visit, or changed on another page
k = min(max(int(st.session_state.get(K_VALUE, 0)), -cfg.seq_len), cfg.seq_len - 1)
st.session_state[K_VALUE] = st.session_state["gx_target_k"] = k
text = st.session_state["gx_target"] = st.session_state[DRAFT]
st.session_state["gx_target_preset"] = _preset_for(text, k)
preset_col, k_col, text_col = st.columns([3, 1, 4])
preset_col.selectbox("Target preset", [*PRESETS, CUSTOM], key="gx_target_preset", on_change=_on_preset)
k_col.number_input("step k", -cfg.seq_len, cfg.seq_len - 1, key="gx_target_k", on_change=_on_k,
                   help="For the 'step k' preset; negative k counts from the end.")
text_col.text_input("Target (scalar to differentiate)", key="gx_target", on_change=_on_text,
                    help="Names y (or output), h_n, c_n (LSTM), out (head); subscripts, + - * / **, and "
                         ".sum() .mean() .abs() .pow(k) .square() .norm(). Must reduce to a scalar.")
try:
    compile_target(cfg.replace(target=text))
except TargetError as err:
    ui.show_error(err)
    st.stop()
cfg = cfg.replace(target=text)
st.session_state[SYNCED] = text  # only valid targets reach the shared config (and the URL)
ui.set_shared_config(cfg)

report = ui.cached_explain(cfg)
if report is None:
    st.stop()

st.subheader("Per-step gradient norm")
log_scale = st.toggle("Log scale", value=True, key="gx_log",
                      help="True magnitudes, also below / above the dtype's range; exact zeros cannot sit on a log "
                           "axis, so they are drawn in a band below the plot, one shape per cause.")
ui.report_chart(cfg, "norm", log_scale)

st.subheader("Per unit: time × hidden unit")
layers, dirs = list(range(cfg.num_layers)), list(range(cfg.num_directions))
_keep("gx_hm_layer", layers, layers[-1])
_keep("gx_hm_direction", dirs, 0)
_keep("gx_hm_batch", list(range(cfg.batch_size)), 0)
c1, c2, c3 = st.columns(3)
layer = c1.selectbox("Layer", layers, key="gx_hm_layer", help="y (the stacked output) belongs to the last layer.")
direction = c2.selectbox("Direction", dirs, key="gx_hm_direction", format_func=DIRECTIONS.__getitem__)
batch = c3.number_input("Batch item", 0, cfg.batch_size - 1, key="gx_hm_batch")
log_magnitude = st.toggle("Log magnitude", value=False, key="gx_hm_log",
                          help="Colour by log10 |true value| instead of the signed value: vanishing gradients stay "
                               "visible, also below the dtype's range (the sign is not shown).")
if log_magnitude:
    st.vega_lite_chart(spec=unit_heatmap(report.unit_frame(layer, direction, int(batch)), log_magnitude=True)
                       .to_dict(), width="content")
else:
    ui.report_chart(cfg, "heatmap", layer, direction, int(batch))

st.subheader("Which inputs matter")
ui.report_chart(cfg, "input")

st.subheader("Verdict")
st.markdown(report.verdict())

st.subheader("The numbers")
st.dataframe(report.frame, hide_index=True)
st.download_button("Download CSV", report.frame.to_csv(index=False).encode(), file_name="gradients.csv",
                   mime="text/csv", on_click="ignore", icon=":material/download:")

st.subheader("Reproduce this in your own code")
st.caption("Plain PyTorch: the same module, init and input; an unrolled loop exposes every h_t and one "
           "`torch.autograd.grad` call returns dL/dy and every dL/dh_t. It prints the numbers shown above.")
st.code(reproduce_snippet(cfg), language="python")
