"""The explorer in a real browser: controls change the charts and the verdict, the URL reproduces a view."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from playwright.sync_api import expect

from gru_explainer import ExplainConfig, explain

from .helpers import (
    chart_svg,
    choose,
    field,
    page_url,
    type_into,
    verdict_line,
    verdict_value,
    visit,
    wait_chart_changed,
)

pytestmark = pytest.mark.e2e
NORM_CHART, HEATMAP, INPUT_CHART = 0, 2, 4
"""Chart elements at the defaults: two norm panels (layer 1, layer 0), two heatmap panels, the input chart."""
TARGET = "Target (scalar to differentiate)"


def query_of(tab) -> dict[str, str]:
    """The page URL's query parameters (last value of each)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(tab.url).query).items()}


def test_default_view_matches_the_core(page, base_url):
    visit(page, page_url(base_url, "/explorer"))
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(5)
    line = verdict_line(page)
    expect(line).to_contain_text("(GRU, 2 layer(s), unidirectional, T = 10, float32, on cpu)")
    assert verdict_value(line.inner_text()) == pytest.approx(explain(ExplainConfig()).target_value, rel=1e-4)


def test_selecting_lstm_changes_chart_and_verdict(page, base_url):
    visit(page, page_url(base_url, "/explorer"))
    before = chart_svg(page, NORM_CHART)
    assert "dL/dc_t" not in before, "a GRU has no cell state"
    cell = field(page, "Cell", "stSidebar")
    choose(page, cell, "LSTM")
    expect(cell).to_have_value("LSTM")
    expect(verdict_line(page)).to_contain_text("(LSTM, 2 layer(s)")
    after = wait_chart_changed(page, NORM_CHART, before)
    assert "dL/dc_t" in after, "the LSTM's chart must show the cell-state gradient series"
    assert query_of(page).get("cell") == "lstm", f"the URL does not carry the new cell: {page.url}"
    expected = explain(ExplainConfig(cell="lstm")).target_value
    assert verdict_value(verdict_line(page).inner_text()) == pytest.approx(expected, rel=1e-4)


def test_typing_a_target_changes_chart_and_verdict(page, base_url):
    visit(page, page_url(base_url, "/explorer"))
    before = chart_svg(page, NORM_CHART)
    before_inputs = chart_svg(page, INPUT_CHART)
    target = field(page, TARGET)
    type_into(page, target, "y[:, 3].sum()")
    line = verdict_line(page)
    expect(line).to_contain_text("y[:, 3].sum()")
    # The target reads y at step 3 only: y.grad is exactly zero at every other step.
    expect(page.locator('[data-testid="stMarkdownContainer"] li').filter(has_text="y.grad").first).to_contain_text(
        "exactly zero at t = 0–2, 4–9")
    wait_chart_changed(page, NORM_CHART, before)
    wait_chart_changed(page, INPUT_CHART, before_inputs)  # inputs after step 3 no longer matter
    expected = explain(ExplainConfig(target="y[:, 3].sum()")).target_value
    assert verdict_value(line.inner_text()) == pytest.approx(expected, rel=1e-4)
    assert query_of(page).get("target") == "y[:, 3].sum()"


def test_a_bad_target_shows_an_error_not_an_exception(page, base_url):
    visit(page, page_url(base_url, "/explorer"))
    target = field(page, TARGET)
    type_into(page, target, "__import__('os')")  # type_into waits for the run and asserts no stException
    error = page.locator('[data-testid="stAlertContentError"]')
    expect(error).to_have_count(1)
    expect(error).to_contain_text("__import__")
    expect(error).to_contain_text("not allowed")
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
    # The last valid result stays under the error, marked as such.
    expect(page.locator('[data-testid="stAlertContentWarning"]')).to_contain_text("last valid result")
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(5)
    # Fixing the target clears the error and the mark.
    type_into(page, target, "y.sum()")
    expect(error).to_have_count(0)
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(5)
    expect(verdict_line(page)).to_contain_text("y.sum()")


def test_url_query_params_set_the_view(page, base_url):
    cfg = ExplainConfig(cell="lstm", bidirectional=True, seq_len=7, target="y[:, 2].sum()")
    query = f"cell=lstm&bidirectional=true&seq_len=7&target={quote(cfg.target)}"
    visit(page, page_url(base_url, "/explorer", query))
    expect(field(page, "Cell", "stSidebar")).to_have_value("LSTM")
    expect(field(page, "Bidirectional", "stSidebar")).to_be_checked()
    expect(field(page, "Sequence length T", "stSidebar")).to_have_value("7")
    expect(field(page, TARGET)).to_have_value(cfg.target)
    line = verdict_line(page)
    expect(line).to_contain_text("(LSTM, 2 layer(s), bidirectional, T = 7, float32, on cpu)")
    assert verdict_value(line.inner_text()) == pytest.approx(explain(cfg).target_value, rel=1e-4)
    norm = chart_svg(page, NORM_CHART)
    assert "dL/dc_t" in norm, "a bidirectional LSTM's chart has c_t"
    expect(page.get_by_text("layer 1 · reverse", exact=True)).to_be_visible()  # and reverse panels
    assert query_of(page) == {"cell": "lstm", "bidirectional": "true", "seq_len": "7", "target": cfg.target}


def test_bad_url_params_fall_back_with_a_notice(page, base_url):
    visit(page, page_url(base_url, "/explorer", "hidden_size=0&cell=foo&bogus=1"))
    warnings = page.locator('[data-testid="stAlertContentWarning"]')
    expect(warnings.first).to_be_visible()
    text = " ".join(warnings.all_inner_texts())
    for name in ("hidden_size", "cell", "bogus"):
        assert name in text, f"no notice names {name}: {text}"
    expect(verdict_line(page)).to_contain_text("(GRU, 2 layer(s), unidirectional, T = 10")
    assert not re.search(r"hidden_size|cell=|bogus", urlsplit(page.url).query), page.url
