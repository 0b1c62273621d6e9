"""The generated "reproduce" script runs on its own and prints the report's numbers; user text never reaches it."""

from __future__ import annotations

import ast
import json
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
    "seed-mymodel": ExplainConfig.preset("seed-mymodel"),
    "head-and-y": ExplainConfig(cell="lstm", head="linear", seq_len=6, target="out[:, 1].sum() + y[:, 2].sum()"),
    "h_n-only": ExplainConfig(cell="rnn_tanh", bidirectional=True, seq_len=5, target="h_n[1].sum()"),
    "answer-gru": ExplainConfig.preset("seed-answer-gru"),
    "rnn-tanh-float64-bidir": ExplainConfig(cell="rnn_tanh", bidirectional=True, dtype="float64", seed=7,
                                           weight_scale=2.5, target="y[:, 1:4, ...].abs().sum(1).pow(2).sum()"),
}
LINE = re.compile(r"^(ygrad|hgrad|cgrad|xgrad)((?: \w+=\S+)+)$")
ZERO_LINE = re.compile(r"^y\.grad\[:, t\] is exactly zero at (\d+) of (\d+) steps: t in \[([\d, ]*)\]$")
QUANTITY = {"ygrad": "stacked_output", "hgrad": "hidden_state", "cgrad": "cell_state", "xgrad": "input"}
"""Printed line kind -> the report frame's quantity it reproduces."""


FORK_RUNNER = r"""
import json, os, sys, tempfile, traceback
import torch  # noqa: F401  (the one slow import, done once: every script runs in a fork of this bare interpreter)

codes, results = json.loads(sys.stdin.read()), []
with tempfile.TemporaryDirectory() as tmp:
    for i, code in enumerate(codes):
        out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
        pid = os.fork()
        if pid == 0:  # the child: its own process, fresh globals, __name__ == "__main__", stdout/stderr to files
            status = 0
            with open(out, "w") as sys.stdout, open(err, "w") as sys.stderr:
                try:
                    exec(compile(code, "<snippet>", "exec"), {"__name__": "__main__"})
                except BaseException:
                    traceback.print_exc()
                    status = 1
            os._exit(status)
        _, status = os.waitpid(pid, 0)
        with open(out) as o, open(err) as e:
            results.append([os.waitstatus_to_exitcode(status), o.read(), e.read()])
print(json.dumps(results))
"""
"""Runs each script given on stdin (a JSON list) in its own forked child of a fresh interpreter that has imported
nothing but torch, in "/" (the package is not on the path); prints [[exit code, stdout, stderr], ...]. Forking
saves a torch import per script; each script still starts from a bare interpreter and shares nothing with the
others."""


RUNNER_CHECKS = ["import torch\ntorch.set_default_dtype(torch.float64)\nleaked = 1\nraise ValueError('x')",
                 "import torch\nprint(__name__, torch.get_default_dtype(), 'leaked' in globals())"]
"""Two scripts run after the snippets, to check the runner: a failure is reported, and the next script sees nothing
of what the failed one changed in its process."""


@pytest.fixture(scope="module")
def results() -> list[list]:
    """[exit code, stdout, stderr] of every config's snippet, then of RUNNER_CHECKS: one runner, each script once."""
    codes = [reproduce_snippet(cfg) for cfg in CONFIGS.values()] + RUNNER_CHECKS
    done = subprocess.run([sys.executable, "-c", FORK_RUNNER], input=json.dumps(codes), capture_output=True,
                          text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert len(out) == len(codes)
    return out


def _parse(returncode: int, stdout: str, stderr: str) -> tuple[dict[tuple, float], list[int], str]:
    """One script's result: its norm lines, zero steps and stdout."""
    assert returncode == 0, stderr
    values: dict[tuple, float] = {}
    zero_steps: list[int] = []
    for line in stdout.splitlines():
        if line.startswith("target = "):
            values[("target",)] = float(line.split("=")[1])
        if zero := ZERO_LINE.match(line):
            zero_steps = [int(t) for t in zero.group(3).split(", ") if t]
            assert int(zero.group(1)) == len(zero_steps)
        match = LINE.match(line)
        if match:
            fields = dict(part.split("=") for part in match.group(2).split())
            key = (QUANTITY[match.group(1)], int(fields.get("layer", 0)), fields.get("direction", "n/a"),
                   int(fields["t"]))
            assert key not in values, line
            values[key] = float(fields["norm"])
    assert any(ZERO_LINE.match(line) for line in stdout.splitlines()), stdout
    return values, zero_steps, stdout


@pytest.fixture(scope="module")
def runs(results) -> dict[str, tuple[dict[tuple, float], list[int], str]]:
    """Every config's snippet, run once on its own: its norm lines, zero steps and stdout."""
    return {name: _parse(*result) for name, result in zip(CONFIGS, results, strict=False)}


def test_the_runner_reports_failures_and_isolates_the_scripts(results) -> None:
    (code1, _, err1), (code2, out2, _) = results[len(CONFIGS):]
    assert code1 == 1 and "ValueError: x" in err1
    assert code2 == 0 and out2 == "__main__ torch.float32 False\n"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_snippet_runs_and_matches_report(runs, name: str) -> None:
    """Every printed norm is a frame row (y.grad per direction, dL/dh_t, dL/dc_t, dL/dx_t) and vice versa."""
    cfg = CONFIGS[name]
    report = explain(cfg)
    printed, _, _ = runs[name]
    frame = report.frame
    tol = dict(rel_tol=1e-4, abs_tol=1e-6) if cfg.dtype == "float32" else dict(rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(printed[("target",)], report.target_value, **tol)
    rows = frame[frame.quantity.isin(list(QUANTITY.values()))]
    assert {(r.quantity, r.layer, r.direction, r.t) for r in rows.itertuples()} == set(printed) - {("target",)}
    for row in rows.itertuples():
        value = printed[(row.quantity, row.layer, row.direction, row.t)]
        assert math.isclose(value, row.norm, **tol), row
        assert (value == 0.0) == bool(row.exactly_zero), row
    lstm = cfg.cell == "lstm"
    states = cfg.num_layers * cfg.num_directions * cfg.seq_len
    assert len(rows) == states * (2 if lstm else 1) + cfg.num_directions * cfg.seq_len + cfg.seq_len
    assert set(rows.quantity) == {"stacked_output", "hidden_state", "input"} | ({"cell_state"} if lstm else set())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_printed_zero_steps_are_the_reports(runs, name: str) -> None:
    """The script's zero-step line is computed from y.grad: the report's stacked_zero_steps, whatever the target."""
    assert runs[name][1] == explain(CONFIGS[name]).stacked_zero_steps


def test_lstm_bidirectional_prints_each_direction_of_y(runs) -> None:
    """y[:, 3].sum() puts 1 on each of B·H units per direction: norm sqrt(B·H) per direction, not over both."""
    cfg = CONFIGS["lstm-bidirectional"]
    printed, zero_steps, _ = runs["lstm-bidirectional"]
    per_direction = math.sqrt(cfg.batch_size * cfg.hidden_size)
    for direction in ("forward", "reverse"):
        assert printed[("stacked_output", cfg.num_layers - 1, direction, 3)] == pytest.approx(per_direction)
    assert zero_steps == [t for t in range(cfg.seq_len) if t != 3]


@pytest.mark.parametrize(("name", "sentence"), [
    ("seed-mymodel", "only the head reads it, and only its last step (out = head(y[:, -1]))"),
    ("gru-head", "only the head reads it, and only its last step (out = head(y[:, -1]))"),
    ("head-and-y", "the target reads y directly, and through the head, which reads only the last step"),
    ("gru-2-layers", "only the target reads it, so y.grad[:, t] can be non-zero only at the steps t the target"),
    ("answer-gru", "only the target reads it, so y.grad[:, t] can be non-zero only at the steps t the target"),
    ("h_n-only", "the target does not read it (nor the head's output), so y.grad is zero at every step."),
])
def test_docstring_says_what_reads_y(runs, name: str, sentence: str) -> None:
    """The script's docstring names what reads y in this config, and the printed zero steps agree with it."""
    cfg = CONFIGS[name]
    code = reproduce_snippet(cfg)
    docstring = " ".join(ast.get_docstring(ast.parse(code)).split())
    assert sentence in docstring
    assert "nothing downstream reads" not in docstring
    zero_steps = runs[name][1]
    if "only the head reads it" in sentence:
        assert set(range(cfg.seq_len - 1)) <= set(zero_steps)
    if "zero at every step" in sentence:
        assert zero_steps == list(range(cfg.seq_len))


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
