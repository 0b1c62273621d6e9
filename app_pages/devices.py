"""Devices & engines: the current config on every device and with both engines; differences, timings, and why."""

from __future__ import annotations

import pandas as pd
import streamlit as st

import ui
from gru_explainer import ConfigError, TargetError
from gru_explainer.charts import difference_chart, timing_chart
from gru_explainer.compare import MAX_REPEATS, WHY_FUSED, distinct_devices
from gru_explainer.urlstate import Notice, Quote, ViewParam, view_from_query, view_to_query

ENGINE_TEXT = {"fused": "fused forward + adjoint recursion", "twin": "unrolled twin + autograd"}
DEFAULT_REPEATS = 3
NONE = "none"
"""`devices.chosen=none`: no device chosen (an empty URL value could be dropped on the way)."""
DEVICES_KEY = "devices.chosen"
VIEW_PARAMS = {
    # widget key -> its URL parameter; devices.chosen is a comma-separated list (default: every device)
    "dev_devices": ViewParam(DEVICES_KEY, str, None),
    "dev_repeats": ViewParam("devices.repeats", int, DEFAULT_REPEATS, low=1, high=MAX_REPEATS),
}
VIEW = "gx_devices_view"
"""The chosen devices and repeats by URL key (kept across page switches, mirrored in the URL)."""


def _only_cpu() -> None:
    """The CPU fallback's extra step here: compare on the CPU only (an accelerator failed)."""
    st.session_state["dev_devices"] = ["cpu"]


def _devices_from_url(raw: str, devices: list[str]) -> tuple[list[str] | None, Notice | None]:
    """The devices a URL's devices.chosen names (None: the default, every device) and a notice for what it named
    that this machine does not have (those are dropped; if nothing is left, every device is compared)."""
    if raw.strip() == NONE:
        return [], None
    names = [part.strip() for part in raw.split(",") if part.strip()]
    kept = list(dict.fromkeys(n for n in names if n in devices))
    if names and len(kept) == len(set(names)):
        return kept, None
    using = ", ".join(kept) if kept else f"every device ({', '.join(devices)})"
    return kept or None, Notice(f"URL parameter {DEVICES_KEY}=", Quote(raw), " names devices this machine does not "
                                f"have; available: {', '.join(devices)}. Comparing on {using}.")


def _view(devices: list[str]) -> dict:
    """The view values by URL key; on the page's first run in a session they come from the URL (notices shown)."""
    if VIEW not in st.session_state:
        params = st.query_params.to_dict()
        values, notices = view_from_query(params, [VIEW_PARAMS["dev_repeats"]])
        if DEVICES_KEY in params:
            chosen, notice = _devices_from_url(str(params[DEVICES_KEY])[:600], devices)
            if chosen is not None:
                values[DEVICES_KEY] = chosen
            if notice is not None:
                notices.append(notice)
        for notice in notices:
            ui.show_notice(notice)
        st.session_state[VIEW] = values
    return st.session_state[VIEW]


def _store(chosen: list[str], repeats: int, devices: list[str]) -> None:
    """Remember the controls' values and mirror the non-default ones in the URL."""
    view = st.session_state[VIEW]
    view[DEVICES_KEY], view["devices.repeats"] = list(chosen), int(repeats)
    wanted = view_to_query({"devices.repeats": int(repeats)}, [VIEW_PARAMS["dev_repeats"]])
    if list(chosen) != devices:
        wanted[DEVICES_KEY] = ",".join(chosen) if chosen else NONE
    ui.mirror_view(wanted, VIEW_PARAMS.values())


def _run_label(row) -> str:
    return f"{row.device} {row.engine}" + (" (reference)" if row.reference else "")


def _runs_table(table):
    """The comparison, one column per run (device and engine) and one row per measure: a handful of columns, so
    the whole table stays readable in a phone's width (a row per run would need eleven)."""
    rows = {"engine used": list(table["engine_used"])} if (table["engine_used"] != table["engine"]).any() else {}
    rows |= {
        "median time (ms)": [f"{v:.2f}" for v in table["time_ms"]],
        "Δ dL/dh_t": [f"{v:.2e}" for v in table["hidden_grad_diff"]],
        "Δ y.grad": [f"{v:.2e}" for v in table["stacked_grad_diff"]],
        "Δ dL/dx_t": [f"{v:.2e}" for v in table["input_grad_diff"]],
        "max Δ": [f"{v:.2e}" for v in table["max_diff"]],
        "tolerance": [f"{v:.1e}" for v in table["tolerance"]],
        "agrees": ["yes" if v else "no" for v in table["agrees"]],
    }
    return pd.DataFrame.from_dict(rows, orient="index", columns=[_run_label(r) for r in table.itertuples()])


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
view = _view(devices)
c1, c2, c3 = st.columns([3, 1, 1.4])
if "dev_devices" not in st.session_state:  # first run, or back from another page: the remembered choice
    st.session_state["dev_devices"] = view.get(DEVICES_KEY, devices)
if [d for d in st.session_state["dev_devices"] if d not in devices]:
    st.session_state["dev_devices"] = devices  # a device that went away since the last run
st.session_state.setdefault("dev_repeats", view.get("devices.repeats", DEFAULT_REPEATS))
chosen = c1.multiselect("Devices", devices, key="dev_devices",
                        help="Every distinct device this machine has ('cuda' and 'cuda:0' are the same GPU).")
repeats = c2.number_input("Repeats", 1, MAX_REPEATS, key="dev_repeats",
                          help="Timed runs per device and engine after one warm-up; the table shows the median.")
_store(chosen, int(repeats), devices)
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

st.table(_runs_table(table))
st.caption("Each column is one run: **fused** = " + ENGINE_TEXT["fused"] + ", **twin** = " + ENGINE_TEXT["twin"]
           + ". Δ is the largest |difference| to the reference, the CPU twin, over dL/dh_t, y.grad and dL/dx_t; "
           "a run agrees when every Δ is within the tolerance.")
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
        # One column per device, a row per fact: readable in a phone's width, the kernels' text wraps.
        st.table(census.set_index("device").rename(columns={
            "output_grad_fn": "output.grad_fn", "nodes": "autograd nodes", "rnn_kernel_nodes": "fused RNN kernel nodes",
            "kernels": "kernels"}).astype(str).T.rename_axis(None, axis=1))
