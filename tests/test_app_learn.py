"""AppTest of the "Watch it learn" page: defaults, a changed cell, the snapshot slider, URL values good and bad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from gru_explainer.train import TrainConfig, train

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "learn.py")
SMALL = {"learn.steps": "40", "learn.T": "12", "learn.H": "8", "learn.batch": "8", "learn.every": "10"}
"""A small run (well under a second per cell) for the tests that are not about the defaults."""
CHARTS = 7  # learning curves (loss, accuracy), heatmap (2 cells), relevant share, snapshot profile (2 cells)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread, as app.py sets it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def _inline(node: object) -> list[pd.DataFrame]:
    """Every inline `data.values` table inside a Vega-Lite spec (facet panels carry their rows inline)."""
    found = []
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and isinstance(data.get("values"), list) and data["values"]:
            found.append(pd.DataFrame(data["values"]))
        for value in node.values():
            found += _inline(value)
    elif isinstance(node, list):
        for item in node:
            found += _inline(item)
    return found


def _datasets(at: AppTest) -> list[pd.DataFrame]:
    """The data of every chart on the page: named datasets (sent as Arrow) and inline values."""
    frames = []
    for chart in at.get("vega_lite_chart"):
        frames += [convert_arrow_bytes_to_pandas_df(d.data.data) for d in chart.proto.datasets]
        if chart.proto.HasField("data") and chart.proto.data.data:
            frames.append(convert_arrow_bytes_to_pandas_df(chart.proto.data.data))
        frames += _inline(json.loads(chart.proto.spec))
    return frames


def _with(at: AppTest, *columns: str) -> list[pd.DataFrame]:
    return [df for df in _datasets(at) if set(columns) <= set(df.columns)]


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _pct(value: float) -> str:
    return f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"


def test_defaults_train_two_cells_and_every_number_comes_from_the_runs() -> None:
    at = _run()
    assert not at.exception and not at.error
    assert len(at.get("vega_lite_chart")) == CHARTS
    metrics = _metrics(at)
    assert set(metrics) == {"LSTM: loss / chance", "LSTM: input gradient on relevant positions",
                            "RNN tanh: loss / chance", "RNN tanh: input gradient on relevant positions"}
    masses = pd.concat(_with(at, "relevant_share", "relevant_fraction"))
    for cell, label in (("lstm", "LSTM"), ("rnn_tanh", "RNN tanh")):
        final = masses[masses["cell"] == cell].sort_values("step").iloc[-1]
        assert final["step"] == TrainConfig().steps
        assert metrics[f"{label}: input gradient on relevant positions"] == _pct(final["relevant_share"])
    text = "\n".join(m.value for m in at.markdown)
    lstm_loss = float(metrics["LSTM: loss / chance"].rstrip("%")) / 100
    assert lstm_loss < 0.05 < float(metrics["RNN tanh: loss / chance"].rstrip("%")) / 100
    assert (f"Same task, seed and batches: LSTM ends at {metrics['LSTM: loss / chance']} of the chance loss and puts "
            f"{metrics['LSTM: input gradient on relevant positions']} of its input gradient on the 2 marked positions; "
            f"RNN tanh ends at {metrics['RNN tanh: loss / chance']}") in text
    assert f"{metrics['LSTM: input gradient on relevant positions']} of the input-gradient mass is on the 2 marked " \
           "positions (4.0% of the positions)" in text
    heat = pd.concat(_with(at, "distance", "log10", "status"))
    assert set(heat["cell"]) == {"lstm", "rnn_tanh"} and len(heat) == 2 * 21 * 50
    assert dict(at.query_params) == {}  # defaults are not written to the URL


def test_chart_data_equals_the_core_and_a_changed_cell_reruns() -> None:
    at = _run({**SMALL, "learn.compare": "gru"})
    assert not at.exception and not at.error
    cfg = TrainConfig(steps=40, seq_len=12, hidden_size=8, batch_size=8, snapshot_every=10)
    expected = {cell: train(cfg.replace(cell=cell)) for cell in ("lstm", "gru")}
    heat = pd.concat(_with(at, "distance", "log10", "status"))
    for cell, result in expected.items():
        got = heat[heat["cell"] == cell].sort_values(["step", "t"])
        want = result.snapshots[result.snapshots["quantity"] == "hidden_state"].sort_values(["step", "t"])
        np.testing.assert_allclose(got["log10"].astype(float), want["log10_norm"], rtol=1e-12)
    command = at.code[0].value  # the same run from the command line, with exactly the non-default settings
    assert command == ("python -m gru_explainer train --hidden-size 8 --seq-len 12 --steps 40 --batch-size 8 "
                       "--snapshot-every 10 --out run/")
    history = _with(at, "loss_smooth", "accuracy_smooth")[0]  # the loss panel's (the accuracy panel has the same)
    np.testing.assert_allclose(history[history["cell"] == "gru"]["loss"], expected["gru"].history["loss"])

    at.selectbox(key="learn.cell").select("rnn_tanh").run()
    assert not at.exception and not at.error
    assert at.query_params["learn.cell"] == "rnn_tanh" and at.query_params["learn.compare"] == "gru"
    assert {m.label.split(":")[0] for m in at.metric} == {"RNN tanh", "GRU"}
    at.select_slider(key="learn.snapshot").set_value(20).run()
    assert not at.exception
    assert at.query_params["learn.snapshot"] == "20"
    assert any("at step 20: loss" in c.value for c in at.caption)
    at.selectbox(key="learn.compare").select("none").run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 5  # one heatmap and one profile panel


def test_url_restores_the_settings() -> None:
    at = _run({**SMALL, "learn.task": "copy", "learn.cell": "gru", "learn.compare": "lstm", "learn.snapshot": "10",
               "learn.lr": "0.01"})
    assert not at.exception and not at.error and not at.warning
    assert at.selectbox(key="learn.task").value == "copy" and at.select_slider(key="learn.snapshot").value == 10
    assert at.number_input(key="learn.T").value == 12 and at.selectbox(key="learn.lr").value == "0.01"
    assert any("Recall the first 3 symbols" in m.value for m in at.markdown)


def test_bad_url_values_give_notices_not_exceptions() -> None:
    at = _run({**SMALL, "learn.T": "abc", "learn.cell": "foo", "learn.lr": "7", "learn.snapshot": "15",
               "learn.H": "100000", "learn.compare": "[x](https://example.com)"})
    assert not at.exception
    warnings = "\n".join(w.value for w in at.warning)
    for key in ("learn.T", "learn.cell", "learn.lr", "learn.H", "learn.compare", "learn.snapshot"):
        assert key in warnings, key
    assert "\\[x\\]" in warnings or "` '[x](" in warnings  # escaped or a code span: never a link
    assert len(at.get("vega_lite_chart")) == CHARTS  # the run went ahead with the defaults for those values


@pytest.mark.parametrize(("query", "message"), [
    ({"learn.task": "copy", "learn.T": "3"}, "seq_len must be between 4 and"),
    ({"learn.steps": "3000", "learn.batch": "128", "learn.T": "100", "learn.every": "50"}, "training-time limit"),
    ({"learn.steps": "2000", "learn.every": "40", "learn.batch": "8", "learn.H": "8"},
     "steps × seq_len × num_layers must be at most"),
    ({"learn.steps": "3000", "learn.every": "1"}, "snapshot_every must be at least"),
])
def test_invalid_combinations_show_the_core_error(query: dict[str, str], message: str) -> None:
    at = _run(query)
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("vega_lite_chart")


def test_training_gives_waiting_visitors_the_slot_at_its_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one long request (training) calls hosting.take_turns at its progress checkpoints, inside heavy()."""
    import hosting

    inside: list[int] = []
    monkeypatch.setattr(hosting, "take_turns", lambda: inside.append(getattr(hosting._held, "depth", 0)) or False)
    at = _run({**SMALL, "learn.seed": "12345"})  # a seed no other test trains (a cache hit would not train)
    assert not at.exception
    assert len(inside) >= 2 * 20 and min(inside) >= 1, inside  # both cells, ~50 checkpoints each, all in heavy()
