"""AppTest of the devices & engines page: defaults, widget changes, table and chart data equal the core's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig
from gru_explainer.compare import COMPARED, compare, distinct_devices

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "devices.py")
CPU_ONLY = distinct_devices() == ["cpu"]


def _run(config: ExplainConfig | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    if config is not None:
        at.session_state["gx_config"] = config
    return at.run()


def _datasets(element):
    return [convert_arrow_bytes_to_pandas_df(d.data.data) for d in element.proto.datasets]


def _check_against_core(at: AppTest, cfg: ExplainConfig) -> None:
    table = at.dataframe[0].value
    expected = compare(cfg, repeats=1)
    assert list(zip(table.device, table.engine_used, strict=True)) == list(
        zip(expected.device, expected.engine_used, strict=True))
    for name in COMPARED:
        np.testing.assert_allclose(table[f"{name}_diff"], expected[f"{name}_diff"], rtol=0, atol=1e-12)
    assert list(table.agrees) == list(expected.agrees)
    # The difference chart carries the same numbers (one row per run and gradient).
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2
    [diff_rows] = [df for df in _datasets(charts[0]) if "diff" in df.columns]
    assert len(diff_rows) == 3 * len(expected)
    got = sorted(float(v) for v in diff_rows["diff"])
    want = sorted(float(v) for name in COMPARED for v in expected[f"{name}_diff"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    [time_rows] = [df for df in _datasets(charts[1]) if "time_ms" in df.columns]
    np.testing.assert_allclose(time_rows["time_ms"], table["time_ms"])


def test_defaults_run_and_match_the_core() -> None:
    at = _run()
    assert not at.exception and not at.error
    assert set(at.dataframe[0].value.device) == set(distinct_devices())
    assert at.metric[0].value == "yes"
    _check_against_core(at, ExplainConfig())
    if CPU_ONLY:
        assert at.info and "no GPU" in at.info[0].value
    text = " ".join(m.value for m in at.markdown)
    assert "Why a fused kernel cannot hand you h_t" in text
    census = at.dataframe[1].value
    assert list(census.device) == distinct_devices()


def test_widget_changes_rerun_cleanly() -> None:
    at = _run()
    at.selectbox(key="gx_dtype").set_value("float64").run()
    at.selectbox(key="gx_cell").set_value("lstm").run()
    at.toggle(key="gx_bidirectional").set_value(True).run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert (table.max_diff < 1e-12).all() and table.agrees.all()
    _check_against_core(at, ExplainConfig(cell="lstm", bidirectional=True, dtype="float64"))
    at.number_input(key="dev_repeats").set_value(1).run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    at.multiselect(key="dev_devices").set_value([]).run()
    assert not at.exception and at.info and not at.get("vega_lite_chart")


def test_answer_gru_has_no_fused_kernel() -> None:
    at = _run(ExplainConfig(cell="answer_gru", num_layers=1))
    assert not at.exception and not at.error
    assert any("no fused kernel" in i.value for i in at.info)
    assert set(at.dataframe[0].value.engine_used) == {"twin"}


def test_bad_target_shows_an_error_and_no_exception() -> None:
    at = _run(ExplainConfig(target="c_n.sum()"))
    assert not at.exception
    assert at.error and "c_n" in at.error[0].value
    assert not at.get("vega_lite_chart")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_rows_present() -> None:  # pragma: no cover - needs a GPU
    at = _run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert any(d.startswith("cuda") for d in table.device)
    assert not any("no GPU" in i.value for i in at.info)
