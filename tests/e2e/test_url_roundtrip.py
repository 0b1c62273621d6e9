"""A copied address reproduces the view: set non-default controls in one browser context, open `page.url` in a
second, fresh context (a new Streamlit session) and find the same controls and the same numbers."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from scripts.screenshots import new_context

from .helpers import field, page_url, settle, type_into, verdict_line, visit

pytestmark = pytest.mark.e2e


def query_of(tab: Any) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(tab.url).query).items()}


def wait_query(tab: Any, **wanted: str) -> None:
    """Wait until the address carries these query values (Streamlit updates it after the run)."""
    tab.wait_for_function("""(wanted) => {
        const q = new URLSearchParams(location.search);
        return Object.entries(wanted).every(([k, v]) => q.get(k) === v);
    }""", arg=wanted, timeout=30_000, polling=100)


def flip(tab: Any, label: str) -> None:
    """Click a toggle or checkbox in the main area by its label and wait for the rerun."""
    tab.locator('[data-testid="stMain"] label').filter(has_text=label).first.click()
    settle(tab)


def pick(tab: Any, combobox: Any, option: str) -> None:
    """Choose a selectbox option by typing it (a click does not always open the list right after a rerun)."""
    combobox.click()
    combobox.press_sequentially(option)
    combobox.press("Enter")
    settle(tab)
    expect(combobox).to_have_value(option)


@pytest.fixture
def second(browser: Any) -> Any:
    """Another fresh context: a second browser with nothing of the first one's session."""
    ctx = new_context(browser)
    ctx.set_default_timeout(60_000)
    tab = ctx.new_page()
    yield tab
    ctx.close()


def test_explorer_view_round_trips_in_a_second_browser(page, second, base_url):
    visit(page, page_url(base_url, "/explorer"))
    type_into(page, field(page, "Target (scalar to differentiate)"), "y[:, 3].sum()")
    wait_query(page, target="y[:, 3].sum()")
    flip(page, "Log scale")
    wait_query(page, **{"explorer.log": "false"})
    pick(page, field(page, "Layer"), "0")
    wait_query(page, target="y[:, 3].sum()", **{"explorer.log": "false", "explorer.layer": "0"})
    expect(field(page, "Log scale")).not_to_be_checked()
    verdict = verdict_line(page).inner_text()

    visit(second, page.url)
    expect(field(second, "Target (scalar to differentiate)")).to_have_value("y[:, 3].sum()")
    expect(field(second, "Log scale")).not_to_be_checked()
    expect(field(second, "Layer")).to_have_value("0")
    expect(verdict_line(second)).to_have_text(verdict)  # the same target value, cell, sizes
    assert query_of(second) == query_of(page)


def test_devices_view_round_trips_in_a_second_browser(page, second, base_url):
    visit(page, page_url(base_url, "/devices", "seq_len=4&hidden_size=4"))
    pick(page, field(page, "dtype", "stSidebar"), "float64")
    repeats = field(page, "Repeats")
    repeats.fill("1")
    repeats.press("Enter")
    settle(page)
    wait_query(page, dtype="float64", **{"devices.repeats": "1"})
    table = page.locator('[data-testid="stTable"]').first
    expect(table).to_contain_text("Δ dL/dh_t")
    rows = [r for r in table.locator("tr").all_inner_texts() if not r.startswith("median time")]

    visit(second, page.url)
    expect(field(second, "Repeats")).to_have_value("1")
    expect(field(second, "dtype", "stSidebar")).to_have_value("float64")
    other = second.locator('[data-testid="stTable"]').first
    expect(other).to_contain_text("Δ dL/dh_t")
    # The same runs and the same differences (the timings are measured again, so they differ).
    assert [r for r in other.locator("tr").all_inner_texts() if not r.startswith("median time")] == rows
    assert query_of(second) == query_of(page)
