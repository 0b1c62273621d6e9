"""The puzzle page (the default page, url "/"): the seed's prints reproduced live, the answer's chart drawn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from .helpers import page_once, page_url

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def page(browser: Any, base_url: str) -> Iterator[Any]:
    """The puzzle page, opened once in a fresh session: the tests below only read it."""
    yield from page_once(browser, page_url(base_url, "/"))


def test_puzzle_reproduces_the_seed(page):
    expect(page.locator('[data-testid="stMain"] h1').first).to_contain_text("zero gradients")
    blocks = page.locator('[data-testid="stMain"] [data-testid="stCode"]').all_inner_texts()
    codes = [" ".join(t.split()) for t in blocks]
    # MyModel and SecondModel both print True (y.grad[:, :-1] is all zero) ...
    assert "True" in codes, codes
    # ... and the answer's GRU: y.grad[:, -1] non-zero, y.grad[:, :-1] zero, yet no h.grad is zero.
    answer = next(c for c in codes if "sanity check" in c)
    assert "sanity check False" in answer and "unexpected? True" in answer, answer
    assert answer.rstrip().endswith("False"), answer
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    expect(charts).to_have_count(1)
    expect(charts.first).to_contain_text("y.grad (stacked output y)")  # the legend; the title is page text now
    expect(page.locator('[data-testid="stMain"]').get_by_text("y.grad is zero before the read step")).to_be_visible()


def test_puzzle_links_to_the_other_pages(page):
    links = page.locator('[data-testid="stMain"] [data-testid="stPageLink"] a')
    expect(links).to_have_count(4)
    hrefs = sorted(link.get_attribute("href").rstrip("/").rsplit("/", 1)[-1] for link in links.all())
    assert hrefs == ["devices", "explorer", "flow", "graph"], hrefs
