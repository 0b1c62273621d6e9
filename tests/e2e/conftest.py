"""Shared fixtures for the end-to-end tests: one real Streamlit server, Debian's Chromium via playwright.

The server (`python -m streamlit run app.py` on a free port) starts once per test session and is stopped by its
PID. Each test gets a tab of its own (a new Streamlit session) in a 1400×900 browser context that the tests of its
file share. When /usr/bin/chromium is missing the tests FAIL with the fix (scripts/test.sh installs it); they are
never skipped. On a failure the page's screenshot and the server log's tail are attached to the report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from scripts.screenshots import (
    CHROMIUM,
    ROOT,
    AppPage,
    StreamlitServer,
    app_pages,
    check_chromium,
    launch_browser,
    new_context,
)

expect.set_options(timeout=30_000)  # a loaded 2-core machine reruns a page in seconds, not milliseconds


def server_env() -> dict[str, str]:
    """The server's environment: this one, with the hosted limits (the URL tests rely on their defaults)."""
    env = dict(os.environ)
    env.pop("GRU_EXPLAINER_LIMITS", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable; fails (never skips) with the fix when it is missing."""
    try:
        check_chromium(CHROMIUM)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="session")
def server() -> Iterator[StreamlitServer]:
    """One Streamlit server for the whole session (stopped by PID at the end)."""
    app = StreamlitServer(ROOT, env=server_env())
    try:
        app.start(timeout=60)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    yield app
    app.stop()


@pytest.fixture(scope="session")
def base_url(server: StreamlitServer) -> str:
    """http://127.0.0.1:<port> of the session's server."""
    return server.base_url


@pytest.fixture(scope="session")
def pages() -> list[AppPage]:
    """The app's pages as app.py's PAGES declares them (default page first, at url "/")."""
    return app_pages(ROOT)


@pytest.fixture(scope="session")
def browser(chromium: str) -> Iterator[Any]:
    """Headless Debian Chromium driven by playwright (one per session)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = launch_browser(playwright, chromium)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    """A browser context at 1400×900 that the tests of one file share (closed after the file), each in a tab of its
    own (`page`). A tab's page load is a new Streamlit session (its own connection and sessionStorage); what the tabs
    share is the HTTP cache and the compiled front-end code (measured: half the browser CPU of a fresh context per
    test), and cookies / localStorage, which neither the app nor these tests use. A test that needs a browser of its
    own (a second visitor, every request the page makes) makes a context with `new_context`."""
    ctx = new_context(browser)
    ctx.set_default_timeout(60_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any, server: StreamlitServer, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A new tab in the file's context, closed after the test (with any tab it opened); on failure its screenshot
    and the server log go into the report."""
    tab = context.new_page()
    yield tab
    try:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            shot = tmp_path / "failure.png"
            try:
                tab.screenshot(path=str(shot), full_page=True)
                request.node.add_report_section("call", "screenshot", str(shot))
            except Exception as err:  # the page may be gone; the log still helps
                request.node.add_report_section("call", "screenshot", f"(none: {err})")
            request.node.add_report_section("call", "streamlit log", server.log_tail(80))
    finally:
        for other in list(context.pages):  # this test's tab and any it opened (a link's new tab)
            other.close()
