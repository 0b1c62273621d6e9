"""Bad query strings: every page renders, with a visible notice (st.warning) per bad value, and no exception.

The URL is the one input anybody can type without a widget in the way, so every page is opened with hostile
query strings: out-of-range and non-finite numbers, markup, code, absent devices, repeated keys, empty values,
unicode, very long values, unknown keys, and the pages' own dotted keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gru_explainer import ExplainConfig, Limits

from .vega import explorer_complete

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ExplainConfig()

BAD_QUERIES: list[tuple[str, dict[str, str | list[str]], int, ExplainConfig | None]] = [
    # (id, query, notices expected (-1: at least one), the config the page must end up with (None: any valid one))
    ("negative size", {"hidden_size": "-5"}, 1, DEFAULT),
    ("non-finite size", {"hidden_size": "1e309"}, 1, DEFAULT),
    ("size past the limit", {"hidden_size": "257", "num_layers": "5"}, 2, DEFAULT),
    ("non-finite weight scale", {"weight_scale": "1e309"}, 1, DEFAULT),
    ("NaN weight scale", {"weight_scale": "nan"}, 1, DEFAULT),
    ("negative weight scale", {"weight_scale": "-1"}, 1, DEFAULT),
    ("markup as cell", {"cell": "<script>alert(1)</script>"}, 1, DEFAULT),
    ("20-digit seq_len", {"seq_len": "99999999999999999999"}, 1, DEFAULT),
    ("negative seed", {"seed": "-1"}, 1, DEFAULT),
    ("code as target", {"target": "__import__('os')"}, 1, DEFAULT),
    ("dunder target", {"target": "y.__class__.__mro__"}, 1, DEFAULT),
    ("link in a target comment", {"target": "y.sum() # ` [Click to fix your GPU](https://evil.example) `"}, 1, DEFAULT),
    ("link as a key", {"[Click](javascript:alert(1))": "1"}, 1, DEFAULT),
    ("absent device", {"device": "cuda:7"}, 1, DEFAULT),
    ("unknown device", {"device": "tpu"}, 1, DEFAULT),
    ("repeated key, last value bad", {"cell": ["lstm", "gpt"]}, 2, DEFAULT),
    ("repeated key, last value good", {"cell": ["gpt", "lstm"]}, 1, DEFAULT.replace(cell="lstm")),
    ("empty values", {"hidden_size": "", "cell": "", "target": "", "bidirectional": ""}, 4, DEFAULT),
    ("unicode digits and names", {"hidden_size": "٣٢", "cell": "гру", "target": "y💥.sum()"}, 3, DEFAULT),
    ("unicode key", {"größe": "1"}, 1, DEFAULT),
    ("long value", {"target": "y" * 5000}, 1, DEFAULT),
    ("unknown key", {"zzz": "1", "__class__": "x"}, 2, DEFAULT),
    ("state-size limit together", {"batch_size": "64", "seq_len": "512", "hidden_size": "256", "num_layers": "4"}, -1,
     None),
    ("answer_gru with 3 layers", {"cell": "answer_gru", "num_layers": "3", "bidirectional": "true"}, 1,
     DEFAULT.replace(cell="answer_gru", num_layers=1)),
    ("target for another cell", {"target": "c_n.sum()"}, 1, DEFAULT),
]
"""Each row: the notices (one per bad value) and the config the page must end up with. The state-size row resets
sizes in urlstate's order until the config fits, whatever the hosted limit is at the time."""


UNESCAPED = re.compile(r"(?<!\\)[\[\]`*<>]")


def assert_literal(texts: list[str]) -> None:
    """Notices quote URL text; Markdown in it (links, code, emphasis, HTML) must arrive escaped, as plain text."""
    for text in texts:
        assert not UNESCAPED.search(text), text


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_with(page: str, query: dict[str, str | list[str]], timeout: float = 60) -> AppTest:
    at = AppTest.from_file(str(ROOT / page), default_timeout=timeout)
    for key, value in query.items():
        at.query_params[key] = value
    return run(at)


@pytest.mark.parametrize(("query", "notices", "expected"), [row[1:] for row in BAD_QUERIES],
                         ids=[row[0] for row in BAD_QUERIES])
def test_bad_query_on_the_explorer(query: dict, notices: int, expected: ExplainConfig | None) -> None:
    at = open_with("app_pages/explorer.py", query)
    shown = [w.value for w in at.warning]
    assert len(shown) == notices if notices >= 0 else shown, shown
    assert_literal(shown)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["gx_config"] == (expected or at.session_state["gx_config"])
    at.session_state["gx_config"].validate(Limits.from_env())
    assert explorer_complete(at)  # the page rendered in full
    assert all(isinstance(v, str) for v in at.query_params.values())  # the URL is left clean: one value per key
    run(at)
    assert not at.warning  # each notice is shown once


ALL_AT_ONCE = {"hidden_size": "1e309", "cell": "<script>", "seq_len": "99999999999999999999",
               "target": "__import__('os')", "device": "cuda:7", "seed": ["1", "2"], "weight_scale": "",
               "zzz": "💥"}


@pytest.mark.parametrize(("page", "extra", "check"), [
    ("app.py", {}, "vega_lite_chart"),  # the puzzle, the default page, through the entry point
    ("app_pages/flow.py", {"flow.cells": "<script>", "flow.T": "99999999999999999999", "flow.scale": "nan,inf"},
     "vega_lite_chart"),
    ("app_pages/graph.py", {}, "graphviz_chart"),
    ("app_pages/devices.py", {}, "vega_lite_chart"),
])
def test_bad_query_on_every_page(page: str, extra: dict, check: str) -> None:
    at = open_with(page, ALL_AT_ONCE | extra, timeout=90)
    shown = [w.value for w in at.warning]
    # 5 bad fields + the unknown key + the repeated key, plus one per bad page key
    assert len(shown) >= 7 + len(extra), shown
    assert_literal(shown)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["gx_config"] == DEFAULT.replace(seed=2)
    assert at.get(check)
    if page == "app_pages/flow.py":
        assert at.multiselect(key="flow.cells").value == ["gru", "lstm", "rnn_tanh", "rnn_relu"]
        assert at.multiselect(key="flow.T").value == [DEFAULT.seq_len]
