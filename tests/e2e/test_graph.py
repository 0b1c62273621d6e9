"""The autograd-graph page: one screen by default (1400 and 390 px), labels inside their boxes, a typed target
redraws it, a bad one is an error, a shared URL shows every op."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from scripts.screenshots import new_context, sideways_scroll

from .helpers import page_url, type_into, visit

pytestmark = pytest.mark.e2e


def graph_svg(tab) -> str:
    return tab.locator('[data-testid="stGraphVizChart"] svg').first.inner_html()


def test_graph_redraws_for_a_typed_target(page, base_url):
    visit(page, page_url(base_url, "/graph"))
    expect(page.locator('[data-testid="stGraphVizChart"] svg')).to_have_count(2)  # the graph and its legend
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


TEXT_OUTSIDE = """(chart) => {
    const svg = document.querySelectorAll('[data-testid="stGraphVizChart"] svg')[chart];
    const bad = [];
    svg.querySelectorAll('g.node').forEach(node => {
        const shape = node.querySelector('polygon, path, ellipse');
        if (!shape || shape.getAttribute('stroke') === 'transparent') return;
        const box = shape.getBBox();
        node.querySelectorAll('text').forEach(text => {
            const t = text.getBBox();
            if (t.x < box.x - 0.5 || t.x + t.width > box.x + box.width + 0.5)
                bad.push(`${text.textContent}: text ${t.x.toFixed(1)}..${(t.x + t.width).toFixed(1)}, `
                         + `box ${box.x.toFixed(1)}..${(box.x + box.width).toFixed(1)}`);
        });
    });
    return bad;
}"""
FONT_PX = """(chart) => {
    const svg = document.querySelectorAll('[data-testid="stGraphVizChart"] svg')[chart];
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    const sizes = [...svg.querySelectorAll('g.node text')].map(t => parseFloat(t.getAttribute('font-size')) * scale);
    return Math.min(...sizes);
}"""


def svg_texts(tab, chart: int = 0) -> list[str]:
    """The text of every <text> element of the chart-th graphviz chart (one per label line)."""
    return tab.evaluate("(chart) => [...document.querySelectorAll('[data-testid=\"stGraphVizChart\"] svg')[chart]"
                        ".querySelectorAll('text')].map(t => t.textContent)", chart)


def charts_box(tab) -> list[dict]:
    return [c.bounding_box() for c in tab.locator('[data-testid="stGraphVizChart"] svg').all()]


def test_default_graph_fits_one_screen_with_text_inside_its_boxes(page, base_url):
    visit(page, page_url(base_url, "/graph"))
    graph, legend = charts_box(page)
    assert graph["height"] <= 900, f"the default graph is {graph['height']:.0f} px tall: not on one 900 px screen"
    assert legend["x"] >= graph["x"] + graph["width"] - 1, "at 1400 px the legend sits beside the graph"
    for chart in (0, 1):
        assert page.evaluate(TEXT_OUTSIDE, chart) == [], "a label spills out of its box"
    assert page.evaluate(FONT_PX, 0) >= 12, "graph text drawn below 12 px at 1400 px"
    labels = svg_texts(page)
    assert "h_1 (layer 1)" in labels and "+ 14 ops: gates r, z, n" in labels
    assert not {"rsub", "split", "mul"} & set(labels), "raw op names"


def test_graph_is_readable_on_a_phone(browser, base_url):
    ctx = new_context(browser, viewport={"width": 390, "height": 844})
    try:
        tab = ctx.new_page()
        visit(tab, page_url(base_url, "/graph"))
        assert sideways_scroll(tab) <= 0, "the graph page scrolls sideways at 390 px"
        graph, legend = charts_box(tab)
        assert graph["x"] >= 0 and graph["x"] + graph["width"] <= 390
        assert legend["y"] >= graph["y"] + graph["height"] - 1, "on a phone the legend sits under the graph"
        assert tab.evaluate(FONT_PX, 0) >= 9, "graph text drawn below 9 px on a phone"
        for chart in (0, 1):
            assert tab.evaluate(TEXT_OUTSIDE, chart) == []
    finally:
        ctx.close()


def test_every_op_from_a_shared_url_shows_the_labelled_ops(page, base_url):
    visit(page, page_url(base_url, "/graph", "graph.ops=1&graph.steps=3&cell=lstm"))
    svg = page.locator('[data-testid="stGraphVizChart"] svg').first
    expect(page.locator('[data-testid="stMain"] input[role="switch"]').first).to_be_checked()
    assert svg.locator("g.cluster").count() == 3 * 2, "one dashed frame per step and layer"
    text = svg_texts(page)
    for label in ("f = σ(…) forget gate", "c_2 (layer 1)", "split into i, f, g, o", "f ⊙ c_1", "(sigmoid)"):
        assert label in text
    assert page.evaluate(TEXT_OUTSIDE, 0) == []
