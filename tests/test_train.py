"""Training on long-memory tasks (`gru_explainer.tasks`, `gru_explainer.train`): the generators, learning at the
default config, snapshot gradients against an independent autograd computation, determinism, limits and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from gru_explainer import ConfigError
from gru_explainer.state_dict import load_state_dict, pick_module
from gru_explainer.tasks import (
    COPY_LENGTH,
    SYMBOLS,
    TASKS,
    make_batch,
    task_accuracy,
    task_loss,
    task_spec,
)
from gru_explainer.train import (
    SNAPSHOT_COLUMNS,
    TrainConfig,
    TrainLimits,
    build_model,
    first_step_below,
    input_profile,
    train,
)

LEARNED_FRACTION = 0.05
"""The default LSTM (adding problem, T = 50, seed 0) ends below this fraction of the chance loss (measured: ~1 %)."""


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread, as the app runs (the curves are deterministic for a fixed thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def default_lstm():
    """The default run: LSTM on the adding problem at T = 50 (the page's first cell)."""
    return train(TrainConfig())


# --- Tasks -----------------------------------------------------------------------------------------------------------


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_adding_target_is_the_sum_of_the_two_marked_numbers() -> None:
    batch = make_batch("adding", 256, 30, _gen())
    values, markers = batch.x[..., 0], batch.x[..., 1]
    assert batch.x.shape == (256, 30, 2)
    assert torch.equal(markers.sum(dim=1), torch.full((256,), 2.0))
    assert bool(markers[:, :15].sum(dim=1).eq(1).all()) and bool(markers[:, 15:].sum(dim=1).eq(1).all())
    assert torch.equal(batch.relevant, markers.bool())
    first, second = markers.argmax(dim=1), markers.flip(1).argmax(dim=1).neg() + 29  # the two marked steps
    items = torch.arange(256)
    expected = values[items, first] + values[items, second]
    torch.testing.assert_close(batch.target, expected, rtol=0, atol=1e-6)
    assert float(values.min()) >= 0 and float(values.max()) < 1


def test_copy_target_is_the_first_k_symbols_and_the_delay_is_blank() -> None:
    batch = make_batch("copy", 64, 12, _gen(1))
    assert batch.x.shape == (64, 12, SYMBOLS + 1)
    assert torch.equal(batch.x[:, :COPY_LENGTH, :SYMBOLS].argmax(-1), batch.target)
    assert torch.equal(batch.x[:, :COPY_LENGTH].sum(-1), torch.ones(64, COPY_LENGTH))
    assert bool((batch.x[:, COPY_LENGTH:, SYMBOLS] == 1).all()) and not batch.x[:, COPY_LENGTH:, :SYMBOLS].any()
    assert batch.relevant[:, :COPY_LENGTH].all() and not batch.relevant[:, COPY_LENGTH:].any()


def test_marked_recall_target_is_the_symbol_at_the_marked_step() -> None:
    batch = make_batch("marked_recall", 128, 20, _gen(2))
    markers = batch.x[..., SYMBOLS]
    assert torch.equal(markers.sum(dim=1), torch.ones(128))
    assert not markers[:, -1].any()  # never the read step itself
    marked = markers.argmax(dim=1)
    assert torch.equal(batch.target, batch.x[torch.arange(128), marked, :SYMBOLS].argmax(-1))
    assert torch.equal(batch.relevant, markers.bool())
    assert len(set(marked.tolist())) > 5  # chosen per example


@pytest.mark.parametrize("task", TASKS)
def test_batches_come_from_the_generator_only(task: str) -> None:
    torch.manual_seed(123)
    a = make_batch(task, 8, 10, _gen(5))
    torch.manual_seed(456)
    b = make_batch(task, 8, 10, _gen(5))
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target) and torch.equal(a.relevant, b.relevant)


def test_chance_levels_are_the_best_constant_predictions() -> None:
    big = make_batch("adding", 200_000, 10, _gen(3))
    constant = torch.ones(200_000, 1)
    assert task_loss("adding", constant, big.target).item() == pytest.approx(1 / 6, rel=0.02)
    assert task_accuracy("adding", constant, big.target) == pytest.approx(task_spec("adding", 10).chance_accuracy,
                                                                          abs=0.005)
    for task in ("copy", "marked_recall"):
        spec = task_spec(task, 10)
        batch = make_batch(task, 64, 10, _gen(4))
        uniform = torch.zeros(64, spec.output_size)
        assert task_loss(task, uniform, batch.target).item() == pytest.approx(spec.chance_loss, rel=1e-6)
        assert spec.chance_loss == pytest.approx(math.log(SYMBOLS))


@pytest.mark.parametrize(("task", "seq_len", "message"), [
    ("nope", 10, "task must be one of"), ("copy", COPY_LENGTH, "seq_len must be an integer >= 4"),
    ("adding", 1, "seq_len must be an integer >= 2")])
def test_task_errors_name_the_field(task: str, seq_len: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        task_spec(task, seq_len)


# --- Training --------------------------------------------------------------------------------------------------------


def test_default_lstm_learns_the_adding_problem_at_t50(default_lstm) -> None:
    result = default_lstm
    chance = result.task.chance_loss
    assert result.config.seq_len == 50 and result.config.cell == "lstm" and result.config.task == "adding"
    assert result.final["loss"] < LEARNED_FRACTION * chance
    assert result.history["loss"].tail(20).mean() < LEARNED_FRACTION * chance
    assert result.summary["loss"].iloc[0] > chance  # it starts above chance
    assert first_step_below(result.history, LEARNED_FRACTION * chance, 20) is not None
    # After training the input gradient concentrates on the 2 marked positions (4 % of them).
    assert result.final["relevant_fraction"] == pytest.approx(2 / 50)
    assert result.final["relevant_share"] > 0.4 > result.summary["relevant_share"].iloc[0]


def test_result_tables(default_lstm) -> None:
    result = default_lstm
    cfg = result.config
    assert list(result.history["step"]) == list(range(cfg.steps))
    assert list(result.summary["step"]) == cfg.snapshot_steps == [*range(0, cfg.steps, cfg.snapshot_every), cfg.steps]
    assert tuple(result.snapshots.columns) == SNAPSHOT_COLUMNS
    counts = result.snapshots.groupby("quantity").size()
    assert dict(counts) == {q: len(cfg.snapshot_steps) * cfg.seq_len for q in ("hidden_state", "cell_state", "input")}
    hidden = result.snapshots[result.snapshots["quantity"] == "hidden_state"]
    assert (hidden["distance"] == cfg.seq_len - 1 - hidden["t"]).all()
    assert np.isfinite(hidden["log10_norm"]).all()
    json.dumps(result.summary_dict(), allow_nan=False)


def _unrolled_reference(result, dtype=torch.float64):
    """‖dL/dh_t‖, ‖dL/dc_t‖ per layer and step and ‖dL/dx_{b,t}‖ by plain autograd through nn.*Cell modules that
    share the trained weights, on the final snapshot's batch (independent of watch and the adjoint)."""
    cfg, state = result.config, result.state_dict
    batch = result.probe
    x = batch.x.to(dtype).clone().requires_grad_(True)
    size, layers = cfg.hidden_size, cfg.num_layers
    steps = x.shape[1]
    inputs = [x[:, t] for t in range(steps)]
    hs, cs = [], []
    for layer in range(layers):
        in_size = inputs[0].shape[-1]
        if cfg.cell == "lstm":
            cell = nn.LSTMCell(in_size, size, dtype=dtype)
        elif cfg.cell == "gru":
            cell = nn.GRUCell(in_size, size, dtype=dtype)
        else:
            cell = nn.RNNCell(in_size, size, nonlinearity="tanh", dtype=dtype)
        with torch.no_grad():
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, kind).copy_(state[f"rnn.{kind}_l{layer}"].to(dtype))
        h = torch.zeros(x.shape[0], size, dtype=dtype)
        c = torch.zeros_like(h)
        layer_h, layer_c = [], []
        for t in range(steps):
            if cfg.cell == "lstm":
                h, c = cell(inputs[t], (h, c))
                c.retain_grad()
                layer_c.append(c)
            else:
                h = cell(inputs[t], h)
            h.retain_grad()
            layer_h.append(h)
        hs.append(layer_h)
        cs.append(layer_c)
        inputs = layer_h
    head = nn.Linear(size, result.task.output_size, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(state["head.weight"].to(dtype))
        head.bias.copy_(state["head.bias"].to(dtype))
    target = batch.target.to(dtype) if cfg.task == "adding" else batch.target
    task_loss(cfg.task, head(hs[-1][-1]), target).backward()
    hidden = np.array([[float(h.grad.norm()) for h in layer_h] for layer_h in hs])
    cell_norms = np.array([[float(c.grad.norm()) for c in layer_c] for layer_c in cs]) if cfg.cell == "lstm" else None
    return hidden, cell_norms, x.grad.norm(dim=-1)


def _final_norms(result, quantity: str) -> np.ndarray:
    rows = result.snapshots[(result.snapshots["step"] == result.config.steps)
                            & (result.snapshots["quantity"] == quantity)]
    rows = rows.sort_values(["layer", "t"])
    return (10.0 ** rows["log10_norm"].to_numpy()).reshape(result.config.num_layers, result.config.seq_len)


def _check_against_reference(result) -> None:
    hidden, cell_norms, input_norms = _unrolled_reference(result)
    np.testing.assert_allclose(_final_norms(result, "hidden_state"), hidden, rtol=2e-3)
    if cell_norms is not None:
        np.testing.assert_allclose(_final_norms(result, "cell_state"), cell_norms, rtol=2e-3)
    inputs = result.snapshots[(result.snapshots["step"] == result.config.steps)
                              & (result.snapshots["quantity"] == "input")].sort_values("t")
    np.testing.assert_allclose(10.0 ** inputs["log10_norm"].to_numpy(), input_norms.norm(dim=0).numpy(), rtol=2e-3)
    profile, totals = input_profile(torch.log10(input_norms), result.probe.relevant)
    assert totals["relevant_share"] == pytest.approx(result.final["relevant_share"], rel=2e-3)
    final_inputs = result.inputs[result.inputs["step"] == result.config.steps].reset_index(drop=True)
    np.testing.assert_allclose(final_inputs["relevant_log10"], profile["relevant_log10"], atol=1e-3)


def test_snapshot_gradients_equal_plain_autograd_on_the_trained_lstm(default_lstm) -> None:
    _check_against_reference(default_lstm)


@pytest.mark.parametrize(("cell", "task", "layers"), [("gru", "copy", 2), ("rnn_tanh", "marked_recall", 1)])
def test_snapshot_gradients_equal_plain_autograd(cell: str, task: str, layers: int) -> None:
    result = train(TrainConfig(task=task, cell=cell, num_layers=layers, hidden_size=12, seq_len=14, steps=25,
                               batch_size=16, snapshot_every=5))
    _check_against_reference(result)


def test_input_profile_splits_relevant_and_irrelevant_mass() -> None:
    log10 = torch.tensor([[0.0, -1.0, -300.0], [-2.0, float("-inf"), 1.0]])
    relevant = torch.tensor([[True, False, False], [False, False, True]])
    rows, totals = input_profile(log10, relevant)
    assert totals["relevant_share"] == pytest.approx(11 / (11 + 0.1 + 0.01 + 1e-300))
    assert totals["relevant_fraction"] == pytest.approx(2 / 6)
    assert list(rows["relevant_items"]) == [1, 0, 1] and list(rows["irrelevant_items"]) == [1, 2, 1]
    assert rows["relevant_log10"].iloc[0] == pytest.approx(0.0) and math.isnan(rows["relevant_log10"].iloc[1])
    assert rows["irrelevant_log10"].iloc[1] == pytest.approx(-1 - math.log10(2))  # mean of 0.1 and an exact 0
    assert rows["irrelevant_log10"].iloc[2] == pytest.approx(-300.0)  # true magnitude far below float32


def test_same_config_gives_identical_curves_and_cells_share_the_batches() -> None:
    cfg = TrainConfig(hidden_size=8, seq_len=12, steps=30, batch_size=8, snapshot_every=10)
    a, b = train(cfg), train(cfg)
    pd.testing.assert_frame_equal(a.history, b.history)
    pd.testing.assert_frame_equal(a.snapshots, b.snapshots)
    pd.testing.assert_frame_equal(a.summary, b.summary)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    other = train(cfg.replace(cell="gru"))
    assert torch.equal(other.probe.x, a.probe.x) and torch.equal(other.probe.target, a.probe.target)
    assert not train(cfg.replace(seed=1)).history["loss"].equals(a.history["loss"])


def test_snapshots_do_not_change_training() -> None:
    """watch's backward returns autograd's parameter gradients: snapshotting every step trains like never."""
    cfg = TrainConfig(hidden_size=8, seq_len=12, steps=12, batch_size=8)
    every = train(cfg.replace(snapshot_every=1))
    rarely = train(cfg.replace(snapshot_every=12))
    np.testing.assert_allclose(every.history["loss"], rarely.history["loss"], rtol=1e-4)


def test_progress_reports_fractions_up_to_one() -> None:
    seen: list[float] = []
    train(TrainConfig(hidden_size=4, seq_len=6, steps=10, batch_size=4, snapshot_every=5),
          progress=lambda fraction, message: seen.append(fraction))
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1


@pytest.mark.parametrize(("changes", "message"), [
    ({"steps": 0}, "steps must be between 1 and"),
    ({"cell": "rnn_relu"}, "cell must be one of gru, lstm, rnn_tanh"),
    ({"task": "copy", "seq_len": 3}, "seq_len must be between 4 and"),
    ({"hidden_size": 129}, "hidden_size must be between 1 and 128"),
    ({"lr": 0.0}, "lr must be a number > 0"),
    ({"lr": float("nan")}, "lr must be a number"),
    ({"clip_norm": -1.0}, "clip_norm must be a number >= 0"),
    ({"batch_size": True}, "batch_size must be an integer"),
    ({"steps": 3000, "snapshot_every": 10}, "snapshot_every must be at least 50"),
    ({"steps": 3000, "batch_size": 128, "seq_len": 100, "snapshot_every": 50},
     "steps × batch_size × seq_len × hidden_size × num_layers must be at most 100,000,000"),
    ({"steps": 2000, "batch_size": 8, "hidden_size": 8, "snapshot_every": 40},
     "steps × seq_len × num_layers must be at most 80,000"),
])
def test_limits_and_bad_fields_are_refused_before_any_work(monkeypatch, changes: dict, message: str) -> None:
    import gru_explainer.train as module

    monkeypatch.setattr(module, "build_model", lambda *a: pytest.fail("built a model for an invalid config"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        train(TrainConfig(**changes), TrainLimits())


def test_local_limits_allow_more() -> None:
    TrainConfig(steps=3000, batch_size=128, seq_len=100, snapshot_every=30).validate(TrainLimits.local())
    TrainConfig().validate(TrainLimits())  # the defaults fit the hosted limits
    TrainConfig(steps=1600, snapshot_every=40, hidden_size=16).validate(TrainLimits())


def test_state_dict_loads_on_the_your_model_path(default_lstm, tmp_path) -> None:
    data = default_lstm.state_dict_bytes()
    state = load_state_dict(data, "model.pt")
    spec = pick_module(state, None, "model.pt")
    assert (spec.prefix, spec.cell, spec.num_layers, spec.input_size, spec.hidden_size) == ("rnn.", "lstm", 1, 2, 32)
    model = default_lstm.model()
    with torch.no_grad():
        again = model(default_lstm.probe.x)
    assert task_loss("adding", again, default_lstm.probe.target).item() == pytest.approx(default_lstm.final["loss"],
                                                                                         rel=1e-5)


# --- CLI -------------------------------------------------------------------------------------------------------------


def test_cli_train_writes_its_files_and_explain_loads_the_model(tmp_path, capsys) -> None:
    from gru_explainer.cli import main

    out = tmp_path / "run"
    assert main(["train", "--cell", "gru", "--task", "marked_recall", "--steps", "20", "--seq-len", "10",
                 "--hidden-size", "8", "--batch-size", "8", "--snapshot-every", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained GRU on recall the marked symbol" in printed
    names = {p.name for p in out.iterdir()}
    assert names == {"history.csv", "snapshots.csv", "inputs.csv", "summary.csv", "summary.json", "model.pt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["cell"] == "gru" and summary["final"]["step"] == 20 and summary["snapshots"] == 5
    history = pd.read_csv(out / "history.csv")
    assert list(history["step"]) == list(range(20))
    snapshots = pd.read_csv(out / "snapshots.csv", keep_default_na=False)
    assert set(snapshots["quantity"]) == {"hidden_state", "input"} and sorted(set(snapshots["step"])) == [0, 5, 10,
                                                                                                          15, 20]
    explained = tmp_path / "explained"
    assert main(["explain", "--state-dict", str(out / "model.pt"), "--no-images", "--quiet", "--out",
                 str(explained)]) == 0
    report = json.loads((explained / "report.json").read_text())
    assert report["model"]["prefix"] == "rnn." and report["model"]["hidden_size"] == 8


@pytest.mark.parametrize(("argv", "option"), [
    (["--steps", "0"], "--steps"), (["--lr", "-1"], "--lr"), (["--cell", "rnn_relu"], "--cell"),
    (["--task", "copy", "--seq-len", "3"], "--seq-len"), (["--hidden-size", "x"], "--hidden-size"),
    (["--steps", "3000", "--batch-size", "128", "--seq-len", "100", "--snapshot-every", "50"], "training-time limit"),
])
def test_cli_train_bad_options_exit_2_naming_the_option(tmp_path, capsys, argv: list[str], option: str) -> None:
    from gru_explainer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv, "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_adam_takes_the_same_steps_as_torch_optim_adam() -> None:
    """train's own Adam (torch.optim's first use imports torch._dynamo) gives torch.optim.Adam's numbers exactly,
    also with clipping and a parameter that gets no gradient."""
    from gru_explainer.train import Adam

    cfg = TrainConfig(cell="lstm", steps=5)
    spec = task_spec(cfg.task, cfg.seq_len)
    ours, theirs = build_model(cfg, spec), build_model(cfg, spec)
    frozen = "rnn.bias_hh_l0"
    ours_opt = Adam(list(ours.parameters()), lr=0.03)
    theirs_opt = torch.optim.Adam(list(theirs.parameters()), lr=0.03)
    data = torch.Generator().manual_seed(0)
    for _ in range(6):
        batch = make_batch(cfg.task, 16, cfg.seq_len, data)
        for model, opt in ((ours, ours_opt), (theirs, theirs_opt)):
            opt.zero_grad()
            task_loss(cfg.task, model(batch.x), batch.target).backward()
            dict(model.named_parameters())[frozen].grad = None
            torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_training_does_not_import_torch_dynamo() -> None:
    """A fresh process trains without importing torch._dynamo (2.4 s and 67 MiB on a cold server)."""
    code = ("import sys; from gru_explainer.train import TrainConfig, train; "
            "train(TrainConfig(steps=3, snapshot_every=1)); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


@pytest.mark.parametrize("cell", ["lstm", "rnn_tanh"])
def test_benchmark_floor_snapshot_does_the_real_work(cell: str) -> None:
    """benchmarks.train's floor (the bare adjoint a snapshot cannot do less than) gives autograd's parameter
    gradients, so the lower bound it times is a real one."""
    from benchmarks.train import bare_snapshot

    cfg = TrainConfig(cell=cell, seq_len=30, hidden_size=16, batch_size=8)
    spec = task_spec(cfg.task, cfg.seq_len)
    model = build_model(cfg, spec)
    batch = make_batch(cfg.task, cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(0))
    task_loss(cfg.task, model(batch.x), batch.target).backward()
    expected = {name: param.grad.clone() for name, param in model.named_parameters()}
    for param in model.parameters():
        param.grad = None
    bare_snapshot(model, cfg, batch)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6)
