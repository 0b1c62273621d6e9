"""UI sweep: every control of every page set to its extremes and to invalid values; never an exception element.

One AppTest per page runs a table of cases in sequence (each case: widget key -> value, and what the page must show).
Before a case, widgets a previous case changed are put back to the page's baseline, so extremes are tried one at a
time from a small config (the heaviest config is run once, by test_largest_allowed_config_once). A coverage check
asserts that the table touched every widget the page showed.

What "invalid" can mean for a widget: a browser clamps number inputs and offers only listed options, but a hostile
client can send anything. Streamlit itself replaces an out-of-range number with the widget's minimum (checked: the
shared config stays within the limits and the page renders); free text (targets) is parsed by the core, which answers
with a TargetError shown as st.error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig, Limits, available_devices
from gru_explainer.compare import MAX_REPEATS
from gru_explainer.config import CELLS, DTYPES, HEADS
from gru_explainer.graph import MAX_GRAPH_LAYERS, MAX_GRAPH_STEPS

from .vega import explorer_complete

ROOT = Path(__file__).resolve().parents[1]
LIMITS = Limits.from_env()
SMALL = ExplainConfig(seq_len=6, hidden_size=8)
"""The pages' baseline config in this sweep: small, so each case reruns in a fraction of a second."""

WIDGET_KINDS = ("button", "checkbox", "multiselect", "number_input", "radio", "selectbox", "select_slider", "slider",
                "text_area", "text_input", "toggle")
Case = tuple[str, dict[str, Any], str]
"""(label, {widget key: value}, expected): expected is "ok", "error", "info", "warning" or "rejected"."""

GARBAGE_TARGETS = [
    "", "   ", "💥", "y[:, 3]", "__import__('os').system('id')", "y.__class__.__bases__[0].__subclasses__()",
    "().__class__", "h_n.__dict__", "open('/etc/passwd')", "lambda: 0", "[a for a in y]", "y.sum(); import os",
    "y[:, -1].sum()\n__import__('os')", "\x00", "y.sum\u200b()", "ÿ.sum()", "y[:, 10**100].sum()",
    "y[:, 99999999999999999999].sum()", "1e309 * y.sum()", "y[::0].sum()", "y[:, 'a'].sum()", "y[:, 1.5].sum()",
    "(" * 300 + "y.sum()" + ")" * 300, "y" * 10_000, "y[:, -1].sum().backward()", "y.sum() if 1 else 0",
    "y[:, -1].sum()  # 注释", "y.sum() # ` [Click to fix your GPU](https://evil.example) `", "y.sum()\n",
]
"""Free-text targets that must be refused with a message: code, dunders, unicode, huge numbers, nesting, comments
(the parser skips them, so they could carry a Markdown link into the verdict: the app refuses them)."""
ODD_BUT_VALID_TARGETS = ["ｙ[:, -1].sum()", "y.sum() / 0", "y.sum() ** 1e308"]
"""Accepted: NFKC-normalised names (as in Python); the last two give inf (shown as non-finite)."""
OUT_OF_RANGE = {"int": [10**30, -5], "float": [1e308, -5.0, math.inf, math.nan]}
"""Values a browser never sends (it clamps). Not inf/NaN for whole-number inputs: Streamlit's own int deserializer
raises on them before the script runs (the hostile session alone sees an exception; nothing an app can catch)."""


def sidebar_cases(cfg: ExplainConfig, devices: Sequence[str], over_limit: str = "error",
                  out_of_range: bool = True) -> list[Case]:
    """Every sidebar control: each option, each number input at its min and max, and out-of-range numbers."""
    cases: list[Case] = [(f"cell={c}", {"gx_cell": c}, "ok") for c in CELLS if c != cfg.cell]
    cases.append((f"cell={cfg.cell}", {"gx_cell": cfg.cell, "gx_num_layers": cfg.num_layers}, "ok"))
    bounds = {name: (1, getattr(LIMITS, f"max_{name}")) for name in
              ("num_layers", "input_size", "hidden_size", "seq_len", "batch_size")}
    bounds |= {"seed": (0, 2**31 - 1), "weight_scale": (0.001, float(LIMITS.max_weight_scale))}
    for name, (low, high) in bounds.items():
        cases += [(f"{name}={low}", {f"gx_{name}": low}, "ok"), (f"{name}={high}", {f"gx_{name}": high}, "ok")]
    cases += [("head=linear, head_size=1", {"gx_head": "linear", "gx_head_size": 1}, "ok"),
              ("head=linear, head_size=max", {"gx_head": "linear", "gx_head_size": LIMITS.max_head_size}, "ok")]
    cases += [(f"head={h}", {"gx_head": h}, "ok") for h in HEADS]
    cases += [("bidirectional", {"gx_bidirectional": True}, "ok"),
              ("unidirectional", {"gx_bidirectional": False}, "ok")]
    cases += [(f"dtype={d}", {"gx_dtype": d}, "ok") for d in (*DTYPES, cfg.dtype)]
    cases += [(f"device={d}", {"gx_device": d}, "ok") for d in (*devices, cfg.device)]
    # Valid widget values whose combination passes the state-size limit: the core's error, naming the limit.
    cases.append(("state-size limit", {"gx_batch_size": LIMITS.max_batch_size, "gx_seq_len": LIMITS.max_seq_len,
                                       "gx_hidden_size": LIMITS.max_hidden_size,
                                       "gx_num_layers": LIMITS.max_num_layers}, over_limit))
    if out_of_range:
        for name in ("hidden_size", "seq_len", "seed", "weight_scale"):
            values = OUT_OF_RANGE["float" if name == "weight_scale" else "int"]
            cases += [(f"{name}={v!r} (out of range)", {f"gx_{name}": v}, "rejected") for v in values]
    return cases


def _sidebar_baseline(cfg: ExplainConfig) -> dict[str, Any]:
    return {f"gx_{name}": getattr(cfg, name) for name in
            ("cell", "num_layers", "input_size", "hidden_size", "head", "head_size", "seq_len", "batch_size", "seed",
             "weight_scale", "bidirectional", "dtype", "device")}


def _widgets(at: AppTest) -> dict[str, Any]:
    """Every widget on the page by its key (or "label:<label>" when it has none)."""
    found = {}
    for kind in WIDGET_KINDS:
        for widget in getattr(at, kind):
            found[widget.key or f"label:{widget.label}"] = widget
    return found


def sweep(at: AppTest, cases: list[Case], baseline: dict[str, Any], ok: Callable[[AppTest], None],
          linked: Sequence[set[str]] = ()) -> int:
    """Run the cases in order on one AppTest; returns how many ran. Fails listing every case that went wrong.

    `linked`: groups of widgets that set each other (a preset fills the target text): when a case sets one of them,
    the others are not put back to the baseline in the same run.
    """
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    seen, touched, problems = set(_widgets(at)), set(), []
    for label, changes, expected in cases:
        widgets = _widgets(at)
        keep = set(changes).union(*(group for group in linked if group & set(changes)))
        for key, value in baseline.items():  # back to the baseline where the page still offers it
            if key not in keep and key in widgets and not widgets[key].disabled and widgets[key].value != value:
                _try_set(widgets[key], value)
        pending = dict(changes)
        for _ in range(3):  # a widget may appear or be enabled only after a rerun (e.g. head_size after head)
            widgets = _widgets(at)
            for key, value in list(pending.items()):
                if key.startswith("label:") and key in widgets:
                    widgets[key].click()
                elif key not in widgets or widgets[key].disabled or not _try_set(widgets[key], value):
                    continue
                del pending[key]
            at.run()
            seen |= set(_widgets(at))
            if not pending or at.exception:
                break
        touched |= set(changes) - set(pending)
        if pending:  # the table asks for something a user cannot do: a bug in the table
            problems.append(f"{label}: cannot set {pending}")
        problem = _check(at, expected, ok)
        if problem:
            problems.append(f"{label}: {problem}")
    assert not problems, "\n".join(problems)
    missing = seen - touched
    assert not missing, f"widgets the sweep never set: {sorted(missing)}"
    return len(cases)


def _try_set(widget: Any, value: Any) -> bool:
    """Set a widget's value if it is one the widget can send (a selectbox's option); False (unchanged) if not."""
    old = widget.value
    widget.set_value(value)
    try:
        widget._widget_state  # noqa: B018  (serialises the value: fails for a value that is not an option)
    except ValueError:
        widget.set_value(old)
        return False
    return True


def _check(at: AppTest, expected: str, ok: Callable[[AppTest], None]) -> str | None:
    if at.exception:
        return f"exception {[e.value for e in at.exception]}"
    errors = [e.value for e in at.error]
    if any(e.startswith("Unexpected") for e in errors):
        return f"unexpected error {errors}"
    if expected == "error":
        return None if errors else "no st.error shown"
    if errors:
        return f"st.error {errors}"
    if expected in ("info", "warning"):
        return None if getattr(at, expected) else f"no st.{expected} shown"
    if expected == "rejected":
        cfg = at.session_state["gx_config"]
        try:
            cfg.validate(LIMITS)
        except ValueError as err:
            return f"the shared config left the limits: {err}"
    try:
        ok(at)
    except AssertionError as err:
        return f"page incomplete: {err}"
    return None


def _page(name: str, timeout: float = 90) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / f"{name}.py"), default_timeout=timeout)
    at.session_state["gx_config"] = SMALL
    return at


def _charts(count: int | None) -> Callable[[AppTest], None]:
    """A page check: `count` chart elements, or (None) every chart of the explorer, however many panels."""
    def check(at: AppTest) -> None:
        if count is None:
            assert explorer_complete(at), f"explorer charts missing: {len(at.get('vega_lite_chart'))} elements"
            return
        assert len(at.get("vega_lite_chart")) == count, f"{len(at.get('vega_lite_chart'))} charts, want {count}"
    return check


DEVICES = ["auto", *available_devices()]
"""The sidebar's device options on this machine (tests/test_hardening_devices.py simulates a failing one)."""
SWEPT: dict[str, int] = {}
"""Cases run per page (read by the figures in docs/hardening.md)."""


def test_explorer_sweep() -> None:
    at = _page("explorer", timeout=60)
    at.run()
    presets = list(at.selectbox(key="gx_target_preset").options)
    default_preset = at.selectbox(key="gx_target_preset").value
    step_k = next(p for p in presets if p.startswith("step k"))
    baseline = _sidebar_baseline(SMALL) | {
        "gx_target_preset": default_preset, "gx_target": SMALL.target, "gx_log": True, "gx_hm_layer": 1,
        "gx_hm_direction": 0, "gx_hm_batch": 0}
    cases: list[Case] = sidebar_cases(SMALL, DEVICES)
    cases += [(f"preset {p}", {"gx_target_preset": p},
               "error" if "c_n" in p or "out.sum()" in p else "ok") for p in presets]
    cases += [("k=min", {"gx_target_preset": step_k, "gx_target_k": -SMALL.seq_len}, "ok"),
              ("k=max", {"gx_target_preset": step_k, "gx_target_k": SMALL.seq_len - 1}, "ok"),
              # k's widget spans the limits, not T (it never changes by itself): a k beyond T is the target's error.
              ("k out of range", {"gx_target_preset": step_k, "gx_target_k": 10**30}, "error")]
    cases += [(f"target {t[:40]!r}", {"gx_target": t}, "error") for t in GARBAGE_TARGETS]
    cases += [(f"target {t!r}", {"gx_target": t}, "ok") for t in ODD_BUT_VALID_TARGETS]
    cases += [("linear scale", {"gx_log": False}, "ok"), ("log scale", {"gx_log": True}, "ok"),
              ("heatmap layer 0", {"gx_hm_layer": 0}, "ok"), ("heatmap layer 1", {"gx_hm_layer": 1}, "ok"),
              ("bidirectional", {"gx_bidirectional": True}, "ok"),
              ("heatmap reverse", {"gx_bidirectional": True, "gx_hm_direction": 1}, "ok"),
              ("heatmap batch max", {"gx_hm_batch": SMALL.batch_size - 1}, "ok"),
              ("heatmap log magnitude", {"gx_hm_log": True}, "ok"), ("heatmap linear", {"gx_hm_log": False}, "ok"),
              ("heatmap batch out of range", {"gx_hm_batch": 10**30}, "rejected")]
    SWEPT["explorer"] = sweep(at, cases, baseline, _charts(None),
                              linked=[{"gx_target_preset", "gx_target", "gx_target_k"}])


def test_flow_sweep() -> None:
    at = _page("flow")
    at.run()
    options = {key: list(at.multiselect(key=key).options) for key in ("flow.cells", "flow.T", "flow.scale")}
    cells = list(at.multiselect(key="flow.cells").value)
    baseline = _sidebar_baseline(SMALL) | {"flow.cells": cells, "flow_layer": 1, "flow.T": [SMALL.seq_len],
                                           "flow.scale": list(at.multiselect(key="flow.scale").value)}
    # The sidebar's T and weight scale feed the sweep's options: a changed T once crashed this page (a selected
    # length no longer offered came back from the multiselect as text). Out-of-range numbers: see the explorer.
    cases: list[Case] = sidebar_cases(SMALL, DEVICES, out_of_range=False)
    cases += [(f"cells=[{c}]", {"flow.cells": [c]}, "ok") for c in options["flow.cells"]]
    cases += [("every cell", {"flow.cells": options["flow.cells"]}, "ok"), ("no cell", {"flow.cells": []}, "info"),
              ("layer 0", {"flow_layer": 0}, "ok"), ("layer 1", {"flow_layer": 1}, "ok"),
              ("bidirectional", {"gx_bidirectional": True}, "ok"),
              ("reverse", {"gx_bidirectional": True, "flow_direction": "reverse"}, "ok"),
              ("forward", {"gx_bidirectional": True, "flow_direction": "forward"}, "ok"),
              ("every T: too many runs", {"flow.T": options["flow.T"]}, "warning"), ("no T", {"flow.T": []}, "info"),
              ("largest T", {"flow.T": [max(options["flow.T"])]}, "ok"),
              ("every scale", {"flow.scale": options["flow.scale"]}, "ok"), ("no scale", {"flow.scale": []}, "info"),
              ("largest scale", {"flow.scale": [max(options["flow.scale"])]}, "ok")]
    SWEPT["flow"] = sweep(at, cases, baseline, _charts(4))  # decay, Jacobians (2), sweep


def test_graph_sweep() -> None:
    at = _page("graph")
    baseline = _sidebar_baseline(SMALL) | {"graph_steps": 3, "graph_ops": False, "graph_params": True,
                                           "graph_target": SMALL.target}
    # The graph draws a tiny model (T <= 4, the sidebar's layers) whatever the sidebar's T: no state-size error here.
    cases: list[Case] = sidebar_cases(SMALL, DEVICES, over_limit="ok", out_of_range=False)
    cases += [("steps=1", {"graph_steps": 1}, "ok"),
              (f"steps={MAX_GRAPH_STEPS}", {"graph_steps": MAX_GRAPH_STEPS}, "ok"),
              ("layers=1", {"gx_num_layers": 1}, "ok"),
              (f"layers={MAX_GRAPH_LAYERS}", {"gx_num_layers": MAX_GRAPH_LAYERS}, "ok"),
              ("every op", {"graph_ops": True}, "ok"), ("steps collapsed", {"graph_ops": False}, "ok"),
              ("no parameters", {"graph_params": False}, "ok"), ("parameters", {"graph_params": True}, "ok"),
              ("target h_n", {"graph_target": "h_n.sum()"}, "ok"),
              ("target beyond the tiny T", {"graph_target": "y[:, 9].sum()"}, "error"),
              ("target c_n on a GRU", {"graph_target": "c_n.sum()"}, "error")]
    cases += [(f"target {t[:40]!r}", {"graph_target": t}, "error") for t in GARBAGE_TARGETS]
    SWEPT["graph"] = sweep(at, cases, baseline, _has_graph)


def _has_graph(at: AppTest) -> None:
    assert at.get("graphviz_chart"), "no graph drawn"


def test_devices_sweep() -> None:
    at = _page("devices")
    at.run()
    devices = list(at.multiselect(key="dev_devices").options)
    baseline = _sidebar_baseline(SMALL) | {"dev_devices": devices, "dev_repeats": 1}
    cases: list[Case] = [("repeats=1", {"dev_repeats": 1}, "ok")]
    cases += sidebar_cases(SMALL, DEVICES, out_of_range=False)
    cases += [("no device", {"dev_devices": []}, "info"), ("every device", {"dev_devices": devices}, "ok"),
              (f"repeats={MAX_REPEATS}", {"dev_repeats": MAX_REPEATS}, "ok"),
              ("repeats out of range", {"dev_repeats": 10**30}, "rejected"),
              ("measure again", {"label:Measure again": True}, "ok")]
    SWEPT["devices"] = sweep(at, cases, baseline, _charts(2))


def test_puzzle_has_no_controls_to_sweep() -> None:
    """The home page takes no input (its configs are the seed's presets); its URL handling is in the URL table."""
    at = _page("puzzle")
    at.run()
    assert not at.exception and not _widgets(at)
    SWEPT["puzzle"] = 1


def test_flow_keeps_a_sweep_length_the_sidebar_moved_away_from() -> None:
    """Regression: the sweep's lengths were offered from the sidebar's T; after T changed, the selected old T was no
    longer offered and the selection was silently emptied."""
    at = AppTest.from_file(str(ROOT / "app_pages" / "flow.py"), default_timeout=90)
    at.session_state["gx_config"] = SMALL.replace(seq_len=7)
    at.run()
    assert at.multiselect(key="flow.T").value == [7]
    at.number_input(key="gx_seq_len").set_value(9)
    at.run()
    assert not at.exception and not at.error
    assert at.multiselect(key="flow.T").value == [7] and "9" in at.multiselect(key="flow.T").options
    assert len(at.get("vega_lite_chart")) == 4


def test_flow_survives_a_selection_sent_against_stale_options() -> None:
    """Regression: a client sent a sweep length in the same rerun that changed the sidebar's T; the multiselect
    decoded it against the previous run's options, where it was not one, and handed it back as text: the page crashed
    (TypeError summing the lengths). Found by the sweep above."""
    at = AppTest.from_file(str(ROOT / "app_pages" / "flow.py"), default_timeout=90)
    at.session_state["gx_config"] = SMALL
    at.run()
    at.number_input(key="gx_seq_len").set_value(7)
    at.run()
    at.number_input(key="gx_seq_len").set_value(6)
    at.multiselect(key="flow.T").set_value([6, 7])  # 6 was not offered in the run before
    at.multiselect(key="flow.cells").set_value(["gru"])
    at.run()
    assert not at.exception and not at.error
    assert len(at.get("vega_lite_chart")) == 4
