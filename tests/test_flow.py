"""Gradient flow through time: decay profiles, the fitted per-step rate, and sweeps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gru_explainer import ConfigError, ExplainConfig, TargetError, explain
from gru_explainer.charts import decay_rows
from gru_explainer.flow import (
    JACOBIAN_COLUMNS,
    PROFILE_COLUMNS,
    RATE_COLUMNS,
    cell_config,
    cell_label,
    decay_profile,
    decay_rates,
    describe_cell_path,
    describe_jacobians,
    describe_rate,
    describe_sweep,
    fit_decay,
    fit_decay_rate,
    fit_log10_decay,
    hidden_rows,
    jacobian_profile,
    step_jacobians,
    sweep,
)
from gru_explainer.models import build, layer_params
from gru_explainer.target import parse_target

from .reference import unrolled_step_grads

SMALL = ExplainConfig(cell="gru", num_layers=2, hidden_size=8, seq_len=6, batch_size=2)


@given(rate=st.floats(0.05, 20.0), scale=st.floats(1e-6, 1e6), steps=st.integers(2, 60))
@settings(max_examples=60, deadline=None)
def test_fit_matches_a_geometric_sequence(rate: float, scale: float, steps: int) -> None:
    distance = np.arange(steps)
    norm = scale * rate ** distance.astype(float)
    assert fit_decay_rate(distance, norm) == pytest.approx(rate, rel=1e-9)


def test_fit_exact_for_simple_halving() -> None:
    assert fit_decay_rate([0, 1, 2, 3], [8.0, 4.0, 2.0, 1.0]) == pytest.approx(0.5, rel=1e-12)
    assert fit_decay_rate([0, 1, 2, 3], [1.0, 2.0, 4.0, 8.0]) == pytest.approx(2.0, rel=1e-12)
    assert fit_decay_rate([3, 1, 0, 2], [1.0, 4.0, 8.0, 2.0]) == pytest.approx(0.5, rel=1e-12)  # order-free


def test_fit_decay_returns_the_intercept() -> None:
    rate, intercept = fit_decay([1, 2, 3], [30.0, 3.0, 0.3])
    assert rate == pytest.approx(0.1, rel=1e-12)
    assert intercept == pytest.approx(math.log10(300.0), rel=1e-12)
    assert all(math.isnan(v) for v in fit_decay([1], [1.0]))


def test_fit_excludes_zeros_and_non_finite_values() -> None:
    distance = [0, 1, 2, 3, 4, 5, 6]
    norm = [1.0, 0.1, 0.0, 1e-3, math.inf, 1e-5, math.nan]
    assert fit_decay_rate(distance, norm) == pytest.approx(0.1, rel=1e-12)


def test_fit_is_nan_without_two_distinct_points() -> None:
    assert math.isnan(fit_decay_rate([], []))
    assert math.isnan(fit_decay_rate([0], [1.0]))
    assert math.isnan(fit_decay_rate([0, 1, 2], [1.0, 0.0, math.inf]))
    assert math.isnan(fit_decay_rate([2, 2], [1.0, 3.0]))
    with pytest.raises(ValueError, match="same length"):
        fit_decay_rate([0, 1], [1.0])


def test_profile_values_equal_hidden_grad_norms() -> None:
    cfg = SMALL.replace(bidirectional=True, target="y[:, 3].sum()")
    report = explain(cfg)
    profile = decay_profile(report)
    assert list(profile.columns) == list(PROFILE_COLUMNS)
    for row in profile.itertuples():
        d = 0 if row.direction == "forward" else 1
        expected = report.hidden_grad[row.layer, d, :, row.t, :].double().norm().item()
        assert row.norm == pytest.approx(expected, rel=1e-12, abs=0.0)
    # Forward direction: anchored at the read step t = 3, later steps (structural zeros) left out.
    fwd = profile[(profile.layer == 1) & (profile.direction == "forward")]
    assert sorted(fwd.t) == [0, 1, 2, 3]
    assert (fwd.distance == 3 - fwd.t).all()
    # Reverse direction of the top layer: processed T-1 -> 0, so steps 3..5 reach the target via t = 3.
    rev = profile[(profile.layer == 1) & (profile.direction == "reverse")]
    assert sorted(rev.t) == [3, 4, 5]
    assert (rev.distance == rev.t - 3).all()
    anchor = fwd[fwd.distance == 0].norm.iloc[0]
    assert np.allclose(fwd.relative, fwd.norm / anchor)
    assert set(profile.cell) == {"gru"} and set(profile.seq_len) == {6}


def test_profile_default_target_covers_every_step() -> None:
    report = explain(SMALL)
    profile = decay_profile(report)
    assert len(profile) == SMALL.num_layers * SMALL.seq_len
    top = profile[profile.layer == 1].sort_values("distance")
    assert list(top.distance) == list(range(SMALL.seq_len))
    assert list(top.t) == list(range(SMALL.seq_len - 1, -1, -1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_larger_weight_scale_decays_slower_for_rnn_tanh(seed: int) -> None:
    base = ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=32, seq_len=30, seed=seed, dtype="float64")
    scales = [0.25, 0.5, 1.0, 2.0, 4.0]
    rates = decay_rates(sweep(base, cells=["rnn_tanh"], weight_scales=scales)).sort_values("weight_scale")
    assert list(rates.weight_scale) == scales
    assert np.all(np.diff(rates.rate.to_numpy()) > 0), rates.rate.tolist()
    assert rates.rate.iloc[0] < 1 < rates.rate.iloc[-1]  # vanishing at 0.25, exploding at 4


def test_underflow_rows_are_flagged_and_fitted_at_their_true_magnitude() -> None:
    # Tiny weights in float32 over a long sequence: float32 shows exact zeros far from the target, but the true
    # magnitudes are known, so the fit uses every step and matches the same run in float64.
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=16, seq_len=120, weight_scale=0.05)
    profile = decay_profile(explain(cfg))
    zeros = profile[profile.exactly_zero]
    assert len(zeros) > 0 and zeros.underflow.all() and (zeros.zero_cause == "underflow").all()
    assert (zeros.norm == 0).all() and np.isfinite(zeros.log10_norm).all()
    rates = decay_rates(profile)
    assert rates.points.iloc[0] == len(profile)
    assert rates.zero_steps.iloc[0] == len(zeros)
    reference = decay_rates(decay_profile(explain(cfg.replace(dtype="float64"))))  # float64 holds these values
    assert rates.rate.iloc[0] == pytest.approx(reference.rate.iloc[0], rel=1e-3)
    assert 0 < rates.rate.iloc[0] < 0.1


def test_sweep_covers_every_combination_and_reports_progress() -> None:
    calls: list[tuple[float, str]] = []
    frame = sweep(SMALL, cells=["gru", "lstm", "answer_gru"], seq_lens=[3, 5], weight_scales=[0.5, 2.0],
                  progress=lambda f, m: calls.append((f, m)))
    assert list(frame.columns) == list(PROFILE_COLUMNS)
    combos = set(frame[["cell", "seq_len", "weight_scale"]].itertuples(index=False, name=None))
    assert combos == {(c, s, w) for c in ["gru", "lstm", "answer_gru"] for s in [3, 5] for w in [0.5, 2.0]}
    assert len(calls) == 3 * 2 * 2 + 1
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1.0
    assert "LSTM" in " ".join(m for _, m in calls)
    # answer_gru runs with one layer; others with the base config's two.
    assert set(frame[frame.cell == "answer_gru"].layer) == {0}
    assert set(frame[frame.cell == "gru"].layer) == {0, 1}
    rates = decay_rates(frame)
    assert list(rates.columns) == list(RATE_COLUMNS)
    assert len(hidden_rows(rates)) == 2 * 2 * (2 + 2 + 1)  # per combination: the layers of each cell
    assert set(rates[rates.quantity == "cell_state"].cell) == {"lstm"}
    assert len(rates[rates.quantity == "cell_state"]) == 2 * 2 * 2  # the LSTM's two layers


def test_sweep_uses_the_profile_callable_and_defaults_to_the_base_values() -> None:
    seen: list[ExplainConfig] = []

    def fake(cfg: ExplainConfig):
        seen.append(cfg)
        return decay_profile(explain(cfg))

    sweep(SMALL, cells=["rnn_relu"], profile=fake)
    assert seen == [SMALL.replace(cell="rnn_relu")]


def test_sweep_matches_single_reports() -> None:
    frame = sweep(SMALL, cells=["lstm"], seq_lens=[4])
    direct = decay_profile(explain(SMALL.replace(cell="lstm", seq_len=4)))
    assert np.array_equal(frame.norm.to_numpy(), direct.norm.to_numpy())


def test_sweep_propagates_bad_input() -> None:
    with pytest.raises(ConfigError):
        sweep(SMALL, cells=["gru"], seq_lens=[0])
    with pytest.raises(ConfigError):
        sweep(SMALL, cells=["nope"])
    with pytest.raises(TargetError):
        sweep(SMALL.replace(target="c_n.sum()"), cells=["lstm", "gru"])


def test_sweep_can_skip_bad_combinations() -> None:
    frame = sweep(SMALL.replace(target="y[:, 4].sum()"), cells=["gru"], seq_lens=[3, 6], skip_errors=True)
    assert set(frame.seq_len) == {6}
    [(cell, seq_len, scale, message)] = frame.attrs["skipped"]
    assert (cell, seq_len, scale) == ("gru", 3, 1.0)
    assert "out of range" in message
    everything_bad = sweep(SMALL.replace(target="c_n.sum()"), cells=["gru", "rnn_tanh"], skip_errors=True)
    assert everything_bad.empty and len(everything_bad.attrs["skipped"]) == 2


def test_empty_inputs_give_empty_frames() -> None:
    assert sweep(SMALL, cells=[]).empty
    assert list(sweep(SMALL, cells=[]).columns) == list(PROFILE_COLUMNS)
    assert decay_rates(sweep(SMALL, cells=[])).empty


def test_helpers() -> None:
    assert cell_label("rnn_tanh") == "RNN tanh"
    assert cell_config(SMALL.replace(bidirectional=True), "answer_gru").num_layers == 1
    assert not cell_config(SMALL.replace(bidirectional=True), "answer_gru").bidirectional
    assert cell_config(SMALL, "lstm", seq_len=3) == SMALL.replace(cell="lstm", seq_len=3)


def test_nonfinite_gradients_are_flagged_and_fitted_at_their_true_magnitude() -> None:
    # Large weights in float32 over a long sequence: float32 overflows to inf far from the target; the true
    # magnitudes (finite: the forward pass stays bounded) still enter the fit.
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=32, seq_len=500, weight_scale=10.0)
    profile = decay_profile(explain(cfg))
    bad = profile[profile.nonfinite]
    assert len(bad) > 0 and np.isfinite(bad.log10_norm).all() and (bad.log10_norm > 38).any()
    rates = decay_rates(profile)
    assert rates.nonfinite_steps.iloc[0] == len(bad)
    assert rates.points.iloc[0] == len(profile)
    finite = profile[~profile.nonfinite & (profile.norm > 0)]
    assert rates.rate.iloc[0] == pytest.approx(fit_decay_rate(finite.distance, finite.norm), rel=0.1)
    assert math.isfinite(rates.rate.iloc[0]) and rates.rate.iloc[0] > 1
    assert rates.peak_t.iloc[0] < rates.anchor_t.iloc[0]  # exploding: the norm peaks far from the read step
    assert "not at the read step" in describe_rate(next(rates.itertuples(index=False)))


def test_decay_chart_marks_zeros_and_infinities_and_serialises() -> None:
    from gru_explainer.charts import decay_chart, decay_rows, fit_rows, rate_chart

    zeros = decay_profile(explain(ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=16, seq_len=120,
                                                weight_scale=0.05)))
    infs = decay_profile(explain(ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=32, seq_len=500,
                                               weight_scale=10.0)))
    for profile in (zeros, infs):
        rows = decay_rows(profile)
        values = rows[rows.status == "value"].plot_y
        assert (rows[rows.status == "underflow"].plot_y < values.min()).all()
        assert (rows[rows.status == "nonfinite"].plot_y > values.max()).all()
        assert rows.line_y[rows.status != "value"].isna().all()
        rates = decay_rates(profile)
        fits = fit_rows(rates, profile)
        used = profile[np.isfinite(profile.norm) & (profile.norm > 0)]
        assert list(fits.distance) == [used.distance.min(), used.distance.max()]
        spec = decay_chart(profile, rates).to_dict()
        assert spec["title"]["text"] and all("encoding" in layer for layer in spec["layer"])
    swept = sweep(SMALL, cells=["gru", "rnn_relu"], weight_scales=[0.5, 2.0])
    spec = rate_chart(decay_rates(swept)).to_dict()
    assert spec["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"


def test_lower_layer_of_a_bidirectional_lstm_is_fitted_from_its_read_step() -> None:
    """The issue's case: layer 0 forward peaks at the read step t = 10 and decays BOTH ways; the rate is fitted on
    the side the recurrence carries it (t <= 10), and t > 10 (fed from the layer above) is not called exploding."""
    cfg = ExplainConfig(cell="lstm", num_layers=2, bidirectional=True, seq_len=30, target="y[:, 10].sum()",
                        dtype="float64")
    report = explain(cfg)
    profile = decay_profile(report)
    rows = profile[(profile.layer == 0) & (profile.direction == "forward")]
    rate = decay_rates(rows).iloc[0]
    assert rate.anchor_t == 10 and rate.peak_t == 10
    assert rate.ahead_steps == 19 and set(rows[rows.side == "ahead"].t) == set(range(11, 30))
    assert rate.rate < 1
    # Independently: the float64 twin's (autograd) norms at t <= 10, fitted by hand.
    twin = explain(cfg, engine="twin")
    norms = twin.hidden_grad[0, 0].transpose(0, 1).flatten(1).norm(dim=1).numpy()  # [T]
    distance = 10 - np.arange(11)
    slope = np.polyfit(distance, np.log10(norms[:11]), 1)[0]
    assert rate.rate == pytest.approx(10 ** slope, rel=1e-6)
    assert norms[11:].max() < norms[10]  # it decays on the other side too: nothing there explodes
    text = describe_rate(rate)
    assert "shrinks" in text and "peaks at t = 10, the read step" in text and "19 step(s) on the other side" in text


def test_describe_sweep_names_the_cell_whose_rate_is_nearest_one() -> None:
    rates = pd.DataFrame({"cell": ["gru", "gru", "rnn_tanh", "rnn_tanh", "lstm"],
                          "rate": [0.9, 0.8, 0.2, 0.1, math.nan]})
    text = describe_sweep(rates)
    assert "GRU keeps its gradient closest to a constant size (median rate ×0.85" in text
    assert "RNN tanh the least (×0.15)" in text
    assert describe_sweep(rates[rates.cell == "gru"]) == ""


def _cell_step(kind: str, params, x_t: torch.Tensor, hidden: int):
    """One step of PyTorch's own cell module as a function of the previous state s (h, or [h, c] for LSTM)."""
    w_ih, w_hh, b_ih, b_hh = (p.detach().double() for p in params)
    inputs = x_t.numel()
    cells = {"gru": torch.nn.GRUCell(inputs, hidden, dtype=torch.float64),
             "lstm": torch.nn.LSTMCell(inputs, hidden, dtype=torch.float64),
             "rnn_tanh": torch.nn.RNNCell(inputs, hidden, nonlinearity="tanh", dtype=torch.float64),
             "rnn_relu": torch.nn.RNNCell(inputs, hidden, nonlinearity="relu", dtype=torch.float64)}
    cell = cells[kind]
    weights = {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
    x = x_t.unsqueeze(0)

    def step(state: torch.Tensor) -> torch.Tensor:
        if kind == "lstm":
            h, c = torch.func.functional_call(cell, weights, (x, (state[:hidden][None], state[hidden:][None])))
            return torch.cat([h[0], c[0]])
        return torch.func.functional_call(cell, weights, (x, state[None]))[0]

    return step


@pytest.mark.parametrize(("cell", "bidirectional"), [("gru", True), ("lstm", True), ("rnn_tanh", False),
                                                     ("rnn_relu", False)])
def test_step_jacobians_match_jacrev_of_one_cell_step(cell: str, bidirectional: bool) -> None:
    cfg = ExplainConfig(cell=cell, num_layers=2, bidirectional=bidirectional, hidden_size=6, input_size=3,
                        seq_len=5, batch_size=2, dtype="float64", seed=2)
    report = explain(cfg)
    hidden = cfg.hidden_size
    for layer, d in itertools.product(range(2), range(cfg.num_directions)):
        jac = step_jacobians(report, layer, d, batch=1)
        states = report.hidden_states[layer, d, 1]
        x = report.inputs[1] if layer == 0 else torch.cat([report.hidden_states[0, k, 1]
                                                           for k in range(cfg.num_directions)], dim=-1)
        built = build(cfg, torch.device("cpu"))  # the same weights, built again
        order = list(range(cfg.seq_len)) if d == 0 else list(range(cfg.seq_len - 1, -1, -1))
        prev = torch.zeros(2 * hidden if cell == "lstm" else hidden, dtype=torch.float64)
        for t in order:
            step = _cell_step(cell, layer_params(built.module, layer, d), x[t], hidden)
            expected = torch.func.jacrev(step)(prev)
            assert (jac[t] - expected).abs().max() < 1e-12, (layer, d, t)
            prev = step(prev).detach()
            assert (prev[:hidden] - states[t]).abs().max() < 1e-12  # the cell module follows the fused states


def test_jacobian_bound_holds_and_explains_the_decay() -> None:
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=16, seq_len=40, batch_size=2, dtype="float64")
    report = explain(cfg)
    frame = jacobian_profile(report, 0, "forward", batch=1)
    assert list(frame.columns) == list(JACOBIAN_COLUMNS)
    back = frame[frame.distance >= 0]
    assert (back.log10_state_norm <= back.log10_bound + 1e-9).all()  # ‖Jᵀv‖ <= ‖J‖ ‖v‖, step after step
    assert back.log10_bound.iloc[0] == pytest.approx(back.log10_state_norm.iloc[0])  # equal at the read step
    # Independent: the measured norm of batch item 1 from the report's tensor itself.
    measured = report.hidden_grad[0, 0, 1].norm(dim=1).log10().numpy()
    np.testing.assert_allclose(frame.sort_values("t").log10_state_norm, measured, atol=1e-9)
    # The bound is the running sum of log10 sigma_max: its steps are exactly the Jacobian norms of the steps between.
    steps = back.sort_values("distance")
    np.testing.assert_allclose(np.diff(steps.log10_bound.to_numpy()),
                               steps.log10_sigma_max.to_numpy()[:-1], atol=1e-12)


def test_describe_jacobians_follows_the_numbers() -> None:
    report = explain(ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=16, seq_len=40, dtype="float64"))
    frame = jacobian_profile(report, 0, "forward")
    (text,) = describe_jacobians(frame)
    back = frame.sort_values("distance")
    assert f"σ_max is {back.sigma_max.min():.3g}–{back.sigma_max.max():.3g} over the {len(back)} steps" in text
    measured = 10 ** (back.log10_state_norm.iloc[-1] - back.log10_state_norm.iloc[0])
    assert f"changes ×{measured:.3g}" in text
    assert ("far more than their norms" in text) == (
        back.log10_state_norm.iloc[-1] - back.log10_state_norm.iloc[0]
        < back.log10_bound.iloc[-1] - back.log10_bound.iloc[0] - 1)


def test_describe_jacobians_says_when_the_measured_norm_has_no_true_size() -> None:
    """Through an overflowed forward pass (a ReLU run at weight_scale 5: inf states from t ~ 115) ‖dL/ds_t‖ has no true
    size (NaN): the sentence says so instead of "changes ×nan"."""
    report = explain(ExplainConfig(cell="rnn_relu", num_layers=1, weight_scale=5.0, seq_len=200))
    frame = jacobian_profile(report, 0, "forward")
    assert frame.log10_state_norm.isna().any()
    (text,) = describe_jacobians(frame)
    assert "nan" not in text and "has no true size at one end (computed through inf/NaN forward states)" in text


def test_a_rate_counts_and_names_the_steps_without_a_true_size() -> None:
    """The same overflowing ReLU run: behind its read step t = 199 every step's ‖dL/dh_t‖ is undefined (NaN), as the
    frame says; the rate row counts them and its sentence says they are marked, not fitted."""
    report = explain(ExplainConfig(cell="rnn_relu", num_layers=1, weight_scale=5.0, seq_len=200))
    (row,) = decay_rates(decay_profile(report)).itertuples()
    rows = report.frame.query("quantity == 'hidden_state'")
    assert row.undefined_steps == int(rows.log10_norm.isna().sum()) == 199 and row.points == 1
    text = describe_rate(row)
    assert "199 step(s) behind the read step have no true size" in text and "band above the plot" in text
    # the chart marks them in that band (status "nonfinite"), none on the value axis
    chart_rows = decay_rows(decay_profile(report))
    assert (chart_rows.status[chart_rows.t < 199] == "nonfinite").all()


LSTM_CFG = ExplainConfig(cell="lstm", num_layers=2, bidirectional=True, hidden_size=5, input_size=3, seq_len=7,
                         batch_size=2, dtype="float64", target="y[:, 3].sum()", seed=4)


def test_lstm_cell_state_rows_equal_a_hand_unrolled_reference() -> None:
    """‖dL/dc_t‖ of every (layer, direction, step) the profile holds equals autograd through nn.LSTMCell steps (the
    gradient of a zero perturbation added to each c_t), and the rows' distances are the hidden rows' distances."""
    report = explain(LSTM_CFG)
    profile = decay_profile(report)
    assert set(profile.quantity) == {"hidden_state", "cell_state"}
    target = parse_target(LSTM_CFG.target)
    ref = unrolled_step_grads(report.module, report.inputs,
                              lambda y, h_n, c_n: target.evaluate({"y": y, "h_n": h_n, "c_n": c_n}))
    cells = profile[profile.quantity == "cell_state"]
    assert len(cells) > 0
    for row in cells.itertuples():
        d = 0 if row.direction == "forward" else 1
        expected = ref["cell"][row.layer, d, :, row.t, :].norm().item()  # [B, H] of step t
        assert row.norm == pytest.approx(expected, rel=1e-10, abs=0.0), (row.layer, row.direction, row.t)
        assert row.log10_norm == pytest.approx(math.log10(expected), rel=1e-10, abs=1e-12)
    for (layer, direction), group in profile.groupby(["layer", "direction"]):
        d = 0 if direction == "forward" else 1
        hidden = group[group.quantity == "hidden_state"].set_index("t")
        cell = group[group.quantity == "cell_state"].set_index("t")
        # The steps whose c_t reaches the target are exactly those whose reference gradient is not all 0.
        reached = [t for t in range(LSTM_CFG.seq_len) if ref["cell"][layer, d, :, t, :].abs().max() > 0]
        assert sorted(cell.index) == reached, (layer, direction)
        shared = hidden.index.intersection(cell.index)
        assert len(shared) > 0
        assert (cell.loc[shared, "distance"] == hidden.loc[shared, "distance"]).all()  # one x axis
        assert (cell.side == np.where(cell.distance >= 0, "back", "ahead")).all()
        anchor = int(hidden.index[hidden.distance == 0][0])
        assert cell.loc[anchor, "relative"] == pytest.approx(1.0)  # relative to c's own size at the read step
        np.testing.assert_allclose(cell.relative, cell.norm / cell.loc[anchor, "norm"], rtol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu", "answer_gru"])
def test_cells_without_a_cell_state_have_hidden_rows_only(cell: str) -> None:
    profile = decay_profile(explain(cell_config(SMALL, cell)))
    assert set(profile.quantity) == {"hidden_state"}
    assert set(decay_rates(profile).quantity) == {"hidden_state"}
    assert describe_cell_path(decay_rates(profile)) == []


def test_cell_state_rates_are_fitted_on_their_own_rows_and_described_from_them() -> None:
    report = explain(LSTM_CFG.replace(bidirectional=False, target="y[:, -1].sum()", seq_len=12))
    profile = decay_profile(report)
    rates = decay_rates(profile)
    assert len(rates) == 2 * 2  # two layers × (h, c)
    for row in rates.itertuples(index=False):
        rows = profile[(profile.layer == row.layer) & (profile.quantity == row.quantity) & (profile.distance >= 0)]
        rate, intercept = fit_log10_decay(rows.distance, rows.log10_norm)
        assert row.rate == pytest.approx(rate, rel=1e-12) and row.log10_intercept == pytest.approx(intercept)
        assert f"‖{'dL/dc_t' if row.quantity == 'cell_state' else 'dL/dh_t'}‖" in describe_rate(row)
    lines = describe_cell_path(rates)
    assert len(lines) == 2
    for layer, line in enumerate(lines):
        by = rates[rates.layer == layer].set_index("quantity").rate
        assert line.startswith(f"LSTM: ‖dL/dc_t‖ {'shrinks' if by.cell_state < 1 else 'grows'} "
                               f"×{by.cell_state:.3g} per step")
        assert f"vs ‖dL/dh_t‖ ×{by.hidden_state:.3g}" in line
        logs = np.log10([by.cell_state, by.hidden_state])
        if abs(logs[0] - logs[1]) <= 0.05 * np.abs(logs).max():
            assert "about the same rate" in line
        elif by.cell_state < 1 and by.hidden_state < 1:
            further = "cell" if by.cell_state > by.hidden_state else "hidden"
            assert f"the {further} path carries the gradient further back" in line
    # Hidden-state comparisons ignore the cell rows: the sweep sentence and the Jacobians' steps.
    assert describe_sweep(rates) == describe_sweep(hidden_rows(rates))
    jac = jacobian_profile(report, 1, "forward")
    assert list(jac.distance) == list(range(len(jac)))


def test_describe_cell_path_words_follow_the_rates() -> None:
    base = {"cell": "lstm", "seq_len": 5, "weight_scale": 1.0, "layer": 0, "direction": "forward"}

    def line(h_rate: float, c_rate: float) -> str:
        (text,) = describe_cell_path(pd.DataFrame([{**base, "quantity": "hidden_state", "rate": h_rate},
                                                   {**base, "quantity": "cell_state", "rate": c_rate}]))
        return text

    assert "the cell path carries the gradient further back" in line(0.5, 0.9)
    assert "the hidden path carries the gradient further back" in line(0.9, 0.5)
    assert "the cell-state gradient grows faster" in line(1.5, 2.0)
    assert "the cell-state gradient stays nearer a constant size" in line(0.5, 1.1)
    assert "the hidden-state gradient stays nearer a constant size" in line(1.1, 0.5)
    assert "keeps its size" in line(0.5, 1.0)
    assert "both change at about the same rate" in line(0.62, 0.623)
    assert "both change at about the same rate" not in line(0.539, 0.587)
    assert "too few steps" in line(0.5, math.nan) and "no rate" in line(math.nan, 0.5)


def test_a_cell_state_read_after_the_hidden_read_step_is_drawn_ahead_and_not_fitted() -> None:
    """Target c_n: the top layer's h_{T-1} cannot reach it, so h's read step is T-2 and c_{T-1} lies one step ahead
    (distance -1) on the shared axis; it is not fitted and its sentence does not blame the layer above."""
    cfg = SMALL.replace(cell="lstm", target="c_n.sum()")
    profile = decay_profile(explain(cfg))
    top = profile[profile.layer == 1]
    last = cfg.seq_len - 1
    assert last not in set(top[top.quantity == "hidden_state"].t)
    ahead = top[(top.quantity == "cell_state") & (top.t == last)]
    assert list(ahead.distance) == [-1] and list(ahead.side) == ["ahead"]
    rates = decay_rates(top)
    (row,) = rates[rates.quantity == "cell_state"].itertuples(index=False)
    assert row.ahead_steps == 1 and row.points == cfg.seq_len - 1
    text = describe_rate(row)
    assert "1 step(s) lie on the other side of the read step of h" in text and "layer above" not in text
