"""The gradient-flow page: cells from the URL, one fitted rate per cell, the decay, Jacobian and sweep charts drawn."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .helpers import page_url, visit

pytestmark = pytest.mark.e2e


def test_flow_compares_the_cells_in_the_url(page, base_url):
    visit(page, page_url(base_url, "/flow", "flow.cells=gru,lstm"))
    expect(page.locator('[data-testid="stMain"] h1').first).to_contain_text("Gradient flow")
    metrics = page.locator('[data-testid="stMetric"]')
    expect(metrics).to_have_count(2)
    labels = [" ".join(t.split()) for t in page.locator('[data-testid="stMetricLabel"]').all_inner_texts()]
    assert labels == ["GRU", "LSTM"], labels
    for value in page.locator('[data-testid="stMetricValue"]').all_inner_texts():
        assert value.startswith("×"), value
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(4)  # decay, Jacobians (2), sweep


def test_flow_default_compares_four_cells(page, base_url):
    visit(page, page_url(base_url, "/flow"))
    expect(page.locator('[data-testid="stMetric"]')).to_have_count(4)
