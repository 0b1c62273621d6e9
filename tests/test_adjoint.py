"""The rescaled adjoint: exact rescaling, true magnitudes below/above the dtype's range, zero causes, autograd's
non-finite pattern, and the same results whatever the caller's flush-denormal flag."""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest
import torch

from gru_explainer import ExplainConfig, Limits, explain
from gru_explainer.adjoint import ZERO_ROW, Scaled, add
from gru_explainer.models import SeedAnswerGRU, answer_as_gru, build
from gru_explainer.target import parse_target

from .reference import float64_autograd_on, unrolled_gate_grads

LOCAL = Limits.local()
CPU = torch.device("cpu")


@contextlib.contextmanager
def flush_denormal(on: bool):
    torch.set_flush_denormal(on)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def hidden_rows(report):
    frame = report.frame
    return frame[frame.quantity == "hidden_state"].reset_index(drop=True)


# --- Scaled: exact rescaling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scaled_round_trip_is_exact_and_zero_rows_are_marked(dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(5, 4, 7, generator=gen, dtype=torch.float64).to(dtype) * 1e3
    values[1, 2] = 0
    scaled = Scaled.of(values)
    assert torch.equal(scaled.value(), values)
    assert scaled.exponent[1, 2] == ZERO_ROW
    row_max = scaled.mantissa.abs().amax(-1)
    nonzero = row_max > 0
    assert ((row_max[nonzero] >= 0.5) & (row_max[nonzero] < 1)).all()
    expected = torch.log10(values.double().abs())
    assert torch.allclose(scaled.log10_abs()[values != 0], expected[values != 0], rtol=0, atol=1e-12)
    assert (scaled.log10_abs()[values == 0] == -math.inf).all()


def test_scaled_holds_magnitudes_beyond_the_dtype_and_rounds_like_it() -> None:
    mantissa = torch.tensor([[0.75, -0.5], [0.5, 0.0], [0.5, 0.25]], dtype=torch.float32)
    exponent = torch.tensor([-200, 300, -140], dtype=torch.int32)
    scaled = Scaled(mantissa, exponent)
    value = scaled.value()
    assert torch.equal(value[0], torch.zeros(2))  # 0.75 * 2**-200: below float32's range
    assert value[1, 0] == math.inf and value[1, 1] == 0  # an exact zero stays 0 (never 0 * inf = NaN)
    assert value[2, 0].item() == pytest.approx(0.5 * 2.0 ** -140, rel=1e-6)  # a float32 denormal
    assert scaled.log10_abs()[0, 0].item() == pytest.approx(math.log10(0.75) - 200 * math.log10(2), abs=1e-12)
    assert scaled.log10_row_norm()[1].item() == pytest.approx(math.log10(0.5) + 300 * math.log10(2), abs=1e-12)


def test_scaled_add_aligns_exponents_and_ignores_stale_zero_rows() -> None:
    a = Scaled(torch.tensor([[0.5, 0.25], [0.0, 0.0]]), torch.tensor([10, 50], dtype=torch.int32))  # row 1: stale
    b = Scaled(torch.tensor([[0.5, 0.0], [0.5, 0.5]]), torch.tensor([8, -60], dtype=torch.int32))
    total = add(a, b)
    expected = torch.tensor([[0.5 * 2**10 + 0.5 * 2**8, 0.25 * 2**10], [0.5 * 2**-60, 0.5 * 2**-60]],
                            dtype=torch.float64)
    assert torch.allclose(total.mantissa.double() * torch.exp2(total.exponent.double()).unsqueeze(-1), expected,
                          rtol=1e-7, atol=0)


# --- The engine against float64 autograd -------------------------------------------------------------------------


CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu")


def autograd_reference(cfg: ExplainConfig) -> dict[str, torch.Tensor]:
    """Plain float64 autograd through the unrolled twin (no rescaling) on the float32 model's weights and input."""
    cfg64 = cfg.replace(dtype="float64")
    report = explain(cfg64, engine="twin", limits=LOCAL)
    return {"hidden": report.hidden_grad, "cell": report.cell_grad, "input": report.input_grad}


def _normwise(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize(("cell", "bidirectional"), list(itertools.product(CELLS, (False, True))))
def test_rescaled_engine_matches_float64_autograd_normwise(cell, bidirectional) -> None:
    cfg = ExplainConfig(cell=cell, num_layers=2, input_size=4, hidden_size=8, seq_len=20, batch_size=3,
                        bidirectional=bidirectional, dtype="float64", seed=5,
                        target="y[:, 12].sum() + h_n.pow(2).sum()" + (" + c_n.mean()" if cell == "lstm" else ""))
    fused = explain(cfg)
    ref = autograd_reference(cfg)
    assert _normwise(fused.hidden_grad, ref["hidden"]) <= 1e-12
    assert _normwise(fused.input_grad, ref["input"]) <= 1e-12
    if cell == "lstm":
        assert _normwise(fused.cell_grad, ref["cell"]) <= 1e-12
    # float32: the float32 model (rounded weights) against float64 autograd on those same weights.
    cfg32 = cfg.replace(dtype="float32")
    fused32 = explain(cfg32)
    ref32 = float64_autograd_on(fused32)
    for t in range(cfg.seq_len):  # per step, where the reference is non-zero
        for name, ours in (("hidden", fused32.hidden_grad), ("input", fused32.input_grad)):
            ref_t = ref32[name][..., t, :] if name == "hidden" else ref32[name][:, t]
            ours_t = ours[..., t, :] if name == "hidden" else ours[:, t]
            if ref_t.norm() > 0:
                assert _normwise(ours_t, ref_t) <= 1e-6, (name, t)


def test_true_magnitudes_below_float32_range_match_float64() -> None:
    """A float32 tanh RNN at T = 400: dL/dh_t falls far below float32's 1.4e-45; log10_norm still matches float64."""
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, input_size=4, hidden_size=32, seq_len=400, batch_size=2,
                        dtype="float32", seed=1, target="y[:, -1].sum()")
    report = explain(cfg, limits=LOCAL)
    ref = float64_autograd_on(report)["hidden"]  # float64 autograd holds these magnitudes (down to 1e-308)
    ref_log10 = torch.log10(ref[0, 0].transpose(0, 1).reshape(cfg.seq_len, -1).norm(dim=1)).numpy()
    rows = hidden_rows(report)
    assert rows.log10_norm.min() < -45  # below float32's smallest denormal
    assert np.abs(rows.log10_norm.to_numpy() - ref_log10).max() < 0.01
    # Those steps are zero in float32 and called underflow, never a zero on the path.
    gone = rows[rows.exactly_zero]
    assert len(gone) > 0 and (gone.zero_cause == "underflow").all() and gone.underflow.all()
    assert np.isfinite(gone.log10_norm).all()
    # Per element too: log10_magnitude matches float64 where float64 is non-zero.
    magnitude = report.log10_magnitude("hidden_state")[0, 0]
    ref_elem = torch.log10(ref[0, 0].abs())
    keep = ref[0, 0] != 0
    assert (magnitude[keep] - ref_elem[keep]).abs().max() < 0.01


@pytest.mark.parametrize("cell", CELLS)
def test_same_results_whatever_the_callers_flush_flag(cell) -> None:
    cfg = ExplainConfig(cell=cell, num_layers=2, input_size=4, hidden_size=16, seq_len=300, batch_size=2,
                        dtype="float32", seed=2, weight_scale=0.5, target="y[:, -1].sum()")
    with flush_denormal(False):
        plain = explain(cfg, limits=LOCAL)
    with flush_denormal(True):
        flushed = explain(cfg, limits=LOCAL)
    if not flushed.flush_denormal:
        pytest.skip("this CPU does not support flushing denormals")
    assert not plain.flush_denormal
    assert np.array_equal(plain.frame.log10_norm.to_numpy(), flushed.frame.log10_norm.to_numpy())
    assert torch.equal(plain.hidden_magnitude.mantissa, flushed.hidden_magnitude.mantissa)
    # The values in the dtype differ only where float32 holds a denormal (flushed to 0 there).
    tiny = torch.finfo(torch.float32).tiny
    normal = plain.hidden_grad.abs() >= tiny
    assert torch.equal(plain.hidden_grad[normal], flushed.hidden_grad[normal])
    assert (flushed.hidden_grad[~normal] == 0).all()


# --- Zero causes ----------------------------------------------------------------------------------------------------


def test_dead_relu_units_are_zero_on_the_path_not_underflow() -> None:
    cfg = ExplainConfig(cell="rnn_relu", num_layers=1, hidden_size=2, input_size=1, batch_size=1, seq_len=12, seed=0,
                        dtype="float64", target="y[:, -1].sum()")
    report = explain(cfg)
    rows = hidden_rows(report)
    on_path = rows[rows.zero_cause == "zero_on_path"]
    assert len(on_path) > 0 and not rows.underflow.any()
    assert (on_path.log10_norm == -math.inf).all()
    # Independently: plain autograd on the fused nn.RNN gives exact zeros there, and a dead step (every unit of
    # h_{t+1} <= 0, so relu' = 0) sits right after the last non-zero step.
    built = build(cfg, CPU)
    x = built.inputs
    y, _ = built.module(x)
    states = y.detach()[0]
    first_zero = int(on_path.t.max())
    assert (states[first_zero + 1] <= 0).all()
    assert report.hidden_grad[0, 0, 0, : first_zero + 1].abs().max() == 0


def test_a_target_that_cancels_is_zero_on_every_path() -> None:
    cfg = ExplainConfig(cell="gru", num_layers=2, hidden_size=8, seq_len=10, target="y[:, -1].sum() - y[:, -1].sum()")
    report = explain(cfg)
    frame = report.frame
    reached = frame[~frame.structurally_zero]
    assert len(reached) > 0 and (reached.zero_cause == "zero_on_path").all()
    assert not frame.underflow.any()


def test_a_zero_factor_in_the_target_is_zero_on_the_path() -> None:
    report = explain(ExplainConfig(cell="gru", num_layers=1, hidden_size=8, seq_len=6, target="0 * y[:, 2].sum()"))
    rows = hidden_rows(report)
    assert set(rows.zero_cause) == {"zero_on_path", "structural"}
    assert (rows.zero_cause[rows.t <= 2] == "zero_on_path").all()


# --- Non-finite values: autograd's pattern, never zeros -------------------------------------------------------------


def _plain_autograd_input_grad(cfg: ExplainConfig) -> torch.Tensor:
    built = build(cfg, CPU)
    x = built.inputs.clone().requires_grad_()
    y, h_n = built.module(x)
    parse_target(cfg.target).evaluate({"y": y, "h_n": h_n}).backward()
    return x.grad


@pytest.mark.parametrize(("cell", "scale", "layers", "steps"), [
    ("rnn_relu", 5.0, 1, 200),  # the forward overflows too (inf/NaN states)
    ("rnn_tanh", 6.0, 2, 300),  # chaotic: bounded forward, exploding backward
])
def test_exploding_runs_have_autograds_nonfinite_pattern(cell, scale, layers, steps) -> None:
    cfg = ExplainConfig(cell=cell, num_layers=layers, hidden_size=64, input_size=6, seq_len=steps, batch_size=2,
                        weight_scale=scale, target="y[:, -1].sum()")
    fused, twin = explain(cfg, limits=LOCAL), explain(cfg, engine="twin", limits=LOCAL)
    expected = _plain_autograd_input_grad(cfg)
    bad = ~torch.isfinite(expected).all(-1)  # [B, T] rows autograd makes inf/NaN
    assert bad.any() and not bad.all()
    for report in (fused, twin):
        ours = ~torch.isfinite(report.input_grad).all(-1)
        # Non-finite from the first overflowing step back to t = 0, as autograd: which step overflows first can
        # differ by one per layer where the true value sits at float32's maximum (both roundings are within 1e-6).
        for pattern in (ours, bad):
            first = pattern.int().argmin(dim=1)  # first finite step (forward direction: bad steps come first)
            assert all(pattern[b, :first[b]].all() and not pattern[b, first[b]:].any() for b in range(2))
        assert (ours.int().sum(1) - bad.int().sum(1)).abs().max() <= layers
        both = ~ours & ~bad  # rows finite in both: normwise equal (float32 rounding, chaotic dynamics)
        assert both.sum() >= 0.3 * both.numel()
        diff = (report.input_grad[both].double() - expected[both].double()).norm(dim=-1)
        assert (diff <= 1e-4 * expected[both].double().norm(dim=-1)).all()
    mismatch = fused.frame.assign(off=fused.frame.nonfinite != twin.frame.nonfinite)
    assert mismatch.groupby(["quantity", "layer", "direction"]).off.sum().max() <= layers  # boundary steps only
    inputs = fused.frame[fused.frame.quantity == "input"]
    assert not (inputs.exactly_zero & inputs.nonfinite).any()
    assert not inputs.underflow.any()
    # The true magnitude is still known past float32's range (where the forward pass stayed finite).
    rows = hidden_rows(fused)
    finite_forward = rows[rows.nonfinite & ~rows.forward_nonfinite]
    if cell == "rnn_tanh":
        assert len(finite_forward) > 0 and (finite_forward.log10_norm > 38).any()


RELU_OVERFLOW = ExplainConfig(cell="rnn_relu", num_layers=1, weight_scale=5.0, seq_len=200)
"""The issue's exploding ReLU run: its float32 forward overflows from about t = 115 on; float64's never does."""


@pytest.mark.parametrize(("cfg", "undefined_rows"), [
    (RELU_OVERFLOW, True),  # read at t = 199, through the overflowed states: no true size there
    (RELU_OVERFLOW.replace(target="y[:, 100].sum()"), False),  # read before the overflow: every size is defined
    (ExplainConfig(cell="rnn_relu", num_layers=3, input_size=2, hidden_size=20, bidirectional=True, seq_len=300,
                   batch_size=1, target="h_n[3].sum()", seed=296148, weight_scale=4.0), True),  # NaN layers above
], ids=["read-after-overflow", "read-before-overflow", "three-layers-bidirectional"])
def test_a_true_magnitude_through_an_overflowed_forward_pass_is_undefined_never_made_up(cfg, undefined_rows) -> None:
    """Autograd's rules still give numbers through inf/NaN states (a ReLU passes the gradient of a NaN state on as
    if it were active), and the engine returns them, but their true size is undefined: NaN, not a rescaled number
    (it claimed norms up to 1e81 and 6e222 here where float64, whose forward stays finite, gives 1e70 and 2e91)."""
    report, exact = explain(cfg, limits=LOCAL), explain(cfg.replace(dtype="float64"), limits=LOCAL)
    frame, truth = report.frame, exact.frame
    assert frame.forward_nonfinite.any() and not truth.forward_nonfinite.any() and not truth.nonfinite.any()
    defined = np.isfinite(frame.log10_norm.to_numpy(float))
    both = defined & np.isfinite(truth.log10_norm.to_numpy(float))
    assert (defined == both).all()  # a size float32 gives is one float64 has
    assert np.abs(frame.log10_norm[both] - truth.log10_norm[both]).max() < 0.01
    undefined = np.isnan(frame.log10_norm.to_numpy(float))
    assert undefined.any() == undefined_rows
    assert not (frame.exactly_zero & undefined).any()
    if undefined_rows:
        assert (undefined & ~frame.nonfinite).any()  # finite in float32 (autograd's number), yet no true size
        assert (frame.log10_norm[undefined] != truth.log10_norm[undefined]).all()
        assert np.isnan(report.log10_magnitude("input").numpy()).any()
        assert "true norm up to" not in report.verdict()
    else:
        assert (frame.zero_cause[~both] == "structural").all()
    expected = _plain_autograd_input_grad(cfg)  # the values themselves stay autograd's, inf/NaN included
    ours, theirs = torch.isfinite(report.input_grad).all(-1), torch.isfinite(expected).all(-1)  # [B, T]
    assert (ours != theirs).sum(dim=1).max() <= cfg.num_layers  # (the first overflowing step, as above)
    both_finite = ours & theirs  # (none in the three-layer run: autograd's x.grad is NaN at every step)
    diff = (report.input_grad[both_finite].double() - expected[both_finite].double()).norm(dim=-1)
    assert (diff <= 1e-4 * expected[both_finite].double().norm(dim=-1)).all()


# --- The seed answer's GRU as an nn.GRU ----------------------------------------------------------------------------


def test_answer_gru_regrouped_as_nn_gru_computes_the_same_function() -> None:
    gen = torch.Generator().manual_seed(0)
    model = SeedAnswerGRU(3, 5, dtype=torch.float64)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)
    y_answer, _ = model(x)
    y_gru, _ = answer_as_gru(model)(x)
    assert (y_answer - y_gru).abs().max() < 1e-12


# --- Small helpers of the pass and the frame --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(300, 96, 2), (300, 96, 15), (300, 96, 16), (40, 128, 32)])
def test_mm_equals_a_plain_matmul_in_either_orientation(shape) -> None:
    """`_mm` runs narrow products transposed (faster BLAS path): same values, into `out` too."""
    from gru_explainer.adjoint import _mm

    rows, inner, cols = shape
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, inner, generator=gen), torch.randn(inner, cols, generator=gen)
    expected = a.double() @ b.double()
    assert torch.allclose(_mm(a, b).double(), expected, rtol=1e-5, atol=1e-5)
    out = torch.full((rows, cols), math.nan)
    assert _mm(a, b, out=out) is out and torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)
    wide = torch.full((rows, cols + 3), math.nan)
    _mm(a.T.contiguous().T, b, out=wide[:, :cols])  # a transposed input and a strided output
    assert torch.allclose(wide[:, :cols].double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.isnan(wide[:, cols:]).all()


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("shape", [(3200, 34, 128), (3200, 128, 2), (3200, 32, 96), (7, 5, 3), (200, 16, 512)])
def test_linear_and_weight_grad_equal_a_float64_matmul(shape, onednn, monkeypatch) -> None:
    """The pass's big products (`_linear` x @ wᵀ + b, `_weight_grad` dᵀ @ x) through oneDNN or torch's own: the same
    numbers as a float64 matmul, for contiguous and transposed operands, with and without a bias."""
    from gru_explainer import adjoint

    if not onednn:
        monkeypatch.setattr(adjoint, "_use_onednn", lambda *tensors: None)
    rows, inner, cols = shape
    gen = torch.Generator().manual_seed(1)
    x, w, bias = torch.randn(rows, inner, generator=gen), torch.randn(cols, inner, generator=gen), torch.randn(cols)
    for x_in, w_in in ((x, w), (x.T.contiguous().T, w.T.contiguous().T)):
        for b in (bias, None):
            expected = x.double() @ w.double().T + (b.double() if b is not None else 0)
            got = adjoint._linear(x_in, w_in, b)
            assert got.shape == (rows, cols) and torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-4)
    three_d = adjoint._linear(x.view(rows, 1, inner), w, bias)  # [..., K] inputs keep their leading axes
    assert three_d.shape == (rows, 1, cols)
    d = torch.randn(rows, cols, generator=gen)
    grad = adjoint._weight_grad(d, x)
    assert grad.shape == (cols, inner) and grad.is_contiguous()
    assert torch.allclose(grad.double(), d.double().T @ x.double(), rtol=1e-5, atol=1e-3)


def test_onednn_is_used_only_where_it_applies() -> None:
    """oneDNN's linear is found in this torch build (float32 CPU, outside autograd); float64 and tensors autograd
    records stay on torch's own matmul, which keeps the product differentiable."""
    from gru_explainer import adjoint

    a = torch.randn(4, 3)
    assert adjoint._onednn_linear() is not None and adjoint._use_onednn(a, a) is not None
    assert adjoint._use_onednn(a.double(), a.double()) is None
    w = torch.randn(5, 3, requires_grad=True)
    assert adjoint._use_onednn(a, w) is None
    adjoint._linear(a, w).sum().backward()
    assert torch.allclose(w.grad, a.sum(0).expand(5, 3))
    with torch.no_grad():
        assert adjoint._use_onednn(a, w) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_matches_exact_tanh_within_a_few_ulp_and_keeps_special_values(dtype) -> None:
    """`tanh_` (expm1 form on CPU): within 4 ulp of the exact tanh (torch.tanh in float64 for float32 inputs,
    math.tanh for float64 ones) over the whole range, tiny and huge arguments included, in place into a strided view;
    ±0, ±1 at ±inf and NaN as torch.tanh gives them."""
    from gru_explainer.adjoint import tanh_

    eps = torch.finfo(dtype).eps
    tiny = torch.logspace(-40 if dtype == torch.float32 else -300, 0, 2001, dtype=torch.float64)
    grid = torch.cat([torch.linspace(-30, 30, 60001, dtype=torch.float64), tiny, -tiny, torch.tensor([1e30, -1e30])])
    values = grid.to(dtype)
    exact = torch.tanh(values.double()) if dtype == torch.float32 else torch.tensor(
        [math.tanh(v) for v in values.tolist()], dtype=torch.float64)
    buffer = torch.full((values.numel(), 3), math.nan, dtype=dtype)
    view = buffer[:, 1]  # a strided view: written in place, the neighbours untouched
    view.copy_(values)
    assert tanh_(view) is view
    nonzero = exact != 0
    rel = (view.double() - exact).abs()[nonzero] / exact.abs()[nonzero]
    assert float(rel.max()) <= 4 * eps
    assert torch.isnan(buffer[:, 0]).all() and torch.isnan(buffer[:, 2]).all()
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan], dtype=dtype)
    got, want = tanh_(special.clone()), torch.tanh(special)
    assert torch.equal(torch.signbit(got[:4]), torch.signbit(want[:4])) and torch.equal(got[:4], want[:4])
    assert torch.isnan(got[4])


def test_log10_sum_is_stable_and_propagates_zeros_infs_and_nans() -> None:
    from gru_explainer.adjoint import log10_sum

    values = np.array([[-300.0, -301.0, -np.inf], [5.0, 5.0, 5.0], [-np.inf, -np.inf, -np.inf], [1.0, np.inf, 2.0],
                       [1.0, np.nan, 2.0], [400.0, 399.0, -np.inf]])
    got = log10_sum(values, axis=1)
    assert got[0] == pytest.approx(-300 + math.log10(1.1), abs=1e-12)  # far below float64's range: no underflow
    assert got[1] == pytest.approx(5 + math.log10(3), abs=1e-12)
    assert got[2] == -math.inf and got[3] == math.inf and math.isnan(got[4])
    assert got[5] == pytest.approx(400 + math.log10(1.1), abs=1e-12)  # above float64's range: no overflow
    assert log10_sum(np.array([])) == -math.inf
    assert float(log10_sum(values[:2])) == pytest.approx(5 + math.log10(3), abs=1e-12)


def test_frame_batch_norm_from_scaled_rows_matches_float64_far_outside_the_range() -> None:
    """The frame's log10 norm over the batch, from row norms × 2**exponent: against an exact log-domain sum, with
    exponents far below and above float64's range, zero rows and non-finite rows."""
    from gru_explainer.report import _log10_norm_over_batch

    row_norm = np.array([[[0.75, 0.5], [0.0, 0.6], [0.9, 0.0]]])  # [N=1, B=3, T=2]
    exponent = np.array([[[-2000, 3000], [ZERO_ROW, 2990], [-2001, ZERO_ROW]]], dtype=np.int32)
    got = _log10_norm_over_batch(row_norm, exponent)
    log2 = math.log10(2)
    expected_t0 = 0.5 * math.log10(0.75 ** 2 + (0.9 / 2) ** 2) - 2000 * log2
    expected_t1 = 0.5 * math.log10(0.5 ** 2 + (0.6 * 2.0 ** -10) ** 2) + 3000 * log2
    assert got[0, 0] == pytest.approx(expected_t0, abs=1e-12) and got[0, 1] == pytest.approx(expected_t1, abs=1e-12)
    zeros = _log10_norm_over_batch(np.zeros((1, 2, 1)), np.full((1, 2, 1), ZERO_ROW, dtype=np.int32))
    assert zeros[0, 0] == -math.inf
    bad = _log10_norm_over_batch(np.array([[[np.nan], [1.0]], [[np.inf], [1.0]]]), np.zeros((2, 2, 1), np.int32))
    assert math.isnan(bad[0, 0]) and bad[1, 0] == math.inf


def test_warm_heap_runs_once_and_leaves_results_alone() -> None:
    """`warm_heap` (a malloc tuning, see its docstring) frees one untouched block once per process; the pass gives
    the same numbers before and after it."""
    from gru_explainer import adjoint

    cfg = ExplainConfig(cell="lstm", seq_len=6, batch_size=2, hidden_size=4)
    before = explain(cfg).hidden_grad.clone()
    adjoint._heap_warm = False
    adjoint.warm_heap()
    assert adjoint._heap_warm
    adjoint.warm_heap()  # a no-op now
    assert torch.equal(explain(cfg).hidden_grad, before)


@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh"])
def test_kept_gate_gradients_match_float64_autograd_and_give_the_same_weight_gradients(kind) -> None:
    from gru_explainer.adjoint import layer_adjoint

    torch.manual_seed(3)
    steps, batch, inputs, hidden = 12, 3, 4, 5
    module = torch.nn.LSTM(inputs, hidden) if kind == "lstm" else torch.nn.RNN(inputs, hidden)
    params = tuple(p.detach() for p in (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                                        module.bias_hh_l0))
    x = torch.randn(steps, batch, inputs)
    with torch.no_grad():
        states, _ = module(x)
    seed_grad = torch.randn(batch, hidden)
    direct = torch.zeros(steps, batch, hidden)
    direct[-1] = seed_grad
    result = layer_adjoint(kind, x, states, params, Scaled.of(direct), None)
    expected, expected_params = unrolled_gate_grads(kind, x, params, seed_grad)
    assert result.gate_grad is not None and result.gate_grad.mantissa.shape == expected.shape
    kept = result.gate_grad.value().double()
    assert float((kept - expected).norm() / expected.norm()) < 1e-5
    values = result.hidden_grad.value()
    cells = result.cell_grad.value() if result.cell_grad is not None else None
    from_kept = result.param_grads(values, cells, gate_values=result.gate_grad.value())
    recomputed = result.param_grads(values, cells)
    for kept_grad, recomputed_grad, reference in zip(from_kept, recomputed, expected_params, strict=True):
        torch.testing.assert_close(kept_grad, recomputed_grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(kept_grad.double(), reference, rtol=1e-4, atol=1e-6)
