"""Autograd graph: the backward graph of a tiny unrolled model, with y and every h_t highlighted."""

from __future__ import annotations

from typing import Any

import streamlit as st

import ui
from gru_explainer import ConfigError, ExplainConfig, TargetError
from gru_explainer.explain import compile_target
from gru_explainer.graph import MAX_GRAPH_LAYERS, MAX_GRAPH_STEPS
from gru_explainer.urlstate import Notice, Quote

FALLBACK_TARGET = "y[:, -1].sum()"
OPTIONS: dict[str, tuple[Any, Any]] = {
    # session key: (default, parser of the URL's text); the URL key is "graph.<name>" (dotted keys belong to pages)
    "graph_steps": (2, lambda text: int(text) if text.isdigit() and 1 <= int(text) <= MAX_GRAPH_STEPS else None),
    "graph_ops": (False, {"1": True, "0": False}.get),
    "graph_params": (False, {"1": True, "0": False}.get),
}


def _url_key(key: str) -> str:
    return "graph." + key.removeprefix("graph_")


def _url_text(value: Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def _options_from_url() -> None:
    """Seed the graph options from the URL once per session; a value that does not parse falls back with a notice."""
    for key, (default, parse) in OPTIONS.items():
        if key in st.session_state:
            continue
        raw = st.query_params.get(_url_key(key))
        value = None if raw is None else parse(raw)
        if raw is not None and value is None:
            ui.show_notice(Notice(f"The URL's {_url_key(key)}=", Quote(raw[:40]), f" is not valid here; using "
                                  f"{_url_text(default)}."))
        st.session_state[key] = default if value is None else value


def _options_to_url() -> None:
    """Mirror the options that differ from their defaults in the URL (so a copied address shows this view)."""
    for key, (default, _) in OPTIONS.items():
        value, name = st.session_state[key], _url_key(key)
        if value == default:
            st.query_params.pop(name, None)
        elif st.query_params.get(name) != _url_text(value):
            st.query_params[name] = _url_text(value)


def _fits(cfg: ExplainConfig) -> bool:
    try:
        compile_target(cfg)
    except (ConfigError, TargetError):
        return False
    return True


cfg = ui.config_sidebar()
st.title("Autograd graph")
st.caption("The backward graph of a tiny unrolled model, drawn by walking `grad_fn.next_functions` from the "
           "target. Arrows show the forward data flow; gradients travel against them.")

_options_from_url()
c1, c2, c3 = st.columns(3)
steps = c1.slider("Steps drawn", 1, MAX_GRAPH_STEPS, key="graph_steps",
                  help=f"The graph grows by one copy of the cell per step; at most {MAX_GRAPH_STEPS} are drawn. "
                       "Everything else (cell, layers, direction, head) comes from the sidebar.")
every_op = c2.toggle("Every autograd op", key="graph_ops",
                     help="Off: each step's gate ops are one dashed box. On: every op, labelled with what it "
                          "computes (its autograd name below).")
show_parameters = c3.toggle("Show parameters", key="graph_params",
                            help="Parameters are AccumulateGrad leaves (their transposes are folded in).")
_options_to_url()

layers = min(cfg.num_layers, MAX_GRAPH_LAYERS)
if layers < cfg.num_layers:
    st.info(f"The graph is drawn for at most {MAX_GRAPH_LAYERS} layers; showing {layers} of the sidebar's "
            f"{cfg.num_layers}.", icon=":material/info:")
tiny = cfg.replace(seq_len=int(steps), num_layers=layers)

if "graph_target" not in st.session_state or st.session_state.get("graph_target_synced") != cfg.target:
    st.session_state["graph_target_synced"] = cfg.target
    st.session_state["graph_target"] = cfg.target if _fits(tiny) else FALLBACK_TARGET
    if not _fits(tiny):
        st.info(f"The shared target {ui.literal(cfg.target)} does not fit this tiny model; showing "
                f"{ui.literal(FALLBACK_TARGET)}.", icon=":material/info:")
target = st.text_input("Target", key="graph_target",
                       help="Same language as the explorer: y, h_n, c_n (LSTM), out (head), subscripts, "
                            "+ - * / **, .sum() .mean() .abs() .pow(k) .square() .norm().")
tiny = tiny.replace(target=target)

try:
    dot, legend, facts = ui.cached_graph(tiny, bool(show_parameters), bool(every_op))
except Exception as err:  # the core's ConfigError / TargetError name the field; never a traceback on the page
    ui.show_error(err)
    st.stop()

directions = "both directions" if tiny.bidirectional else "one direction"
st.caption(f"{tiny.num_layers} layer(s) from the sidebar, {directions}, {tiny.seq_len} step(s) drawn: "
           f"{facts['nodes']} boxes for {facts['autograd_nodes']} autograd nodes"
           + (f" ({facts['states']} of them states); a dashed frame holds one step's ops." if every_op else
              "; each state box holds its step's gate ops (switch on *Every autograd op* to see them)."))
# Top to bottom at its natural size (a left-to-right layout of the same graph is a strip too wide to read), the
# legend beside it; on a phone the columns stack and both shrink to the column's width.
left, right = st.columns([3, 2])
left.graphviz_chart(dot, width="content")
right.graphviz_chart(legend, width="content")

st.subheader("Two gradient paths out of every h_t")
y_read = ", ".join(f"`{c}`" for c in facts["y_consumers"]) or "nothing (the target does not read y)"
h_read = ", ".join(f"`{c}`" for c in facts["h0_ops"])
if tiny.seq_len == 1:
    h_read += " (with one step drawn there is no step t+1: draw two or more to see that edge)"
st.markdown(f"""
1. **Into y.** `{facts['y_label']}` is a *new* tensor made after the loop ran. In this graph
   y is read by {y_read} and by nothing else, so backward gives `y.grad` only what the target reads of y
   directly: the partial derivative ∂L/∂y, exactly zero at every step the target does not index.
2. **Into the next step.** Each h_t is also read by the ops of step t+1 of its layer and by the layer above. For
   the top layer's h_0 those readers are: {h_read}. Gradient flows back along these edges too, so the total
   derivative dL/dh_t collects the direct part AND everything that came back through the later steps. That is
   why dL/dh_t is non-zero where `y.grad` is zero.

`y.retain_grad()` can only ever show path 1. To see the total derivative you need the h_t themselves as graph
nodes, which is what this unrolled twin provides (a fused `nn.GRU` does not: see *Devices & engines*).
""")
