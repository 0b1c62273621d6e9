"""Median AppTest rerun time of the explorer page after a widget change, and the cold start of a real server (a
benchmark, not a test).

    PYTHONPATH=. python benchmarks/app_rerun.py [--repeats 15]
    PYTHONPATH=. python benchmarks/app_rerun.py --cold [--repeats 5] [--page explorer]

Four kinds of change: a view-only widget (log toggle: no core call; in the browser it reruns only its
`st.fragment`, AppTest reruns the whole page), a config change back to a setting seen before (a cache hit), a new
seed every time (a sidebar change at the defaults: a cache miss, the full `explain` runs) and a new sequence length
every time (a T change: a cache miss at T = 11, 12, ...).

`--cold` starts `streamlit run app.py` (headless, a free port) afresh for each repeat and opens the page in headless
Chromium (launched before the server, as a visitor's browser is already open) as soon as the server answers
/_stcore/health: the server's start until then, then from opening the page until its first chart drew and until
every chart it draws at its defaults drew (scripts.screenshots.PAGE_CHARTS). The page is opened at once, the worst
case for the server's background import of torch and pandas (warmup.py), which it may still be running.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "explorer.py")


def timed_rerun(at: AppTest) -> float:
    """Seconds for one rerun; fails loudly if the page raised."""
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return elapsed


CHARTS_DRAWN = """([charts, drawn, least]) => {
    const all = [...document.querySelectorAll(charts)];
    return all.length >= least && all.every(c => c.querySelector(drawn));
}"""


def cold_start(repeats: int, page_name: str) -> dict[str, list[float]]:
    """Seconds of each cold start (see the module docstring): a fresh server and browser context per repeat."""
    from playwright.sync_api import sync_playwright

    from scripts.screenshots import (
        CHART_DRAWN,
        CHARTS,
        PAGE_CHARTS,
        ROOT,
        StreamlitServer,
        app_pages,
        launch_browser,
        new_context,
        wait_for_app,
    )

    page = next(p for p in app_pages(ROOT) if p.name == page_name)
    charts = PAGE_CHARTS.get(page.name, 0)
    results: dict[str, list[float]] = {"server start until /_stcore/health": [],
                                       "page opened until its first chart": [],
                                       f"page opened until all {charts} charts drew": []}
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            for _ in range(repeats):
                started = time.perf_counter()
                server = StreamlitServer(ROOT, extra_args=["--server.fileWatcherType", "none"]).start(timeout=300)
                context = None
                try:
                    healthy = time.perf_counter()
                    context = new_context(browser)
                    tab = context.new_page()
                    opened = time.perf_counter()
                    tab.goto(page.url(server.base_url), wait_until="commit", timeout=300_000)
                    tab.wait_for_function(CHARTS_DRAWN, arg=[CHARTS, CHART_DRAWN, 1], timeout=300_000, polling=20)
                    first = time.perf_counter()
                    tab.wait_for_function(CHARTS_DRAWN, arg=[CHARTS, CHART_DRAWN, charts], timeout=300_000,
                                          polling=20)
                    complete = time.perf_counter()
                    wait_for_app(tab, 300_000, charts)  # no exception on the page, every chart drawn properly
                finally:
                    if context is not None:
                        context.close()
                    server.stop()
                for name, seconds in zip(results, (healthy - started, first - opened, complete - opened),
                                         strict=True):
                    results[name].append(seconds)
        finally:
            browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="default: 15 reruns, 5 cold starts")
    parser.add_argument("--cold", action="store_true", help="time cold starts of a real server instead (Chromium)")
    parser.add_argument("--page", default="explorer",
                        help="--cold: the page to open (a file stem). Default: %(default)s")
    args = parser.parse_args()
    if args.cold:
        for name, times in cold_start(args.repeats or 5, args.page).items():
            print(f"{name:42s} median {statistics.median(times):5.2f} s  (min {min(times):.2f}, max {max(times):.2f}, "
                  f"n={len(times)})")
        return
    args.repeats = args.repeats or 15
    at = AppTest.from_file(PAGE, default_timeout=120)
    first = timed_rerun(at)
    results: dict[str, list[float]] = {"log toggle (view only)": [], "hidden size 32 <-> 16 (cache hit)": [],
                                       "new seed (cache miss)": [], "new T (cache miss)": []}
    for i in range(args.repeats):
        at.toggle(key="gx_log").set_value(i % 2 == 0)
        results["log toggle (view only)"].append(timed_rerun(at))
    at.number_input(key="gx_hidden_size").set_value(16)
    timed_rerun(at)  # fill the cache for both settings
    for i in range(args.repeats):
        at.number_input(key="gx_hidden_size").set_value(32 if i % 2 == 0 else 16)
        results["hidden size 32 <-> 16 (cache hit)"].append(timed_rerun(at))
    for i in range(args.repeats):
        at.number_input(key="gx_seed").set_value(1000 + i)
        results["new seed (cache miss)"].append(timed_rerun(at))
    for i in range(args.repeats):
        at.number_input(key="gx_seq_len").set_value(11 + i)
        results["new T (cache miss)"].append(timed_rerun(at))
    print(f"explorer first load (includes imports): {first * 1000:.0f} ms")
    for name, times in results.items():
        print(f"{name:38s} median {statistics.median(times) * 1000:7.1f} ms  "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})")


if __name__ == "__main__":
    main()
