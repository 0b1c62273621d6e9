"""Devices & engines: the current config on every device and with both engines; differences, timings, and why."""

from __future__ import annotations

import streamlit as st

import ui
from gru_explainer import ConfigError, TargetError
from gru_explainer.charts import difference_chart, timing_chart
from gru_explainer.compare import MAX_REPEATS, WHY_FUSED, distinct_devices

ENGINE_TEXT = {"fused": "fused forward + adjoint recursion", "twin": "unrolled twin + autograd"}


def _only_cpu() -> None:
    """The CPU fallback's extra step here: compare on the CPU only (an accelerator failed)."""
    st.session_state["dev_devices"] = ["cpu"]


cfg = ui.config_sidebar()
title_col, glossary_col = st.columns([5, 1], vertical_alignment="bottom")
title_col.title("Devices & engines")
with glossary_col:
    ui.glossary(("twin", "adjoint", "TF32", "reserve space"))
st.caption("The current config, explained on every device of this machine with both engines, against the CPU "
           "twin as the reference: how far apart the gradients are, and how long each takes.")

devices = distinct_devices()
if devices == ["cpu"]:
    st.info("This machine has no GPU (CUDA or MPS): only the CPU is compared. The two engines are still compared "
            "on it: the fused module with the adjoint recursion versus the unrolled twin with autograd.",
            icon=":material/memory:")
c1, c2, c3 = st.columns([3, 1, 1.4])
if [d for d in st.session_state.get("dev_devices", devices) if d not in devices]:
    st.session_state.pop("dev_devices")  # a device that went away since the last run
st.session_state.setdefault("dev_devices", devices)
chosen = c1.multiselect("Devices", devices, key="dev_devices",
                        help="Every distinct device this machine has ('cuda' and 'cuda:0' are the same GPU).")
repeats = c2.number_input("Repeats", 1, MAX_REPEATS, value=3, key="dev_repeats",
                          help="Timed runs per device and engine after one warm-up; the table shows the median.")
st.session_state.setdefault("dev_nonce", 0)
if c3.button("Measure again", icon=":material/refresh:", help="Timings are cached; run them again."):
    st.session_state["dev_nonce"] += 1
if not chosen:
    st.info("Choose at least one device.", icon=":material/info:")
    st.stop()

base = cfg.replace(device="cpu")
try:
    table = ui.cached_compare(base, tuple(chosen), int(repeats), st.session_state["dev_nonce"])
except (ConfigError, TargetError) as err:
    ui.show_error(err)
    st.stop()
except Exception as err:  # e.g. a device running out of memory (DeviceError: CPU button), never a traceback
    ui.show_error(err, on_cpu=_only_cpu)
    st.stop()

agree = bool(table["agrees"].all())
fastest = table.sort_values("time_ms").iloc[0]
m1, m2, m3 = st.columns(3)
m1.metric("All runs agree", "yes" if agree else "no", border=True,
          help=f"Every difference within the {cfg.dtype} tolerance, relative to the reference's largest value "
               "(looser for float32 on GPUs, where cuDNN uses TF32 tensor cores).")
m2.metric("Largest difference", f"{table['max_diff'].max():.2e}", border=True,
          help="max |difference| to the CPU twin over dL/dh_t, y.grad and dL/dx_t.")
m3.metric("Fastest", f"{fastest.engine} on {fastest.device}", f"{fastest.time_ms:.3g} ms", delta_color="off",
          delta_arrow="off", border=True, help="Median wall time of one explanation; timings are cached, "
          "'Measure again' repeats them.")
if not agree:
    st.warning("Some runs differ by more than the tolerance: see the table. In float32 on GPUs, TF32 matmuls and "
               "reordered sums can add up over long or exploding sequences; try float64.",
               icon=":material/warning:")
if (table["engine_used"] != table["engine"]).any():
    st.info("The seed answer's GRU is unrolled by hand: both engines run it as the twin.", icon=":material/info:")

shown = table.assign(engine=table["engine"].map(lambda e: f"{e} ({ENGINE_TEXT[e]})"))
st.dataframe(shown, hide_index=True, column_config={
    "device": "device",
    "engine": "engine",
    "engine_used": st.column_config.TextColumn("engine used", help="What actually ran (the answer GRU is unrolled)."),
    "time_ms": st.column_config.NumberColumn("median time (ms)", format="%.2f"),
    "hidden_grad_diff": st.column_config.NumberColumn("Δ dL/dh_t", format="%.2e", help="max |difference| to the "
                                                      "CPU twin of hidden_grad"),
    "stacked_grad_diff": st.column_config.NumberColumn("Δ y.grad", format="%.2e"),
    "input_grad_diff": st.column_config.NumberColumn("Δ dL/dx_t", format="%.2e"),
    "max_diff": st.column_config.NumberColumn("max Δ", format="%.2e"),
    "tolerance": st.column_config.NumberColumn("tolerance", format="%.1e"),
    "agrees": st.column_config.CheckboxColumn("agrees"),
    "reference": st.column_config.CheckboxColumn("reference", help="The CPU twin: the numbers everything is "
                                                 "compared with."),
})
ui.show_chart(difference_chart(table))
ui.show_chart(timing_chart(table))

st.subheader("Why a fused kernel hides h_t")
st.markdown(WHY_FUSED)
if cfg.cell == "answer_gru":
    st.info("The seed answer's hand-written GRU has no fused kernel: every h_t is already a graph node.",
            icon=":material/info:")
else:
    try:
        census = ui.cached_census(base, tuple(chosen))
    except Exception as err:  # the census is extra evidence; its failure must not break the page
        ui.show_error(err, on_cpu=_only_cpu)
    else:
        st.markdown(f"**What autograd sees of the fused `{cfg.cell}` module's output**, per device "
                    f"({cfg.dtype}): the node that produced `output` and how many nodes lie behind it.")
        st.dataframe(census, hide_index=True, column_config={
            "output_grad_fn": "output.grad_fn", "nodes": "autograd nodes",
            "rnn_kernel_nodes": "fused RNN kernel nodes", "kernels": "kernels"})
