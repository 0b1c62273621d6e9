"""Every page of the app loads in a real browser: navigation, title, charts drawn, no exception, wide layout."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from scripts.screenshots import ROOT, StreamlitServer, app_pages, new_context, open_page

from .conftest import server_env
from .helpers import page_url, visit

pytestmark = pytest.mark.e2e
EXPECTED_PATHS = ["", "explorer", "flow", "graph", "devices", "pitfalls", "your_model", "learn"]
PAGES = app_pages(ROOT)


def test_app_declares_every_page():
    assert [p.url_path for p in PAGES] == EXPECTED_PATHS
    missing = [p.file for p in PAGES if not (ROOT / p.file).exists()]
    assert not missing, f"app.py lists pages whose files do not exist (they are silently left out): {missing}"


def assert_navigation(tab, current) -> None:
    """The sidebar lists app.py's page titles (not file names) and marks `current` as the active page."""
    links = tab.locator('[data-testid="stSidebarNavLink"]')
    expect(links.first).to_be_visible()
    texts = [" ".join(t.split()) for t in links.all_inner_texts()]
    titles = [p.title for p in PAGES]
    assert len(texts) == len(titles) and all(t.endswith(title) for t, title in zip(texts, titles, strict=True)), (
        f"the navigation shows {texts}, not app.py's pages {titles}: app.py's st.navigation did not run "
        "(a folder named pages/ next to app.py would put a fresh server's first sessions in Streamlit's legacy mode)")
    active = tab.locator('[data-testid="stSidebarNavLink"][aria-current="page"]')
    expect(active).to_have_count(1)
    expect(active).to_contain_text(current.title)


@pytest.mark.parametrize("app_page", PAGES, ids=[p.name for p in PAGES])
def test_page_renders(page, base_url, app_page):
    open_page(page, app_page.url(base_url), app_page.load_timeout_ms)  # the learn page may train first: 180 s
    assert_navigation(page, app_page)
    expect(page.locator('[data-testid="stMain"] h1').first).to_be_visible()
    # layout="wide": the main block uses the width (the centred layout caps it near 736 px).
    width = page.locator('[data-testid="stMainBlockContainer"]').bounding_box()["width"]
    assert width > 900, f"main area is {width:.0f} px wide: st.set_page_config(layout='wide') did not apply"
    assert page.title(), "the browser tab has no title"


def test_navigation_by_clicking(page, base_url):
    visit(page, page_url(base_url, "/"))
    explorer = next(p for p in PAGES if p.url_path == "explorer")
    page.locator('[data-testid="stSidebarNavLink"]').filter(has_text=explorer.title).click()
    page.wait_for_url(re.compile(r"/explorer(\?.*)?$"))
    open_page(page, page.url)  # full wait after the client-side page switch
    expect(page.locator('[data-testid="stMain"] h1').first).to_contain_text("Gradient explorer")


def test_first_session_on_a_fresh_server_may_deep_link(browser):
    """The very first visitor of a fresh server (e.g. a woken-up Cloud app) opens a shared /explorer link.

    Streamlit runs a folder named `pages/` next to app.py in its legacy multipage mode until app.py has called
    st.navigation once; a deep link as the first session then never runs app.py (no page config, file names in
    the navigation). That is why our pages live in `app_pages/`. A fresh server, not the shared one, makes this
    test independent of test order.
    """
    from scripts.screenshots import new_context

    with StreamlitServer(ROOT, env=server_env()) as fresh:
        ctx = new_context(browser)
        try:
            tab = ctx.new_page()
            explorer = next(p for p in PAGES if p.url_path == "explorer")
            open_page(tab, explorer.url(fresh.base_url, "cell=lstm"))
            assert_navigation(tab, explorer)
            width = tab.locator('[data-testid="stMainBlockContainer"]').bounding_box()["width"]
            assert width > 900, "app.py did not run for the first session (no wide layout)"
        finally:
            ctx.close()


def test_favicon_and_every_request_stay_on_the_server(browser, base_url):
    """Offline-safe: the favicon is an inline emoji and the home page fetches nothing from another host. (A context
    of its own: in the file's shared one, resources cached by earlier tests would not be requested again.)"""
    ctx = new_context(browser)
    try:
        page = ctx.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        visit(page, page_url(base_url, "/"))
        href = page.locator("link[rel='shortcut icon']").get_attribute("href") or ""
        assert href.startswith("data:image/svg+xml"), f"the favicon is fetched from {href[:80]!r}"
        outside = [url for url in requests if not url.startswith((base_url, "data:", "blob:"))]
        assert not outside, f"the page fetched from other hosts: {outside[:5]}"
    finally:
        ctx.close()
