"""Your model: upload a state_dict, see the architecture its shapes imply, and where your target's gradient goes."""

from __future__ import annotations

from typing import Any

import streamlit as st

import hosting
import ui
from gru_explainer import ConfigError, TargetError
from gru_explainer.charts import gradient_norm_chart, input_grad_chart, unit_heatmap
from gru_explainer.config import DTYPES, Limits
from gru_explainer.report import DIRECTIONS
from gru_explainer.state_dict import (
    MAX_UPLOAD_MB,
    RNN_NONLINEARITIES,
    ModelExplanation,
    RecurrentSpec,
    StateDictError,
    example_state_dict,
    explain_state_dict,
    load_state_dict,
    random_inputs,
    read_sequences,
    recurrent_modules,
    watch_snippet,
)
from gru_explainer.target import parse_target
from gru_explainer.urlstate import Notice, Quote, ViewParam, view_from_query, view_to_query

EXAMPLE_NAME = "example.pt"
CSV_FORMAT = """A header row, then one row per (sequence, step):

```
sequence,step,x0,x1,x2
a,0,0.1,-1.2,0.5
a,1,0.3,0.0,2.0
b,0,1.0,0.2,-0.4
b,1,0.7,0.9,0.1
```

- `sequence`: any label; rows with the same label form one sequence (batch order = order of first appearance).
- `step`: integers 0 … T-1, each exactly once per sequence (rows in any order); every sequence has the same T.
- then exactly *input size* feature columns (any names, taken in file order), every value a finite number."""
DEFAULT_TARGET = "y[:, -1].sum()"
INPUTS = {"random": "Seeded random", "csv": "CSV file"}
"""The input sources by URL value."""
_LIMITS = Limits.from_env()
VIEW_PARAMS = {
    # widget key -> its URL parameter: everything that changes what is seen, except the uploaded files themselves
    "ym_module": ViewParam("model.module", str, None),  # None: the file's first usable module
    "ym_nonlinearity": ViewParam("model.nonlinearity", str, "tanh", choices=RNN_NONLINEARITIES),
    "ym_dtype": ViewParam("model.dtype", str, None, choices=DTYPES),  # None: the file's own (float64 or float32)
    "ym_input": ViewParam("model.input", str, "random", choices=tuple(INPUTS)),
    "ym_batch": ViewParam("model.batch", int, 2, low=1, high=_LIMITS.max_batch_size),
    "ym_steps": ViewParam("model.T", int, 10, low=1, high=_LIMITS.max_seq_len),
    "ym_seed": ViewParam("model.seed", int, 0, low=0, high=2**31 - 1),
    "ym_target": ViewParam("model.target", str, DEFAULT_TARGET),
    "ym_log": ViewParam("model.log", bool, True),
    "ym_hm_layer": ViewParam("model.layer", int, None, low=0, high=_LIMITS.max_num_layers - 1),  # None: the top one
    "ym_hm_direction": ViewParam("model.direction", str, "forward", choices=DIRECTIONS),
    "ym_hm_batch": ViewParam("model.item", int, 0, low=0, high=_LIMITS.max_batch_size - 1),
}
VIEW = "gx_model_view"
"""The controls' values by URL key (kept across page switches, mirrored in the URL)."""
MODULE_NOTICED = "gx_model_module_noticed"


def _view() -> dict[str, Any]:
    """The view values by URL key; on the page's first run in a session they come from the URL (notices shown)."""
    if VIEW not in st.session_state:
        values, notices = view_from_query(st.query_params.to_dict(), VIEW_PARAMS.values())
        if "model.target" in values:
            try:
                parse_target(values["model.target"])
            except TargetError as err:
                notices.append(Notice("URL parameter model.target=", Quote(values.pop("model.target")),
                                      f" ignored: {err}. Using {DEFAULT_TARGET!r}."))
        for notice in notices:
            ui.show_notice(notice)
        st.session_state[VIEW] = values
        _mirror()  # the bad values leave the URL
    return st.session_state[VIEW]


def _mirror() -> None:
    """Write the non-default view values to the URL, drop the others."""
    wanted = view_to_query(st.session_state[VIEW], VIEW_PARAMS.values())
    ui.mirror_view(wanted, VIEW_PARAMS.values())


def _store(key: str, value: Any) -> None:
    """Remember a control's value (None: the page's default) and mirror the view in the URL."""
    _view()[VIEW_PARAMS[key].key] = value
    _mirror()


@st.cache_data(max_entries=8, max_size=hosting.cache_budget("model_inspect"), show_spinner=False)
def _inspect(data: bytes, name: str) -> dict[str, RecurrentSpec | str]:
    """The file's recurrent modules by key prefix: a spec, or the message saying why it cannot be explained."""
    state = load_state_dict(data, name)
    return {prefix: spec if isinstance(spec, RecurrentSpec) else str(spec)
            for prefix, spec in recurrent_modules(state, name).items()}


@st.cache_data(max_entries=8, max_size=hosting.cache_budget("model_explain"), show_spinner=False)
def _explain(data: bytes, name: str, spec: RecurrentSpec, nonlinearity: str, dtype: str, inputs: tuple,
             target: str) -> ModelExplanation:
    """Load, build and run the module inside watch; inputs = ("random", batch, steps, seed) or ("csv", bytes, name)."""
    state = load_state_dict(data, name)
    if inputs[0] == "random":
        x = random_inputs(spec, *inputs[1:])
    else:
        x = read_sequences(inputs[1], spec.input_size, inputs[2])
    with hosting.heavy():
        return explain_state_dict(state, spec, x, target, nonlinearity, dtype)


def _show(chart: Any) -> None:
    """Draw an Altair chart as the other pages do (ui.show_chart when this ui has it)."""
    show = getattr(ui, "show_chart", None)
    if show is not None:
        show(chart)
    else:
        st.altair_chart(chart)


def _prefix_label(prefix: str, found: dict[str, RecurrentSpec | str]) -> str:
    spec = found[prefix]
    return spec.label if isinstance(spec, RecurrentSpec) else f"{prefix or '(the model itself)'} — cannot be used"


limits = Limits.from_env()
view = _view()
st.title("Your model")
st.caption("Upload the state_dict of your own trained nn.GRU / nn.LSTM / nn.RNN (or of a model containing one). The "
           "architecture is read from its keys and shapes; your target is differentiated through the module inside "
           "`gru_explainer.watch`, which records every per-step gradient dL/dh_t.")
upload = st.file_uploader("State dict (.pt / .pth)", type=["pt", "pth"], key="ym_file",
                          max_upload_size=MAX_UPLOAD_MB,
                          help="Saved with torch.save(model.state_dict(), 'model.pt'). Read only with "
                               f"torch.load(..., weights_only=True): tensors, never code. At most {MAX_UPLOAD_MB} MB.")
st.caption("The address keeps this page's settings (module, input, target, view) but never your files: a copied link "
           "shows the built-in example until the state dict (and a CSV input) is uploaded again.")
if upload is None:
    data, name = example_state_dict(), EXAMPLE_NAME
    st.info("No file uploaded: showing the built-in example, a classifier whose `encoder` is a 2-layer GRU (input 3, "
            "hidden 16) with fixed random weights. Upload your own state_dict above.", icon=":material/info:")
else:
    data, name = upload.getvalue(), upload.name

try:
    found = _inspect(data, name)
except StateDictError as err:
    ui.show_error(err)
    st.stop()

prefixes = list(found)
first = next((p for p in prefixes if isinstance(found[p], RecurrentSpec)), prefixes[0])
wanted = view.get("model.module")
if wanted is not None and wanted not in prefixes and st.session_state.get(MODULE_NOTICED) != (name, wanted):
    st.session_state[MODULE_NOTICED] = (name, wanted)  # once per file
    ui.show_notice(Notice("The link chose the recurrent module ", Quote(wanted), " (its key prefix), which "
                          + ("the built-in example" if upload is None else "this file") + " does not have: "
                          "upload the file the link was made with. Explaining "
                          + (_prefix_label(first, found) if len(prefixes) > 1 else "its only module") + "."),
                   icon=":material/rule:")
if len(prefixes) > 1:
    st.warning(f"This file holds {len(prefixes)} recurrent modules; pick the one to explain.", icon=":material/rule:")
    if st.session_state.get("ym_module") not in prefixes:
        st.session_state["ym_module"] = wanted if wanted in prefixes else first
    prefix = st.selectbox("Recurrent module (key prefix)", prefixes, key="ym_module",
                          format_func=lambda p: _prefix_label(p, found))
    _store("ym_module", None if prefix == first else prefix)
else:
    prefix = prefixes[0]
spec = found[prefix]
if not isinstance(spec, RecurrentSpec):
    st.error(ui.md_escape(spec), icon=":material/error:")
    st.stop()

st.subheader("Architecture (inferred from the keys and shapes)")
nonlinearity = "tanh"
if spec.cell == "rnn":
    ui.seed_widget("ym_nonlinearity", view.get("model.nonlinearity", "tanh"))
    nonlinearity = st.radio("nn.RNN nonlinearity", RNN_NONLINEARITIES, horizontal=True, key="ym_nonlinearity",
                            help="tanh and relu RNNs have identical weights, so the file cannot tell them apart.")
    _store("ym_nonlinearity", nonlinearity)
    st.caption("An nn.RNN's state_dict does not store its nonlinearity (tanh and relu have the same weights): the "
               "default is tanh, nn.RNN's own default; choose relu if your model was built with nonlinearity='relu'.")
# st.table renders Markdown in its cells, and the key prefix comes from the visitor's file: shown literally.
st.table({"property": [r[0] for r in spec.rows(nonlinearity)],
          "value": [ui.md_escape(r[1]) for r in spec.rows(nonlinearity)]})

st.subheader("Input and target")
dtype_col, mode_col = st.columns(2)
file_dtype = "float64" if spec.dtype == "float64" else "float32"
ui.seed_widget("ym_dtype", view.get("model.dtype") or file_dtype)
dtype = dtype_col.selectbox("dtype", DTYPES, key="ym_dtype",
                            help="The weights are cast to this dtype (float16/bfloat16 files become float32).")
_store("ym_dtype", None if dtype == file_dtype else dtype)
ui.seed_widget("ym_input", INPUTS[view.get("model.input", "random")])
mode = mode_col.radio("Input", list(INPUTS.values()), horizontal=True, key="ym_input")
_store("ym_input", next(k for k, label in INPUTS.items() if label == mode))
seed = 0
if mode == INPUTS["random"]:
    for key in ("ym_batch", "ym_steps", "ym_seed"):
        ui.seed_widget(key, view.get(VIEW_PARAMS[key].key, VIEW_PARAMS[key].default))
    c1, c2, c3 = st.columns(3)
    batch = int(c1.number_input("Batch size", 1, limits.max_batch_size, key="ym_batch"))
    steps = int(c2.number_input("Steps T", 1, limits.max_seq_len, key="ym_steps"))
    seed = int(c3.number_input("Seed", 0, 2**31 - 1, key="ym_seed"))
    for key, value in (("ym_batch", batch), ("ym_steps", steps), ("ym_seed", seed)):
        _store(key, value)
    inputs: tuple = ("random", batch, steps, seed)
    st.caption(f"x = torch.randn(({batch}, {steps}, {spec.input_size})) in float64 from a torch.Generator seeded "
               f"with {seed}, then cast to {dtype}.")
    csv_name = None
else:
    with st.expander("CSV format", expanded=False):
        st.markdown(CSV_FORMAT)
    csv = st.file_uploader("Input sequences (.csv)", type=["csv"], key="ym_csv", max_upload_size=MAX_UPLOAD_MB)
    if csv is None:
        st.info(f"Upload a CSV of input sequences with {spec.input_size} feature column(s) (format above).",
                icon=":material/upload_file:")
        st.stop()
    inputs, csv_name = ("csv", csv.getvalue(), csv.name), csv.name
ui.seed_widget("ym_target", view.get("model.target", DEFAULT_TARGET))
target = st.text_input("Target (scalar to differentiate)", key="ym_target",
                       help="Names y (the module's output, [B, T, D·H]), h_n" + (", c_n" if spec.cell == "lstm" else "")
                            + "; subscripts, + - * / **, and .sum() .mean() .abs() .pow(k) .square() .norm(). Must "
                              "reduce to a scalar. Parsed, never run as Python.")
_store("ym_target", target)

try:
    result = _explain(data, name, spec, nonlinearity, dtype, inputs, target)
except (StateDictError, ConfigError, TargetError) as err:
    ui.show_error(err)
    st.stop()
report = result.report
st.caption(f"Target value: {result.loss:.6g}")

st.subheader("Per-step gradient norm")
ui.seed_widget("ym_log", view.get("model.log", True))
log_scale = st.toggle("Log scale", key="ym_log")
_store("ym_log", bool(log_scale))
_show(gradient_norm_chart(report.frame, log_scale=log_scale))

st.subheader("Per unit: time × hidden unit")
layers, dirs, items = list(range(spec.num_layers)), list(range(spec.num_directions)), report.config.batch_size
ui.seed_widget("ym_hm_layer", view.get("model.layer", layers[-1]))
ui.seed_widget("ym_hm_direction", DIRECTIONS.index(view.get("model.direction", "forward")))
ui.seed_widget("ym_hm_batch", view.get("model.item", 0))
ui.keep_option("ym_hm_layer", layers, layers[-1])
ui.keep_option("ym_hm_direction", dirs, 0)
ui.keep_option("ym_hm_batch", list(range(items)), 0)
h1, h2, h3 = st.columns(3)
layer = h1.selectbox("Layer", layers, key="ym_hm_layer")
direction = h2.selectbox("Direction", dirs, key="ym_hm_direction", format_func=DIRECTIONS.__getitem__)
item = int(h3.number_input("Batch item", 0, items - 1, key="ym_hm_batch"))
_store("ym_hm_layer", None if layer == layers[-1] else int(layer))
_store("ym_hm_direction", DIRECTIONS[int(direction)])
_store("ym_hm_batch", item)
_show(unit_heatmap(report.unit_frame(layer, direction, item)))

st.subheader("Which inputs matter")
_show(input_grad_chart(report.frame))

st.subheader("Verdict")
st.markdown(result.verdict)

st.subheader("The numbers")
st.dataframe(report.frame, hide_index=True)
st.download_button("Download CSV", report.frame.to_csv(index=False).encode(), file_name="your_model_gradients.csv",
                   mime="text/csv", on_click="ignore", icon=":material/download:")

st.subheader("Reproduce this in your own code")
st.caption("The same module, weights, input and target through `gru_explainer.watch` (save your file next to it).")
st.code(watch_snippet(spec, result.config, name, csv_name=csv_name, seed=seed, nonlinearity=nonlinearity),
        language="python")
