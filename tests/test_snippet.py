"""The generated "reproduce" script runs on its own and prints the report's numbers; user text never reaches it."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys

import pytest

from gru_explainer import ConfigError, ExplainConfig, TargetError, explain
from gru_explainer.snippet import reproduce_snippet
from gru_explainer.target import parse_target

CONFIGS = {
    "gru-2-layers": ExplainConfig(),
    "lstm-bidirectional": ExplainConfig(cell="lstm", bidirectional=True, target="y[:, 3].sum()"),
    "rnn-relu": ExplainConfig(cell="rnn_relu", num_layers=3, hidden_size=8, seq_len=7, target="(y ** 2).mean()"),
    "gru-head": ExplainConfig(head="linear", head_size=4, target="out[:, -1].sum() - 0.5 * h_n[0].norm()"),
    "answer-gru": ExplainConfig.preset("seed-answer-gru"),
    "rnn-tanh-float64-bidir": ExplainConfig(cell="rnn_tanh", bidirectional=True, dtype="float64", seed=7,
                                           weight_scale=2.5, target="y[:, 1:4, ...].abs().sum(1).pow(2).sum()"),
}
LINE = re.compile(r"^(ygrad|hgrad|cgrad)((?: \w+=\S+)+)$")


def _run(code: str) -> dict[tuple, float]:
    """Run the script in a fresh interpreter (no package on the path) and parse its norm lines."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    values: dict[tuple, float] = {}
    for line in done.stdout.splitlines():
        if line.startswith("target = "):
            values[("target",)] = float(line.split("=")[1])
        match = LINE.match(line)
        if match:
            fields = dict(part.split("=") for part in match.group(2).split())
            key = (match.group(1), int(fields.get("layer", -1)), fields.get("direction", ""), int(fields["t"]))
            values[key] = float(fields["norm"])
    return values


@pytest.mark.parametrize("name", list(CONFIGS))
def test_snippet_runs_and_matches_report(name: str) -> None:
    cfg = CONFIGS[name]
    report = explain(cfg)
    printed = _run(reproduce_snippet(cfg))
    frame = report.frame
    tol = dict(rel_tol=1e-4, abs_tol=1e-6) if cfg.dtype == "float32" else dict(rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(printed[("target",)], report.target_value, **tol)
    for t in range(cfg.seq_len):
        expected = report.stacked_grad[:, t].double().norm().item()
        assert math.isclose(printed[("ygrad", -1, "", t)], expected, **tol), t
    checked = 0
    for quantity, kind in (("hidden_state", "hgrad"), ("cell_state", "cgrad")):
        for row in frame[frame.quantity == quantity].itertuples():
            assert math.isclose(printed[(kind, row.layer, row.direction, row.t)], row.norm, **tol), row
            checked += 1
    expected_rows = cfg.num_layers * cfg.num_directions * cfg.seq_len * (2 if cfg.cell == "lstm" else 1)
    assert checked == expected_rows


def test_snippet_is_valid_python_importing_only_torch() -> None:
    code = reproduce_snippet(ExplainConfig(cell="lstm", head="linear"))
    tree = ast.parse(code)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"math", "torch"}


MALICIOUS = [
    "__import__('os').system('echo pwned')",
    "y.sum() if open('/etc/passwd') else y.sum()",
    "y[:, -1].sum() + eval('1')",
    "y.__class__.__bases__[0].__subclasses__()",
    "y[:, -1].sum()\nimport os",
    "y[:, -1].sum(); import os",
    "y[:, -1].sum()  # '''\nprint('injected')",
    "[y.sum() for _ in ()][0]",
    "y[:, -1].sum() + 1e400",
]


@pytest.mark.parametrize("text", MALICIOUS)
def test_bad_targets_never_reach_the_snippet(text: str) -> None:
    with pytest.raises(TargetError):
        reproduce_snippet(ExplainConfig(target=text))


def test_target_is_re_emitted_not_copied() -> None:
    """Comments, odd spacing and aliases in the user's text are normalised away: only parsed code is emitted."""
    cfg = ExplainConfig(target="  output[ :, -1 ].sum( )*2 ")
    code = reproduce_snippet(cfg)
    assert "loss = (y[:, -1].sum() * 2.0)" in code
    assert cfg.target not in code
    parse_target("(y[:, -1].sum() * 2.0)")  # the emitted code is itself a valid target


def test_invalid_config_raises_config_error() -> None:
    with pytest.raises(ConfigError):
        reproduce_snippet(ExplainConfig(hidden_size=0))
    with pytest.raises(TargetError):
        reproduce_snippet(ExplainConfig(target="c_n.sum()"))
