"""explain(): the seed reproduced, both engines against plain autograd and finite differences, causality."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch

from gru_explainer import ExplainConfig, explain
from gru_explainer.explain import target_shapes
from gru_explainer.models import build
from gru_explainer.target import parse_target

from .reference import reference_outputs

FUSED_CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu")
CPU = torch.device("cpu")
ZERO = torch.tensor(0.0)


def small(cell: str = "gru", **kw) -> ExplainConfig:
    base = dict(cell=cell, num_layers=2, input_size=4, hidden_size=6, seq_len=7, batch_size=3, dtype="float64", seed=3)
    base.update(kw)
    return ExplainConfig(**base)


# --- The seed, reproduced ----------------------------------------------------------------------------------------


def test_seed_secondmodel_y_grad_is_zero_before_the_last_step() -> None:
    report = explain(ExplainConfig.preset("seed-secondmodel"))
    assert torch.allclose(report.stacked_grad[:, :-1], ZERO)  # the seed's print: True
    assert not torch.allclose(report.stacked_grad[:, -1], ZERO)
    # ...although the hidden states carry gradient at every step, in both layers.
    assert all(not torch.allclose(report.hidden_grad[layer, 0, :, t], ZERO) for layer in range(2) for t in range(10))


def test_seed_mymodel_zero_is_about_head_features_not_time() -> None:
    report = explain(ExplainConfig.preset("seed-mymodel"))
    out_grad = report.grads["out"]
    assert out_grad.shape == (2, 5, 1)
    assert torch.allclose(out_grad[:, :-1], ZERO)  # the seed's print: True
    assert torch.equal(out_grad[:, -1], torch.ones(2, 1))
    # y (the GRU output) is read by the head at its last step only.
    assert torch.allclose(report.stacked_grad[:, :-1], ZERO)
    assert not torch.allclose(report.stacked_grad[:, -1], ZERO)
    assert "features, not time" in report.verdict()


def test_seed_answer_gru_three_prints() -> None:
    report = explain(ExplainConfig.preset("seed-answer-gru"))
    assert torch.allclose(report.stacked_grad[:, -1], ZERO) is False  # sanity check
    assert torch.allclose(report.stacked_grad[:, :-1], ZERO) is True  # "unexpected"
    hidden = report.hidden_grad[0, 0]
    assert any(torch.allclose(hidden[:, t], ZERO) for t in range(10)) is False  # as expected


def test_seed_answer_gru_matches_its_own_retain_grad() -> None:
    """The answer's code, run literally on the report's model, gives the report's numbers."""
    report = explain(ExplainConfig.preset("seed-answer-gru"))
    x = report.inputs.clone()
    y, hs = report.module(x)
    y.retain_grad()
    for h in hs:
        h.retain_grad()
    y[:, -1].sum().backward()
    assert torch.equal(y.grad, report.stacked_grad)
    for t, h in enumerate(hs):
        assert torch.allclose(h.grad, report.hidden_grad[0, 0, :, t], atol=1e-6)


# --- Against plain autograd on the fused module -------------------------------------------------------------------


TARGETS = {
    "gru": "y[:, 3].sum() + 0.5 * h_n[0].pow(2).sum()",
    "lstm": "y[:, -2:].mean() - c_n.abs().sum() + h_n[-1, 0].norm()",
    "rnn_tanh": "(y[0, 1:5] * y[1, 2:6]).sum()",
    "rnn_relu": "y.square().mean() * 3",
}


@pytest.mark.parametrize(("cell", "bidirectional", "head", "engine"),
                         list(itertools.product(FUSED_CELLS, (False, True), ("none", "linear"), ("fused", "twin"))))
def test_stacked_input_and_named_grads_match_autograd_on_the_fused_module(cell, bidirectional, head, engine) -> None:
    target = TARGETS[cell] + (" + out[:, 1:3].sum()" if head == "linear" else "")
    cfg = small(cell, bidirectional=bidirectional, head=head, head_size=4, target=target)
    report = explain(cfg, engine=engine)
    built = build(cfg, CPU)  # the same deterministic model, built again
    x = built.inputs.clone().requires_grad_()
    y, finals = built.module(x)
    named = {"y": y}
    named["h_n"], named["c_n"] = (finals if cell == "lstm" else (finals, None))
    if named["c_n"] is None:
        del named["c_n"]
    if head == "linear":
        named["out"] = built.head(y)
    for tensor in named.values():
        tensor.retain_grad()
    value = parse_target(target).evaluate(named)
    value.backward()
    assert report.target_value == pytest.approx(value.item(), rel=1e-12)
    assert torch.equal(report.output, y.detach())
    assert (report.stacked_grad - y.grad).abs().max() < 1e-12
    assert (report.input_grad - x.grad).abs().max() < 1e-12
    for name, tensor in named.items():
        expected = torch.zeros_like(tensor) if tensor.grad is None else tensor.grad  # unused: None there, 0 here
        assert (report.grads[name] - expected).abs().max() < 1e-12, name


# --- Against finite differences (float64), through an independent cell-module implementation ---------------------


def _fd_directional(module, head, x, target, key, direction_vec, eps=1e-6) -> float:
    def loss(sign: float) -> float:
        named = reference_outputs(module, x, {key: sign * eps * direction_vec})
        if head is not None:
            named["out"] = head(named["y"])
        return target.evaluate(named).item()

    with torch.no_grad():
        return (loss(1.0) - loss(-1.0)) / (2 * eps)


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "engine"), [
    ("gru", 2, True, "fused"), ("gru", 3, False, "twin"), ("lstm", 2, True, "fused"), ("lstm", 1, False, "twin"),
    ("rnn_tanh", 2, True, "fused"), ("rnn_relu", 2, False, "fused"), ("lstm", 3, True, "twin"),
])
def test_hidden_and_cell_grads_match_finite_differences(cell, layers, bidirectional, engine) -> None:
    target_text = "y[:, 4].sum() + 0.3 * y[:, 1].square().sum() + h_n.sum() + out.sum()"
    target_text += " + c_n.mean()" if cell == "lstm" else ""
    cfg = small(cell, num_layers=layers, bidirectional=bidirectional, head="linear", target=target_text)
    report = explain(cfg, engine=engine)
    target = parse_target(cfg.target)
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for layer, d, t in itertools.product(range(layers), range(cfg.num_directions), (0, 2, 4, 6)):
        for kind in ("h", "c") if cell == "lstm" else ("h",):
            v = torch.randn(cfg.batch_size, cfg.hidden_size, generator=gen, dtype=torch.float64)
            grad = (report.hidden_grad if kind == "h" else report.cell_grad)[layer, d, :, t]
            numeric = _fd_directional(report.module, report.head, report.inputs, target, (kind, layer, d, t), v)
            assert (grad * v).sum().item() == pytest.approx(numeric, rel=1e-6, abs=1e-9), (kind, layer, d, t)
            checked += 1
    assert checked >= 8


def test_hidden_grad_equals_rerunning_the_fused_module_from_h_t() -> None:
    """Independent of both engines: dL/dh_t via autograd through the fused kernel restarted at h_t."""
    cfg = small("gru", num_layers=1, target="y[:, 5].pow(2).sum() + y[:, 2].sum()")
    report = explain(cfg)
    target = parse_target(cfg.target)
    y_full = report.output
    for t in range(cfg.seq_len):
        h_t = y_full[:, t].clone().requires_grad_()
        rest, _ = report.module(report.inputs[:, t + 1:], h_t.unsqueeze(0)) if t + 1 < cfg.seq_len else (
            y_full[:, :0], None)
        y = torch.cat([y_full[:, :t], h_t.unsqueeze(1), rest], dim=1)
        (grad,) = torch.autograd.grad(target.evaluate({"y": y, "h_n": y[:, -1].unsqueeze(0)}), [h_t])
        assert (grad - report.hidden_grad[0, 0, :, t]).abs().max() < 1e-12, t


# --- Engines, causality, structure --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "dtype"), list(itertools.product(FUSED_CELLS, ("float32", "float64"))))
def test_fused_and_twin_engines_agree(cell: str, dtype: str) -> None:
    cfg = small(cell, num_layers=3, bidirectional=True, dtype=dtype, seq_len=12,
                target="y[:, 6].sum() + h_n.mean()" + (" + c_n.sum()" if cell == "lstm" else ""))
    fused, twin = explain(cfg), explain(cfg, engine="twin")
    assert fused.engine == "fused" and twin.engine == "twin"
    tol = 1e-5 if dtype == "float32" else 1e-12
    for name in ("hidden_grad", "stacked_grad", "input_grad", "cell_grad", "output"):
        a, b = getattr(fused, name), getattr(twin, name)
        if a is None:
            assert b is None
            continue
        assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item()), name
    for name in ("exactly_zero", "structurally_zero"):
        assert (fused.frame[name] == twin.frame[name]).all()


@pytest.mark.parametrize("cell", FUSED_CELLS)
def test_causality_unidirectional(cell: str) -> None:
    k = 3
    report = explain(small(cell, num_layers=2, target=f"y[:, {k}].sum()"))
    for layer in range(2):
        assert torch.count_nonzero(report.hidden_grad[layer, 0, :, k + 1:]) == 0  # after the target step
        assert torch.count_nonzero(report.hidden_grad[layer, 0, :, k]) > 0
    assert torch.count_nonzero(report.input_grad[:, k + 1:]) == 0
    rows = report.frame[report.frame.quantity == "hidden_state"]
    assert (rows.structurally_zero == (rows.t > k)).all()


def test_causality_reverse_direction_of_the_last_layer() -> None:
    k = 3
    report = explain(small("gru", num_layers=2, bidirectional=True, target=f"y[:, {k}].sum()"))
    last = report.hidden_grad[1]
    assert torch.count_nonzero(last[0, :, k + 1:]) == 0  # forward: zero after k
    assert torch.count_nonzero(last[1, :, :k]) == 0  # reverse: zero before k
    assert torch.count_nonzero(last[1, :, k:]) == last[1, :, k:].numel()
    # The lower layer feeds both directions above it, so all its states matter.
    assert not report.frame.query("quantity == 'hidden_state' and layer == 0").structurally_zero.any()


def test_h_n_target_reaches_every_step_but_not_y() -> None:
    report = explain(small("lstm", num_layers=2, bidirectional=True, target="h_n[-1].sum()"))
    assert torch.count_nonzero(report.stacked_grad) == 0  # y is not read at all
    assert report.frame.query("quantity == 'stacked_output'").structurally_zero.all()
    # The last layer's reverse final state is h at t = 0; nothing after it in processing order.
    assert torch.count_nonzero(report.hidden_grad[1, 0]) == 0  # forward direction of layer 1 is not read
    assert torch.count_nonzero(report.hidden_grad[1, 1, :, 0]) > 0


def test_structural_zeros_match_numeric_zeros_without_underflow() -> None:
    for cell, bidirectional, target in [("gru", True, "y[1, 2, 0]"), ("lstm", False, "c_n[0, 2].sum()"),
                                        ("rnn_tanh", True, "y[:, 0].sum() + y[0, -1].mean()")]:
        report = explain(small(cell, num_layers=3, bidirectional=bidirectional, target=target))
        frame = report.frame
        assert (frame.exactly_zero == frame.structurally_zero).all(), (cell, target)
        assert not frame.underflow.any()
        # Element-level too: a structural path implies a non-zero gradient here.
        assert torch.equal(report.hidden_grad != 0, report.hidden_reached)


def test_underflow_is_reported_not_called_structural() -> None:
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=8, input_size=2, seq_len=400, batch_size=1,
                        weight_scale=0.05, target="y[:, -1].sum()")
    report = explain(cfg)
    hidden = report.frame[report.frame.quantity == "hidden_state"]
    assert not hidden.structurally_zero.any()  # every step is causally before the target
    assert hidden.underflow.any()  # ...but float32 ran out of range far from it
    assert (hidden.underflow == hidden.exactly_zero).all()
    assert "Underflow" in report.verdict()


def test_exploding_gradients_are_marked_nonfinite() -> None:
    """Chaotic tanh RNN: the forward stays bounded, the backward overflows float32 far from the target."""
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=128, input_size=4, seq_len=512, batch_size=2,
                        weight_scale=4.0, target="y[:, -1].sum()")
    report = explain(cfg)
    assert torch.isfinite(report.output).all()
    hidden = report.frame[report.frame.quantity == "hidden_state"]
    assert hidden.nonfinite.any() and not hidden.nonfinite.iloc[-5:].any()  # near the target: finite
    assert not hidden.forward_nonfinite.any()
    assert "Exploding gradients" in report.verdict()


def test_forward_overflow_is_marked() -> None:
    cfg = ExplainConfig(cell="rnn_relu", num_layers=1, hidden_size=64, input_size=4, seq_len=500, batch_size=2,
                        weight_scale=10.0, target="y[:, -1].sum()")
    report = explain(cfg)
    assert not torch.isfinite(report.output).all()
    stacked = report.frame[report.frame.quantity == "stacked_output"]
    assert stacked.forward_nonfinite.iloc[-1] and not stacked.forward_nonfinite.iloc[0]
    assert "forward pass overflowed" in report.verdict()


def test_float64_norms_of_huge_values_are_finite_where_the_values_are() -> None:
    """A float64 ReLU run whose gradients reach 1e160-1e300: squaring them overflows float64, the norms must not
    (they were inf, with a RuntimeWarning from numpy)."""
    cfg = ExplainConfig(cell="rnn_relu", num_layers=1, hidden_size=64, input_size=4, seq_len=500, batch_size=2,
                        weight_scale=10.0, target="y[:, -1].sum()", dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = explain(cfg)
        frame = report.frame
    rows = frame[(frame.quantity == "hidden_state") & (frame.max_abs > 1e160) & (frame.max_abs < 1e300)]
    assert len(rows) > 10
    for t, norm in zip(rows.t, rows.norm, strict=True):
        values = report.hidden_grad[0, 0, :, t].flatten()  # float64, finite
        top = float(values.abs().max())
        assert norm == pytest.approx(top * float((values / top).norm()), rel=1e-12)
        assert math.isfinite(norm)


def test_explain_is_deterministic_and_does_not_touch_the_global_rng() -> None:
    cfg = small("lstm", bidirectional=True, dtype="float32", target="y.sum()")
    state = torch.random.get_rng_state()
    a, b = explain(cfg), explain(cfg)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("hidden_grad", "cell_grad", "stacked_grad", "input_grad", "output", "inputs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.frame.equals(b.frame)


# --- The report's frame and verdict -------------------------------------------------------------------------------


def test_frame_rows_and_values_come_from_the_tensors() -> None:
    cfg = small("lstm", num_layers=2, bidirectional=True)
    report = explain(cfg)
    frame = report.frame
    steps, layers, dirs = cfg.seq_len, cfg.num_layers, 2
    counts = frame.quantity.value_counts()
    assert counts["stacked_output"] == dirs * steps
    assert counts["hidden_state"] == counts["cell_state"] == layers * dirs * steps
    assert counts["input"] == steps
    row = frame.query("quantity == 'hidden_state' and layer == 0 and direction == 'reverse' and t == 2").iloc[0]
    assert row.norm == pytest.approx(report.hidden_grad[0, 1, :, 2].norm().item(), rel=1e-12)
    assert row.max_abs == pytest.approx(report.hidden_grad[0, 1, :, 2].abs().max().item(), rel=1e-12)
    row = frame.query("quantity == 'stacked_output' and direction == 'reverse' and t == 6").iloc[0]
    assert row.norm == pytest.approx(report.stacked_grad[:, 6, 6:].norm().item(), rel=1e-12)
    unit = report.unit_frame(layer=1, direction=1, batch=2)
    assert set(unit.quantity) == {"stacked_output", "hidden_state", "cell_state"}
    assert len(unit) == 3 * steps * cfg.hidden_size
    picked = unit.query("quantity == 'hidden_state' and t == 4 and unit == 5").value.item()
    assert picked == report.hidden_grad[1, 1, 2, 4, 5].item()


def test_tidy_frame_is_the_dataframe_pandas_builds() -> None:
    """report.tidy_frame (str columns straight from pyarrow) equals pd.DataFrame of the same columns: values, dtypes,
    and a column of mixed objects or missing values goes through pandas' own conversion, as before."""
    import numpy as np
    import pandas as pd

    from gru_explainer import report as report_module

    columns = report_module.frame_columns(explain(small("lstm", bidirectional=True, target="y[:, 3].sum()")))
    fast, plain = report_module.tidy_frame(columns), pd.DataFrame(columns)
    assert fast.equals(plain) and fast.dtypes.equals(plain.dtypes)
    assert set(fast.zero_cause) >= {"", "structural"}  # (the empty string is a value, not missing)
    mixed = {"a": np.array(["x", 3, None], dtype=object), "b": np.array(["", "y", "z"], dtype=object),
             "c": np.array(["x", None, "z"], dtype=object), "n": np.arange(3)}
    fast, plain = report_module.tidy_frame(mixed), pd.DataFrame(mixed)
    assert fast.equals(plain) and fast.dtypes.equals(plain.dtypes)
    assert fast.a.isna().tolist() == [False, False, True] and fast.c.isna().tolist() == [False, True, False]


def test_reached_per_step_reads_every_flag() -> None:
    """The frame's structural flags (any element of a block reached at a step), read as 64-bit words where the
    layout allows: one True flag anywhere (any byte of a word, any batch item) is seen; views fall back."""
    from gru_explainer.report import _reached_per_step

    blocks, batch, steps, units = 2, 3, 4, 16
    for n, b, t, k in itertools.product(range(blocks), range(batch), range(steps), range(units)):
        reached = torch.zeros(blocks, batch, steps, units, dtype=torch.bool)
        reached[n, b, t, k] = True
        expected = torch.zeros(blocks, steps, dtype=torch.bool)
        expected[n, t] = True
        assert (_reached_per_step(reached) == expected.numpy()).all(), (n, b, t, k)
    padded = torch.rand(blocks, batch, steps, units + 3, generator=torch.Generator().manual_seed(1)) < 0.02
    for view in (padded[..., 1:units + 1], padded[..., :6], padded.transpose(1, 2)):
        assert (_reached_per_step(view) == view.any(dim=3).any(dim=1).numpy()).all()


def test_zero_rows_have_a_positive_zero_max_abs() -> None:
    """A zero row's max |value| is +0 at every size (max(amax, -amin) of zeros may give -0, which a CSV writes as
    "-0.0"); here the stacked output has 64 K elements and is zero before the last step."""
    import numpy as np

    frame = explain(ExplainConfig(cell="gru", num_layers=1, input_size=8, hidden_size=128, seq_len=32,
                                  batch_size=16)).frame
    zero = frame[frame.exactly_zero]
    assert len(zero) >= 31
    assert not np.signbit(frame.max_abs.to_numpy()).any() and not np.signbit(frame.norm.to_numpy()).any()


def test_verdict_describes_this_config() -> None:
    text = explain(small("gru", num_layers=1, bidirectional=True, target="y[:, 2].sum()")).verdict()
    assert "exactly zero at t = 0–1, 3–6" in text
    assert "h_t, layer 0 reverse" in text and "structurally zero at t = 0–1" in text
    assert "structurally zero at t = 3–6" in text  # forward direction after the step


def test_target_shapes_follow_the_config() -> None:
    shapes = target_shapes(small("lstm", num_layers=3, bidirectional=True, head="linear", head_size=2))
    assert shapes == {"y": (3, 7, 12), "h_n": (6, 3, 6), "c_n": (6, 3, 6), "out": (3, 2, 1)}


def test_cached_structural_masks_equal_fresh_ones_and_each_report_owns_its_copy():
    """explain keeps small configs' masks by structure (a new seed reuses them): same masks as computed afresh,
    and a report that changes its masks leaves the next report's alone."""
    from gru_explainer.explain import _MASKS, compile_target, structural_masks

    _MASKS.clear()
    cfg = ExplainConfig(cell="lstm", num_layers=2, bidirectional=True, seq_len=6, target="y[:, 2].sum() + c_n[1].sum()")
    first = explain(cfg)
    assert len(_MASKS) == 1
    first.hidden_reached.fill_(False)
    second = explain(cfg.replace(seed=7, weight_scale=2.0))
    fresh = structural_masks(cfg, compile_target(cfg))
    for name in ("stacked_read", "hidden_reached", "cell_reached", "input_reached", "hidden_read", "cell_read"):
        assert torch.equal(getattr(second, name), fresh[name]), name
    for name, mask in fresh["named_read"].items():
        assert torch.equal(second.named_read[name], mask), name
    assert second.hidden_reached.any()
    other = explain(cfg.replace(target="h_n[0].sum()"))
    assert not torch.equal(other.hidden_reached, second.hidden_reached)
    assert len(_MASKS) == 2


def test_core_caches_are_cleared_all_at_once():
    """TensorCache.clear_all() empties explain's and watch's mask caches and build's drawn models (the hosted
    server's idle clean-up calls it)."""
    import importlib

    from gru_explainer.cache import TensorCache
    from gru_explainer.explain import _MASKS
    from gru_explainer.models import _DRAWS

    watch_masks = importlib.import_module("gru_explainer.watch")._MASKS
    explain(ExplainConfig(seq_len=4))
    watch_masks.get(("test",), lambda: {"m": torch.ones(2, dtype=torch.bool)})
    assert len(_MASKS) >= 1 and len(watch_masks) >= 1 and len(_DRAWS) >= 1
    TensorCache.clear_all()
    assert len(_MASKS) == 0 and len(watch_masks) == 0 and len(_DRAWS) == 0
