"""The autograd-graph page: graphviz draws the unrolled graph; a typed target redraws it; a bad one is an error."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .helpers import page_url, type_into, visit

pytestmark = pytest.mark.e2e


def graph_svg(tab) -> str:
    return tab.locator('[data-testid="stGraphVizChart"] svg').first.inner_html()


def test_graph_redraws_for_a_typed_target(page, base_url):
    visit(page, page_url(base_url, "/graph"))
    expect(page.locator('[data-testid="stGraphVizChart"] svg')).to_have_count(1)
    assert page.locator('[data-testid="stGraphVizChart"] svg g.node').count() > 5
    before = graph_svg(page)
    target = page.locator('[data-testid="stMain"] input[aria-label="Target"]')
    type_into(page, target, "h_n.sum()")
    expect(target).to_have_value("h_n.sum()")
    page.wait_for_function("(before) => { const s = document.querySelector('[data-testid=\"stGraphVizChart\"] svg');"
                           " return s && s.innerHTML !== before; }", arg=before, timeout=30_000)
    assert graph_svg(page) != before


def test_graph_bad_target_is_an_error(page, base_url):
    visit(page, page_url(base_url, "/graph"))
    target = page.locator('[data-testid="stMain"] input[aria-label="Target"]')
    type_into(page, target, "y[:, 99].sum()")
    expect(page.locator('[data-testid="stAlertContentError"]')).to_contain_text("out of range")
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)
