"""Numerical faults and size extremes in the UI: exploding gradients and an overflowing forward pass render every
chart with the non-finite values marked (never clipped, never dropped), the verdict says what happened; the largest
config the hosted limits allow renders once."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig, Limits, explain
from gru_explainer.urlstate import config_to_query

from .vega import explorer_charts, explorer_complete, joined

EXPLORER = str(Path(__file__).resolve().parents[1] / "app_pages" / "explorer.py")

EXPLODING = ExplainConfig(cell="rnn_tanh", hidden_size=128, seq_len=512, batch_size=2, weight_scale=4, input_size=4)
"""inf/NaN gradients far from the target step (the forward pass stays finite: tanh saturates)."""
OVERFLOWING = ExplainConfig(cell="rnn_relu", weight_scale=10, hidden_size=64, seq_len=500)
"""The forward pass itself overflows to inf (ReLU does not saturate)."""


def open_explorer(cfg: ExplainConfig, timeout: float = 90) -> AppTest:
    """The explorer opened through the URL with `cfg`, as a visitor would."""
    at = AppTest.from_file(EXPLORER, default_timeout=timeout)
    for key, value in config_to_query(cfg).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.warning and not at.error, [w.value for w in at.warning] + [e.value for e in at.error]
    assert at.session_state["gx_config"] == cfg
    return at


def verdict_text(at: AppTest) -> str:
    (text,) = [m.value for m in at.markdown if m.value.startswith("**Target**")]
    return text


KEY = ["quantity", "layer", "direction", "t"]


def panel_rows(at: AppTest, kind: str) -> pd.DataFrame:
    """The rows of one explorer chart over all its panels, in the frame's order."""
    rows = joined(explorer_charts(at)[kind])
    return rows.sort_values(KEY).reset_index(drop=True) if kind != "heatmap" else rows


def frame_rows(frame: pd.DataFrame, inputs: bool) -> pd.DataFrame:
    rows = frame[(frame.quantity == "input") == inputs]
    return rows.sort_values(KEY).reset_index(drop=True)


def assert_marked_not_clipped(rows: pd.DataFrame, frame: pd.DataFrame) -> None:
    """Chart rows match the report row for row: rows that are inf/NaN in the dtype carry a non-finite status and no
    dtype number (nothing was clipped to a finite value), their text says inf/NaN; those with a finite true value
    are drawn at it (status "overflow"), the others sit in the inf/NaN band above the plot; finite rows keep their
    norm, and those of them without a true value (computed through inf/NaN forward states) sit in that band too."""
    assert len(rows) == len(frame)
    bad = frame["nonfinite"].to_numpy()
    log10 = frame["log10_norm"].to_numpy(float)
    no_true_value = ~bad & np.isnan(log10)
    assert list(rows["status"].isin(["overflow", "nonfinite"])) == list(bad | no_true_value)
    assert (rows["status"][no_true_value] == "nonfinite").all()
    marked = rows[bad]
    assert marked["norm"].isna().all()
    assert marked["norm_text"].isin(["inf", "-inf", "NaN"]).all()
    over = marked[marked["status"] == "overflow"]
    true = frame["log10_norm"][bad][marked["status"].to_numpy() == "overflow"].to_numpy(float)
    np.testing.assert_allclose(over["log10_norm"].to_numpy(float), true, rtol=1e-9)  # the true size travels along
    # Drawn at it (log scale), or at the top edge with the size in the tooltip (linear scale): never lower.
    plot_y = over["plot_y"].to_numpy(float)
    at_true = np.isclose(np.log10(plot_y), true, rtol=1e-9)
    at_top = plot_y >= rows["plot_y"][~bad].max()
    assert (at_true | at_top).all()
    undefined = marked[marked["status"] == "nonfinite"]
    assert (undefined["band_row"] == -1).all()  # the band above the plot
    finite = rows[~bad]
    np.testing.assert_allclose(finite["norm"].to_numpy(float), frame["norm"][~bad].to_numpy(float), rtol=1e-6)
    # Without a true value: in the band above a log axis, or at the dtype's value on a linear one.
    undefined_finite = rows[no_true_value]
    at_value = np.isclose(undefined_finite["plot_y"].to_numpy(float), undefined_finite["norm"].to_numpy(float))
    assert ((undefined_finite["band_row"] == -1).to_numpy() | at_value).all()


def test_exploding_gradients_are_marked_everywhere() -> None:
    report = explain(EXPLODING)
    assert report.frame["nonfinite"].any() and not report.frame["forward_nonfinite"].any()
    at = open_explorer(EXPLODING)
    assert_marked_not_clipped(panel_rows(at, "norm"), frame_rows(report.frame, inputs=False))
    assert_marked_not_clipped(panel_rows(at, "input"), frame_rows(report.frame, inputs=True))
    text = verdict_text(at)
    assert "**Exploding gradients**" in text and "Nothing was clipped" in text and "overflowed" not in text
    (table,) = at.dataframe  # the numbers as shown: inf / NaN kept
    assert not np.isfinite(table.value["norm"].to_numpy(float)).all()
    # The heatmap of the layer that exploded (layer 0 here) marks its inf/NaN cells (binned over time: 512 steps).
    (layer,) = report.frame[report.frame.nonfinite & (report.frame.quantity == "hidden_state")]["layer"].unique()
    assert not bool(panel_rows(at, "heatmap")["value_nonfinite"].any()) or layer == EXPLODING.num_layers - 1
    at.selectbox(key="gx_hm_layer").set_value(int(layer))
    at.run()
    assert not at.exception and not at.error
    cells = panel_rows(at, "heatmap")
    bad = cells["value_nonfinite"].astype(bool)
    assert bool(bad.any())  # crossed on the linear heatmap, with no (clipped) value
    assert not np.isfinite(pd.to_numeric(cells.loc[bad, "value"], errors="coerce").astype(float)).any()
    assert pd.to_numeric(cells.loc[bad, "log10_magnitude"], errors="coerce").notna().all()  # the true size is known


def test_an_overflowing_forward_pass_is_named_in_the_verdict() -> None:
    report = explain(OVERFLOWING)
    assert report.frame["forward_nonfinite"].any() and not math.isfinite(report.target_value)
    at = open_explorer(OVERFLOWING)
    assert_marked_not_clipped(panel_rows(at, "norm"), frame_rows(report.frame, inputs=False))
    assert_marked_not_clipped(panel_rows(at, "input"), frame_rows(report.frame, inputs=True))
    text = verdict_text(at)
    assert "**The forward pass overflowed**" in text and "= nan" in text.splitlines()[0]


@pytest.mark.parametrize("target", ["y.sum() / 0", "y.sum() ** 1e308"])
def test_a_target_that_is_infinite_renders(target: str) -> None:
    cfg = ExplainConfig(seq_len=6, hidden_size=8, target=target)
    at = open_explorer(cfg)
    assert explorer_complete(at)
    report = explain(cfg)
    assert_marked_not_clipped(panel_rows(at, "norm"), frame_rows(report.frame, inputs=False))


def test_largest_allowed_config_once() -> None:
    """The widest model the hosted limits allow (layers, hidden, input, head at their maxima, bidirectional) with the
    longest sequence that fits the state-size limit: the explorer renders it in full."""
    lim = Limits.from_env()
    per_step = lim.max_num_layers * 2 * lim.max_hidden_size
    steps = min(lim.max_seq_len, lim.max_state_elements // per_step)
    cfg = ExplainConfig(num_layers=lim.max_num_layers, hidden_size=lim.max_hidden_size, bidirectional=True,
                        input_size=lim.max_input_size, head="linear", head_size=lim.max_head_size, seq_len=steps,
                        batch_size=max(1, lim.max_state_elements // (per_step * steps)), target="out.sum()")
    cfg.validate(lim)
    at = open_explorer(cfg, timeout=120)
    groups = explorer_charts(at)
    assert len(joined(groups["norm"])) == (1 + cfg.num_layers) * 2 * steps  # y (top layer) and h_t of every layer
    assert len(joined(groups["input"])) == steps
    assert len(joined(groups["heatmap"])) > 0
    assert verdict_text(at).startswith("**Target** `out.sum()`")
