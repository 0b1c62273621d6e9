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
    table = at.table[0].value  # one column per run, one row per measure (formatted as shown)
    expected = compare(cfg, repeats=1)
    assert list(table.columns) == [f"{r.device} {r.engine}" + (" (reference)" if r.reference else "")
                                   for r in expected.itertuples()]
    if (expected.engine_used != expected.engine).any():
        assert list(table.loc["engine used"]) == list(expected.engine_used)
    for name, row in (("hidden_grad", "Δ dL/dh_t"), ("stacked_grad", "Δ y.grad"), ("input_grad", "Δ dL/dx_t")):
        assert list(table.loc[row]) == [f"{v:.2e}" for v in expected[f"{name}_diff"]], row
    assert list(table.loc["agrees"]) == ["yes" if v else "no" for v in expected.agrees]
    # The difference chart carries the same numbers (one row per run and gradient).
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2
    [diff_rows] = [df for df in _datasets(charts[0]) if "diff" in df.columns]
    assert len(diff_rows) == 3 * len(expected)
    got = sorted(float(v) for v in diff_rows["diff"])
    want = sorted(float(v) for name in COMPARED for v in expected[f"{name}_diff"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    [time_rows] = [df for df in _datasets(charts[1]) if "time_ms" in df.columns]
    assert [f"{v:.2f}" for v in time_rows["time_ms"]] == list(table.loc["median time (ms)"])


def test_defaults_run_and_match_the_core() -> None:
    at = _run()
    assert not at.exception and not at.error
    assert {c.split(" ")[0] for c in at.table[0].value.columns} == set(distinct_devices())
    assert at.metric[0].value == "yes"
    _check_against_core(at, ExplainConfig())
    if CPU_ONLY:
        assert at.info and "no GPU" in at.info[0].value
    text = " ".join(m.value for m in at.markdown)
    assert "Why a fused kernel cannot hand you h_t" in text
    census = at.table[1].value
    assert list(census.columns) == distinct_devices() and "autograd nodes" in census.index


def test_widget_changes_rerun_cleanly() -> None:
    at = _run()
    at.selectbox(key="gx_dtype").set_value("float64").run()
    at.selectbox(key="gx_cell").set_value("lstm").run()
    at.toggle(key="gx_bidirectional").set_value(True).run()
    assert not at.exception and not at.error
    table = at.table[0].value
    assert all(float(v) < 1e-12 for v in table.loc["max Δ"]) and set(table.loc["agrees"]) == {"yes"}
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
    assert set(at.table[0].value.loc["engine used"]) == {"twin"}


def test_bad_target_shows_an_error_and_no_exception() -> None:
    at = _run(ExplainConfig(target="c_n.sum()"))
    assert not at.exception
    assert at.error and "c_n" in at.error[0].value
    assert not at.get("vega_lite_chart")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_rows_present() -> None:  # pragma: no cover - needs a GPU
    at = _run()
    assert not at.exception and not at.error
    table = at.table[0].value
    assert any(c.startswith("cuda") for c in table.columns)
    assert not any("no GPU" in i.value for i in at.info)


SMALL = ExplainConfig(seq_len=4, hidden_size=4)


def test_controls_round_trip_through_the_url() -> None:
    """Devices and repeats in the URL (devices.*): a fresh session opened with the URL shows the same controls."""
    at = _run(SMALL)
    assert "devices.repeats" not in at.query_params and "devices.chosen" not in at.query_params  # defaults
    at.number_input(key="dev_repeats").set_value(1).run()
    at.multiselect(key="dev_devices").set_value(["cpu"]).run()
    assert at.query_params["devices.repeats"] == "1"
    assert at.query_params.get("devices.chosen") == (None if CPU_ONLY else "cpu")
    at.multiselect(key="dev_devices").set_value([]).run()
    assert at.query_params["devices.chosen"] == "none"
    for chosen in (["cpu"], []):
        fresh = AppTest.from_file(PAGE, default_timeout=120)
        fresh.session_state["gx_config"] = SMALL
        fresh.query_params.update({"devices.repeats": "1", "devices.chosen": ",".join(chosen) or "none"})
        fresh.run()
        assert not fresh.exception and not fresh.warning
        assert fresh.number_input(key="dev_repeats").value == 1
        assert fresh.multiselect(key="dev_devices").value == chosen


@pytest.mark.parametrize(("query", "repeats", "chosen"), [
    ({"devices.repeats": "0", "devices.chosen": "cpu,tpu"}, 3, ["cpu"]),
    ({"devices.repeats": "1e309", "devices.chosen": "cuda:7"}, 3, None),
    ({"devices.repeats": "[x](http://evil.example)", "devices.chosen": ""}, 3, None),
])
def test_bad_url_values_are_noticed(query: dict, repeats: int, chosen: list | None) -> None:
    """One notice per bad value (the URL text shown literally), the defaults used, never an exception."""
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["gx_config"] = SMALL
    at.query_params.update(query)
    at.run()
    assert not at.exception and not at.error
    notices = [w.value for w in at.warning]
    assert len(notices) == 2, notices
    assert "devices.repeats" in notices[0] and "devices.chosen" in notices[1]
    assert "evil" not in " ".join(notices) or "`" in " ".join(notices)  # quoted URL text: inline code
    assert at.number_input(key="dev_repeats").value == repeats
    assert at.multiselect(key="dev_devices").value == (chosen or distinct_devices())
    assert at.table and at.get("vega_lite_chart")
    at.run()
    assert not at.warning  # each notice once
