"""The devices & engines page: both engines agree on this machine's devices; table and charts drawn."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .helpers import page_url, visit

pytestmark = pytest.mark.e2e


def test_devices_engines_agree(page, base_url):
    visit(page, page_url(base_url, "/devices", "cell=lstm"))
    expect(page.locator('[data-testid="stMain"] h1').first).to_contain_text("Devices")
    agree = page.locator('[data-testid="stMetric"]').filter(has_text="All runs agree")
    expect(agree.locator('[data-testid="stMetricValue"]')).to_have_text("yes")
    expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(2)
    expect(page.locator('[data-testid="stTable"]').first).to_be_visible()
