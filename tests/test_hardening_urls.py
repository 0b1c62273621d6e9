"""Bad query strings: every page renders, with a visible notice (st.warning) per bad value, and no exception.

The URL is the one input anybody can type without a widget in the way, so every page is opened with hostile
query strings: out-of-range and non-finite numbers, markup, code, absent devices, repeated keys, empty values,
unicode, very long values, unknown keys, and the pages' own dotted keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

import ui
from gru_explainer import ExplainConfig, Limits
from gru_explainer.urlstate import PAGE_KEYS, Notice, Quote, config_from_query

from .markdown import plain_text, split_code
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


UNESCAPED = re.compile(r"(?<!\\)[\[\]`*<>_~$&|#!]")
"""Markdown punctuation that is not backslash-escaped (outside code spans). An escaped underscore inside a name
(hidden_size) cannot start emphasis, so underscores are looked at only where md_escape must escape them."""
UNESCAPABLE = re.compile(r"www\.|@|:(?=\S)|://", re.IGNORECASE)
"""What a backslash cannot neutralise (literal autolinks, shortcodes, directives): only ever inside code spans."""


def inert(md: str) -> list[str]:
    """What in Markdown `md` (outside its code spans) could still become a link, image, icon, format or HTML."""
    outside, _ = split_code(md)
    outside = re.sub(r"(?<=[0-9A-Za-z])_(?=[0-9A-Za-z])", "", outside)  # snake_case names are not emphasis
    return UNESCAPED.findall(outside) + UNESCAPABLE.findall(outside)


def assert_literal(texts: list[str]) -> None:
    """Notices quote URL text; Markdown in it (links, code, emphasis, HTML, shortcodes, bare addresses) must arrive
    as plain text: escaped, or inside an inline code span."""
    for text in texts:
        assert not inert(text), (text, inert(text))


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


HOSTILE: list[tuple[str, str]] = [
    # (key, value): links, images, HTML, shortcodes, formatting, javascript: in config fields, the pages' own keys,
    # unknown keys and unknown dotted keys (issue 9); tests/e2e/test_hostile_urls.py opens the same in Chromium.
    ("seed", "http://evil.example www.evil.example a@evil.example"),
    ("target", "[click](http://evil.example/)"),
    ("cell", '<a href="http://evil.example/cell">x</a>'),
    ("hidden_size", "https://evil.example/size"),
    ("head", "![img](http://evil.example/head.png)"),
    ("dtype", ":material/warning: :smile: **bold**"),
    ("device", "javascript:alert(1)"),
    ("weight_scale", "<img src=http://evil.example/ws.png>"),
    ("[k](http://evil.example/key)", "v"),
    ("www.evil.example", "1"),
    ("explorer.bogus", "http://evil.example/dotted"),
    ("foo.bar", "a@evil.example"),
    ("explorer.log", "[x](javascript:alert(2))"),
    ("explorer.direction", ":material/warning:"),
    ("flow.cells", "http://evil.example/flow"),
    ("flow.T", "www.evil.example"),
    ("graph.steps", "<a href=http://evil.example/graph>g</a>"),
]
MARKERS = ("evil", "material/", ":smile:", "javascript", "**bold**", "<a", "<img")
"""Pieces of the hostile URL that may appear on a page only inside code spans."""
MARKDOWN_ELEMENTS = ("warning", "error", "info", "success", "markdown", "caption", "title", "header", "subheader")


def active(md: str) -> list[str]:
    """The MARKERS found in Markdown `md` outside its code spans, not counting backslash-escaped characters."""
    outside = re.sub(r"\\[!-/:-@\[-`{-~]", "", split_code(md)[0]).lower()
    return [m for m in MARKERS if m in outside]


def markdown_sources(at: AppTest) -> list[str]:
    """Every Markdown text the page sent: alerts, markdown, captions, headings, and st.table's cells."""
    texts = [str(el.value) for kind in MARKDOWN_ELEMENTS for el in getattr(at, kind)]
    for table in at.table:
        texts += [str(v) for v in table.value.to_numpy().ravel()]
    return texts


@pytest.mark.parametrize("page", ["app.py", "app_pages/explorer.py", "app_pages/flow.py", "app_pages/graph.py",
                                  "app_pages/devices.py", "app_pages/your_model.py"])
def test_hostile_url_text_is_never_markdown(page: str) -> None:
    """No link, image, icon, format or HTML from the URL on any page: its text lies only inside code spans."""
    at = open_with(page, dict(HOSTILE), timeout=90)
    for text in markdown_sources(at):
        assert not active(text), text
    if page.endswith("your_model.py"):  # it reads no shared config: through app.py (the e2e test) it gets notices
        return
    notices = [plain_text(w.value) for w in at.warning]
    assert len(notices) >= 12, notices  # 8 bad fields, 4 unknown keys (the pages' own keys: on their page)
    assert_literal([w.value for w in at.warning])
    quoted = [value for _, value in HOSTILE[:8]] + [key for key, _ in HOSTILE[8:12]]  # field values, unknown keys
    for text in quoted:  # each quoted exactly as the URL gave it
        assert any(repr(text) in n for n in notices), (text, notices)
    for key in ("[k](http://evil.example/key)", "www.evil.example", "explorer.bogus", "foo.bar"):
        assert key not in at.query_params  # unknown keys, dotted or not, are dropped from the URL
    assert at.session_state["gx_config"] == DEFAULT


def test_known_dotted_keys_still_work_and_unknown_ones_are_noticed() -> None:
    at = open_with("app_pages/explorer.py", {"explorer.log": "false", "explorer.bogus": "1", "foo.bar": "2",
                                             "hidden_size": "16"})
    notices = [plain_text(w.value) for w in at.warning]
    assert len(notices) == 2 and "'explorer.bogus'" in notices[0] + notices[1] and "'foo.bar'" in " ".join(notices)
    assert "explorer.log" in " ".join(notices)  # the notice for explorer.bogus lists the explorer's keys
    assert at.toggle(key="gx_log").value is False and at.query_params["explorer.log"] == "false"
    assert "explorer.bogus" not in at.query_params and "foo.bar" not in at.query_params
    assert at.session_state["gx_config"].hidden_size == 16


def test_every_url_key_a_page_writes_is_a_known_page_key() -> None:
    """PAGE_KEYS lists every dotted key the pages read or write (else the entry point would notice and drop it)."""
    used = set()
    for path in (ROOT / "app_pages").glob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r"[\"']((?:explorer|flow|graph|learn|devices|puzzle|pitfalls|your_model|model)"
                               r"\.(?!pth?[\"'])[A-Za-z_]+)[\"']", text))  # not the file name 'model.pt'
        if "_url_key" in text:  # the graph page builds its keys: "graph." + the option's name
            used |= {"graph." + k.removeprefix("graph_") for k in re.findall(r'"(graph_[a-z]+)": \(', text)}
    assert used and used <= PAGE_KEYS, sorted(used - PAGE_KEYS)
    _, notices = config_from_query(dict.fromkeys(PAGE_KEYS, "1"))
    assert notices == []


def test_notices_keep_the_quoted_text_apart() -> None:
    notice = Notice("URL parameter seed=", Quote("[x](http://evil.example)"), " ignored.")
    assert notice == "URL parameter seed='[x](http://evil.example)' ignored." and notice.quotes == (
        "[x](http://evil.example)",)
    assert ui.md_escape(notice) == "URL parameter seed=` '[x](http://evil.example)' ` ignored."
    import pickle

    assert pickle.loads(pickle.dumps(notice)).parts == notice.parts


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
       | st.lists(st.sampled_from(["http://", "www.", "a@b.c", ":material/warning:", ":smile:", "[x](y)", "![i](j)",
                                   "<a href=x>", "**", "__", "`", "``", " ", "- ", "1. ", "#", "$", ":red[x]", "\\",
                                   "javascript:", "&amp;", "|", "~~", "\n"]), max_size=12).map("".join))
def test_md_escape_shows_any_text_literally(text: str) -> None:
    """Whatever the text, md_escape's Markdown holds nothing active outside code spans, and reads as the text."""
    md = ui.md_escape(text)
    assert not inert(md), (text, md)
    lines = text.split("\n")
    if all(line.isprintable() and line == line.strip(" ") for line in lines):
        assert plain_text(md) == text, (text, md)


def test_your_model_shows_a_hostile_file_name_and_key_prefix_literally() -> None:
    """The uploaded file's name and its keys are the visitor's text too (errors, the architecture table)."""
    import io

    import torch

    prefix = "[x](http://evil.example/p) :material/warning: www.evil.example."
    buffer = io.BytesIO()
    torch.save({prefix + k: v for k, v in torch.nn.GRU(3, 4).state_dict().items()}, buffer)
    at = AppTest.from_file(str(ROOT / "app_pages/your_model.py"), default_timeout=60)
    run(at)
    at.file_uploader(key="ym_file").set_value(("[a](http://evil.example/f).pt", buffer.getvalue(), "x"))
    run(at)
    sources = markdown_sources(at)
    assert any("evil" in text for text in sources)  # the prefix is shown (in the table) ...
    for text in sources:  # ... literally
        assert not active(text), text
    at.file_uploader(key="ym_file").set_value(("<a href=http://evil.example>f</a>.pt", b"not a state dict", "x"))
    run(at)
    assert at.error and "evil" in at.error[0].value  # the file's name in the error, literally
    for text in markdown_sources(at):
        assert not active(text), text


def _interrupted_first_run() -> None:
    """A page whose first run is cut short by a rerun (a click while it computes), as app.py reports it."""
    import streamlit as st
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException

    import ui

    ui.shared_config()
    ui.shared_config()  # a page calls it again: the notices are still shown once per run
    runs = st.session_state["runs"] = st.session_state.get("runs", 0) + 1
    ui.run_ended(RerunException(None) if runs == 1 else None)


def test_url_notices_survive_a_run_cut_short_by_a_rerun() -> None:
    at = AppTest.from_function(_interrupted_first_run, default_timeout=30)
    at.query_params["hidden_size"] = "-5"
    shown = [len(run(at).warning) for _ in range(3)]
    assert shown == [1, 1, 0]  # shown, cut short, shown again to the end, then gone


def test_app_shows_url_notices_once_and_not_on_the_next_run() -> None:
    at = open_with("app.py", {"hidden_size": "-5", "zzz": "1"})
    assert len(at.warning) == 2, [w.value for w in at.warning]
    assert not run(at).warning
