"""Gradient explorer: pick a model, data, device and target; see where the gradient lands, per step and per unit."""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

import ui
from gru_explainer import ExplainConfig, GradientReport, Limits, TargetError
from gru_explainer.explain import compile_target
from gru_explainer.report import DIRECTIONS
from gru_explainer.snippet import reproduce_snippet
from gru_explainer.urlstate import ViewParam, view_from_query, view_to_query

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
MAX_K = Limits.from_env().max_seq_len
"""Step k's range: the widget never clamps k to the current T (an out-of-range k is the target's error, named)."""

DRAFT, K_VALUE, SYNCED = "gx_target_draft", "gx_target_k_value", "gx_target_synced"
"""The target text as typed (valid or not), the step k, and the shared target the draft was last taken from."""
VIEW, LAST_OK = "gx_explorer_view", "gx_explorer_last_ok"
"""The view controls' values (kept across page switches, mirrored in the URL) and the last config that ran."""
VIEW_PARAMS = {
    "gx_log": ViewParam("explorer.log", bool, True),
    "gx_target_k": ViewParam("explorer.k", int, 0, low=-MAX_K, high=MAX_K - 1),
    "gx_hm_layer": ViewParam("explorer.layer", int, None, low=0, high=Limits.from_env().max_num_layers - 1),
    "gx_hm_direction": ViewParam("explorer.direction", str, "forward", choices=DIRECTIONS),
    "gx_hm_batch": ViewParam("explorer.batch", int, 0, low=0, high=Limits.from_env().max_batch_size - 1),
    "gx_hm_log": ViewParam("explorer.hm_log", bool, False),
}
"""Widget key -> its URL parameter: every control that changes what is seen (the config has its own keys)."""


def _view() -> dict[str, Any]:
    """The view values by URL key; on the page's first run in a session they come from the URL (notices shown)."""
    if VIEW not in st.session_state:
        values, notices = view_from_query(st.query_params.to_dict(), VIEW_PARAMS.values())
        for notice in notices:
            ui.show_notice(notice)
        target = STEP_K.fullmatch(st.session_state.get(CONFIG_TARGET, "") or "")
        if "explorer.k" not in values and target:  # a step-k target from the URL brings its k
            values["explorer.k"] = int(target.group(1))
        st.session_state[VIEW] = values
    return st.session_state[VIEW]


CONFIG_TARGET = "gx_explorer_url_target"


def _store(key: str, value: Any) -> None:
    """Remember a view control's value and mirror the non-default view values in the URL."""
    view = _view()
    view[VIEW_PARAMS[key].key] = value
    wanted = view_to_query(view, VIEW_PARAMS.values())
    ui.mirror_view(wanted, VIEW_PARAMS.values())


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
    """Target typed: keep the draft; a typed y[:, k].sum() also sets k (to exactly the typed k, never clamped)."""
    st.session_state[DRAFT] = st.session_state["gx_target"]
    step = STEP_K.fullmatch(st.session_state[DRAFT].strip())
    if step and int(step.group(1)) != -1 and -MAX_K <= int(step.group(1)) < MAX_K:
        st.session_state[K_VALUE] = int(step.group(1))


def _preset_for(text: str, k: int) -> str:
    """The preset whose expression equals `text` (the first one wins), else "custom"."""
    return next((p for p, f in PRESETS.items() if f(k) == text.strip()), CUSTOM)


def stale_notice(shown: ExplainConfig, current: ExplainConfig) -> str:
    """The notice above a last valid result: which settings it was computed with, where they differ from now."""
    now, then = current.to_dict(), shown.to_dict()
    changed = [f"{name} = {then[name]!r}" for name in then if then[name] != now.get(name)]
    return ("The current settings cannot run (see the error above). Below is the last valid result, computed "
            "with " + (", ".join(changed) if changed else "the same settings") + ".")


@st.fragment
def norm_section(cfg: ExplainConfig) -> None:
    """The per-step norm chart and its log toggle (a fragment: the toggle reruns only this)."""
    view = _view()
    ui.seed_widget("gx_log", view.get("explorer.log", True))
    log_scale = st.toggle("Log scale", key="gx_log",
                          help="True magnitudes, also below / above the dtype's range; exact zeros cannot sit on a log "
                               "axis, so they are drawn in a band below the plot, one shape per cause.")
    _store("gx_log", bool(log_scale))
    ui.report_chart(cfg, "norm", bool(log_scale))


@st.fragment
def heatmap_section(cfg: ExplainConfig) -> None:
    """Time × unit heatmaps and their selectors (a fragment: a selector reruns only this)."""
    view = _view()
    layers, dirs = list(range(cfg.num_layers)), list(range(cfg.num_directions))
    wanted_dir = DIRECTIONS.index(view.get("explorer.direction", "forward"))
    ui.seed_widget("gx_hm_layer", view.get("explorer.layer", layers[-1]))
    ui.seed_widget("gx_hm_direction", wanted_dir)
    ui.seed_widget("gx_hm_batch", view.get("explorer.batch", 0))
    ui.seed_widget("gx_hm_log", view.get("explorer.hm_log", False))
    ui.keep_option("gx_hm_layer", layers, layers[-1])
    ui.keep_option("gx_hm_direction", dirs, 0)
    ui.keep_option("gx_hm_batch", list(range(cfg.batch_size)), 0)
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("Layer", layers, key="gx_hm_layer", help="y (the stacked output) belongs to the last layer.")
    direction = c2.selectbox("Direction", dirs, key="gx_hm_direction", format_func=DIRECTIONS.__getitem__)
    batch = c3.number_input("Batch item", 0, cfg.batch_size - 1, key="gx_hm_batch")
    log_magnitude = st.toggle("Log magnitude", key="gx_hm_log",
                              help="Colour by log10 |true value| instead of the signed value: vanishing gradients "
                                   "stay visible, also below the dtype's range (the sign is not shown).")
    _store("gx_hm_layer", None if layer == layers[-1] else int(layer))
    _store("gx_hm_direction", DIRECTIONS[int(direction)])
    _store("gx_hm_batch", int(batch))
    _store("gx_hm_log", bool(log_magnitude))
    ui.report_chart(cfg, "heatmap", int(layer), int(direction), int(batch), bool(log_magnitude))


def results(cfg: ExplainConfig, report: GradientReport) -> None:
    """Everything computed from one valid config: charts, verdict, numbers, downloads, the reproduce snippet."""
    st.subheader("Per-step gradient norm")
    norm_section(cfg)
    st.subheader("Per unit: time × hidden unit")
    heatmap_section(cfg)
    st.subheader("Which inputs matter")
    ui.report_chart(cfg, "input")

    st.subheader("Verdict")
    st.markdown(report.verdict())

    st.subheader("The numbers")
    st.dataframe(report.frame, hide_index=True)
    stem = ui.file_stem(cfg)
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", lambda: ui.report_csv(report), file_name=f"{stem}.csv", mime="text/csv",
                       on_click="ignore", icon=":material/download:", key="gx_csv",
                       help="One row per quantity × layer × direction × step; the config and target in the "
                            "leading config.* columns.")
    c2.download_button("Download report (JSON)", lambda: ui.report_json(report), file_name=f"{stem}.json",
                       mime="application/json", on_click="ignore", icon=":material/data_object:", key="gx_json",
                       help="The config, target value, verdict, shapes, zero steps and per-step norms.")

    st.subheader("Reproduce this in your own code")
    st.caption("Plain PyTorch: the same module, init and input; an unrolled loop exposes every h_t and one "
               "`torch.autograd.grad` call returns dL/dy and every dL/dh_t. It prints the numbers shown above.")
    st.code(reproduce_snippet(cfg), language="python")


if CONFIG_TARGET not in st.session_state:  # the target as the URL gave it (for the step k it implies)
    st.session_state[CONFIG_TARGET] = st.query_params.get("target")
cfg = ui.config_sidebar()
title_col, glossary_col = st.columns([5, 1], vertical_alignment="bottom")
title_col.title("Gradient explorer")
with glossary_col:
    ui.glossary(("structural zero", "zero on a path", "underflow", "adjoint", "twin"))
st.caption("Run backward on the target you choose and see where the gradient lands: the stacked output y "
           "(what `y.retain_grad()` shows) versus the hidden states h_t the recurrence used.")

# Widgets are seeded from session state on every run (the draft is the source of truth), callbacks write back.
view = _view()
if st.session_state.get(SYNCED) != cfg.target or DRAFT not in st.session_state:
    st.session_state[DRAFT] = st.session_state[SYNCED] = cfg.target  # first visit, or changed on another page
if K_VALUE not in st.session_state:
    st.session_state[K_VALUE] = int(view.get("explorer.k") or 0)
k = int(st.session_state[K_VALUE])
st.session_state["gx_target_k"] = k
text = st.session_state["gx_target"] = st.session_state[DRAFT]
st.session_state["gx_target_preset"] = _preset_for(text, k)
preset_col, k_col, text_col = st.columns([3, 1, 4])
preset_col.selectbox("Target preset", [*PRESETS, CUSTOM], key="gx_target_preset", on_change=_on_preset)
k_col.number_input("step k", -MAX_K, MAX_K - 1, key="gx_target_k", on_change=_on_k,
                   help="For the 'step k' preset; negative k counts from the end. A k outside the sequence is "
                        "reported, never changed.")
text_col.text_input("Target (scalar to differentiate)", key="gx_target", on_change=_on_text,
                    help="Names y (or output), h_n, c_n (LSTM), out (head); subscripts, + - * / **, and "
                         ".sum() .mean() .abs() .pow(k) .square() .norm(). Must reduce to a scalar.")
implied = STEP_K.fullmatch(text.strip())
_store("gx_target_k", None if k == (int(implied.group(1)) if implied else 0) else k)  # the target implies its k

report = None
try:
    compile_target(cfg.replace(target=text))
except TargetError as err:
    ui.show_error(err)
else:
    cfg = cfg.replace(target=text)
    st.session_state[SYNCED] = text  # only valid targets reach the shared config (and the URL)
    ui.set_shared_config(cfg)
    report = ui.cached_explain(cfg)

if report is not None:
    st.session_state[LAST_OK] = cfg
    results(cfg, report)
elif isinstance(st.session_state.get(LAST_OK), ExplainConfig):
    shown = st.session_state[LAST_OK]
    st.warning(ui.md_escape(stale_notice(shown, cfg.replace(target=text))), icon=":material/history:")
    with st.container(border=True, key="gx_last_valid"):
        last = ui.cached_explain(shown)
        if last is not None:
            results(shown, last)
