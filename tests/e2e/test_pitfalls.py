"""The pitfalls page in a real browser: every card drawn, no sideways scrolling on a phone, links carry the config."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from gru_explainer import pitfalls as P
from scripts.screenshots import new_context, wait_for_app

from .helpers import field, page_once, page_url, visit

pytestmark = pytest.mark.e2e
PHONE = {"width": 390, "height": 844}
SIDEWAYS = """() => {
    const main = document.querySelector('[data-testid="stMain"]');
    const scrollers = [main, ...main.querySelectorAll('*')].filter(e => {
        const style = getComputedStyle(e);
        return ['auto', 'scroll'].includes(style.overflowX) && e.scrollWidth > e.clientWidth + 1;
    }).map(e => `${e.tagName}.${e.getAttribute('data-testid') || ''} ${e.scrollWidth} > ${e.clientWidth}`);
    const page = document.documentElement;
    if (page.scrollWidth > page.clientWidth + 1) scrollers.push(`page ${page.scrollWidth} > ${page.clientWidth}`);
    return scrollers;
}"""


def _cards(tab) -> None:
    for pitfall in P.PITFALLS:
        card = tab.locator(f'.st-key-pitfall_{pitfall.id}')
        expect(card).to_have_count(1)
        expect(card.locator("h3")).to_contain_text(pitfall.title.replace("`", "")[:20])
        expect(card.locator('[data-testid="stCode"]').first).to_be_visible()


@pytest.fixture(scope="module")
def page(browser: Any, base_url: str) -> Iterator[Any]:
    """The pitfalls page at the desktop size, opened once in a fresh session: the tests below read it (a link they
    click opens in a new tab)."""
    yield from page_once(browser, page_url(base_url, "/pitfalls"))


def test_every_card_renders_with_live_messages(page):
    expect(page.locator('[data-testid="stMain"] h1').first).to_have_text("Pitfalls")
    _cards(page)
    main = page.locator('[data-testid="stMain"]')
    expect(main).to_contain_text("Trying to backward through the graph a second time")
    expect(main).to_contain_text("Batching rule not implemented for aten::gru.input")
    expect(page.locator('[data-testid="stAlertContentWarning"]')).to_have_count(0)  # no card is out of date
    if P.cuda_missing():
        expect(page.locator('[data-testid="stMain"] [data-testid="stAlertContentInfo"]')).to_have_count(
            sum(p.needs_cuda for p in P.PITFALLS))


def test_nothing_scrolls_sideways_on_a_phone(browser, server):
    context = new_context(browser, viewport=dict(PHONE))
    try:
        tab = context.new_page()
        visit(tab, page_url(server.base_url, "/pitfalls"))
        _cards(tab)
        assert tab.evaluate(SIDEWAYS) == []
    finally:
        context.close()


def test_the_explorer_link_opens_the_cards_config(page):
    pitfall = P.get("bidirectional")
    link = page.locator(f'.st-key-pitfall_{pitfall.id} a[href^="{P.EXPLORER_PATH}?"]')
    expect(link).to_have_attribute("href", pitfall.explorer_url)
    with page.context.expect_page() as opened:  # Streamlit opens Markdown links in a new tab: a new session
        link.click()
    explorer = opened.value
    explorer.wait_for_load_state("domcontentloaded")
    wait_for_app(explorer)
    expect(explorer.locator('[data-testid="stMain"] h1').first).to_contain_text("Gradient explorer")
    expect(field(explorer, "Bidirectional", "stSidebar")).to_be_checked()
    assert "bidirectional=true" in explorer.url and "seq_len=5" in explorer.url
