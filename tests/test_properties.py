"""Property tests over configs and targets: explain() either works and is consistent, or raises our errors."""

from __future__ import annotations

import builtins
import contextlib
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gru_explainer import ConfigError, ExplainConfig, TargetError, explain
from gru_explainer.explain import target_shapes

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_configs(draw: st.DrawFn) -> ExplainConfig:
    cell = draw(st.sampled_from(["gru", "lstm", "rnn_tanh", "rnn_relu", "answer_gru"]))
    single = cell == "answer_gru"
    cfg = ExplainConfig(
        cell=cell,
        num_layers=1 if single else draw(st.integers(1, 3)),
        input_size=draw(st.integers(1, 5)),
        hidden_size=draw(st.integers(1, 6)),
        bidirectional=False if single else draw(st.booleans()),
        head=draw(st.sampled_from(["none", "linear"])),
        head_size=draw(st.integers(1, 4)),
        seq_len=draw(st.integers(1, 8)),
        batch_size=draw(st.integers(1, 3)),
        dtype="float64",
        seed=draw(st.integers(0, 2**31 - 1)),
        weight_scale=draw(st.floats(0.1, 3.0)),
    )
    shapes = target_shapes(cfg)
    name = draw(st.sampled_from(sorted(shapes)))
    index = ", ".join(str(draw(st.integers(-size, size - 1))) for size in shapes[name])
    reduction = draw(st.sampled_from(["", ".sum()", ".abs().mean()", ".pow(2).sum()"]))
    target = f"{name}[{index}]" if not reduction else f"{name}[{index.rsplit(', ', 1)[0]}]{reduction}"
    if reduction and len(shapes[name]) == 1:
        target = f"{name}{reduction}"
    return cfg.replace(target=target)


@SETTINGS
@given(valid_configs())
def test_valid_configs_explain_consistently(cfg: ExplainConfig) -> None:
    report = explain(cfg)
    L, D, B, T, H = cfg.num_layers, cfg.num_directions, cfg.batch_size, cfg.seq_len, cfg.hidden_size
    assert report.hidden_grad.shape == (L, D, B, T, H)
    assert report.stacked_grad.shape == report.output.shape == (B, T, D * H)
    assert report.input_grad.shape == report.inputs.shape
    # A structural zero is always a numeric zero; every numeric zero has exactly one cause.
    frame = report.frame
    assert not (frame.structurally_zero & ~frame.exactly_zero).any()
    assert ((frame.zero_cause == "structural") == frame.structurally_zero).all()
    assert ((frame.zero_cause != "") == frame.exactly_zero).all()
    assert (frame.underflow == (frame.zero_cause == "underflow")).all()
    assert (frame.log10_norm[frame.zero_cause == "zero_on_path"] == -math.inf).all()
    assert not (frame.zero_cause == "underflow").any()  # small float64 runs: nothing is below 1e-308
    finite = frame[~frame.exactly_zero & ~frame.nonfinite]
    assert np.allclose(finite.log10_norm, np.log10(finite.norm), rtol=0, atol=1e-9)
    assert not (report.hidden_grad[~report.hidden_reached] != 0).any()
    if cfg.cell != "answer_gru":
        twin = explain(cfg, engine="twin")
        assert (twin.hidden_grad - report.hidden_grad).abs().max() < 1e-10
        assert (twin.input_grad - report.input_grad).abs().max() < 1e-10
    assert isinstance(report.verdict(), str)


FIELD_VALUES = {
    "cell": st.one_of(st.text(max_size=8), st.integers(), st.none()),
    "num_layers": st.one_of(st.integers(-5, 10**12), st.floats(), st.text(max_size=3), st.booleans()),
    "input_size": st.one_of(st.integers(-5, 10**12), st.floats(), st.none()),
    "hidden_size": st.one_of(st.integers(-5, 10**12), st.floats(), st.text(max_size=3)),
    "bidirectional": st.one_of(st.booleans(), st.integers(), st.text(max_size=3)),
    "head": st.one_of(st.text(max_size=8), st.integers()),
    "head_size": st.one_of(st.integers(-5, 10**12), st.floats()),
    "seq_len": st.one_of(st.integers(-5, 10**12), st.floats()),
    "batch_size": st.one_of(st.integers(-5, 10**12), st.floats()),
    "target": st.one_of(st.text(max_size=40), st.integers(), st.none()),
    "device": st.one_of(st.text(max_size=8), st.integers(), st.none()),
    "dtype": st.one_of(st.text(max_size=8), st.integers()),
    "seed": st.one_of(st.integers(-10**20, 10**20), st.floats()),
    "weight_scale": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                              st.text(max_size=3)),
}


@SETTINGS
@given(st.fixed_dictionaries({}, optional=FIELD_VALUES))
def test_any_field_values_raise_only_our_errors(changes: dict) -> None:
    cfg = ExplainConfig(seq_len=4, hidden_size=4).replace(**changes)
    try:
        report = explain(cfg)
    except (ConfigError, TargetError) as err:
        assert str(err)
    else:
        cfg.validate()  # it ran, so the config was valid
        assert report.hidden_grad.shape[:2] == (cfg.num_layers, cfg.num_directions)


@SETTINGS
@given(st.one_of(st.text(max_size=60), st.from_regex(r"(y|h_n|c_n|out|output|x)(\[[-0-9:, .]*\])?(\.[a-z_]+\(\d*\))*",
                                                       fullmatch=True)))
def test_target_text_raises_only_target_error_and_runs_no_code(text: str) -> None:
    refuse = AssertionError("user text reached eval/exec")
    original = builtins.eval, builtins.exec
    builtins.eval = builtins.exec = lambda *a, **k: (_ for _ in ()).throw(refuse)  # type: ignore[assignment]
    try:
        with contextlib.suppress(TargetError, ConfigError):
            explain(ExplainConfig(cell="lstm", head="linear", seq_len=5, hidden_size=4, target=text))
    finally:
        builtins.eval, builtins.exec = original
