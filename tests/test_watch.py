"""`watch(model)` on user-style models: every gradient equals plain autograd without watch (float64 <= 1e-10), the
per-step gradients equal a hand-unrolled nn.*Cell reference, the model is unchanged outside the block, and what is
not supported is refused with a message naming it."""

from __future__ import annotations

import copy
import importlib
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gru_explainer as gx
from gru_explainer.report import FRAME_COLUMNS

from .reference import unrolled_step_grads

F64 = torch.float64
TOL = 1e-10


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float((a - b).detach().abs().max())
    assert diff <= tol, diff


def assert_same_grads(ref: dict, got: dict, tol: float = TOL) -> None:
    assert ref.keys() == got.keys()
    for name in ref:
        assert_close(ref[name], got[name], tol)


# --- User-style models -----------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """GRU + Linear on the last step (the classic sequence classifier)."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(3, 6, num_layers=layers, batch_first=True, dtype=F64)
        self.fc = nn.Linear(6, 4, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        self.y = y
        if y.requires_grad:
            y.retain_grad()
        return self.fc(y[:, -1])


class EncoderDecoder(nn.Module):
    """LSTM encoder; its h_n (and c_n) start the decoder (GRU or LSTM); a linear readout per step."""

    def __init__(self, decoder: str = "gru") -> None:
        super().__init__()
        torch.manual_seed(1)
        self.encoder = nn.LSTM(3, 5, num_layers=2, dtype=F64)  # time-major
        self.decoder = (nn.GRU if decoder == "gru" else nn.LSTM)(2, 5, num_layers=2, batch_first=True, dtype=F64)
        self.out = nn.Linear(5, 2, dtype=F64)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        _, (h_n, c_n) = self.encoder(src)
        state = h_n if isinstance(self.decoder, nn.GRU) else (h_n, c_n)
        y, _ = self.decoder(tgt, state)
        return self.out(y)


class Tagger(nn.Module):
    """A packed bidirectional tagger: one label per real step."""

    def __init__(self, cell: type = nn.LSTM) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.rnn = cell(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=F64)
        self.fc = nn.Linear(8, 3, dtype=F64)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, enforce_sorted: bool) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
        y, _ = self.rnn(packed)
        padded, _ = pad_packed_sequence(y, batch_first=True)
        return self.fc(padded)


# --- The classifier --------------------------------------------------------------------------------------------------


def classifier_step(model: Classifier, x: torch.Tensor, labels: torch.Tensor) -> tuple:
    model.zero_grad()
    x = x.clone().requires_grad_()
    loss = nn.functional.cross_entropy(model(x), labels)
    loss.backward()
    return grads_of(model), x.grad, model.y.grad


def test_classifier_equals_autograd_and_the_unrolled_reference() -> None:
    model = Classifier()
    x, labels = rand(5, 7, 3), torch.tensor([0, 3, 1, 2, 0])
    ref_params, ref_x, ref_y = classifier_step(model, x, labels)
    with gx.watch(model) as rec:
        params, x_grad, y_grad = classifier_step(model, x, labels)
    assert_same_grads(ref_params, params)
    assert_close(ref_x, x_grad)
    assert len(rec.calls) == 1
    call = rec.calls[0]
    assert call.name == "rnn" and call.module is model.rnn
    assert_close(call.output_grad, ref_y)  # what y.retain_grad() shows
    assert_close(call.input_grad, ref_x)
    assert call.cell_grad is None and call.mask.all() and call.mask.shape == (5, 7)
    fc = model.fc
    ref = unrolled_step_grads(model.rnn, x, lambda y, h, c: nn.functional.cross_entropy(fc(y[:, -1]), labels))
    assert call.hidden_grad.shape == (2, 1, 5, 7, 6)
    assert_close(call.hidden_grad, ref["hidden"])
    assert_close(call.input_grad, ref["input"])


def test_classifier_hidden_grad_matches_finite_differences() -> None:
    model = Classifier(layers=1)
    x, labels = rand(2, 5, 3, seed=3), torch.tensor([1, 2])
    with gx.watch(model) as rec:
        nn.functional.cross_entropy(model(x.requires_grad_()), labels).backward()
    grad = rec.calls[0].hidden_grad
    fc, eps = model.fc, 1e-6

    def loss_with(t: int, unit: int, delta: float) -> float:
        bump = torch.zeros(2, 6, dtype=F64)
        bump[:, unit] = delta  # both batch items at once: the loss sums their terms
        from .reference import reference_outputs

        with torch.no_grad():
            y = reference_outputs(model.rnn, x.detach(), {("h", 0, 0, t): bump})["y"]
            return float(nn.functional.cross_entropy(fc(y[:, -1]), labels))

    for t, unit in [(0, 1), (2, 4), (4, 0)]:
        numeric = (loss_with(t, unit, eps) - loss_with(t, unit, -eps)) / (2 * eps)
        assert numeric == pytest.approx(float(grad[0, 0, :, t, unit].sum()), abs=1e-8)


def test_classifier_frame_and_verdict_name_zero_causes_for_a_users_loss() -> None:
    model = Classifier()
    with gx.watch(model) as rec:
        nn.functional.cross_entropy(model(rand(3, 6, 3)), torch.tensor([0, 1, 2])).backward()
    call = rec.calls[0]
    frame = call.frame
    assert list(frame.columns) == [*FRAME_COLUMNS, "padded_items"]
    stacked = frame[frame.quantity == "stacked_output"].set_index("t")
    # The loss reads only y[:, -1] (through fc): y.grad is exactly 0 before, reported as zero on a path (the
    # code after the module cannot be inspected), never as structural.
    assert stacked.loc[:4, "exactly_zero"].all() and not stacked.loc[5, "exactly_zero"]
    assert (stacked.loc[:4, "zero_cause"] == "zero_on_path").all()
    assert not frame.structurally_zero.any()
    hidden = frame[frame.quantity == "hidden_state"]
    assert (hidden.log10_norm > -math.inf).all()  # every h_t carries gradient back through time
    text = call.verdict()
    assert "exactly zero at t = 0–4" in text and "not structural" in text
    assert "h_t, layer 0 forward" in text
    assert call.report.config.cell == "gru" and call.report.config.seq_len == 6


def test_training_loop_inside_watch_equals_plain_training() -> None:
    x, labels = rand(4, 6, 3, seed=5), torch.tensor([0, 1, 2, 3])
    plain, watched = Classifier(), Classifier()
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.5)
    opt_w = torch.optim.SGD(watched.parameters(), lr=0.5)
    with gx.watch(watched, keep="summary") as rec:
        for _ in range(4):
            for model, opt in ((plain, opt_p), (watched, opt_w)):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), labels).backward()
                opt.step()
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        assert_close(p, q)
    assert len(rec.calls) == 4 and all(len(c.frame) for c in rec.calls)


# --- Encoder-decoder ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["gru", "lstm"])
def test_encoder_decoder_chained_modules(decoder: str) -> None:
    model = EncoderDecoder(decoder)
    src, tgt, gold = rand(6, 3, 3, seed=1), rand(3, 4, 2, seed=2), rand(3, 4, 2, seed=3)

    def step() -> tuple:
        model.zero_grad()
        s = src.clone().requires_grad_()
        nn.functional.mse_loss(model(s, tgt), gold).backward()
        return grads_of(model), s.grad

    ref_params, ref_src = step()
    with gx.watch(model) as rec:
        params, src_grad = step()
    assert_same_grads(ref_params, params)
    assert_close(ref_src, src_grad)
    assert [c.name for c in rec.calls] == ["encoder", "decoder"]
    enc, dec = rec.calls
    assert enc.output_grad is None  # nothing reads the encoder's y
    # The decoder's record, against the unrolled reference started from the encoder's states.
    with torch.no_grad():
        _, (h_n, c_n) = model.encoder(src)
    c0 = c_n if decoder == "lstm" else None
    ref_dec = unrolled_step_grads(model.decoder, tgt, lambda y, h, c: nn.functional.mse_loss(model.out(y), gold),
                                  h0=h_n, c0=c0)
    assert_close(dec.hidden_grad, ref_dec["hidden"])
    assert_close(dec.h0_grad, ref_dec["h0"])
    if decoder == "lstm":
        assert_close(dec.cell_grad, ref_dec["cell"])
        assert_close(dec.c0_grad, ref_dec["c0"])

    # The encoder's record: the loss as a function of its h_n / c_n through the (plain) decoder.
    def through_decoder(y, h, c):
        state = h if decoder == "gru" else (h, c)
        return nn.functional.mse_loss(model.out(model.decoder(tgt, state)[0]), gold)

    ref_enc = unrolled_step_grads(model.encoder, src.transpose(0, 1), through_decoder)
    assert_close(enc.hidden_grad, ref_enc["hidden"])
    assert_close(enc.cell_grad, ref_enc["cell"])
    assert_close(enc.input_grad, ref_enc["input"].transpose(0, 1))  # laid out like the time-major input
    frame = enc.frame
    stacked = frame[frame.quantity == "stacked_output"]
    assert (stacked.zero_cause == "structural").all()  # autograd passed no gradient for y: truly no path
    assert "nothing after this call uses its output" in enc.verdict()


# --- Coverage: cells x layers x directions x layout x bias x initial states --------------------------------------


CELLS = {"gru": (nn.GRU, {}), "lstm": (nn.LSTM, {}), "rnn_tanh": (nn.RNN, {}),
         "rnn_relu": (nn.RNN, {"nonlinearity": "relu"})}
COVERAGE = [(cell, layers, bidirectional, batch_first, bias, with_h0)
            for cell, layers, (bidirectional, batch_first, bias, with_h0) in itertools.product(
                CELLS, (1, 2, 3, 4), [(False, True, True, False), (True, False, False, True),
                                      (True, True, True, True), (False, False, True, True)])]


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "batch_first", "bias", "with_h0"), COVERAGE)
def test_coverage_against_autograd_and_unrolled(cell, layers, bidirectional, batch_first, bias, with_h0) -> None:
    cls, kw = CELLS[cell]
    torch.manual_seed(layers)
    module = cls(3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                 dtype=F64, **kw)
    num_dirs = 2 if bidirectional else 1
    x_bf = rand(3, 5, 3, seed=7)
    x = x_bf if batch_first else x_bf.transpose(0, 1).contiguous()
    h0 = rand(layers * num_dirs, 3, 4, seed=8) if with_h0 else None
    c0 = rand(layers * num_dirs, 3, 4, seed=9) if with_h0 and cell == "lstm" else None
    weight = rand(3, 5, 4 * num_dirs, seed=10)

    def loss_fn(y_bf, h_n, c_n):
        loss = (weight * y_bf).sum() + (y_bf[:, 1] ** 2).sum() + h_n.sin().sum()
        return loss + (c_n ** 2).sum() if c_n is not None else loss

    def step() -> tuple:
        module.zero_grad()
        xx = x.clone().requires_grad_()
        states = [t.clone().requires_grad_() for t in (h0, c0) if t is not None]
        hx = None if not states else (tuple(states) if cell == "lstm" else states[0])
        y, finals = module(xx, hx)
        h_n, c_n = finals if cell == "lstm" else (finals, None)
        loss_fn(y if batch_first else y.transpose(0, 1), h_n, c_n).backward()
        return grads_of(module), xx.grad, [s.grad for s in states]

    ref_params, ref_x, ref_states = step()
    with gx.watch(module) as rec:
        params, x_grad, states = step()
    assert_same_grads(ref_params, params)
    assert_close(ref_x, x_grad)
    for a, b in zip(ref_states, states, strict=True):
        assert_close(a, b)
    call = rec.calls[0]
    assert call.name == "" and call.batch_first == batch_first
    ref = unrolled_step_grads(module, x_bf, loss_fn, h0=h0, c0=c0)
    assert call.hidden_grad.shape == (layers, num_dirs, 3, 5, 4)
    assert_close(call.hidden_grad, ref["hidden"])
    if cell == "lstm":
        assert_close(call.cell_grad, ref["cell"])
    if with_h0:
        assert_close(call.h0_grad, ref["h0"])
    assert_close(call.input_grad, ref["input"] if batch_first else ref["input"].transpose(0, 1))
    assert call.frame.shape[0] > 0


def test_eval_mode_with_dropout_is_exact() -> None:
    module = nn.LSTM(3, 4, num_layers=3, dropout=0.5, dtype=F64).eval()
    x = rand(5, 2, 3)

    def step():
        module.zero_grad()
        xx = x.clone().requires_grad_()
        y, _ = module(xx)
        y.pow(2).sum().backward()
        return grads_of(module), xx.grad

    ref = step()
    with gx.watch(module) as rec:
        got = step()
    assert_same_grads(ref[0], got[0])
    assert_close(ref[1], got[1])
    assert len(rec.calls) == 1


def test_float32_training_gradients_match_autograd() -> None:
    module = nn.GRU(8, 16, num_layers=2, batch_first=True)
    x = torch.randn(4, 20, 8, generator=torch.Generator().manual_seed(0))

    def step():
        module.zero_grad()
        y, h = module(x)
        (y.mean() + h.pow(2).mean()).backward()
        return grads_of(module)

    ref = step()
    with gx.watch(module):
        got = step()
    for name in ref:
        scale = float(ref[name].abs().max())
        assert float((ref[name] - got[name]).abs().max()) <= 1e-5 * max(scale, 1e-3), name


# --- Packed sequences ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM, nn.RNN])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_tagger(cell, enforce_sorted: bool) -> None:
    model = Tagger(cell)
    lengths = torch.tensor([6, 4, 4, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 4])
    x = rand(4, 6, 3, seed=11)
    labels = torch.randint(0, 3, (4, 6), generator=torch.Generator().manual_seed(0))
    valid = torch.arange(6)[None, :] < lengths[:, None]
    labels[~valid] = -100  # ignored: padding

    def loss_of(logits):
        return nn.functional.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), ignore_index=-100)

    def step():
        model.zero_grad()
        xx = x.clone().requires_grad_()
        loss_of(model(xx, lengths, enforce_sorted)).backward()
        return grads_of(model), xx.grad

    ref_params, ref_x = step()
    with gx.watch(model) as rec:
        params, x_grad = step()
    assert_same_grads(ref_params, params)
    assert_close(ref_x, x_grad)
    call = rec.calls[0]
    assert call.packed and torch.equal(call.mask, valid)
    pad = ~valid
    assert not call.hidden_grad[:, :, pad].any()  # padded steps carry exactly zero gradient
    assert not call.input_grad[pad].any()
    ref = unrolled_step_grads(model.rnn, x, lambda y, h, c: loss_of(model.fc(y)), lengths=lengths)
    assert_close(call.hidden_grad, ref["hidden"])
    if cell is nn.LSTM:
        assert_close(call.cell_grad, ref["cell"])
    assert_close(call.input_grad, ref["input"])
    frame = call.frame
    counts = frame[frame.quantity == "hidden_state"].groupby("t").padded_items.first()
    assert counts.tolist() == pad.sum(0).tolist()
    assert "Padding" in call.verdict()


def test_packed_with_initial_states_and_h_n_loss() -> None:
    module = nn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=F64)
    lengths = torch.tensor([2, 5, 3])
    x, h0 = rand(3, 5, 3, seed=12), rand(4, 3, 4, seed=13)

    def loss_fn(y_bf, h_n, c_n):
        return (y_bf ** 2).sum() + (h_n * rand(4, 3, 4, seed=14)).sum()

    def step():
        module.zero_grad()
        xx, hh = x.clone().requires_grad_(), h0.clone().requires_grad_()
        packed = pack_padded_sequence(xx.transpose(0, 1), lengths, enforce_sorted=False)
        y, h_n = module(packed, hh)
        loss_fn(pad_packed_sequence(y, batch_first=True)[0], h_n, None).backward()
        return grads_of(module), xx.grad, hh.grad

    ref = step()
    with gx.watch(module) as rec:
        got = step()
    assert_same_grads(ref[0], got[0])
    assert_close(ref[1], got[1])
    assert_close(ref[2], got[2])
    out = unrolled_step_grads(module, x, loss_fn, h0=h0, lengths=lengths)
    assert_close(rec.calls[0].hidden_grad, out["hidden"])
    assert_close(rec.calls[0].h0_grad, out["h0"])


# --- Calls, autograd.grad, summaries -----------------------------------------------------------------------------


def test_one_module_called_twice_gives_two_records() -> None:
    module = nn.GRU(3, 4, batch_first=True, dtype=F64)
    a, b = rand(2, 5, 3, seed=1), rand(3, 4, 3, seed=2)
    with gx.watch(module) as rec:
        y1, _ = module(a)
        y2, h2 = module(b)
        ((y1 ** 2).sum() + y2[:, -1].sum() + h2.sum()).backward()
    assert len(rec.calls) == 2 and [c.index for c in rec.calls] == [0, 1]
    first = unrolled_step_grads(module, a, lambda y, h, c: (y ** 2).sum())
    second = unrolled_step_grads(module, b, lambda y, h, c: y[:, -1].sum() + h.sum())
    assert_close(rec.calls[0].hidden_grad, first["hidden"])
    assert_close(rec.calls[1].hidden_grad, second["hidden"])
    total = {n: rec.calls[0].param_grads[n] + rec.calls[1].param_grads[n] for n, _ in module.named_parameters()}
    assert_same_grads(grads_of(module), total)
    assert rec.by_name("") == rec.calls


def test_autograd_grad_instead_of_backward() -> None:
    model = Classifier()
    x, labels = rand(3, 5, 3).requires_grad_(), torch.tensor([0, 1, 2])
    wrt = [x, *model.parameters()]
    ref = torch.autograd.grad(nn.functional.cross_entropy(model(x), labels), wrt)
    with gx.watch(model) as rec:
        got = torch.autograd.grad(nn.functional.cross_entropy(model(x), labels), wrt)
    for r, g in zip(ref, got, strict=True):
        assert_close(r, g)
    assert all(p.grad is None for p in model.parameters())
    assert rec.calls[0].backward_count == 1


def test_keep_summary_keeps_only_the_frame() -> None:
    model = Classifier()
    x, labels = rand(3, 5, 3), torch.tensor([0, 1, 2])
    with gx.watch(model) as full:
        nn.functional.cross_entropy(model(x), labels).backward()
    with gx.watch(model, keep="summary") as summary:
        nn.functional.cross_entropy(model(x), labels).backward()
    assert summary.calls[0].frame.equals(full.calls[0].frame)
    assert summary.calls[0]._tensors == {}
    with pytest.raises(gx.WatchError, match="keep='summary'"):
        _ = summary.calls[0].hidden_grad
    with pytest.raises(gx.WatchError, match="keep must be one of full, summary"), gx.watch(model, keep="everything"):
        pass


def test_cached_masks_of_unpadded_calls_equal_fresh_ones_and_each_report_owns_its_copy() -> None:
    """Unpadded calls share their structural masks through a small cache: the same masks as computed afresh,
    per structure (what the loss read), and a report that changes its masks leaves the next one's alone."""
    watch_module = importlib.import_module("gru_explainer.watch")
    watch_module._MASKS.clear()
    module = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=F64)

    def masks(loss) -> gx.GradientReport:
        with gx.watch(module) as rec:
            loss(module(rand(2, 5, 3))).backward()
        return rec.calls[0].report

    first = masks(lambda out: out[0][:, 1].sum())
    assert len(watch_module._MASKS) == 1
    first.hidden_reached.fill_(False)
    second = masks(lambda out: out[0][:, 1].sum())
    only_h_n = masks(lambda out: out[1][0].sum())
    assert len(watch_module._MASKS) == 2
    valid = torch.ones(2, 5, dtype=torch.bool)
    for report, present in ((second, (True, False, False)), (only_h_n, (False, True, False))):
        fresh = watch_module._watch_masks("lstm", 2, 2, 4, 3, valid, present)
        for name in ("stacked_read", "hidden_reached", "cell_reached", "input_reached", "hidden_read", "cell_read"):
            assert torch.equal(getattr(report, name), fresh[name]), name
    assert second.hidden_reached.any()


def test_calls_without_gradient_are_not_recorded_and_unbatched_input_works() -> None:
    module = nn.GRU(3, 4, dtype=F64)
    with gx.watch(module) as rec:
        with torch.no_grad():
            module(rand(5, 2, 3))
        x = rand(5, 3).requires_grad_()  # unbatched [T, I]
        y, h = module(x)
        assert y.shape == (5, 4) and h.shape == (1, 4)
        with pytest.raises(gx.WatchError, match="no backward pass"):
            _ = rec.calls[0].hidden_grad
        y.sum().backward()
    assert len(rec.calls) == 1 and rec.calls[0].hidden_grad.shape == (1, 1, 1, 5, 4)
    assert rec.calls[0].input_grad.shape == (5, 3)
    ref = unrolled_step_grads(module, x.detach()[None], lambda yy, hh, cc: yy.sum())
    assert_close(rec.calls[0].hidden_grad, ref["hidden"])
    assert_close(x.grad, ref["input"][0])


# --- The model outside the block; refusals -------------------------------------------------------------------------


def test_model_is_unchanged_outside_the_block_also_after_an_exception() -> None:
    model = EncoderDecoder("lstm")
    before = {name: dict(m.__dict__) for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    src, tgt = rand(4, 2, 3), rand(2, 3, 2)
    expected = model(src, tgt)
    with gx.watch(model):
        assert "forward" in model.encoder.__dict__
    with pytest.raises(RuntimeError, match="boom"), gx.watch(model):
        model(src, tgt)
        raise RuntimeError("boom")
    for name, m in model.named_modules():
        assert "forward" not in m.__dict__
        assert m.__dict__.keys() == before[name].keys()
        assert type(m).forward is m.forward.__func__
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(model(src, tgt), expected)


def test_refusals_name_the_feature() -> None:
    with pytest.raises(gx.WatchError, match="LSTM proj_size=2"), gx.watch(nn.LSTM(3, 4, proj_size=2)):
        pass
    module = nn.GRU(3, 4, num_layers=2, dropout=0.3)
    with gx.watch(module):  # entering is fine; a training-mode call is refused, before any computation
        with pytest.raises(gx.WatchError, match="inter-layer dropout in training mode"):
            module(torch.randn(2, 5, 3))
        module.eval()
        module(torch.randn(2, 5, 3))[0].sum().backward()
    assert "forward" not in module.__dict__
    with pytest.raises(gx.WatchError, match="contains no nn.GRU"), gx.watch(nn.Linear(2, 2)):
        pass
    with pytest.raises(gx.WatchError, match="only float32 and float64"), gx.watch(nn.GRU(3, 4, dtype=torch.float16)):
        pass

    class Custom(nn.GRU):
        def forward(self, x, hx=None):
            return super().forward(x * 2, hx)

    with pytest.raises(gx.WatchError, match="overrides forward"), gx.watch(Custom(3, 4)):
        pass
    inner = nn.GRU(3, 4)
    with (gx.watch(inner), pytest.raises(gx.WatchError, match="already has an instance-level forward"),
          gx.watch(inner)):
        pass
    assert "forward" not in inner.__dict__
    with gx.watch(inner), pytest.raises(gx.WatchError, match="expects input size 3"):
        inner(torch.randn(2, 5, 7, requires_grad=True))


# --- DistributedDataParallel ---------------------------------------------------------------------------------------


DDP_STEPS, DDP_SHARD = 3, 2


def _ddp_data() -> tuple[torch.Tensor, torch.Tensor]:
    return rand(2 * DDP_SHARD, 5, 3, seed=21), torch.tensor([0, 1, 2, 3])


def _train(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(DDP_STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = Classifier()
        ddp = DistributedDataParallel(model)
        x, labels = _ddp_data()
        shard = slice(rank * DDP_SHARD, (rank + 1) * DDP_SHARD)
        with gx.watch(ddp) as rec:
            _train(ddp, x[shard], labels[shard])
        names = [c.name for c in rec.calls]
        grads = [c.hidden_grad for c in rec.calls]
        torch.save({"params": [p.detach() for p in model.parameters()], "names": names, "hidden": grads},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_data_parallel_two_processes(tmp_path, monkeypatch) -> None:
    import socket
    import sys
    import types

    import torch.multiprocessing as mp

    # Spawned children re-run the parent's __main__ by path; after AppTest ran a page in this process that would be
    # the page script (found in a full run: app_pages/devices.py crashed in the child). A bare __main__ runs nothing.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = Classifier()
    _train(single, *_ddp_data())  # DDP averages the shards' mean losses' gradients: the full batch's mean
    for a, b, ref in zip(ranks[0]["params"], ranks[1]["params"], single.parameters(), strict=True):
        assert torch.equal(a, b)  # identical across ranks
        assert_close(a, ref.detach())
    for result in ranks:
        assert result["names"] == ["module.rnn"] * DDP_STEPS  # each rank records its own calls
        assert result["hidden"][0].shape == (2, 1, DDP_SHARD, 5, 6)
    assert not torch.equal(ranks[0]["hidden"][0], ranks[1]["hidden"][0])  # different shards, different gradients


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("packed", [False, True])
def test_a_watched_step_leaves_nothing_behind_once_its_recording_is_dropped(cell, packed) -> None:
    """A training loop that watches every K-th step must not keep every recording alive: once the caller drops
    the recording, its calls, reports and tensors are freed by the collector (a cycle through autograd's C++ graph
    would be invisible to gc and live for good: the report's states were once stacked from the Function's own
    output y, so they had a grad_fn leading back to the node that holds the call)."""
    import gc
    import weakref

    torch.manual_seed(0)
    rnn = cell(3, 5, batch_first=True)
    x = torch.randn(4, 6, 3)
    lengths = torch.tensor([6, 3, 5, 1])
    calls, tensors = [], []
    for _ in range(3):
        with gx.watch(rnn) as rec:
            inputs = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False) if packed else x
            y, finals = rnn(inputs)
            (y.data if packed else y).square().sum().backward()
        call = rec.calls[0]
        assert not call.report.hidden_states.requires_grad and call.verdict()  # the report, as train() builds it
        calls.append(weakref.ref(call))
        tensors.append(weakref.ref(call.hidden_grad))
        del rec, call, y, finals, inputs  # (an output still held keeps its graph, and so its call, alive: that is fine)
    gc.collect()
    assert [c() for c in calls] == [None] * 3
    assert [t() for t in tensors] == [None] * 3


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@CUDA
@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_on_cuda_in_eval_mode_watch_gives_the_cpu_numbers_where_cudnn_refuses(cell) -> None:
    """Requirement 3: on CUDA, in eval mode, cuDNN's own RNN backward refuses ("can only be called in training
    mode"); inside watch the backward is the adjoint, so it runs, and gives the CPU's numbers (float32: the fused
    kernels differ in rounding only)."""
    torch.manual_seed(0)
    cpu_model = cell(3, 8, num_layers=2, batch_first=True, bidirectional=True).eval()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x = torch.randn(4, 7, 3)
    with pytest.raises(RuntimeError, match="training mode"):  # what users hit without watch
        gpu_model(x.cuda())[0].sum().backward()
    gpu_model.zero_grad()
    results = []
    for model, device in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        inputs = x.to(device).requires_grad_(True)
        with gx.watch(model) as rec:
            model(inputs)[0][:, -1].square().sum().backward()
        call = rec.calls[0]
        assert call.report.device.startswith(device)
        results.append((call.hidden_grad.cpu(), inputs.grad.cpu(), {n: g.cpu() for n, g in grads_of(model).items()}))
    (h_cpu, x_cpu, p_cpu), (h_gpu, x_gpu, p_gpu) = results
    assert_close(h_gpu, h_cpu, 1e-4)
    assert_close(x_gpu, x_cpu, 1e-4)
    assert_same_grads(p_cpu, p_gpu, 1e-4)
