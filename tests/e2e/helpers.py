"""Helpers the end-to-end tests share: URLs, waiting after an interaction, reading the verdict, driving widgets."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from scripts.screenshots import open_page, wait_for_app

TARGET_LINE = re.compile(r"^Target\s.+\s=\s")
NUMBER = r"(-?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|-?inf|nan)"


def page_url(base_url: str, path: str, query: str = "") -> str:
    """An app URL: `path` like "/explorer", optional query string without "?"."""
    return base_url.rstrip("/") + path + (f"?{query}" if query else "")


def visit(tab: Any, url: str) -> None:
    """Open `url` and wait until the script finished and every chart drew (no exception on the page)."""
    open_page(tab, url)


def settle(tab: Any) -> None:
    """After an interaction: wait for the rerun to start (if it has not finished already) and finish."""
    # The rerun may have started and finished already (then this times out quietly); wait_for_app covers both.
    with contextlib.suppress(Exception):
        tab.wait_for_selector('[data-testid="stApp"]:not([data-test-script-state="notRunning"])',
                              state="attached", timeout=1_500)
    wait_for_app(tab)


def verdict_line(tab: Any) -> Any:
    """The verdict's first line ("Target `expr` = value (CELL, … layer(s), …, T = …, on device).")."""
    return tab.locator('[data-testid="stMarkdownContainer"] p').filter(has_text=TARGET_LINE).first


def verdict_value(text: str) -> float:
    """The target value in a verdict line."""
    match = re.search(r"=\s*" + NUMBER + r"\s*\(", text)
    assert match, f"no target value in {text!r}"
    return float(match.group(1))


def chart_svg(tab: Any, index: int) -> str:
    """The svg markup of the index-th Vega chart on the page (to compare before / after a change)."""
    return tab.locator('[data-testid="stVegaLiteChart"]').nth(index).locator("svg").first.inner_html()


def wait_chart_changed(tab: Any, index: int, before: str, timeout_ms: float = 30_000) -> str:
    """Wait until the index-th Vega chart's svg differs from `before` (Vega redraws asynchronously); returns it."""
    tab.wait_for_function(
        """([index, before]) => {
            const chart = document.querySelectorAll('[data-testid="stVegaLiteChart"]')[index];
            const svg = chart && chart.querySelector('svg');
            return svg && svg.innerHTML !== before;
        }""", arg=[index, before], timeout=timeout_ms, polling=100)
    return chart_svg(tab, index)


def field(tab: Any, label: str, area: str = "stMain") -> Any:
    """The input element of the widget labelled `label` (Streamlit puts the label in aria-label) in an area.

    area: "stMain" or "stSidebar".
    """
    return tab.locator(f'[data-testid="{area}"] input[aria-label="{label}"]')


def choose(tab: Any, combobox: Any, option: str) -> None:
    """Open a Streamlit selectbox (its combobox input) and click the option with exactly this text."""
    combobox.click()
    tab.locator('[role="option"]').filter(has_text=re.compile(rf"^\s*{re.escape(option)}\s*$")).first.click()
    settle(tab)


def type_into(tab: Any, text_input: Any, text: str) -> None:
    """Replace a Streamlit text input's value and press Enter (which submits it and reruns the script)."""
    text_input.fill(text)
    text_input.press("Enter")
    settle(tab)
