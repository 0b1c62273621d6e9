"""The verdict's facts, each checked against an independent computation: perturbations through PyTorch's cell
modules (tests/reference.py), plain autograd on the fused module, float64 runs; and the words rendered from them."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from gru_explainer import ExplainConfig, Limits, explain
from gru_explainer.models import build
from gru_explainer.target import parse_target
from gru_explainer.verdict import STRUCTURAL_CAUSES, Fact, format_steps

from .reference import float64_autograd_on, float64_tanh_rnn_grads_at_states, reference_outputs

LOCAL = Limits.local()
CPU = torch.device("cpu")


def small(cell: str = "gru", **kw) -> ExplainConfig:
    base = dict(cell=cell, num_layers=2, input_size=3, hidden_size=5, seq_len=8, batch_size=2, dtype="float64", seed=4)
    base.update(kw)
    return ExplainConfig(**base)


# ~20 configs: every case quoted in the issue, plus reads that differ per batch item, heads, both directions.
CONFIGS = {
    "h_n of layer 0 in a 3-layer GRU": small(num_layers=3, target="h_n[0].sum()"),
    "h_n[1] bidirectional": small(bidirectional=True, target="h_n[1].sum()"),
    "reverse half of y[:, -1]": small(bidirectional=True, target="y[:, -1, 5:].sum()"),
    "LSTM c_n of layer 0": small("lstm", target="c_n[0].sum()"),
    "LSTM bidirectional y[:, 3]": small("lstm", bidirectional=True, target="y[:, 3].sum()"),
    "3-layer bidirectional single element": small(num_layers=3, bidirectional=True, target="y[1, 2, 0]"),
    "reads differ per batch item": small("rnn_tanh", target="y[0, 3].sum() + y[1, 5].sum()"),
    "reverse read at t = 0": small("rnn_tanh", bidirectional=True, target="y[:, 0].sum()"),
    "h_n of the top layer, LSTM": small("lstm", num_layers=3, target="h_n[-1].sum() + c_n[-1].mean()"),
    "cancellation": small(target="y[:, -1].sum() - y[:, -1].sum()"),
    "constant by a zero factor": small(num_layers=1, target="0 * y[:, 2].sum()"),
    "zero factor": small(num_layers=1, target="0 * y[:, 2].sum() + y[:, 5].sum()"),
    "head with a zero factor": small(head="linear", head_size=5, target="out[:, 2].sum() * 0 + out[:, 3].sum()"),
    "head reading one feature": small(head="linear", head_size=5, target="out[:, 2].sum()"),
    "head and y": small(head="linear", head_size=3, target="out.sum() + y[:, 1].sum()"),
    "seed MyModel": ExplainConfig.preset("seed-mymodel").replace(dtype="float64"),
    "seed SecondModel": ExplainConfig.preset("seed-secondmodel").replace(dtype="float64"),
    "seed answer GRU": ExplainConfig.preset("seed-answer-gru").replace(dtype="float64"),
    "dead ReLU": ExplainConfig(cell="rnn_relu", num_layers=1, hidden_size=2, input_size=1, batch_size=1, seq_len=12,
                               seed=0, dtype="float64", target="y[:, -1].sum()"),
    "dead ReLU, 2 layers": ExplainConfig(cell="rnn_relu", num_layers=2, hidden_size=2, batch_size=1, seq_len=12,
                                         seed=0, dtype="float64", target="y[:, -1].sum()"),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    cfg = CONFIGS[request.param]
    report = explain(cfg)
    return request.param, cfg, report, report.facts()


def _target_with(report, perturb: dict) -> float:
    named = reference_outputs(report.module, report.inputs, perturb)
    if report.head is not None:
        named["out"] = report.head(named["y"])
    return parse_target(report.config.target).evaluate(named).item()


def _perturbation(report, kind: str, layer: int, direction: int, steps, scale: float, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    cfg = report.config
    return {(kind, layer, direction, t): scale * torch.randn(cfg.batch_size, cfg.hidden_size, generator=gen,
                                                             dtype=torch.float64) for t in steps}


def test_structural_facts_no_perturbation_of_those_states_changes_the_target(case) -> None:
    name, cfg, report, items = case
    if cfg.cell == "answer_gru":
        pytest.skip("the answer's GRU is not an nn.RNNBase (reference_outputs needs one); its states are graph nodes")
    base = _target_with(report, {})
    checked = 0
    with torch.no_grad():
        for fact in items:
            if fact.kind != "structural":
                continue
            kind = "h" if fact.quantity == "hidden_state" else "c"
            d = 0 if fact.direction == "forward" else 1
            perturbed = _target_with(report, _perturbation(report, kind, fact.layer, d, fact.steps, 0.3))
            assert perturbed == base, (name, fact)  # exactly: no path, so not one bit changes
            assert fact.cause in STRUCTURAL_CAUSES
            checked += 1
            constant = any(f.cause == "target_constant" for f in items)
            if fact.cause in ("after_last_read", "before_first_read") and not constant:  # the edge step IS read
                edge = fact.numbers["last_read" if fact.cause == "after_last_read" else "first_read"]
                moved = any(_target_with(report, _perturbation(report, k, fact.layer, d, [edge], 0.3)) != base
                            for k in (("h", "c") if cfg.cell == "lstm" else ("h",)))
                assert moved, (name, fact)
            if fact.cause == "not_read":  # the whole layer and direction: every step, h and c
                assert fact.steps == tuple(range(cfg.seq_len))
                if cfg.cell == "lstm":
                    assert _target_with(report, _perturbation(report, "c", fact.layer, d, fact.steps, 0.3)) == base
    structural_rows = report.frame[report.frame.structurally_zero & report.frame.quantity.isin(
        ["hidden_state", "cell_state"])]
    assert checked > 0 or structural_rows.empty


def test_carried_facts_match_finite_differences(case) -> None:
    name, cfg, report, items = case
    if cfg.cell == "answer_gru":
        pytest.skip("see above")
    target_changes = False
    with torch.no_grad():
        for fact in items:
            if fact.kind != "carried" or fact.quantity != "hidden_state":
                continue
            d = 0 if fact.direction == "forward" else 1
            rows = report.frame.query(f"quantity == 'hidden_state' and layer == {fact.layer} and "
                                      f"direction == '{fact.direction}'")
            assert fact.steps == tuple(int(t) for t in rows.t[rows.norm > 0])  # float64: nothing underflows here
            for t in fact.steps[:: max(1, len(fact.steps) // 3)]:
                v = _perturbation(report, "h", fact.layer, d, [t], 1.0, seed=t)[("h", fact.layer, d, t)]
                eps = 1e-6
                plus = _target_with(report, {("h", fact.layer, d, t): eps * v})
                minus = _target_with(report, {("h", fact.layer, d, t): -eps * v})
                numeric = (plus - minus) / (2 * eps)
                analytic = (report.hidden_grad[fact.layer, d, :, t] * v).sum().item()
                assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-9), (name, fact.layer, t)
                target_changes = True
    constant = any(f.cause == "target_constant" for f in items)
    assert target_changes or constant or not any(f.kind == "carried" and f.steps for f in items)


def test_stacked_and_head_facts_match_plain_autograd_on_the_fused_module(case) -> None:
    name, cfg, report, items = case
    if cfg.cell == "answer_gru":
        y, _ = report.module(report.inputs)
        named = {"y": y}
    else:
        built = build(cfg, CPU)
        y, finals = built.module(built.inputs)
        named = {"y": y, "h_n": finals[0] if cfg.cell == "lstm" else finals}
        if cfg.cell == "lstm":
            named["c_n"] = finals[1]
        if built.head is not None:
            named["out"] = built.head(y)
    for tensor in named.values():
        tensor.retain_grad()
    parse_target(cfg.target).evaluate(named).backward()
    y_grad = y.grad if y.grad is not None else torch.zeros_like(y)
    stacked = next(f for f in items if f.kind == "stacked_output")
    assert stacked.steps == tuple(t for t in range(cfg.seq_len) if y_grad[:, t].any())
    assert stacked.numbers["zero_steps"] == tuple(t for t in range(cfg.seq_len) if not y_grad[:, t].any())
    assert set(stacked.steps) <= set(stacked.numbers["read_steps"]) | set(stacked.numbers["head_steps"])
    head = [f for f in items if f.kind == "head"]
    assert bool(head) == (cfg.head == "linear")
    if head:
        out_grad = named["out"].grad
        zero = {f for f in range(cfg.head_size) if not out_grad[:, f].any()}
        assert zero == set(head[0].numbers["zero_not_read"]) | set(head[0].numbers["zero_read"])


def test_input_facts_perturbing_an_input_that_cannot_matter_changes_nothing(case) -> None:
    name, cfg, report, items = case
    fact = next(f for f in items if f.kind == "inputs")
    assert set(fact.steps) | set(fact.numbers["cannot_matter"]) == set(range(cfg.seq_len))
    if not fact.numbers["cannot_matter"]:
        return
    x = report.inputs.clone()
    x[:, list(fact.numbers["cannot_matter"])] += 0.5

    def target_at(inputs: torch.Tensor) -> float:
        with torch.no_grad():
            if cfg.cell == "answer_gru":
                y, hs = report.module(inputs)
                named = {"y": y, "h_n": hs[-1].unsqueeze(0)}
            else:
                named = reference_outputs(report.module, inputs)
            if report.head is not None:
                named["out"] = report.head(named["y"])
            return parse_target(cfg.target).evaluate(named).item()

    assert target_at(x) == target_at(report.inputs)  # exactly


# --- Specific causes ------------------------------------------------------------------------------------------------


def facts_of(name: str) -> list[Fact]:
    return explain(CONFIGS[name]).facts()


def test_layers_the_target_does_not_read_are_called_not_read_never_causality() -> None:
    items = facts_of("h_n of layer 0 in a 3-layer GRU")
    causes = {(f.layer, f.cause) for f in items if f.kind == "structural"}
    assert causes == {(1, "not_read"), (2, "not_read")}
    text = explain(CONFIGS["h_n of layer 0 in a 3-layer GRU"]).verdict()
    assert "causality" not in text.split("layer 1 forward")[1].split("\n")[0]
    assert "reads nothing of this layer and direction" in text
    both = {(f.layer, f.direction, f.cause) for f in facts_of("h_n[1] bidirectional") if f.kind == "structural"}
    assert both == {(0, "forward", "not_read"), (1, "forward", "not_read"), (1, "reverse", "not_read")}
    half = {(f.layer, f.direction, f.cause) for f in facts_of("reverse half of y[:, -1]") if f.kind == "structural"}
    assert (1, "forward", "not_read") in half and (1, "reverse", "before_first_read") in half


def test_lstm_c_n_read_step_is_cell_only_for_h() -> None:
    items = facts_of("LSTM c_n of layer 0")
    cell_only = [f for f in items if f.kind == "structural" and f.cause == "cell_only"]
    assert [(f.quantity, f.layer, f.steps) for f in cell_only] == [("hidden_state", 0, (7,))]
    assert "reads the cell state c_t there, not h_t" in explain(CONFIGS["LSTM c_n of layer 0"]).verdict()


def test_dead_relu_is_a_zero_local_derivative_at_a_step_whose_units_are_all_off() -> None:
    cfg = CONFIGS["dead ReLU"]
    report = explain(cfg)
    blocked = [f for f in report.facts() if f.kind == "zero_on_path" and f.cause == "zero_local_derivative"]
    assert blocked and all(f.numbers["dead_relu"] for f in blocked)
    built = build(cfg, CPU)
    with torch.no_grad():
        states = built.module(built.inputs)[0][0]  # plain nn.RNN forward: [T, H]
    for fact in blocked:
        assert (states[fact.numbers["blocked_at"]] <= 0).all()
        # A small perturbation of the blocked states changes nothing; a large one does: the path exists.
        with torch.no_grad():
            base = _target_with(report, {})
            assert _target_with(report, _perturbation(report, "h", 0, 0, fact.steps, 1e-6)) == base
            assert _target_with(report, _perturbation(report, "h", 0, 0, fact.steps[-1:], 50.0)) != base
    text = report.verdict()
    assert "dead ReLU units" in text and "Underflow" not in text


def test_cancellation_and_zero_factors_are_named() -> None:
    items = facts_of("cancellation")
    on_path = [f for f in items if f.kind == "zero_on_path"]
    assert on_path and {f.cause for f in on_path} == {"target_constant"}
    assert not any(f.kind == "underflow" for f in items)
    factor = [f for f in facts_of("zero factor") if f.kind == "zero_on_path"]
    assert [(f.quantity, f.steps, f.cause) for f in factor] == [("stacked_output", (2,), "zero_factor")]
    constant = [f for f in facts_of("constant by a zero factor") if f.kind == "zero_on_path"]
    assert constant and {f.cause for f in constant} == {"target_constant"}
    head = next(f for f in facts_of("head with a zero factor") if f.kind == "head")
    assert head.numbers["read"] == (2, 3) and head.numbers["zero_read"] == (2,)
    assert head.numbers["zero_not_read"] == (0, 1, 4) and not head.numbers["seed_mymodel_pattern"]


def test_the_seed_mymodel_pattern_is_claimed_only_for_it() -> None:
    assert next(f for f in facts_of("seed MyModel") if f.kind == "head").numbers["seed_mymodel_pattern"]
    one = next(f for f in facts_of("head reading one feature") if f.kind == "head")
    assert not one.numbers["seed_mymodel_pattern"]
    assert "MyModel" not in explain(CONFIGS["head reading one feature"]).verdict()


def test_head_configs_read_y_only_through_the_head() -> None:
    stacked = next(f for f in facts_of("seed MyModel") if f.kind == "stacked_output")
    assert stacked.numbers["read_steps"] == () and stacked.numbers["head_steps"] == (9,)
    text = explain(CONFIGS["seed MyModel"]).verdict()
    assert "reads y only through the head" in text and "reads y directly" not in text
    both = next(f for f in facts_of("head and y") if f.kind == "stacked_output")
    assert both.numbers["read_steps"] == (1,) and both.numbers["head_steps"] == (7,)


def test_recurrence_fact_names_the_engine_truthfully() -> None:
    answer = next(f for f in facts_of("seed answer GRU") if f.kind == "recurrence")
    assert answer.cause == "graph_nodes"
    text = explain(CONFIGS["seed answer GRU"]).verdict()
    assert "nothing is recomputed" in text and "recomputes them" not in text
    assert "lower layer" not in text  # one layer: no claim about layers above
    fused = next(f for f in facts_of("seed SecondModel") if f.kind == "recurrence")
    assert fused.cause == "fused"


@contextlib.contextmanager
def flushing(on: bool):
    torch.set_flush_denormal(on)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def test_underflow_fact_true_magnitude_matches_float64_and_names_the_flush() -> None:
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, input_size=4, hidden_size=16, seq_len=400, batch_size=2,
                        dtype="float32", seed=1, target="y[:, -1].sum()")
    with flushing(True):
        report = explain(cfg, limits=LOCAL)
    if not report.flush_denormal:
        pytest.skip("this CPU cannot flush denormals")
    fact = next(f for f in report.facts() if f.kind == "underflow" and f.quantity == "hidden_state")
    ref = float64_autograd_on(report)["hidden"][0, 0]  # float64 autograd on the same weights: these are normal
    ref_norms = ref.transpose(0, 1).flatten(1).norm(dim=1)  # [T]
    assert fact.numbers["min_log10_norm"] == pytest.approx(math.log10(ref_norms.min()), abs=0.01)
    # Every step float32 shows as 0 is far below FLT_MIN in float64 (flushing zeroes denormals as well).
    assert all(ref_norms[t] < torch.finfo(torch.float32).tiny * 100 for t in fact.steps)
    assert fact.numbers["flush_denormal"] is True
    assert "Flush-to-zero is on" in report.verdict()
    with flushing(False):
        quiet = explain(cfg, limits=LOCAL)
    assert "Flush-to-zero" not in quiet.verdict()


def test_exploding_runs_are_called_exploding_with_the_true_magnitude() -> None:
    cfg = ExplainConfig(cell="rnn_tanh", num_layers=1, hidden_size=64, input_size=6, seq_len=300, batch_size=2,
                        weight_scale=6.0, target="y[:, -1].sum()")
    report = explain(cfg, limits=LOCAL)
    exploding = [f for f in report.facts() if f.kind == "nonfinite"]
    assert exploding and {f.cause for f in exploding} == {"exploding"}
    ref = float64_tanh_rnn_grads_at_states(report)  # float64 autograd at the same (chaotic) states: no overflow
    ref_log10 = torch.log10(ref.transpose(0, 1).flatten(1).norm(dim=1))  # [T]
    top = next(f for f in exploding if f.quantity == "hidden_state").numbers["max_log10_norm"]
    assert top > math.log10(torch.finfo(torch.float32).max)
    assert top == pytest.approx(float(ref_log10.max()), abs=0.01)
    rows = report.frame.query("quantity == 'hidden_state'")
    assert (rows.log10_norm.to_numpy() - ref_log10.numpy()).__abs__().max() < 0.01
    text = report.verdict()
    assert "Exploding gradients" in text and "Underflow" not in text and "vanished" not in text


def test_relu_forward_overflow_is_non_finite_never_zero() -> None:
    cfg = ExplainConfig(cell="rnn_relu", num_layers=1, weight_scale=5.0, seq_len=200)
    report = explain(cfg)
    inputs = report.frame.query("quantity == 'input'")
    assert not inputs.exactly_zero.any()  # the old engine returned 1200/1200 zeros here
    kinds = {f.kind for f in report.facts()}
    assert {"forward_overflow", "nonfinite"} <= kinds
    assert "non-zero at no step" not in report.verdict()
    # Every inf/NaN gradient here is computed through the overflowed states (the target reads t = T-1): no true size
    # exists, so none is claimed (float64's forward stays finite: its largest ‖dL/dh_t‖ is 1e70, not the 1e81 the
    # rescaled numbers through inf states gave).
    nonfinite = [f for f in report.facts() if f.kind == "nonfinite"]
    assert {f.cause for f in nonfinite} == {"forward_overflow"}
    assert all(math.isnan(f.numbers["max_log10_norm"]) for f in nonfinite)
    assert "true norm up to" not in report.verdict() and "no true size is claimed" in report.verdict()


def test_states_without_a_true_size_are_carried_not_zero() -> None:
    """Two ReLU layers whose forward overflows: every gradient of layer 0 passes through inf/NaN states (no true
    size: NaN), yet none is zero; the verdict must not say "non-zero at no step" of it."""
    cfg = ExplainConfig(cell="rnn_relu", num_layers=2, weight_scale=5.0, seq_len=200)
    report = explain(cfg)
    rows = report.frame.query("quantity == 'hidden_state' and layer == 0")
    assert rows.log10_norm.isna().all() and not rows.exactly_zero.any()
    (carried,) = [f for f in report.facts() if f.kind == "carried" and f.layer == 0]
    assert carried.steps == tuple(range(cfg.seq_len))
    assert "**h_t, layer 0 forward**: the total derivative dL/dh_t is non-zero at t = 0–199" in report.verdict()
    assert "non-zero at no step" not in report.verdict()


def test_format_steps() -> None:
    assert format_steps([0, 1, 2, 5, 7, 8]) == "t = 0–2, 5, 7–8"
    assert format_steps([]) == "no step"


def test_float64_facts_with_flush_to_zero_on() -> None:
    """Flush-to-zero also zeroes float64 denormals (such as float64's smallest denormal): no fact may compute one."""
    cfg = ExplainConfig(dtype="float64", hidden_size=12, seq_len=6, seed=27, target="(y[:, -1] ** 2).mean()")
    with flushing(True):
        report = explain(cfg)
        text = report.verdict()
    assert text.startswith("**Target**") and "float64" in text
