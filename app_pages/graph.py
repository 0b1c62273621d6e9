"""Autograd graph: the backward graph of a tiny unrolled model, with y and every h_t highlighted."""

from __future__ import annotations

import streamlit as st

import ui
from gru_explainer import ConfigError, ExplainConfig, TargetError
from gru_explainer.explain import compile_target
from gru_explainer.graph import MAX_GRAPH_LAYERS, MAX_GRAPH_STEPS

FALLBACK_TARGET = "y[:, -1].sum()"
LAYOUTS = {"TB": "top to bottom", "LR": "left to right"}


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

single = cfg.cell == "answer_gru"
c1, c2, c3, c4 = st.columns(4)
steps = c1.slider("Steps T", 1, MAX_GRAPH_STEPS, value=min(cfg.seq_len, 3), key="graph_steps",
                  help=f"The graph grows by one copy of the cell per step; at most {MAX_GRAPH_STEPS} are drawn.")
layers = c2.slider("Layers", 1, MAX_GRAPH_LAYERS, value=min(cfg.num_layers, MAX_GRAPH_LAYERS), key="graph_layers",
                   disabled=single, help="The seed answer's GRU has one layer.")
rankdir = c3.radio("Layout", list(LAYOUTS), format_func=LAYOUTS.__getitem__, key="graph_layout", horizontal=True)
show_parameters = c4.toggle("Show parameters", value=True, key="graph_params",
                            help="Parameters are AccumulateGrad leaves (their transposes are folded in).")
tiny = cfg.replace(seq_len=int(steps), num_layers=1 if single else int(layers))

if "graph_target" not in st.session_state or st.session_state.get("graph_target_synced") != cfg.target:
    st.session_state["graph_target_synced"] = cfg.target
    st.session_state["graph_target"] = cfg.target if _fits(tiny) else FALLBACK_TARGET
    if not _fits(tiny):
        st.info(f"The shared target `{cfg.target}` does not fit this tiny model; showing `{FALLBACK_TARGET}`.",
                icon=":material/info:")
target = st.text_input("Target", key="graph_target",
                       help="Same language as the explorer: y, h_n, c_n (LSTM), out (head), subscripts, "
                            "+ - * / **, .sum() .mean() .abs() .pow(k) .square() .norm().")
tiny = tiny.replace(target=target)

try:
    dot, facts = ui.cached_graph(tiny, rankdir, bool(show_parameters))
except (ConfigError, TargetError) as err:
    ui.show_error(err)
    st.stop()
except Exception as err:  # never a traceback on the page
    ui.show_error(err)
    st.stop()

st.graphviz_chart(dot, width="stretch", alt=f"Autograd graph of {target}: {facts['nodes']} nodes, "
                  f"{facts['edges']} edges; y and every h_t highlighted.")
st.caption(f"{facts['nodes']} autograd nodes, {facts['edges']} edges, {facts['states']} hidden-state nodes. "
           "Red: y, the stack the module returns. Blue: the states h_t the recurrence used. Gold: the target.")

st.subheader("Two gradient paths out of every h_t")
y_read = ", ".join(f"`{c}`" for c in facts["y_consumers"]) or "nothing (the target does not read y)"
h_read = ", ".join(f"`{c}`" for c in facts["h0_consumers"])
st.markdown(f"""
1. **Into y.** `y = stack(h_0, …, h_{tiny.seq_len - 1})` is a *new* tensor made after the loop ran. In this graph
   y is read by {y_read} and by nothing else, so backward gives `y.grad` only what the target reads of y
   directly: the partial derivative ∂L/∂y, exactly zero at every step the target does not index.
2. **Into the next step.** Each h_t is also read by step t+1 of its layer (the `addmm` with W_hh, and for a GRU
   the `mul` of the update gate), and by the layer above. For the top layer's h_0 that is: {h_read}. Gradient
   flows back along these edges too, so the total derivative dL/dh_t collects the direct part AND everything
   that came back through the later steps. That is why dL/dh_t is non-zero where `y.grad` is zero.

`y.retain_grad()` can only ever show path 1. To see the total derivative you need the h_t themselves as graph
nodes, which is what this unrolled twin provides (a fused `nn.GRU` does not: see *Devices & engines*).
""")
