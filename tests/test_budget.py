"""Bounded work per request (gru_explainer.budget): estimates from the config, refusals before any work, through the
core and the pages; the largest requests the hosted limits allow stay within the budget. The calibration itself
(measured CPU seconds against the estimates) is a benchmark: `python -m benchmarks.work_budget`."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import gru_explainer.compare as compare_module
import gru_explainer.flow as flow_module
from gru_explainer import ConfigError, ExplainConfig, Limits
from gru_explainer.budget import (
    BudgetError,
    check_compare,
    check_flow,
    compare_seconds,
    explain_seconds,
    explorer_seconds,
    flow_seconds,
    max_repeats,
)
from gru_explainer.compare import MAX_REPEATS, compare
from gru_explainer.config import CELLS, DTYPES
from gru_explainer.flow import sweep

from .markdown import plain_text

ROOT = Path(__file__).resolve().parents[1]
HOSTED = Limits()
BIG = ExplainConfig(num_layers=4, bidirectional=True, hidden_size=256, input_size=64, batch_size=1, seq_len=128,
                    dtype="float64")
"""Half the hosted state limit (the devices page's cap), float64: the devices page's heaviest config."""
FLOW_CELLS = ["gru", "lstm", "rnn_tanh", "rnn_relu"]


def largest(cell: str, dtype: str) -> list[ExplainConfig]:
    """Configs at the hosted state limit, long (B = 1) and wide (B = 64), 4 layers × 2 directions where allowed."""
    one = cell == "answer_gru"
    base = ExplainConfig(cell=cell, num_layers=1 if one else 4, bidirectional=not one, hidden_size=256,
                         input_size=64, dtype=dtype, head="linear", head_size=64)
    per_step = base.num_layers * base.num_directions * base.hidden_size
    configs = [base.replace(batch_size=1, seq_len=min(HOSTED.max_seq_len, HOSTED.max_state_elements // per_step)),
               base.replace(batch_size=64, seq_len=HOSTED.max_state_elements // per_step // 64)]
    for cfg in configs:
        cfg.validate(HOSTED)
    return configs


def no_work(*args, **kwargs):
    raise AssertionError("work started although the request is over the budget")


def test_estimates_grow_with_every_size_and_the_twin_costs_more() -> None:
    base = ExplainConfig(hidden_size=64, seq_len=64, batch_size=4)
    for change in ({"hidden_size": 128}, {"seq_len": 128}, {"batch_size": 8}, {"num_layers": 3},
                   {"bidirectional": True}, {"dtype": "float64"}, {"cell": "lstm"}):
        assert explain_seconds(base.replace(**change)) > explain_seconds(base), change
    assert explain_seconds(base, "twin") > explain_seconds(base)
    assert compare_seconds(base, 1, 5) > compare_seconds(base, 1, 3) > explain_seconds(base, "twin")
    assert compare_seconds(base, 2, 3) > compare_seconds(base, 1, 3)
    assert flow_seconds(base, FLOW_CELLS, [64, 128], [0.5, 1.0]) > flow_seconds(base, FLOW_CELLS) > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
def test_the_largest_hosted_explorer_request_is_within_the_budget(cell: str, dtype: str) -> None:
    for cfg in largest(cell, dtype):
        assert explorer_seconds(cfg) <= HOSTED.max_cpu_seconds, cfg


def test_the_largest_allowed_devices_request_is_within_the_budget() -> None:
    for cell in CELLS:
        cfg = BIG.replace(cell=cell, num_layers=1, bidirectional=False) if cell == "answer_gru" else BIG.replace(
            cell=cell)
        fits = max_repeats(cfg, limits=HOSTED)
        if fits:
            check_compare(cfg, 1, fits, limits=HOSTED)  # the most repeats it offers are allowed ...
            assert compare_seconds(cfg, 1, fits) <= HOSTED.max_cpu_seconds
        with pytest.raises(BudgetError):  # ... and one more is not
            check_compare(cfg, 1, fits + 1, limits=HOSTED)
    default = ExplainConfig()
    assert max_repeats(default, 1, limits=HOSTED) >= MAX_REPEATS  # small configs: every repeat the page offers


def test_the_default_flow_page_is_within_the_budget() -> None:
    cfg = ExplainConfig()
    check_flow(cfg, [*FLOW_CELLS, "answer_gru"], [5, 10, 20, 50, 100, 200], [0.25, 0.5, 1.0, 2.0, 4.0], limits=HOSTED)


def test_compare_over_the_budget_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare_module, "explain", no_work)
    monkeypatch.setattr(compare_module, "timed_explain", no_work)
    with pytest.raises(BudgetError, match=r"repeat\(s\)") as err:
        compare(BIG, devices=["cpu"], repeats=MAX_REPEATS)
    assert isinstance(err.value, ConfigError)  # shown like any invalid input
    assert f"at most {max_repeats(BIG, limits=HOSTED)} repeat(s)" in str(err.value)


def test_local_limits_stay_permissive() -> None:
    local = Limits.local()
    check_compare(BIG, 1, MAX_REPEATS, limits=local)
    check_flow(BIG, FLOW_CELLS, [5, 10, 20, 50, 100, 200, 128], [0.25, 0.5, 1.0, 2.0, 4.0], limits=local)
    assert Limits.from_env() == HOSTED or Limits.from_env() == local


def test_a_sweep_over_the_budget_is_refused_before_any_run() -> None:
    calls: list[ExplainConfig] = []
    with pytest.raises(BudgetError, match="fewer"):
        sweep(BIG.replace(dtype="float32"), cells=FLOW_CELLS, seq_lens=[64, 128], weight_scales=[0.5, 1.0, 2.0, 4.0],
              profile=calls.append, limits=HOSTED)
    assert calls == []
    assert not sweep(ExplainConfig(seq_len=4), cells=["gru"], seq_lens=[4], weight_scales=[1.0],
                     limits=HOSTED).empty


def test_devices_page_refuses_too_many_repeats_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compare_module, "timed_explain", no_work)
    at = AppTest.from_file(str(ROOT / "app_pages/devices.py"), default_timeout=60)
    at.session_state["gx_config"] = BIG
    at.session_state["dev_repeats"] = MAX_REPEATS
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1
    message = plain_text(at.error[0].value)
    assert "s of CPU work" in message and f"at most {max_repeats(BIG, limits=HOSTED)} repeat(s)" in message
    assert not at.dataframe and not at.get("vega_lite_chart")


def test_flow_page_refuses_an_over_budget_run_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flow_module, "explain", no_work)
    monkeypatch.setattr(flow_module, "profile_of", no_work)
    at = AppTest.from_file(str(ROOT / "app_pages/flow.py"), default_timeout=60)
    at.session_state["gx_config"] = BIG.replace(seq_len=256)  # at the hosted limit, float64, 4 cells
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "fewer cells" in plain_text(at.error[0].value)
    assert not at.get("vega_lite_chart")
