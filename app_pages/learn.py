"""Watch it learn: train two cells on a long-memory task and see where the gradient goes as they learn."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

import hosting
import ui
from gru_explainer import ConfigError
from gru_explainer.config import CELL_LABELS
from gru_explainer.learn_charts import gradient_heatmap, input_mass_chart, learning_chart, snapshot_profile_chart
from gru_explainer.tasks import TASK_LABELS, TASKS, task_spec
from gru_explainer.train import TRAIN_CELLS, TrainConfig, TrainLimits, TrainResult, first_step_below, train
from gru_explainer.urlstate import ViewParam, view_from_query, view_to_query

LIMITS = TrainLimits.from_env()
DEFAULT = TrainConfig()
DEFAULT_COMPARE = "rnn_tanh"
NONE = "none"
LR_CHOICES = ("0.001", "0.003", "0.01", "0.02", "0.03", "0.05", "0.1")
WINDOW = 20
"""Steps of the trailing mean the learning curves and the sentences use."""
VIEW_PARAMS = (
    ViewParam("learn.task", str, DEFAULT.task, choices=TASKS),
    ViewParam("learn.cell", str, DEFAULT.cell, choices=TRAIN_CELLS),
    ViewParam("learn.compare", str, DEFAULT_COMPARE, choices=(NONE, *TRAIN_CELLS)),
    ViewParam("learn.T", int, DEFAULT.seq_len, low=2, high=LIMITS.max_seq_len),
    ViewParam("learn.H", int, DEFAULT.hidden_size, low=1, high=LIMITS.max_hidden_size),
    ViewParam("learn.layers", int, DEFAULT.num_layers, low=1, high=LIMITS.max_num_layers),
    ViewParam("learn.steps", int, DEFAULT.steps, low=1, high=LIMITS.max_steps),
    ViewParam("learn.batch", int, DEFAULT.batch_size, low=1, high=LIMITS.max_batch_size),
    ViewParam("learn.lr", str, f"{DEFAULT.lr:g}", choices=LR_CHOICES),
    ViewParam("learn.seed", int, DEFAULT.seed, low=0, high=2**31 - 1),
    ViewParam("learn.every", int, DEFAULT.snapshot_every, low=1, high=LIMITS.max_steps),
    ViewParam("learn.snapshot", int, None, low=0, high=LIMITS.max_steps),
)
SPECS = {spec.key: spec for spec in VIEW_PARAMS}
SEEDED = "gx_learn_seeded"
VIEW = "gx_learn_view"
"""The settings of the page's last run (Streamlit drops widget values when the page is left; they come back from
here)."""


def _from_url() -> None:
    """On the page's first run in a session, seed the widgets from the URL (a notice for every bad value); later,
    restore widget values Streamlit dropped while another page was shown."""
    if st.session_state.get(SEEDED):
        for key, value in st.session_state.get(VIEW, {}).items():
            if key not in st.session_state and key != "learn.snapshot":
                st.session_state[key] = value
        return
    values, notices = view_from_query(st.query_params.to_dict(), VIEW_PARAMS)
    for notice in notices:
        ui.show_notice(notice)
    for spec in VIEW_PARAMS:
        if spec.key != "learn.snapshot":
            st.session_state[spec.key] = values.get(spec.key, spec.default)
    st.session_state["gx_learn_snapshot_url"] = values.get("learn.snapshot")
    st.session_state[SEEDED] = True


def _to_url(values: dict[str, Any]) -> None:
    """Mirror the non-default settings in the URL."""
    wanted = view_to_query(values, VIEW_PARAMS)
    ui.mirror_view(wanted, VIEW_PARAMS)


@st.cache_data(max_entries=8, max_size=hosting.cache_budget("train"), show_spinner=False)
def _train_cached(fields: tuple[tuple[str, Any], ...]) -> TrainResult:
    """One training run with a progress bar, cached on its config (0.5 MiB pickled at the defaults, ~11 MiB at the
    largest hosted run; at most 8 runs and hosting.CACHE_BUDGET["train"] bytes kept). The bar is created here, inside
    the cached function, so a cache hit replays it (already emptied) instead of failing."""
    cfg = TrainConfig(**dict(fields))
    bar = st.progress(0.0, text=f"Training {CELL_LABELS[cfg.cell]}…")
    try:
        def progress(fraction: float, message: str) -> None:
            hosting.take_turns()  # ~50 checkpoints: a visitor waiting for the slot goes first, then training goes on
            bar.progress(min(max(fraction, 0.0), 1.0), text=message)

        with hosting.heavy():  # at most hosting.HEAVY_AT_ONCE heavy runs at a time, across sessions
            return train(cfg, LIMITS, progress=progress)
    finally:
        bar.empty()


def cached_train(cfg: TrainConfig) -> TrainResult:
    """`train(cfg)` through the page's bounded cache."""
    return _train_cached(tuple(cfg.to_dict().items()))


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"


def _power(log10: float) -> str:
    """10**log10 as text: '1/3,200' style is hard to read for tiny numbers, so '10^-12.3'."""
    if not math.isfinite(log10):
        return "0" if log10 < 0 else "inf"
    if -3 <= log10 <= 3:
        return f"{10 ** log10:.3g}"
    return f"10^{log10:.1f}"


def _sentences(result: TrainResult) -> list[str]:
    """What one run's numbers say, in words (every number computed from the result)."""
    cfg, task, summary, history = result.config, result.task, result.summary, result.history
    label = CELL_LABELS[cfg.cell]
    first, final = summary.iloc[0], summary.iloc[-1]
    ratio = final["loss"] / task.chance_loss
    lines = [f"**{label}**: after {cfg.steps} steps the loss on a fresh batch is {final['loss']:.3g}, "
             f"{_pct(ratio)} of the chance level {task.chance_loss:.3g} (it started at {first['loss']:.3g}); "
             f"accuracy {_pct(final['accuracy'])} (chance {_pct(task.chance_accuracy)})."]
    half = first_step_below(history, task.chance_loss / 2, WINDOW)
    tenth = first_step_below(history, task.chance_loss / 10, WINDOW)
    if tenth is not None:
        lines.append(f"Its {WINDOW}-step mean loss first fell below a tenth of chance at step {tenth}"
                     + (f" (below half at step {half})." if half is not None and half < tenth else "."))
    elif half is not None:
        lines.append(f"Its {WINDOW}-step mean loss fell below half of chance at step {half}, never below a tenth.")
    else:
        lines.append(f"Its {WINDOW}-step mean loss never fell below half of chance: it did not learn the task "
                     f"in {cfg.steps} steps.")
    lines.append(f"At the trained weights {_pct(final['relevant_share'])} of the input-gradient mass is on "
                 f"{task.relevant_text} ({_pct(final['relevant_fraction'])} of the positions); at step 0 it was "
                 f"{_pct(first['relevant_share'])}.")
    reach = final["hidden_first_log10"] - final["hidden_last_log10"]
    if math.isfinite(reach) and cfg.seq_len > 1:
        rate = 10 ** (reach / (cfg.seq_len - 1))
        lines.append(f"‖dL/dh_0‖ is {_power(reach)} × ‖dL/dh_{{T-1}}‖ after training (about ×{rate:.3g} per step "
                     f"back over T = {cfg.seq_len}); at step 0 it was "
                     f"{_power(first['hidden_first_log10'] - first['hidden_last_log10'])} ×.")
    return lines


def _comparison(results: list[TrainResult]) -> str | None:
    """Which cell learned (lower final loss relative to chance) and where its input gradient goes, from the numbers."""
    if len(results) < 2:
        return None
    ranked = sorted(results, key=lambda r: r.final["loss"] / r.task.chance_loss)
    if not all(math.isfinite(r.final["loss"]) for r in ranked):
        return None
    parts = [f"{CELL_LABELS[r.config.cell]} ends at {_pct(r.final['loss'] / r.task.chance_loss)} of the chance loss "
             f"and puts {_pct(r.final['relevant_share'])} of its input gradient on {r.task.relevant_text}"
             for r in ranked]
    return "Same task, seed and batches: " + "; ".join(parts) + "."


title_col, glossary_col = st.columns([5, 1], vertical_alignment="bottom")
title_col.title("Watch it learn")
with glossary_col:
    ui.glossary(("structural zero", "zero on a path", "underflow"))
st.caption("With random weights every input matters a little. Train on a task where only a few inputs matter and "
           "watch the gradient: it learns to reach the relevant steps, and the input gradient leaves the positions "
           "that do not matter. Every few steps the training step itself runs inside gru_explainer.watch, which "
           "records every dL/dh_t at its true magnitude (the update is unchanged).")

_from_url()
c1, c2, c3 = st.columns(3)
task_name = c1.selectbox("Task", TASKS, key="learn.task", format_func=TASK_LABELS.__getitem__,
                         help="adding: sum the 2 marked numbers; copy: recall the first 3 symbols after a delay; "
                              "marked recall: recall the symbol at the one marked step (a different step per example).")
cell = c2.selectbox("Cell", TRAIN_CELLS, key="learn.cell", format_func=CELL_LABELS.__getitem__)
compare = c3.selectbox("Compare with", (NONE, *TRAIN_CELLS), key="learn.compare",
                       format_func=lambda c: "nothing" if c == NONE else CELL_LABELS[c],
                       help="A second cell trained on the same task, seed and batches, shown side by side.")
with st.expander("Training settings", expanded=False, icon=":material/tune:"):
    s1, s2, s3, s4 = st.columns(4)
    seq_len = s1.number_input("Sequence length T", 2, LIMITS.max_seq_len, key="learn.T",
                              help="copy: 3 symbols, then T − 3 delay steps")
    hidden = s2.number_input("Hidden size", 1, LIMITS.max_hidden_size, key="learn.H")
    layers = s3.number_input("Layers", 1, LIMITS.max_num_layers, key="learn.layers")
    steps = s4.number_input("Training steps", 1, LIMITS.max_steps, key="learn.steps")
    s5, s6, s7, s8 = st.columns(4)
    batch = s5.number_input("Batch size", 1, LIMITS.max_batch_size, key="learn.batch")
    lr = s6.selectbox("Learning rate (Adam)", LR_CHOICES, key="learn.lr")
    seed = s7.number_input("Seed", 0, 2**31 - 1, key="learn.seed", help="Seeds the weights and the batches.")
    every = s8.number_input("Snapshot every K steps", 1, LIMITS.max_steps, key="learn.every")

settings = {"learn.task": task_name, "learn.cell": cell, "learn.compare": compare, "learn.T": int(seq_len),
            "learn.H": int(hidden), "learn.layers": int(layers), "learn.steps": int(steps), "learn.batch": int(batch),
            "learn.lr": lr, "learn.seed": int(seed), "learn.every": int(every)}
base = TrainConfig(task=task_name, cell=cell, num_layers=int(layers), hidden_size=int(hidden), seq_len=int(seq_len),
                   steps=int(steps), batch_size=int(batch), lr=float(lr), seed=int(seed), snapshot_every=int(every))
cells = [cell] + ([compare] if compare not in (NONE, cell) else [])
try:
    base.validate(LIMITS)
except ConfigError as err:  # never a traceback: the message names the field
    st.session_state[VIEW] = settings
    _to_url(settings)
    ui.show_error(err)
    st.stop()

spec = task_spec(task_name, int(seq_len))
st.markdown(f"**Task**: {ui.md_escape(spec.description)} Chance level: loss {spec.chance_loss:.4g}, accuracy "
            f"{spec.chance_accuracy:.1%}.")

results: list[TrainResult] = []
try:
    results = [cached_train(base.replace(cell=name)) for name in cells]
except Exception as err:  # never a traceback (e.g. out of memory)
    ui.show_error(err)
    st.stop()

st.caption(" ".join(f"{CELL_LABELS[r.config.cell]} trained in {r.seconds:.1f} s." for r in results))
comparison = _comparison(results)
if comparison:
    st.markdown(ui.md_escape(comparison))
metric_cols = st.columns(len(results))
for col, result in zip(metric_cols, results, strict=True):
    final = result.final
    with col:
        st.metric(f"{CELL_LABELS[result.config.cell]}: loss / chance", _pct(final["loss"] / result.task.chance_loss),
                  border=True, help="Loss of the trained weights on a fresh batch, relative to the chance level.")
        st.metric(f"{CELL_LABELS[result.config.cell]}: input gradient on relevant positions",
                  _pct(final["relevant_share"]), border=True,
                  help=f"Share of Σ‖dL/dx‖ on {result.task.relevant_text}; "
                       f"{_pct(final['relevant_fraction'])} of the positions are relevant.")
for result in results:
    st.markdown("\n".join(f"- {line}" if i else line for i, line in enumerate(_sentences(result))))

history = pd.concat([r.history for r in results], ignore_index=True)
snapshots = pd.concat([r.snapshots for r in results], ignore_index=True)
inputs = pd.concat([r.inputs for r in results], ignore_index=True)
summary = pd.concat([r.summary for r in results], ignore_index=True)

st.subheader("Loss and accuracy")
ui.show_chart(learning_chart(history, spec.chance_loss, spec.chance_accuracy, WINDOW))

st.subheader("How far back the gradient reaches")
ui.show_chart(gradient_heatmap(snapshots))
zero_rows = snapshots[(snapshots["quantity"] == "hidden_state") & (snapshots["zero_cause"] != "")]
if not zero_rows.empty:
    causes = zero_rows["zero_cause"].value_counts()
    st.caption("Zeros in float32: " + ", ".join(f"{n} (snapshot, step) cells {c.replace('_', ' ')}"
                                                 for c, n in causes.items()) + ".")

st.subheader("Inputs that do not matter")
ui.show_chart(input_mass_chart(summary, spec.relevant_text))

st.subheader("One snapshot")
options = results[0].config.snapshot_steps
wanted = st.session_state.pop("gx_learn_snapshot_url", None)
if wanted is not None:
    if wanted in options:
        st.session_state["learn.snapshot"] = wanted
    else:
        ui.show_notice(f"URL parameter learn.snapshot={wanted} is not a snapshot of this run (every "
                       f"{base.snapshot_every} steps up to {base.steps}); showing the last.")
if st.session_state.get("learn.snapshot") not in options:
    st.session_state["learn.snapshot"] = options[-1]
step = st.select_slider("Snapshot (training step)", options, key="learn.snapshot",
                        help="The per-step gradients of the training step at this point (the last: the trained "
                             "weights on a fresh batch).")
settings["learn.snapshot"] = None if step == options[-1] else int(step)
st.session_state[VIEW] = settings
_to_url(settings)
ui.show_chart(snapshot_profile_chart(snapshots, inputs, int(step)))
at_step = summary[summary["step"] == step]
st.caption(" ".join(f"{CELL_LABELS[row.cell]} at step {int(row.step)}: loss {row.loss:.3g}, "
                    f"{_pct(row.relevant_share)} of the input gradient on {spec.relevant_text}."
                    for row in at_step.itertuples(index=False)))

st.subheader("Take the trained model with you")
command = " ".join(["python -m gru_explainer train", *(
    f"--{name.replace('_', '-')} {getattr(base, name):g}" if isinstance(getattr(base, name), float) else
    f"--{name.replace('_', '-')} {getattr(base, name)}"
    for name in base.to_dict() if getattr(base, name) != getattr(DEFAULT, name)), "--out run/"])
st.caption("The trained weights are a plain state_dict (rnn.weight_ih_l0, …, head.weight): upload one on the Your "
           "model page, or run python -m gru_explainer explain --state-dict model.pt. The same run of the first cell "
           "from the command line:")
st.code(command, language="bash", wrap_lines=True)
download_cols = st.columns(len(results) + 1)
for col, result in zip(download_cols, results, strict=False):
    col.download_button(f"{CELL_LABELS[result.config.cell]} weights (.pt)", result.state_dict_bytes(),
                        file_name=f"{result.config.task}_{result.config.cell}_T{result.config.seq_len}_"
                                  f"seed{result.config.seed}.pt", mime="application/octet-stream",
                        icon=":material/download:", key=f"learn_download_{result.config.cell}")
download_cols[-1].download_button("Snapshots (CSV)", snapshots.to_csv(index=False).encode(),
                                  file_name=f"{base.task}_snapshots.csv", mime="text/csv",
                                  icon=":material/download:", key="learn_download_csv")
