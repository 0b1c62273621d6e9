"""The models: twin/fused equivalence, shared parameters, deterministic init, the seed answer's GRU."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from gru_explainer import ExplainConfig
from gru_explainer.models import SeedAnswerGRU, UnrolledTwin, build, layer_params, single_layer_view

FUSED_CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu")
CPU = torch.device("cpu")


def _cfg(cell: str, layers: int, bidirectional: bool, dtype: str, **kw) -> ExplainConfig:
    base = dict(cell=cell, num_layers=layers, bidirectional=bidirectional, dtype=dtype, input_size=5,
                hidden_size=7, seq_len=6, batch_size=3, seed=11)
    base.update(kw)
    return ExplainConfig(**base)


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "dtype"),
                         list(itertools.product(FUSED_CELLS, (1, 2, 3, 4), (False, True), ("float32", "float64"))))
def test_twin_matches_fused_forward(cell: str, layers: int, bidirectional: bool, dtype: str) -> None:
    built = build(_cfg(cell, layers, bidirectional, dtype), CPU)
    with torch.no_grad():
        fused = built.module(built.inputs)
        twin = UnrolledTwin(built.module)(built.inputs)
    y, finals = fused
    h_n = finals[0] if cell == "lstm" else finals
    tol = 1e-6 if dtype == "float32" else 1e-12
    assert (twin.y - y).abs().max() <= tol
    assert (twin.h_n - h_n).abs().max() <= tol
    if cell == "lstm":
        assert (twin.c_n - finals[1]).abs().max() <= tol
    # Every per-step state of the last layer is a slice of y, at its original time index.
    hidden = built.module.hidden_size
    for d, per_dir in enumerate(twin.hidden[-1]):
        for t, h_t in enumerate(per_dir):
            assert (h_t - y[:, t, d * hidden:(d + 1) * hidden]).abs().max() <= tol


def test_twin_uses_the_fused_parameter_tensors() -> None:
    built = build(_cfg("lstm", 2, True, "float32"), CPU)
    twin = UnrolledTwin(built.module)
    assert twin.fused is built.module
    w_ih, w_hh, b_ih, b_hh = layer_params(built.module, 1, 1)
    assert w_ih is built.module.weight_ih_l1_reverse and b_hh is built.module.bias_hh_l1_reverse
    # A change to the fused module's parameters changes the twin's output: nothing was copied.
    with torch.no_grad():
        before = twin(built.inputs).y.clone()
        built.module.weight_hh_l0.mul_(2.0)
        after = twin(built.inputs).y
    assert not torch.equal(before, after)


@pytest.mark.parametrize("cell", FUSED_CELLS)
def test_single_layer_views_share_tensors_and_chain_to_the_fused_output(cell: str) -> None:
    built = build(_cfg(cell, 3, True, "float64"), CPU)
    layer_input = built.inputs
    with torch.no_grad():
        for layer in range(3):
            view = single_layer_view(built.module, layer)
            assert view.weight_ih_l0_reverse is built.module.__getattr__(f"weight_ih_l{layer}_reverse")
            layer_input = view(layer_input)[0]
        expected = built.module(built.inputs)[0]
    assert torch.equal(layer_input, expected)


def test_build_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    cfg = _cfg("gru", 2, True, "float32", head="linear")
    state = torch.random.get_rng_state()
    first, second = build(cfg, CPU), build(cfg, CPU)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), (_, q) in zip(first.module.named_parameters(), second.module.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(first.inputs, second.inputs)
    assert torch.equal(first.head.fc.weight, second.head.fc.weight)
    other = build(cfg.replace(seed=12), CPU)
    assert not torch.equal(first.inputs, other.inputs)


@pytest.mark.parametrize("cell", [*FUSED_CELLS, "answer_gru"])
def test_build_draws_the_documented_numbers_and_every_build_owns_them(cell: str) -> None:
    """The numbers are the module docstring's draws (recomputed here from a fresh generator), on the first build
    and on a later one served from the cache of drawn models; changing one build's tensors changes no other."""
    import math

    from gru_explainer.models import _DRAWS

    _DRAWS.clear()
    layers = 1 if cell == "answer_gru" else 2
    cfg = _cfg(cell, layers, cell != "answer_gru", "float32", head="linear", weight_scale=1.5, seed=5)
    gen = torch.Generator().manual_seed(cfg.seed)
    first = build(cfg, CPU)
    params = list(first.module.named_parameters())
    if cell == "answer_gru":  # per parameter, bound from its Linear's fan-in
        fan_in = {"lin_r": cfg.input_size + cfg.hidden_size, "lin_z": cfg.input_size + cfg.hidden_size,
                  "lin_in": cfg.input_size, "lin_hn": cfg.hidden_size}
        expected = [torch.empty(p.shape, dtype=torch.float64).uniform_(
            -1.5 / math.sqrt(fan_in[name.split(".")[0]]), 1.5 / math.sqrt(fan_in[name.split(".")[0]]), generator=gen)
            for name, p in params]
    else:
        bound = 1.5 / math.sqrt(cfg.hidden_size)
        flat = torch.empty(sum(p.numel() for _, p in params), dtype=torch.float64).uniform_(-bound, bound,
                                                                                            generator=gen)
        expected = [part.view(p.shape) for part, (_, p) in zip(flat.split([p.numel() for _, p in params]), params,
                                                                   strict=True)]
    head_bound = 1 / math.sqrt(first.head.fc.in_features)
    head_expected = [torch.empty(p.shape, dtype=torch.float64).uniform_(-head_bound, head_bound, generator=gen)
                     for p in (first.head.fc.weight, first.head.fc.bias)]
    inputs = torch.rand((cfg.batch_size, cfg.seq_len, cfg.input_size), generator=gen, dtype=torch.float64)
    second = build(cfg.replace(target="h_n.sum()" if cell != "answer_gru" else "y.sum()"), CPU)  # a cache hit
    assert len(_DRAWS) == 1
    for built in (first, second):
        for (name, p), want in zip(built.module.named_parameters(), expected, strict=True):
            assert torch.equal(p, want.float()), name
        assert torch.equal(built.head.fc.weight, head_expected[0].float())
        assert torch.equal(built.head.fc.bias, head_expected[1].float())
        assert torch.equal(built.inputs, inputs.float())
    with torch.no_grad():
        second.inputs.zero_()
        next(second.module.parameters()).zero_()
    third = build(cfg, CPU)
    assert torch.equal(third.inputs, inputs.float()) and torch.equal(first.inputs, inputs.float())
    assert torch.equal(next(third.module.parameters()), expected[0].float())


def test_weight_scale_scales_the_init_range() -> None:
    small = build(_cfg("rnn_tanh", 1, False, "float64", weight_scale=0.5), CPU).module
    large = build(_cfg("rnn_tanh", 1, False, "float64", weight_scale=2.0), CPU).module
    bound = 1 / 7 ** 0.5
    assert small.weight_hh_l0.abs().max() <= 0.5 * bound
    assert large.weight_hh_l0.abs().max() > bound  # beyond PyTorch's default range
    assert torch.allclose(large.weight_hh_l0, 4 * small.weight_hh_l0)  # same draws, scaled


def test_seed_answer_gru_is_a_gru_with_merged_biases() -> None:
    """Independent check: the answer's GRU equals nn.GRU with its weights mapped (b_hr = b_hz = 0)."""
    cfg = ExplainConfig.preset("seed-answer-gru").replace(dtype="float64")
    built = build(cfg, CPU)
    answer: SeedAnswerGRU = built.module
    inp, hid = cfg.input_size, cfg.hidden_size
    gru = nn.GRU(inp, hid, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.cat([answer.lin_r.weight[:, :inp], answer.lin_z.weight[:, :inp],
                                          answer.lin_in.weight]))
        gru.weight_hh_l0.copy_(torch.cat([answer.lin_r.weight[:, inp:], answer.lin_z.weight[:, inp:],
                                          answer.lin_hn.weight]))
        gru.bias_ih_l0.copy_(torch.cat([answer.lin_r.bias, answer.lin_z.bias, answer.lin_in.bias]))
        gru.bias_hh_l0.copy_(torch.cat([torch.zeros(2 * hid, dtype=torch.float64), answer.lin_hn.bias]))
        y_answer, hs = answer(built.inputs)
        y_fused, _ = gru(built.inputs)
    assert len(hs) == cfg.seq_len
    assert (y_answer - y_fused).abs().max() < 1e-12
