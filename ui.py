"""Streamlit helpers shared by every page: the shared config (session state + URL), its sidebar, the cached core call.

Interface used by all pages (keep it stable):
    shared_config() -> ExplainConfig           the current config; first load reads st.query_params (notices shown)
    set_shared_config(cfg) -> None             store it for every page and write the non-default fields to the URL
    config_sidebar() -> ExplainConfig          architecture / data / device widgets in the sidebar; updates and returns
    cached_explain(cfg, engine="fused")        GradientReport, or None after showing the core's error with st.error
    show_error(err, on_cpu=None) -> None       st.error with the message only (never a traceback); a DeviceError
                                               also gets a "Run on the CPU instead" button (see offer_cpu)
    show_notice(notice) -> None                st.warning for a URL notice (its quoted URL text shown literally)
    run_ended(stopped_by) -> None              app.py, after each run: URL notices a rerun cut short come back
    md_escape(text) / literal(text) -> str     Markdown that shows text literally: visitor text (URL, typed, uploaded)
                                               never becomes a link, image, icon shortcode, formatting or HTML
Extra helpers:
    report_chart(cfg, kind, *args, engine="fused")   draw a `gru_explainer.charts` chart of explain(cfg), cached
    cached_profile / cached_graph / cached_compare / cached_census   the flow, graph and devices pages' core
                                               calls, cached on the full config (importable, so tests can call them)
    mirror_view / seed_widget / keep_option   a page's view state: URL mirror, widget seeding, stale options
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitDuplicateElementKey

import hosting
from gru_explainer import (
    ConfigError,
    DeviceError,
    ExplainConfig,
    GradientReport,
    Limits,
    TargetError,
    available_devices,
    charts,
    explain,
)
from gru_explainer.compare import compare, fused_graph_census
from gru_explainer.config import CELL_LABELS, CELLS, DTYPES, HEADS
from gru_explainer.flow import jacobian_profile, profile_of
from gru_explainer.graph import backward_graph, graph_facts
from gru_explainer.urlstate import FIELD_NAMES, PAGE_KEYS, Notice, Quote, config_from_query, config_to_query
from warmup import hidden_script

CONFIG_KEY = "gx_config"
NOTICES_KEY = "gx_config_notices"
UNDELIVERED_KEY = "gx_config_notices_undelivered"
HEAD_LABELS = {"none": "none (y is the output)", "linear": "Linear on the last step (MyModel)"}
MIN_WEIGHT_SCALE = 0.001
SIDEBAR_FIELDS = ("cell", "num_layers", "input_size", "hidden_size", "bidirectional", "head", "head_size", "seq_len",
                  "batch_size", "seed", "dtype", "device", "weight_scale")
"""The config fields `config_sidebar` edits (all but the target, which pages choose themselves)."""


def shared_config() -> ExplainConfig:
    """The config shared by all pages; on a session's first run it comes from the URL, with notices for bad values."""
    if CONFIG_KEY not in st.session_state:
        cfg, notices = config_from_query(st.query_params.to_dict())  # a repeated key: its last value counts
        for key in list(st.query_params):
            values = st.query_params.get_all(key)
            if len(values) > 1:
                notices.append(Notice("The URL gives ", Quote(key[:40]), f" {len(values)} times; only the last "
                                      "value counts."))
                st.query_params[key] = values[-1]
        st.session_state[NOTICES_KEY] = notices
        for key in list(st.query_params):  # drop unknown keys (noticed above); pages own the known dotted ones
            if key not in FIELD_NAMES and key not in PAGE_KEYS:
                del st.query_params[key]
        set_shared_config(cfg)  # rewrite the URL without the values that fell back to defaults
    notices = st.session_state.pop(NOTICES_KEY, [])  # shown once per run (pages call this too) ...
    if notices:
        st.session_state[UNDELIVERED_KEY] = notices  # ... and again next run if this one is cut short (`run_ended`)
    for notice in notices:
        show_notice(notice)
    return st.session_state[CONFIG_KEY]


def run_ended(stopped_by: BaseException | None) -> None:
    """Forget the URL notices once a run has shown them to the end; a run cut short by a rerun (a click while the
    first run computes) keeps them, so the next run shows them again instead of losing them."""
    _RUN.__dict__.clear()
    undelivered = st.session_state.pop(UNDELIVERED_KEY, None)
    if undelivered and _is_rerun(stopped_by):
        st.session_state[NOTICES_KEY] = undelivered


def _is_rerun(err: BaseException | None) -> bool:
    """Whether `err` is Streamlit's request to rerun the script (it interrupts a run at its next element)."""
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException

    return isinstance(err, RerunException)


NARROW_PX = 768
"""Streamlit's small-screen breakpoint: below it the open sidebar covers the page instead of sitting beside it."""
CLOSE_SIDEBAR_JS = """<script>
(() => {{ // page {page}: runs once per page shown (the text changes with it), not on a rerun of the same page
  if (window.innerWidth >= {narrow}) return;
  const close = document.querySelector('[data-testid="stSidebar"] button[aria-label="Collapse sidebar"]');
  if (close && close.getAttribute('aria-expanded') === 'true') close.click();
}})();
</script>"""
CLOSER_KEY = "gx_sidebar_closer"


def close_sidebar_on_narrow_screens(page: str) -> None:
    """Close the sidebar when page `page` is shown in a window narrower than NARROW_PX, where it covers the page.

    Streamlit closes it after a click in its navigation only for a phone's user agent; in a narrowed desktop window
    it stayed open over every page picked from it. The script (`st.html`'s supported JavaScript option) runs in the
    browser each time the page changes, not when a widget reruns the same page (an open sidebar then stays open while
    its settings are edited); it is a `warmup.hidden_script`, taking no space.
    """
    hidden_script(CLOSER_KEY, CLOSE_SIDEBAR_JS.format(page=json.dumps(page), narrow=NARROW_PX))


def seed_widget(key: str, value: Any) -> None:
    """Seed widget `key` from a page's stored view when the widget has no state yet (first run, back from a page)."""
    if key not in st.session_state:
        st.session_state[key] = value


def keep_option(key: str, options: list, default: Any) -> None:
    """Reset a selector whose stored value is no longer among its options (e.g. fewer layers, another file)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


def mirror_view(wanted: dict[str, str], keys: Any) -> None:
    """Make the URL hold exactly `wanted` among the page's view `keys` (ViewParam specs or key names): set what
    differs, drop the keys at their default. A page's view state lives in the URL this way."""
    for key in keys:
        key = getattr(key, "key", key)
        if key in wanted:
            if st.query_params.get(key) != wanted[key]:
                st.query_params[key] = wanted[key]
        else:
            st.query_params.pop(key, None)


def set_shared_config(cfg: ExplainConfig) -> None:
    """Store `cfg` for every page and mirror its non-default fields in the URL (other URL keys are kept)."""
    st.session_state[CONFIG_KEY] = cfg
    wanted = config_to_query(cfg)
    for name in FIELD_NAMES:
        if name in wanted:
            if st.query_params.get(name) != wanted[name]:
                st.query_params[name] = wanted[name]
        elif name in st.query_params:
            del st.query_params[name]


def show_error(err: Exception, on_cpu: Callable[[], None] | None = None) -> None:
    """Show an error's message on the page (the core's messages name the field); never a traceback.

    A DeviceError (an accelerator failed: out of memory, driver fault) also gets the "Run on the CPU instead"
    button; `on_cpu` is an extra callback for that button (e.g. a page that picks its own devices).
    """
    if isinstance(err, DeviceError):
        st.error(md_escape(str(err)), icon=":material/memory:")
        offer_cpu(on_cpu)
    elif isinstance(err, ValueError):
        st.error(md_escape(str(err)), icon=":material/error:")
    else:
        st.error(md_escape(f"Unexpected {type(err).__name__}: {err}"), icon=":material/error:")


_MARKDOWN = re.compile(r"[\\`*\[\]<>$~&|#!{}]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_UNESCAPABLE = re.compile(r"@|:(?!$)|www\.", re.IGNORECASE)
"""What no backslash can neutralise in Streamlit's Markdown: GFM's literal autolinks (``www.``, ``http://``, an
``@`` address) and the ``:material/x:`` / ``:emoji:`` shortcodes are found in the text AFTER escapes are resolved,
and ``:name`` starts a directive. A token (a run without spaces) holding one of them (a colon anywhere but at its
end) or an unprintable character is shown as inline code instead."""


def _line_start(line: str) -> str:
    """Escape a list, heading or setext marker at the start of a line ("- x", "1. x", "+ x", "=")."""
    match = re.match(r" *[-+=]| *\d+(?=[.)])", line)
    if match is None:
        return line
    end = match.end() if match.group(0).strip()[0].isdigit() else match.end() - 1
    return line[:end] + "\\" + line[end:]


WORD_JOINER = "\u2060"


def literal(text: str) -> str:
    """`text` as one inline code span: Markdown shows every character in it literally (no link, image, icon or
    emoji shortcode, formatting or HTML). Control and invisible characters are shown as escapes (``\n``), so the
    span stays one line; its fence is longer than any backtick run inside."""
    shown = "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)
    # Streamlit's frontend rewrites ":material/" to ":material_" everywhere in the source, code spans included (to
    # find icon shortcodes); an invisible word joiner keeps the quoted text as it was (the icon was never drawn).
    shown = re.sub(r"(?i):(?=material/)", ":" + WORD_JOINER, shown)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", shown)), default=0) + 1)
    return f"{fence} {shown} {fence}"


def md_escape(text: str) -> str:
    """`text` as literal characters in Streamlit's Markdown (alerts, captions and markdown render Markdown).

    Messages quote what a visitor typed, uploaded or put in the URL; none of it may become a link, an image, an
    icon, formatting or HTML. Markdown's punctuation is backslash-escaped (underscores only where they could start
    or end emphasis, not inside names like hidden_size); tokens that escaping cannot make inert (see _UNESCAPABLE:
    ``http://…``, ``www.…``, ``a@b.c``, ``:material/x:``) become inline code (`literal`), as does every quoted
    part of a `Notice` (the URL's text, whatever it holds). A list or heading marker at a line's start is escaped.
    """
    if isinstance(text, Notice):
        return "".join(literal(repr(part)) if isinstance(part, Quote) else md_escape(part) for part in text.parts)
    return "\n".join(_line_start("".join(_render(piece) for piece in _pieces(line))) for line in str(text).split("\n"))


_QUOTED = re.compile(r"(?:^|(?<=[\s=(\[,]))'[^'\n]*'(?=[\s.,;:)\]]|$)")
"""A Python string literal in a message ('cuda:7', 'y[:, -1].sum()'): one piece, so it becomes one code span."""


def _pieces(line: str) -> list[str]:
    """A line cut into quoted literals, runs of spaces and the tokens between them."""
    pieces, at = [], 0
    for match in _QUOTED.finditer(line):
        pieces += [*re.split(r"( +)", line[at:match.start()]), match.group(0)]
        at = match.end()
    return [p for p in [*pieces, *re.split(r"( +)", line[at:])] if p]


def _render(piece: str) -> str:
    """One piece of md_escape's output: spaces as they are, a token that escapes cannot make inert (or a quoted
    literal with punctuation) as inline code, any other token backslash-escaped."""
    if not piece.strip(" "):
        return piece
    quoted = piece.startswith("'") and len(piece) > 1 and re.search(r"[^\w .,-]", piece[1:-1])
    if quoted or _UNESCAPABLE.search(piece) or not piece.isprintable():
        return literal(piece)
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), piece)


def show_notice(notice: str, icon: str = ":material/link_off:") -> None:
    """A URL notice (`gru_explainer.urlstate.Notice`, or any message quoting visitor text) as an st.warning whose
    quoted text is literal (see md_escape)."""
    st.warning(md_escape(notice), icon=icon)


CPU_BUTTON_KEY = "gx_run_on_cpu"


def _run_on_cpu(extra: Callable[[], None] | None) -> None:
    """The CPU fallback (a button callback, runs before the rerun): the shared config's device becomes "cpu"."""
    set_shared_config(st.session_state.get(CONFIG_KEY, ExplainConfig()).replace(device="cpu"))
    if extra is not None:
        extra()


def offer_cpu(on_cpu: Callable[[], None] | None = None) -> None:
    """A "Run on the CPU instead" button (once per run) that switches the shared config to the CPU and reruns."""
    with contextlib.suppress(StreamlitDuplicateElementKey):  # a second failure in the same run: one button will do
        st.button("Run on the CPU instead", key=CPU_BUTTON_KEY, icon=":material/memory:", type="primary",
                  on_click=_run_on_cpu, args=(on_cpu,),
                  help="Sets the device to cpu for every page (and in the URL); the CPU always works.")


@st.cache_data(max_entries=64, max_size=hosting.cache_budget("explain"), show_spinner="Computing gradients…")
def _explain_cached(fields: tuple[tuple[str, Any], ...], engine: str) -> GradientReport:
    """The core call, keyed on the plain config fields; cache_data pickles the report (a copy per hit).

    Measured: default config ~0.1 MB pickled, ~10 ms to unpickle per hit; the largest hosted configs ~40 MB,
    ~45 ms. `max_size` bounds the cache's pickled bytes so a hosted (~1 GB) instance cannot fill up (hosting.py).
    """
    with hosting.heavy():
        return explain(ExplainConfig(**dict(fields)), engine=engine)


_RUN = threading.local()
"""The last report this script thread's run got from the cache (`last`: fields, engine, report): charts drawn in the
same run use it instead of unpickling another copy (~10 ms each at the defaults). Cleared by `run_ended`."""


def _report_of(fields: tuple[tuple[str, Any], ...], engine: str) -> GradientReport:
    """The run's own report of `fields` when it has one, else the cache's copy."""
    last = getattr(_RUN, "last", None)
    if last is not None and last[0] == fields and last[1] == engine:
        return last[2]
    return _explain_cached(fields, engine)


def cached_explain(cfg: ExplainConfig, engine: str = "fused") -> GradientReport | None:
    """`explain(cfg, engine=...)` through the cache; None (after st.error) when it cannot run.

    Invalid input shows the core's message (it names the field); a device this machine lacks (e.g. a session's
    GPU that went away) or a failing accelerator (DeviceError) also offers the CPU fallback button.
    """
    try:
        fields = tuple(cfg.to_dict().items())
        report = _explain_cached(fields, engine)
        _RUN.last = (fields, engine, report)
        return report
    except (ConfigError, TargetError) as err:  # invalid input: the core's message names the field
        show_error(err)
        if isinstance(cfg.device, str) and cfg.device not in ("auto", *available_devices()):
            offer_cpu()
    except Exception as err:  # DeviceError gets the CPU button; anything else: say so, never show a traceback
        show_error(err)
    return None


REPORT_CHARTS = {
    "norm": lambda report, log_scale: charts.gradient_norm_chart(report.frame, log_scale),
    "heatmap": lambda report, layer, direction, batch, log_magnitude=False: charts.unit_heatmap(
        report.unit_frame(layer, direction, batch), log_magnitude),
    "input": lambda report: charts.input_grad_chart(report.frame),
    "puzzle": lambda report: charts.puzzle_chart(report.frame, report.config.target),
}
"""Charts of one report by name; `report_chart` caches their Vega-Lite specs."""


@st.cache_data(max_entries=256, max_size=hosting.cache_budget("chart_spec"), show_spinner=False)
def _chart_spec(fields: tuple[tuple[str, Any], ...], engine: str, kind: str, args: tuple) -> dict:
    """Build, serialise and lay out a report chart once (~10-40 ms at the defaults: `charts.VegaLiteChart`)."""
    # Unvalidated: the chart functions' specs are validated in tests/test_charts.py; here it would cost ~50 ms.
    with hosting.heavy():
        return charts.page_layout(REPORT_CHARTS[kind](_report_of(fields, engine), *args).to_dict(validate=False))


def report_chart(cfg: ExplainConfig, kind: str, *args: Any, engine: str = "fused") -> None:
    """Draw chart `kind` (see REPORT_CHARTS) of explain(cfg) from a cached spec; shows the error if cfg is invalid."""
    try:
        layout = _chart_spec(tuple(cfg.to_dict().items()), engine, kind, tuple(args))
    except Exception as err:  # the same errors cached_explain reports; never a traceback
        show_error(err)
        return
    show_layout(layout)


def show_chart(chart: Any) -> None:
    """Draw an Altair chart (or its spec dict) as every page does: see `show_layout`."""
    show_layout(charts.page_layout(chart if isinstance(chart, dict) else chart.to_dict(validate=False)))


CHART_TEXT_COLOUR = "currentColor"
"""Chart text is drawn in the page's own text colour (the CSS `color` the chart inherits from Streamlit's theme), so
it follows the visitor's light or dark theme in the browser, even when they switch it, without a rerun. Streamlit's
chart theme draws it in a fixed grey instead (#808495: 3.7:1 on white, below WCAG AA's 4.5:1)."""
CHART_LABEL_OPACITY = 0.75
"""Axis and legend labels are muted against titles: the text colour at 75 % is 8.0:1 on the light theme's white (its
text #181614, .streamlit/config.toml) and 8.9:1 on the dark theme's #171614 (tests/e2e/test_contrast.py measures)."""
CHART_TEXT_CONFIG = {
    "axis": {"labelColor": CHART_TEXT_COLOUR, "titleColor": CHART_TEXT_COLOUR, "labelOpacity": CHART_LABEL_OPACITY},
    "legend": {"labelColor": CHART_TEXT_COLOUR, "titleColor": CHART_TEXT_COLOUR, "labelOpacity": CHART_LABEL_OPACITY},
    "title": {"color": CHART_TEXT_COLOUR, "subtitleColor": CHART_TEXT_COLOUR},
    "header": {"labelColor": CHART_TEXT_COLOUR, "titleColor": CHART_TEXT_COLOUR},
}
"""The Vega-Lite config `themed_spec` adds to every chart the pages draw (Streamlit's theme leaves a title's subtitle
black, unreadable on the dark theme)."""


def themed_spec(spec: dict) -> dict:
    """`spec` with CHART_TEXT_CONFIG under its own config (a chart's own setting wins): readable text in both themes.

    The colours belong here, not in `gru_explainer.charts`: the core's charts stay theme-agnostic (the CLI writes
    them to files)."""
    config = dict(spec.get("config", {}))
    for section, defaults in CHART_TEXT_CONFIG.items():
        config[section] = {**defaults, **config.get(section, {})}
    return {**spec, "config": config}


def show_layout(layout: dict) -> None:
    """Draw a `charts.page_layout`: the title and subtitle as text (it wraps on any screen), then each row's panels
    side by side in columns filling the page (Streamlit stacks columns on a phone), every panel labelled, its
    text in the theme's colour (`themed_spec`)."""
    if layout["title"]:
        st.markdown(f"**{md_escape(layout['title'])}**")
    if layout["subtitle"]:
        st.caption("  \n".join(md_escape(line) for line in layout["subtitle"]))
    labelled = len(layout["rows"]) > 1 or any(len(row) > 1 for row in layout["rows"])
    for row in layout["rows"]:
        for column, (label, spec) in zip(st.columns(len(row), vertical_alignment=layout["align"]), row, strict=True):
            with column:
                if labelled and label:
                    st.markdown(f"**{md_escape(label)}**")
                st.vega_lite_chart(spec=themed_spec(spec), width="stretch")


@st.cache_data(max_entries=256, max_size=hosting.cache_budget("profile"), show_spinner=False)
def _profile(fields: tuple[tuple[str, Any], ...]) -> pd.DataFrame:
    with hosting.heavy():
        return profile_of(ExplainConfig(**dict(fields)))


def cached_profile(cfg: ExplainConfig) -> pd.DataFrame:
    """The flow page's decay profile of one config (`flow.profile_of`), cached on all its fields."""
    return _profile(tuple(cfg.to_dict().items()))


@st.cache_data(max_entries=64, max_size=hosting.cache_budget("jacobians"), show_spinner=False)
def _jacobians(fields: tuple[tuple[str, Any], ...], layer: int, direction: str) -> pd.DataFrame:
    cfg = ExplainConfig(**dict(fields))
    with hosting.heavy():
        return jacobian_profile(explain(cfg), min(layer, cfg.num_layers - 1), direction)


def cached_jacobians(cfg: ExplainConfig, layer: int, direction: str) -> pd.DataFrame:
    """The flow page's step-Jacobian profile (`flow.jacobian_profile`, batch item 0) of one config, cached."""
    return _jacobians(tuple(cfg.to_dict().items()), int(layer), direction)


@st.cache_data(max_entries=32, max_size=hosting.cache_budget("graph"), show_spinner=False)
def _graph(fields: tuple[tuple[str, Any], ...], show_parameters: bool,
           every_op: bool) -> tuple[str, str, dict[str, Any]]:
    """The graph's and its legend's DOT strings and facts; `h0_ops` (who reads the top h_0) from the full graph."""
    graph = backward_graph(ExplainConfig(**dict(fields)), show_parameters=show_parameters)
    shown = graph if every_op else graph.collapsed()
    facts = graph_facts(shown)
    full = graph_facts(graph)
    facts["h0_ops"], facts["autograd_nodes"] = full["h0_consumers"], full["nodes"]
    return shown.to_dot(rankdir="TB", legend=False), shown.legend_dot(), facts


def cached_graph(cfg: ExplainConfig, show_parameters: bool = False,
                 every_op: bool = False) -> tuple[str, str, dict[str, Any]]:
    """The graph page's drawing of `cfg` (DOT of the graph, DOT of its legend, facts), cached on the config and the
    page's two options (parameters shown; every autograd op, or each step's gate ops collapsed into its state)."""
    return _graph(tuple(cfg.to_dict().items()), bool(show_parameters), bool(every_op))


@st.cache_data(max_entries=16, max_size=hosting.cache_budget("compare"),
               show_spinner="Running every device and engine…")
def _compare(fields: tuple[tuple[str, Any], ...], devices: tuple[str, ...], repeats: int, nonce: int) -> pd.DataFrame:
    with hosting.heavy():
        return compare(ExplainConfig(**dict(fields)), devices=list(devices), repeats=repeats)


def cached_compare(cfg: ExplainConfig, devices: tuple[str, ...], repeats: int, nonce: int = 0) -> pd.DataFrame:
    """The devices page's `compare` table, cached on the config, devices and repeats (`nonce` forces a re-measure)."""
    return _compare(tuple(cfg.to_dict().items()), tuple(devices), int(repeats), int(nonce))


@st.cache_data(max_entries=16, max_size=hosting.cache_budget("census"), show_spinner=False)
def _census(fields: tuple[tuple[str, Any], ...], devices: tuple[str, ...]) -> pd.DataFrame:
    with hosting.heavy():
        return fused_graph_census(ExplainConfig(**dict(fields)), devices=list(devices))


def cached_census(cfg: ExplainConfig, devices: tuple[str, ...]) -> pd.DataFrame:
    """The devices page's autograd census of the fused module per device, cached on the config and devices."""
    return _census(tuple(cfg.to_dict().items()), tuple(devices))


GLOSSARY = {
    "twin": "The unrolled twin: the same cell with the same weights, written as a Python loop over the time steps, "
            "so every h_t is a node of the autograd graph. The devices page uses the CPU twin as the reference.",
    "adjoint": "The adjoint recursion dL/dh_{t-1} = ∂L/∂h_{t-1} (read directly) + (∂h_t/∂h_{t-1})ᵀ dL/dh_t, run "
               "backwards over the fused module's states: the fast engine's way to every dL/dh_t without unrolling.",
    "anchor / read step": "The step where the target reads the most gradient directly (from y, h_n or the layer "
                          "above). The flow page counts distances from it (k = 0).",
    "TF32": "TensorFloat-32: the tensor-core format NVIDIA GPUs may use for float32 matmuls (10-bit mantissa), so "
            "float32 results on a GPU differ slightly from the CPU's; the devices page allows for it.",
    "reserve space": "The buffer cuDNN's fused RNN kernel keeps from its forward for its backward; the per-step "
                     "states live there, inside one autograd node, so autograd never shows them as tensors.",
    "structural zero": "A gradient that is exactly 0 because no graph path leads from the tensor to the target, "
                       "e.g. y[:, t] at a step the target does not read.",
    "zero on a path": "A path to the target exists, but the true value is exactly 0: a dead ReLU unit, a zero factor "
                      "or an exact cancellation in the target.",
    "underflow": "The true value is not 0, but too small for the dtype (or a denormal flushed to 0), so it shows as "
                 "0; the charts draw it at its true size and the tooltip gives it.",
}
"""Short definitions of the terms the pages use (`glossary` shows them)."""


def glossary(terms: tuple[str, ...] | None = None) -> None:
    """A "Glossary" popover with the definitions of `terms` (default: all of GLOSSARY)."""
    with st.popover("Glossary", icon=":material/menu_book:", help="What the terms on this page mean."):
        st.markdown("\n".join(f"- **{term}**: {md_escape(GLOSSARY[term])}" for term in terms or GLOSSARY))


def file_stem(cfg: ExplainConfig) -> str:
    """A file name stem naming the config: cell, layers, direction, sizes, head, T, B, seed, dtype, scale, target."""
    target = re.sub(r"[^0-9A-Za-z]+", "-", cfg.target.replace("-1", "last")).strip("-")[:40] or "target"
    parts = [cfg.cell, f"L{cfg.num_layers}", "bi" if cfg.bidirectional else "", f"I{cfg.input_size}",
             f"H{cfg.hidden_size}", f"head{cfg.head_size}" if cfg.head != "none" else "", f"T{cfg.seq_len}",
             f"B{cfg.batch_size}", f"seed{cfg.seed}", cfg.dtype, f"ws{cfg.weight_scale:g}", target]
    return "_".join(p for p in parts if p)


def report_csv(report: GradientReport) -> bytes:
    """The report's frame as CSV, with the config (and so the target) in leading `config.*` columns."""
    config = {f"config.{name}": value for name, value in report.config.to_dict().items()}
    return report.frame.assign(**config)[[*config, *report.frame.columns]].to_csv(index=False).encode()


def report_json(report: GradientReport) -> bytes:
    """The report as strict JSON (`gru_explainer.export.report_dict`)."""
    import json

    from gru_explainer.export import report_dict

    return (json.dumps(report_dict(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _widget_values(cfg: ExplainConfig, devices: list[str], limits: Limits) -> dict[str, Any]:
    """The sidebar widgets' values for `cfg`, clamped to what the widgets accept (a widget must never raise)."""
    def clamp(value: Any, low: float, high: float, kind: type) -> Any:
        try:
            return kind(min(max(kind(value), low), high))
        except (TypeError, ValueError, OverflowError):
            return kind(low)

    values = {f"gx_{name}": getattr(cfg, name) for name in SIDEBAR_FIELDS}
    for name in ("num_layers", "input_size", "hidden_size", "head_size", "seq_len", "batch_size"):
        values[f"gx_{name}"] = clamp(getattr(cfg, name), 1, getattr(limits, f"max_{name}"), int)
    values["gx_seed"] = clamp(cfg.seed, 0, 2**31 - 1, int)
    values["gx_weight_scale"] = clamp(cfg.weight_scale, MIN_WEIGHT_SCALE, limits.max_weight_scale, float)
    values["gx_bidirectional"] = bool(cfg.bidirectional)
    for name, options in (("cell", CELLS), ("head", HEADS), ("dtype", DTYPES), ("device", devices)):
        if getattr(cfg, name) not in options:
            values[f"gx_{name}"] = options[0]
    return values


def _on_sidebar_change() -> None:
    """A sidebar widget changed (runs before the script): fold the widgets' values into the shared config."""
    cfg = st.session_state.get(CONFIG_KEY, ExplainConfig())
    changes = {name: st.session_state.get(f"gx_{name}", getattr(cfg, name)) for name in SIDEBAR_FIELDS}
    if changes["cell"] == "answer_gru":  # the seed answer's GRU: exactly one layer and one direction
        changes.update(num_layers=1, bidirectional=False)
    casts = dict.fromkeys(("num_layers", "input_size", "hidden_size", "head_size", "seq_len", "batch_size", "seed"),
                          int)
    changes = {name: casts.get(name, lambda v: v)(value) for name, value in changes.items()}
    changes["bidirectional"], changes["weight_scale"] = bool(changes["bidirectional"]), float(changes["weight_scale"])
    set_shared_config(cfg.replace(**changes))


def config_sidebar() -> ExplainConfig:
    """Sidebar widgets for the architecture, data and device; stores and returns the updated shared config.

    The shared config is the single source of truth: the widgets are re-seeded from it on every run (so they
    survive page switches and never fall back to their own defaults) and an on_change callback writes edits back.
    """
    cfg = shared_config()
    limits = Limits.from_env()
    devices = ["auto", *available_devices()]
    for key, value in _widget_values(cfg, devices, limits).items():
        st.session_state[key] = value
    single = cfg.cell == "answer_gru"
    on = dict(on_change=_on_sidebar_change)
    bar = st.sidebar
    bar.header("Model")
    bar.selectbox("Cell", CELLS, key="gx_cell", format_func=CELL_LABELS.__getitem__, **on,
                  help="The recurrent cell. \"answer GRU\" is the seed answer's hand-written GRU, unrolled by hand "
                       "(1 layer, one direction).")
    bar.number_input("Layers", 1, limits.max_num_layers, key="gx_num_layers", disabled=single, **on)
    bar.toggle("Bidirectional", key="gx_bidirectional", disabled=single, **on,
               help="A second direction reads the sequence backwards (its h_t depends on later x).")
    col1, col2 = bar.columns(2)
    col1.number_input("Input size", 1, limits.max_input_size, key="gx_input_size", **on)
    col2.number_input("Hidden size", 1, limits.max_hidden_size, key="gx_hidden_size", **on)
    bar.selectbox("Head", HEADS, key="gx_head", format_func=HEAD_LABELS.__getitem__, **on,
                  help="MyModel's head: out = Linear(y[:, -1]).view(-1, head_size, 1), named `out` in targets.")
    bar.number_input("Head size", 1, limits.max_head_size, key="gx_head_size", disabled=cfg.head == "none", **on)
    bar.header("Data")
    col1, col2 = bar.columns(2)
    col1.number_input("Sequence length T", 1, limits.max_seq_len, key="gx_seq_len", **on)
    col2.number_input("Batch size B", 1, limits.max_batch_size, key="gx_batch_size", **on)
    col1, col2 = bar.columns(2)
    col1.number_input("Seed", 0, 2**31 - 1, key="gx_seed", help="Seeds the weights and x = torch.rand(B, T, I).", **on)
    col2.number_input("Weight scale", MIN_WEIGHT_SCALE, float(limits.max_weight_scale), key="gx_weight_scale",
                      step=0.05, format="%.3f", **on,
                      help="Multiplies PyTorch's init range U(±1/√H): above 1 gradients tend to explode, below 1 to "
                           "vanish.")
    bar.header("Device")
    col1, col2 = bar.columns(2)
    col1.selectbox("dtype", DTYPES, key="gx_dtype", **on)
    col2.selectbox("Device", devices, key="gx_device", help="Devices this machine has; auto prefers a GPU.", **on)
    return cfg


__all__ = ["cached_census", "cached_compare", "cached_explain", "cached_graph", "cached_profile", "config_sidebar",
           "file_stem", "glossary", "keep_option", "literal", "md_escape", "offer_cpu", "report_chart", "report_csv",
           "report_json", "run_ended", "seed_widget", "set_shared_config", "shared_config", "show_chart",
           "show_error", "show_layout", "show_notice", "themed_spec"]
