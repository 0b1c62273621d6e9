"""The app from its entry point: the puzzle home page, every page with defaults, and the URL across page switches."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig, explain

from .vega import chart_data

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGE_FILES = [f"app_pages/{name}.py" for name in ("puzzle", "explorer", "flow", "graph", "devices")]
EXISTING = [p for p in PAGE_FILES if (ROOT / p).exists()]


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_home_is_the_puzzle_reproduced_live() -> None:
    at = run(AppTest.from_file(APP, default_timeout=90))
    assert not at.error and not at.warning
    assert at.title[0].value.startswith("Why does a GRU return zero gradients")
    codes = [c.value for c in at.code]
    # MyModel and SecondModel print True (as in the seed), computed now
    my_model = next(i for i, c in enumerate(codes) if c.startswith("class MyModel"))
    second = next(i for i, c in enumerate(codes) if c.startswith("class SecondModel"))
    assert codes[my_model + 1] == "True" and codes[second + 1] == "True"
    # the answer's three prints: sanity False, y.grad[:, :-1] zero True, any h.grad zero False
    prints = next(c for c in codes if c.startswith("print(torch.allclose(y.grad[:, -1]"))
    assert [line for line in prints.splitlines() if not line.startswith("print")] == ["False", "True", "False"]
    text = " ".join(m.value for m in at.markdown)
    assert "5 head features, not time" in text
    (chart,) = at.get("vega_lite_chart")
    rows = chart_data(chart)
    report = explain(ExplainConfig.preset("seed-secondmodel"))
    hidden = rows[rows.quantity == "hidden_state"].sort_values("t")
    np.testing.assert_allclose(hidden["norm"].to_numpy(float), report.hidden_grad[1, 0].double().norm(dim=(0, 2)),
                               rtol=1e-6)
    stacked = rows[rows.quantity == "stacked_output"].sort_values("t")
    assert stacked["status"].tolist() == ["structural"] * 9 + ["value"]
    assert at.get("page_link")  # links to the other pages


def test_seed_numbers_match_the_core_directly() -> None:
    mine = explain(ExplainConfig.preset("seed-mymodel"))
    assert mine.grads["out"].shape == (2, 5, 1)  # axis 1: the 5 head features
    assert torch.allclose(mine.grads["out"][:, :-1], torch.tensor(0.0))
    answer = explain(ExplainConfig.preset("seed-answer-gru"))
    assert not torch.allclose(answer.stacked_grad[:, -1], torch.tensor(0.0))
    assert all(answer.hidden_grad[0, 0, :, t].abs().sum() > 0 for t in range(10))


@pytest.mark.parametrize("page", EXISTING)
def test_every_page_runs_with_defaults(page: str) -> None:
    at = run(AppTest.from_file(APP, default_timeout=120))
    at.switch_page(page)
    run(at)
    assert not at.error, [e.value for e in at.error]


def test_navigation_lists_only_existing_pages() -> None:
    source = (ROOT / "app.py").read_text()
    assert all(p in source for p in PAGE_FILES)
    assert ".exists()" in source  # pages still being written are left out rather than breaking the app


def test_url_survives_page_switches() -> None:
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params["cell"] = "lstm"
    at.query_params["seq_len"] = "6"
    run(at)
    assert not at.warning
    at.switch_page("app_pages/explorer.py")
    run(at)
    assert at.selectbox(key="gx_cell").value == "lstm" and at.number_input(key="gx_seq_len").value == 6
    at.number_input(key="gx_hidden_size").set_value(16)
    run(at)
    at.switch_page("app_pages/puzzle.py")
    run(at)
    assert {k: at.query_params[k] for k in at.query_params} == {"cell": "lstm", "seq_len": "6", "hidden_size": "16"}
    at.switch_page("app_pages/explorer.py")
    run(at)
    assert at.number_input(key="gx_hidden_size").value == 16 and at.selectbox(key="gx_cell").value == "lstm"


def test_bad_url_shows_notices_once_and_never_fails() -> None:
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params["hidden_size"] = "1000000"
    at.query_params["device"] = "cuda:9"
    run(at)
    assert len(at.warning) == 2 and "hidden_size" in at.warning[0].value + at.warning[1].value
    assert not at.error
    assert dict(at.query_params) == {}


def test_flush_denormal_is_set_in_the_script_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flag lives in a CPU register of each thread and every script run has its own thread: set on each run."""
    calls: list[tuple[str, bool, float]] = []
    real = torch.set_flush_denormal

    def record(mode: bool) -> bool:
        result = real(mode)
        calls.append((threading.current_thread().name, mode, (torch.tensor([1e-40]) * 1.0).item()))
        return result

    monkeypatch.setattr(torch, "set_flush_denormal", record)
    run(AppTest.from_file(APP, default_timeout=90))
    assert [(mode, value) for _, mode, value in calls] == [(True, 0.0)]  # denormals flushed in the script thread
    assert calls[0][0] != threading.main_thread().name
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0  # the test's own thread is untouched
    # One call, at the top level of the entry point's script branch (app.py's `else` of `if __name__ != "__main__"`,
    # the branch each script run executes): it runs at the start of every run (not cached once).
    tree = ast.parse((ROOT / "app.py").read_text())
    [script] = [node.orelse for node in tree.body if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)]
    top_level = [node for node in script if isinstance(node, ast.Expr) and "set_flush_denormal" in ast.unparse(node)]
    assert len(top_level) == 1 and ast.unparse(tree).count("set_flush_denormal(") == 1
