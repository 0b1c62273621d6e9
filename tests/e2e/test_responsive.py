"""Every page at a desktop's 1400×900 and a phone's 390×844, light and dark: nothing pans sideways, every chart is
drawn inside its container with its legend whole, chart text is light in the dark theme, and on a phone or in a
narrow window the navigation closes after a page switch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from scripts.screenshots import ROOT, RUN_STARTED, app_pages, new_context, open_page, wait_for_app

from .helpers import (
    APP_BACKGROUND,
    assert_theme,
    background_luminance,
    parse_colour,
    relative_luminance,
    settle,
    switch_scheme,
)

pytestmark = pytest.mark.e2e
PAGES = app_pages(ROOT)
DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
PHONE_DEVICE = {"viewport": PHONE, "is_mobile": True, "has_touch": True, "device_scale_factor": 2,
                "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
                              "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"}
"""A phone as a browser reports it (touch, mobile user agent): what Streamlit's phone layout keys on."""
CHART_QUERY = {"explorer": "cell=lstm&bidirectional=true", "flow": "", "devices": "", "": ""}
"""The richest view of each page: three heatmap panels and four norm panels for a bidirectional LSTM."""

LAYOUT_PROBLEMS = """() => {
    const problems = [];
    const doc = document.scrollingElement, main = document.querySelector('[data-testid="stMain"]');
    if (doc.scrollWidth > innerWidth) problems.push(`the page is ${doc.scrollWidth} px wide in ${innerWidth}`);
    if (main && main.scrollWidth > main.clientWidth)
        problems.push(`the main area pans ${main.scrollWidth - main.clientWidth} px`);
    document.querySelectorAll('[data-testid="stVegaLiteChart"]').forEach((chart, i) => {
        const svg = chart.querySelector('svg');
        if (!svg) { problems.push(`chart #${i} drew nothing`); return; }
        const box = chart.getBoundingClientRect(), drawn = svg.getBoundingClientRect();
        if (drawn.right > box.right + 1 || drawn.left < box.left - 1)
            problems.push(`chart #${i}: ${Math.round(drawn.width)} px wide in ${Math.round(box.width)} px`);
        if (drawn.right > innerWidth + 1) problems.push(`chart #${i} ends at ${Math.round(drawn.right)} px`);
        svg.querySelectorAll('g.role-legend').forEach(legend => {
            const b = legend.getBoundingClientRect();
            if (b.width && (b.right > drawn.right + 1 || b.left < drawn.left - 1))
                problems.push(`chart #${i}: a legend is clipped (${Math.round(b.left)}..${Math.round(b.right)})`);
            legend.querySelectorAll('text').forEach(t => {
                if (t.textContent.endsWith('…')) problems.push(`chart #${i}: legend label cut: ${t.textContent}`);
            });
        });
    });
    return problems;
}"""


def layout_problems(tab: Any) -> list[str]:
    """What overflows on the page: sideways panning, charts wider than their container, legends cut."""
    return tab.evaluate(LAYOUT_PROBLEMS)


def chart_count(tab: Any) -> int:
    return tab.locator('[data-testid="stVegaLiteChart"] svg').count()


def check_fits(tab: Any, app_page: Any, viewport: dict, scheme: str) -> None:
    """The page as drawn now, in `scheme`: no sideways panning, charts inside their containers, legends whole.

    The check runs on a finished page (`open_page` / `switch_scheme` waited for it) and counts only when no script run
    started meanwhile (`RUN_STARTED`: a dark-theme load once reran after the browser reported its theme); otherwise
    it waits for that run and checks again."""
    for _attempt in range(3):
        assert_theme(tab, scheme)
        if app_page.url_path in ("", "explorer", "flow", "devices"):
            expect(tab.locator('[data-testid="stVegaLiteChart"] svg').first).to_be_visible()
            assert chart_count(tab) >= 1
        problems = layout_problems(tab)
        if not tab.evaluate(RUN_STARTED):
            break
        wait_for_app(tab)
    else:
        pytest.fail(f"{app_page.title} kept rerunning: no finished page to check", pytrace=False)
    assert not problems, f"{app_page.title} at {viewport['width']} px ({scheme}):\n" + "\n".join(problems)
    if scheme == "dark" and chart_count(tab):  # chart text is drawn in the theme's (light) text colour, not black
        label = tab.evaluate("""() => {
            const text = document.querySelector('[data-testid="stVegaLiteChart"] g.role-axis-label text');
            return text ? getComputedStyle(text).fill : null;  // computed: the attribute is currentColor
        }""")
        assert label is not None and background_luminance(tab) < 0.2 < relative_luminance(parse_colour(label)), (
            f"{app_page.title} ({scheme}): axis labels drawn in {label} on {tab.evaluate(APP_BACKGROUND)}")


def check_explorer_panels(tab: Any, side_by_side: bool) -> None:
    """The explorer's bidirectional panels of one layer share a row at 1400 px and stack, full width, at 390 px."""
    charts = tab.locator('[data-testid="stVegaLiteChart"]')
    charts.nth(1).wait_for(state="visible")  # on a loaded machine the second panel can come a moment later
    boxes = [c.bounding_box() for c in charts.all()[:2]]
    same_row = abs(boxes[0]["y"] + boxes[0]["height"] - boxes[1]["y"] - boxes[1]["height"]) < 2
    assert same_row is side_by_side, boxes
    if not side_by_side:
        assert all(b["width"] >= 0.85 * PHONE["width"] for b in boxes), boxes


@pytest.fixture(scope="module")
def device_contexts(browser) -> Iterator[dict[str, Any]]:
    """One browser context per device for the whole file; each case opens its own tab in it (a new Streamlit
    session: a page load opens its own connection), so the front end's code is fetched and compiled once per device
    instead of once per case (measured: four page loads took half the browser CPU this way)."""
    contexts = {"desktop": new_context(browser, viewport=dict(DESKTOP)), "phone": new_context(browser, **PHONE_DEVICE)}
    yield contexts
    for context in contexts.values():
        context.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize("app_page", PAGES, ids=[p.name for p in PAGES])
def test_every_page_fits_every_screen(device_contexts, base_url, app_page, viewport) -> None:
    """No sideways scroll, charts inside their containers, legends whole, at both widths and in both themes.

    Each page loads once per width and is checked in both themes: loaded in one, then switched to the other in place
    (`switch_scheme`, which asserts the switch happened). The desktop loads light and the phone loads dark, so both
    themes are also checked as a fresh page load draws them. The explorer's bidirectional panels also sit side by
    side on the desktop and stack on the phone (`check_explorer_panels`)."""
    first, second = ("light", "dark") if viewport is DESKTOP else ("dark", "light")
    tab = device_contexts["desktop" if viewport is DESKTOP else "phone"].new_page()
    try:
        tab.emulate_media(color_scheme=first)  # before the load: the page loads in this theme
        open_page(tab, app_page.url(base_url, CHART_QUERY.get(app_page.url_path, "")), app_page.load_timeout_ms)
        check_fits(tab, app_page, viewport, first)
        if app_page.url_path == "explorer":
            check_explorer_panels(tab, side_by_side=viewport is DESKTOP)
        switch_scheme(tab, second)
        check_fits(tab, app_page, viewport, second)
    finally:
        tab.close()


def test_phone_navigation_closes_after_a_page_switch(browser, base_url) -> None:
    """On a phone the sidebar opens over the page from its button and closes again once a page was picked."""
    context = new_context(browser, **PHONE_DEVICE)
    try:
        tab = context.new_page()
        open_page(tab, base_url + "/?seq_len=7")
        sidebar = tab.locator('[data-testid="stSidebar"]')
        assert sidebar.bounding_box()["x"] + sidebar.bounding_box()["width"] <= 0  # closed on arrival
        tab.locator('[data-testid="stExpandSidebarButton"]').click()
        expect(tab.locator('[data-testid="stSidebarNavLink"]').first).to_be_visible()
        tab.locator('[data-testid="stSidebarNavLink"]').filter(has_text="Gradient explorer").click()
        tab.wait_for_url("**/explorer?*")
        settle(tab)
        box = sidebar.bounding_box()
        assert box is None or box["x"] + box["width"] <= 0, f"the sidebar still covers the page: {box}"
        assert "seq_len=7" in tab.url  # the page switch kept the config
    finally:
        context.close()


def test_narrow_desktop_navigation_closes_after_a_page_switch(browser, base_url) -> None:
    """In a desktop browser's narrowed window (700 px: Streamlit's small-screen layout, a desktop user agent) the
    open sidebar covers the page: it closes once a page was picked from it, but stays open while a setting in it
    reruns the same page. At 1400 px it sits beside the page and stays open."""
    def covers(tab: Any) -> bool:
        box = tab.locator('[data-testid="stSidebar"]').bounding_box()
        return box is not None and box["x"] + box["width"] > 0

    context = new_context(browser, viewport={"width": 700, "height": 900})
    try:
        tab = context.new_page()
        open_page(tab, base_url + "/?seq_len=7")
        assert not covers(tab)  # closed on arrival
        tab.locator('[data-testid="stExpandSidebarButton"]').click()
        tab.locator('[data-testid="stSidebarNavLink"]').filter(has_text="Gradient explorer").click()
        tab.wait_for_url("**/explorer?*")
        settle(tab)
        expect(tab.locator('[data-testid="stExpandSidebarButton"]')).to_be_visible()
        assert not covers(tab), "the sidebar still covers the page after a page switch"
        tab.locator('[data-testid="stExpandSidebarButton"]').click()
        layers = tab.locator('[data-testid="stSidebar"] [data-testid="stNumberInput"] input').first
        layers.fill("3")
        layers.press("Enter")
        tab.wait_for_url("**num_layers=3*")
        settle(tab)
        assert covers(tab), "a setting's rerun closed the sidebar the visitor is editing"
    finally:
        context.close()
    context = new_context(browser)  # 1400 px: beside the page
    try:
        tab = context.new_page()
        open_page(tab, base_url + "/?seq_len=7")
        tab.locator('[data-testid="stSidebarNavLink"]').filter(has_text="Gradient explorer").click()
        tab.wait_for_url("**/explorer?*")
        settle(tab)
        assert covers(tab)
    finally:
        context.close()
