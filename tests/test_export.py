"""`gru_explainer.export` in process: files, strict JSON, CSV round trip (inf / NaN included), errors before writing."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from gru_explainer import ConfigError, ExplainConfig, TargetError, explain
from gru_explainer.export import (
    CHARTS,
    CSV_NAME,
    JSON_NAME,
    VERDICT_NAME,
    chart_specs,
    export_report,
    json_number,
    read_frame,
    report_dict,
    write_report,
)

SMALL = ExplainConfig(hidden_size=8, seq_len=6)


def _refuse(token: str) -> None:
    raise AssertionError(f"non-standard JSON token {token}")


def test_json_number():
    assert json_number(1.5) == 1.5
    assert json_number(float("inf")) == "inf"
    assert json_number(float("-inf")) == "-inf"
    assert json_number(float("nan")) == "NaN"


def test_export_without_images_writes_csv_json_verdict(tmp_path):
    paths = export_report(SMALL, tmp_path / "a" / "b", images=False)
    assert [p.name for p in paths] == [CSV_NAME, JSON_NAME, VERDICT_NAME]
    assert all(p.is_file() for p in paths)
    data = json.loads(paths[1].read_text(encoding="utf-8"))
    assert data["files"] == [CSV_NAME, JSON_NAME, VERDICT_NAME]
    assert data["config"] == SMALL.to_dict()


def test_export_with_images_writes_png_and_svg(tmp_path):
    paths = export_report(SMALL.replace(cell="rnn_tanh"), tmp_path, scale=1)
    names = {p.name for p in paths}
    for stem in CHARTS:
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert (tmp_path / "gradient_norm_log.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_twin_engine_is_recorded(tmp_path):
    export_report(SMALL, tmp_path, engine="twin", images=False)
    data = json.loads((tmp_path / JSON_NAME).read_text(encoding="utf-8"))
    assert data["engine"] == "twin"
    assert data["target_value"] == pytest.approx(explain(SMALL).target_value, rel=1e-5)


def test_non_finite_values_survive_csv_and_json(tmp_path):
    report = explain(SMALL)
    report.frame.loc[0, "norm"] = math.inf
    report.frame.loc[1, "norm"] = math.nan
    report.frame.loc[2, "max_abs"] = -math.inf
    write_report(report, tmp_path, images=False)
    frame = read_frame(tmp_path / CSV_NAME)
    pd.testing.assert_frame_equal(frame, report.frame, check_dtype=False, check_exact=True)
    text = (tmp_path / JSON_NAME).read_text(encoding="utf-8")
    data = json.loads(text, parse_constant=_refuse)  # strict JSON: no bare NaN / Infinity tokens
    first = data["norms"][0]
    assert first["norm"][:2] == ["inf", "NaN"]


def test_report_dict_is_strict_json_for_an_exploding_config():
    cfg = ExplainConfig(cell="rnn_relu", weight_scale=10.0, hidden_size=64, seq_len=200, num_layers=3)
    report = explain(cfg)
    text = json.dumps(report_dict(report), allow_nan=False)
    assert json.loads(text)["config"]["weight_scale"] == 10.0


def test_chart_specs_are_vega_lite():
    specs = chart_specs(explain(SMALL.replace(bidirectional=True)), heatmap=(1, 1, 1))
    assert set(specs) == set(CHARTS)
    for spec in specs.values():
        assert "vega-lite" in json.loads(spec)["$schema"]


@pytest.mark.parametrize(("cfg", "kwargs", "error"), [
    (SMALL.replace(hidden_size=0), {}, ConfigError),
    (SMALL.replace(target="y["), {}, TargetError),
    (SMALL, {"engine": "jit"}, ConfigError),
    (SMALL, {"heatmap": (2, 0, 0)}, ConfigError),
    (SMALL, {"heatmap": (0, 1, 0)}, ConfigError),
    (SMALL, {"heatmap": (0, 0, 2)}, ConfigError),
    (SMALL, {"scale": -1}, ConfigError),
])
def test_bad_input_raises_before_writing(tmp_path, cfg, kwargs, error):
    out = tmp_path / "out"
    with pytest.raises(error):
        export_report(cfg, out, images=False, **kwargs)
    assert not out.exists()
