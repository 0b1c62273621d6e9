"""Charts of training runs (`gru_explainer.learn_charts`): valid specs, rows equal to the run's numbers, zeros kept."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gru_explainer import learn_charts as lc
from gru_explainer.charts import page_layout
from gru_explainer.train import TrainConfig, train


@pytest.fixture(scope="module")
def runs():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(hidden_size=6, seq_len=10, steps=20, batch_size=8, snapshot_every=5)
        results = [train(cfg.replace(cell=cell)) for cell in ("rnn_tanh", "lstm")]
    finally:
        torch.set_num_threads(before)
    return {name: pd.concat([getattr(r, name) for r in results], ignore_index=True)
            for name in ("history", "snapshots", "inputs", "summary")}


def _layout(chart) -> dict:
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    return page_layout(spec)


def test_every_chart_is_valid_and_lays_out_one_panel_per_cell(runs) -> None:
    learning = _layout(lc.learning_chart(runs["history"], 1 / 6, 0.0784))
    assert len(learning["rows"]) == 2  # loss, accuracy
    for chart in (lc.gradient_heatmap(runs["snapshots"]), lc.snapshot_profile_chart(runs["snapshots"], runs["inputs"],
                                                                                      20)):
        layout = _layout(chart)
        assert [label for label, _ in layout["rows"][0]] == ["RNN tanh", "LSTM"]
    assert len(_layout(lc.input_mass_chart(runs["summary"], "the 2 marked positions"))["rows"]) == 1


def test_rows_carry_the_runs_numbers(runs) -> None:
    snapshots = runs["snapshots"]
    heat = lc.heatmap_rows(snapshots)
    hidden = snapshots[snapshots["quantity"] == "hidden_state"]
    assert len(heat) == len(hidden) == 2 * 5 * 10
    np.testing.assert_allclose(heat["log10"].astype(float), hidden["log10_norm"].astype(float))
    assert (heat["distance"] == 9 - heat["t"]).all()
    learning = lc.learning_rows(runs["history"], 4)
    lstm = learning[learning["cell"] == "lstm"]
    np.testing.assert_allclose(lstm["loss_smooth"], runs["history"].query("cell == 'lstm'")["loss"].rolling(
        4, min_periods=1).mean())
    profile = lc.profile_rows(snapshots, runs["inputs"], 20)
    assert set(profile["series"]) == {"hidden_state", "cell_state", "input_relevant", "input_irrelevant"}
    assert "cell_state" not in set(profile[profile["cell"] == "rnn_tanh"]["series"])
    masses = lc.mass_rows(runs["summary"])
    np.testing.assert_allclose(masses["relevant_share"], runs["summary"]["relevant_share"])


def test_exact_zeros_and_underflow_are_marked_not_dropped(runs) -> None:
    snapshots = runs["snapshots"].copy()
    hidden = snapshots.index[snapshots["quantity"] == "hidden_state"]
    snapshots.loc[hidden[0], ["log10_norm", "zero_cause"]] = [-math.inf, "zero_on_path"]
    snapshots.loc[hidden[1], ["log10_norm", "zero_cause"]] = [-60.0, "underflow"]
    heat = lc.heatmap_rows(snapshots)
    assert list(heat["status"].iloc[:2]) == ["zero", "underflow"] and heat["log10"].iloc[1] == -60.0
    layout = _layout(lc.gradient_heatmap(snapshots))
    assert any("Gray cells are exactly 0" in line for line in layout["subtitle"])
    assert any("underflow" in line for line in layout["subtitle"])
    profile = lc.profile_rows(snapshots, runs["inputs"], 0)
    assert lc.ZERO_LABEL in set(profile["marker"]) and lc.UNDERFLOW_LABEL in set(profile["marker"])
    zero = profile[profile["marker"] == lc.ZERO_LABEL]
    assert (zero["plot_y"] <= profile["plot_y"].min()).all()  # at the bottom of the axis
    _layout(lc.snapshot_profile_chart(snapshots, runs["inputs"], 0))
