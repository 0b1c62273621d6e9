"""The "Watch it learn" page in a real browser: it trains, every chart draws, the cell goes to the URL."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from .helpers import choose, field, page_url, visit

pytestmark = pytest.mark.e2e

SMALL = "learn.steps=40&learn.T=16&learn.H=8&learn.batch=8&learn.every=10"
"""A run of well under a second per cell, so the test times the page, not the training."""


def test_learn_trains_draws_every_chart_and_keeps_the_cell_in_the_url(page, base_url):
    visit(page, page_url(base_url, "/learn", SMALL))  # visit fails on an exception or a chart that did not draw
    expect(page.locator('[data-testid="stMain"] h1').first).to_contain_text("Watch it learn")
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(7)
    labels = [" ".join(t.split()) for t in page.locator('[data-testid="stMetricLabel"]').all_inner_texts()]
    assert labels == ["LSTM: loss / chance", "LSTM: input gradient on relevant positions", "RNN tanh: loss / chance",
                      "RNN tanh: input gradient on relevant positions"], labels
    expect(page.locator('[data-testid="stProgress"]')).to_have_count(0)  # the bars are gone after training
    cell = field(page, "Cell")
    choose(page, cell, "GRU")
    expect(cell).to_have_value("GRU")
    expect(page.locator('[data-testid="stMetricLabel"]').first).to_contain_text("GRU: loss / chance")
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(7)
    query = {k: v[-1] for k, v in parse_qs(urlsplit(page.url).query).items()}
    assert query.get("learn.cell") == "gru" and query.get("learn.steps") == "40", page.url
    assert not page.locator('[data-testid="stException"]').count()
