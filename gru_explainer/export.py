"""Static export of one explanation without a browser: CSV, JSON, and every explorer chart as PNG and SVG.

    from gru_explainer import ExplainConfig
    from gru_explainer.export import export_report
    paths = export_report(ExplainConfig(cell="lstm"), "out/")

Files written to the output folder (existing files of the same names are overwritten):

- ``report.csv``: the report's tidy frame (one row per quantity, layer, direction and step).
- ``report.json``: config, engine, device, target value, verdict (markdown), tensor shapes, the steps where
  y.grad is exactly zero, and the per-step norms with their zero / non-finite flags. Strict JSON: a
  non-finite number is written as the string "inf", "-inf" or "NaN".
- ``verdict.md``: the verdict alone.
- ``<chart>.png`` and ``<chart>.svg`` for each chart in `CHARTS`.

PNG/SVG rendering uses vl-convert-python (imported on demand; a development/export dependency, not needed
by the app).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import torch

from . import charts
from .config import ENGINES, ExplainConfig, Limits
from .errors import ConfigError
from .explain import explain
from .report import GradientReport

CSV_NAME = "report.csv"
JSON_NAME = "report.json"
VERDICT_NAME = "verdict.md"
IMAGE_FORMATS = ("png", "svg")
DEFAULT_SCALE = 2.0


def _heatmap(report: GradientReport, layer: int, direction: int, batch: int) -> alt.TopLevelMixin:
    return charts.unit_heatmap(report.unit_frame(layer, direction, batch))


CHARTS: dict[str, Callable[[GradientReport, int, int, int], alt.TopLevelMixin]] = {
    "gradient_norm_linear": lambda r, *_: charts.gradient_norm_chart(r.frame, log_scale=False),
    "gradient_norm_log": lambda r, *_: charts.gradient_norm_chart(r.frame, log_scale=True),
    "unit_heatmap": _heatmap,
    "input_gradient": lambda r, *_: charts.input_grad_chart(r.frame),
}
"""Chart file stem -> builder(report, heatmap layer, heatmap direction, heatmap batch item): the explorer's charts."""


class ExportError(RuntimeError):
    """The export could not be written (missing renderer, unwritable folder); the message says why."""


def json_number(value: float) -> float | str:
    """A float for strict JSON: finite values as numbers, inf / -inf / NaN as strings."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def report_dict(report: GradientReport) -> dict[str, Any]:
    """The JSON document of a report: config, target value, verdict, shapes, zero steps and per-step norms."""
    cfg = report.config
    shapes = {
        "inputs": report.inputs,
        "output": report.output,
        "stacked_grad": report.stacked_grad,
        "hidden_grad": report.hidden_grad,
        "cell_grad": report.cell_grad,
        "input_grad": report.input_grad,
    }
    norms = []
    frame = report.frame
    for (quantity, layer, direction), rows in frame.groupby(["quantity", "layer", "direction"], sort=False):
        rows = rows.sort_values("t")
        norms.append({
            "quantity": str(quantity),
            "layer": int(layer),
            "direction": str(direction),
            "t": [int(t) for t in rows["t"]],
            "norm": [json_number(v) for v in rows["norm"]],
            "max_abs": [json_number(v) for v in rows["max_abs"]],
            "log10_norm": [json_number(v) for v in rows["log10_norm"]],
            "log10_max_abs": [json_number(v) for v in rows["log10_max_abs"]],
            "direct_log10_norm": [json_number(v) for v in rows["direct_log10_norm"]],
            "exactly_zero": [bool(v) for v in rows["exactly_zero"]],
            "structurally_zero": [bool(v) for v in rows["structurally_zero"]],
            "zero_cause": [str(v) for v in rows["zero_cause"]],
            "underflow": [bool(v) for v in rows["underflow"]],
            "nonfinite": [bool(v) for v in rows["nonfinite"]],
            "forward_nonfinite": [bool(v) for v in rows["forward_nonfinite"]],
        })
    return {
        "tool": "gru_explainer",
        "torch_version": torch.__version__,
        "config": cfg.to_dict(),
        "engine": report.engine,
        "device": report.device,
        "target": cfg.target,
        "target_value": json_number(report.target_value),
        "verdict": report.verdict(),
        "shapes": {name: (list(t.shape) if t is not None else None) for name, t in shapes.items()},
        "stacked_zero_steps": report.stacked_zero_steps,
        "norms": norms,
    }


def chart_specs(report: GradientReport, heatmap: tuple[int, int, int] = (0, 0, 0)) -> dict[str, str]:
    """Vega-Lite JSON of every chart in `CHARTS`, keyed by file stem (heatmap = layer, direction, batch item)."""
    return {name: build(report, *heatmap).to_json() for name, build in CHARTS.items()}


def _renderer() -> Any:
    try:
        import vl_convert
    except ImportError as err:  # a development / export dependency, not needed by the app
        raise ExportError("PNG/SVG export needs vl-convert-python: pip install -r requirements-test.txt") from err
    return vl_convert


def render_charts(specs: dict[str, str], out_dir: Path, scale: float = DEFAULT_SCALE) -> list[Path]:
    """Write each Vega-Lite spec as ``<name>.png`` (at `scale`) and ``<name>.svg``; returns the paths.

    No specs, no renderer: without charts vl-convert-python is never imported.
    """
    if not specs:
        return []
    vlc = _renderer()
    written: list[Path] = []
    for name, spec in specs.items():
        png = out_dir / f"{name}.png"
        png.write_bytes(vlc.vegalite_to_png(spec, scale=scale))
        svg = out_dir / f"{name}.svg"
        svg.write_text(vlc.vegalite_to_svg(spec), encoding="utf-8")
        written += [png, svg]
    return written


def check_heatmap(cfg: ExplainConfig, layer: int, direction: int, batch: int) -> None:
    """ConfigError naming the option when the heatmap's layer / direction / batch item is not in the model."""
    for name, value, size in (("heatmap_layer", layer, cfg.num_layers),
                              ("heatmap_direction", direction, cfg.num_directions),
                              ("heatmap_batch", batch, cfg.batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise ConfigError(f"{name} must be between 0 and {size - 1} for this config, got {value!r}")


def export_report(
    cfg: ExplainConfig,
    out_dir: str | Path,
    engine: str = "fused",
    *,
    limits: Limits | None = None,
    scale: float = DEFAULT_SCALE,
    heatmap: tuple[int, int, int] = (0, 0, 0),
    images: bool = True,
) -> list[Path]:
    """Explain `cfg` and write CSV, JSON, verdict and chart files into `out_dir` (created if needed).

    Returns the written paths. Raises ConfigError / TargetError for bad input (before writing anything) and
    ExportError when the files cannot be written.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if not (isinstance(scale, int | float) and math.isfinite(scale) and 0 < scale <= 8):
        raise ConfigError(f"scale must be a number > 0 and <= 8, got {scale!r}")
    cfg.validate(limits)
    check_heatmap(cfg, *heatmap)
    report = explain(cfg, engine=engine, limits=limits)
    return write_report(report, out_dir, scale=scale, heatmap=heatmap, images=images)


def write_report(report: GradientReport, out_dir: str | Path, *, scale: float = DEFAULT_SCALE,
                 heatmap: tuple[int, int, int] = (0, 0, 0), images: bool = True,
                 fields: dict[str, Any] | None = None) -> list[Path]:
    """Write an already computed report (see `export_report`); returns the written paths.

    `fields` set or replace entries of report.json (and so verdict.md), e.g. a watched call's own verdict.
    """
    check_heatmap(report.config, *heatmap)
    specs = chart_specs(report, heatmap) if images else {}
    if images:
        _renderer()  # fail before writing anything when the renderer is missing
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = [out / CSV_NAME, out / JSON_NAME, out / VERDICT_NAME]
        report.frame.to_csv(written[0], index=False, na_rep="NaN")
        document = report_dict(report)
        document["heatmap"] = dict(zip(("layer", "direction", "batch"), heatmap, strict=True))
        document.update(fields or {})
        document["files"] = [p.name for p in written] + [f"{n}.{ext}" for n in specs for ext in IMAGE_FORMATS]
        written[1].write_text(json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                              encoding="utf-8")
        written[2].write_text(document["verdict"] + "\n", encoding="utf-8")
        written += render_charts(specs, out, scale)
    except OSError as err:
        raise ExportError(f"cannot write to {out}: {err.strerror or err}") from err
    return written


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read an exported ``report.csv`` back with the report frame's dtypes."""
    frame = pd.read_csv(path, keep_default_na=False, na_values=["NaN", "nan"], dtype={"zero_cause": object})
    for column in ("exactly_zero", "structurally_zero", "underflow", "nonfinite", "forward_nonfinite"):
        frame[column] = frame[column].astype(bool)
    return frame


__all__ = ["CHARTS", "ExportError", "chart_specs", "export_report", "json_number", "read_frame", "render_charts",
           "report_dict", "write_report"]
