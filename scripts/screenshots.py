"""Docs screenshots from one command, and the harness the browser tests share: start the app, drive Chromium.

    python -m scripts.screenshots [--out docs/screenshots] [--chromium /usr/bin/chromium]

A development tool, not library code (the ``gru_explainer`` package never starts servers or browsers). It starts
``streamlit run app.py`` on a free port (light theme), opens every page of the app's navigation in Debian's
Chromium through the ``playwright`` package (imported lazily; never ``playwright install``), waits until the
script finished and every chart drew, and writes the main area at 1400 px wide, full height, animations
disabled, to ``docs/screenshots/<page>.png``; the pages in ``PHONE_PAGES`` are also shot at a phone's 390×844
into ``<page>-phone.png``. It exits non-zero when a page shows an exception, a screenshot is blank or a phone
page scrolls sideways.

The page list comes from ``PAGES`` in app.py (file, title, icon): the first page is the default (url "/"),
the others live at "/<file stem>", as ``st.navigation`` derives them.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")
VIEWPORT = {"width": 1400, "height": 900}
PHONE_VIEWPORT = {"width": 390, "height": 844}
PHONE_PAGES = ("puzzle",)
"""Pages also captured at PHONE_VIEWPORT, as ``<page>-phone.png`` (the README embeds the home page's)."""
APP_READY = '[data-testid="stApp"][data-test-script-state="notRunning"]'
CHARTS = '[data-testid="stVegaLiteChart"], [data-testid="stGraphVizChart"]'
CHART_DRAWN = "svg, canvas"
MAIN_ELEMENT = '[data-testid="stMainBlockContainer"] [data-testid="stElementContainer"]'
PENDING = '[data-testid="stMainBlockContainer"] [data-testid="stSkeleton"]'
"""A placeholder Streamlit draws where an element's component is still loading (a chart's, right after a first run):
while one is on the page, "every chart drew" would be true of the charts that exist so far."""
PAGE_CHARTS = {"puzzle": 1, "explorer": 5, "flow": 4, "graph": 2, "devices": 2, "your_model": 5, "learn": 7}
"""Charts (Vega-Lite and Graphviz) each page draws at its default settings, as counted on the CPU: what
`capture_pages` waits for at least."""
EXCEPTION = '[data-testid="stException"]'
MIN_PLOT_PX = 50
"""Every Vega chart's plot area (largest frame / facet cell) must be at least this tall: Streamlit sizes charts
without an explicit ``autosize`` with ``fit``, which can squeeze a layered chart's plot to a sliver."""
LAYOUT_QUIET_MS = 800
"""The page counts as laid out when the main area's height stayed the same this long."""
MIN_PIXEL_STD = 8.0
"""A screenshot whose grey levels vary less than this is blank (a page of one colour, maybe with a header)."""


@dataclass(frozen=True)
class AppPage:
    """One page of the app's navigation, as app.py declares it."""

    file: str  # e.g. "app_pages/explorer.py"
    title: str  # the navigation label
    url_path: str  # "" for the default page, else the file stem (st.navigation's default)

    @property
    def name(self) -> str:
        """The file stem: screenshot file name and test id."""
        return Path(self.file).stem

    def url(self, base_url: str, query: str = "") -> str:
        """The page's address on a server at `base_url`, with an optional query string (without "?")."""
        return f"{base_url.rstrip('/')}/{self.url_path}" + (f"?{query}" if query else "")

    @property
    def load_timeout_ms(self) -> float:
        """How long a browser waits for this page at its defaults (`open_page`): LOAD_TIMEOUT_MS."""
        return LOAD_TIMEOUT_MS.get(self.name, DEFAULT_LOAD_TIMEOUT_MS)


DEFAULT_LOAD_TIMEOUT_MS = 60_000
LOAD_TIMEOUT_MS = {"learn": 180_000}
"""Pages whose load at their defaults can compute for long, by file stem: Watch it learn trains two models when its
default run is not cached (on a fresh server, or after the idle watchdog dropped the caches: ~24 s on a quiet
2-core machine, past 60 s in a loaded full test run). A longer limit costs nothing while the page is fast (the wait
ends when it has drawn); it only lets a slow first run finish. Every other page keeps DEFAULT_LOAD_TIMEOUT_MS."""


def app_pages(root: Path = ROOT) -> list[AppPage]:
    """The pages app.py's ``PAGES`` list declares (read with ast; app.py is not imported)."""
    tree = ast.parse((root / "app.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(
            node, "target", None)
        if isinstance(target, ast.Name) and target.id == "PAGES" and node.value is not None:
            entries = ast.literal_eval(node.value)
            return [AppPage(file=file, title=title, url_path="" if i == 0 else Path(file).stem)
                    for i, (file, title, *_rest) in enumerate(entries)]
    raise RuntimeError("app.py has no PAGES = [(file, title, icon), ...] list")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StreamlitServer:
    """``python -m streamlit run app.py`` as a subprocess on a free port; stopped by its PID."""

    def __init__(self, root: Path = ROOT, *, port: int | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.env = env
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="streamlit-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        """The server's command line."""
        return [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                "--server.port", str(self.port), "--server.address", "127.0.0.1",
                "--browser.gatherUsageStats", "false", *self.extra_args]

    def start(self, timeout: float = 60.0) -> StreamlitServer:
        """Start the server and wait until /_stcore/health answers "ok"; RuntimeError with the log otherwise."""
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, cwd=self.root, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.base_url}/_stcore/health",
                                                                      timeout=2) as response:
                if response.status == 200 and response.read().decode().strip() == "ok":
                    return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"streamlit did not answer /_stcore/health within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server by its PID, then kill it if it does not exit within `timeout` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's output (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> StreamlitServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_chromium(executable: str = CHROMIUM) -> None:
    """RuntimeError with the fix when Chromium is missing (browser downloads are not an option here)."""
    if not os.access(executable, os.X_OK):
        raise RuntimeError(f"Chromium not found at {executable}: install Debian's package "
                           "(sudo apt-get install chromium) or run scripts/test.sh, which does; "
                           "do not run `playwright install`.")


def launch_browser(playwright: Any, executable: str = CHROMIUM) -> Any:
    """Debian's Chromium, headless, through a started ``sync_playwright()`` object."""
    check_chromium(executable)
    return playwright.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS))


def new_context(browser: Any, **options: Any) -> Any:
    """A browser context at the docs viewport, reduced motion, light colour scheme (options override)."""
    settings = {"viewport": dict(VIEWPORT), "reduced_motion": "reduce", "color_scheme": "light", **options}
    return browser.new_context(**settings)


def exception_texts(page: Any) -> list[str]:
    """The text of every Streamlit exception box on the page."""
    return [text.strip() for text in page.locator(EXCEPTION).all_inner_texts()]


def chart_problems(page: Any, min_plot_px: float | None = None) -> list[str]:
    """What is wrong with the drawn charts: no svg/canvas, or a plot area below min_plot_px (MIN_PLOT_PX)."""
    min_plot_px = MIN_PLOT_PX if min_plot_px is None else min_plot_px
    return page.evaluate(
        """([charts, drawn, minPlot]) => {
            const problems = [];
            [...document.querySelectorAll(charts)].forEach((chart, i) => {
                const kind = chart.getAttribute('data-testid');
                const node = chart.querySelector(drawn);
                if (!node) { problems.push(`${kind} #${i} drew no svg/canvas`); return; }
                if (kind !== 'stVegaLiteChart' || node.tagName.toLowerCase() !== 'svg') return;
                const frames = [...node.querySelectorAll(
                    'g.role-frame > g > path.background, g.role-scope > g > path.background')];
                const height = Math.max(0, ...frames.map(p => p.getBBox().height));
                if (height < minPlot) {
                    const title = (node.querySelector('g.role-title-text text') || {}).textContent || '';
                    problems.push(`${kind} #${i} "${title.slice(0, 80)}": plot area ${Math.round(height)} px tall`);
                }
            });
            return problems;
        }""",
        [CHARTS, CHART_DRAWN, min_plot_px])


def wait_for_app(page: Any, timeout_ms: float = 60_000, min_charts: int = 0) -> None:
    """Wait until the script run finished and drew its first element, stale elements are gone, no element is still
    loading its component, every chart drew its svg/canvas (at least `min_charts` of them: the charts a page is
    known to draw) and the layout settled.

    Raises AssertionError when the page shows a Streamlit exception or a chart's plot area collapsed.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    page.wait_for_selector(APP_READY, state="attached", timeout=timeout_ms)
    for attempt in range(3):  # a chart re-embeds (briefly without its svg) when its width changes as the page settles
        remaining = max(1_000.0, (deadline - time.monotonic()) * 1000)
        page.wait_for_function(
            """([ready, charts, drawn, element, pending, least]) => {
                if (!document.querySelector(ready) || !document.querySelector(element)) return false;
                if (document.querySelector('[data-stale="true"]') || document.querySelector(pending)) return false;
                const all = [...document.querySelectorAll(charts)];
                return all.length >= least && all.every(c => c.querySelector(drawn));
            }""",
            arg=[APP_READY, CHARTS, CHART_DRAWN, MAIN_ELEMENT, PENDING, min_charts], timeout=remaining, polling=100)
        wait_for_layout(page, timeout_ms=max(1_000.0, (deadline - time.monotonic()) * 1000))
        errors = exception_texts(page)
        assert not errors, "the page shows an exception:\n" + "\n---\n".join(errors)
        problems = chart_problems(page)
        if not problems or attempt == 2:
            break
    assert not problems, "charts did not draw properly:\n" + "\n".join(problems)
    page.evaluate(MARK_RUNS)


MARK_RUNS = """() => {
    if (window.__gxRuns === undefined) {
        window.__gxRuns = 0;
        new MutationObserver(records => {
            for (const record of records) if (record.oldValue === 'notRunning') window.__gxRuns += 1;
        }).observe(document.body, {attributes: true, subtree: true, attributeOldValue: true,
                                   attributeFilter: ['data-test-script-state']});
    }
    window.__gxSeenRuns = window.__gxRuns;
}"""
"""Run by `wait_for_app` once the page is ready: counts, from then on in this document, every script run that starts
(the app leaves the "notRunning" state) in ``window.__gxRuns``, and marks how many had started when the app was last
seen ready (``window.__gxSeenRuns``). `run_started_since_ready` reads them: whether an interaction's rerun has begun,
even when it has finished already."""
RUN_STARTED = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (app && app.getAttribute('data-test-script-state') !== 'notRunning') return true;
    return window.__gxRuns !== undefined && window.__gxRuns > window.__gxSeenRuns;
}"""


def run_started_since_ready(page: Any, timeout_ms: float) -> bool:
    """Whether a script run started since `wait_for_app` last saw the app ready (is running now, or ran and finished
    already), waiting up to `timeout_ms` for one; False when none started in that time, or when the wait broke off
    (a navigation replaced the document: the `wait_for_app` that follows sees what the page does)."""
    from playwright.sync_api import Error as PlaywrightError  # TimeoutError's base class too

    try:
        page.wait_for_function(RUN_STARTED, timeout=timeout_ms, polling=50)
    except PlaywrightError:
        return False
    return True


LAYOUT_SEEN = """() => {
    const block = document.querySelector('[data-testid="stMainBlockContainer"]') || document.body;
    const height = block.scrollHeight, now = performance.now();
    const seen = window.__gxLayout || (window.__gxLayout = {block: null, height: -1, since: now});
    if (seen.block !== block || seen.height !== height) { seen.block = block; seen.height = height; seen.since = now; }
    return now - seen.since;
}"""
"""Records the main area's height in ``window.__gxLayout`` (with when it or the element measured last changed);
returns for how many ms it has held (0 when it just changed)."""


def track_layout(page: Any) -> None:
    """Keep recording the main area's height in the page every 100 ms from now on, so that a later `wait_for_layout`
    knows how long it has already held: for pages opened together and awaited one after another (several sessions
    at once), which then need not each sit through a fresh LAYOUT_QUIET_MS. Call it once the page's document exists
    (after ``goto``, ``wait_until="commit"`` will do)."""
    page.evaluate(f"""() => {{
        if (window.__gxLayoutTimer) return;
        const seen = {LAYOUT_SEEN};
        seen();
        window.__gxLayoutTimer = setInterval(seen, 100);
    }}""")


def wait_for_layout(page: Any, quiet_ms: float = LAYOUT_QUIET_MS, timeout_ms: float = 30_000) -> None:
    """Wait until the main area's height has not changed for `quiet_ms` (elements keep growing for a moment after
    the run ends, while their components load and lay out). Measured from the first look unless `track_layout`
    has been recording the height since earlier."""
    page.wait_for_function(
        f"(quiet) => ({LAYOUT_SEEN})() >= quiet", arg=quiet_ms, timeout=timeout_ms, polling=100)


def open_page(page: Any, url: str, timeout_ms: float = 60_000, min_charts: int = 0) -> None:
    """Go to `url` and wait for the app (see `wait_for_app`; at least `min_charts` charts drawn)."""
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    wait_for_app(page, timeout_ms, min_charts)


def pixel_std(png: bytes | Path) -> float:
    """Standard deviation of the grey levels of a PNG (0 for a blank image)."""
    import io

    import numpy as np
    from PIL import Image

    source = io.BytesIO(png) if isinstance(png, bytes) else png
    with Image.open(source) as image:
        return float(np.asarray(image.convert("L"), dtype=float).std())


def capture_main(page: Any, path: Path, max_height: int = 20_000) -> bytes:
    """Screenshot the main area at full height: grow the viewport to the content, then shoot `stMain`."""
    size = page.viewport_size or VIEWPORT
    width, min_height = size["width"], size["height"]
    height = 0
    for _ in range(3):  # a taller viewport can re-flow stretched elements: repeat until the height holds
        wanted = page.evaluate(
            """() => {
                const main = document.querySelector('[data-testid="stMain"]');
                const block = document.querySelector('[data-testid="stMainBlockContainer"]') || main;
                return Math.ceil(Math.max(main.scrollHeight, block.scrollHeight + block.getBoundingClientRect().top));
            }""")
        wanted = int(min(max(wanted, min_height), max_height))
        if wanted == height:
            break
        height = wanted
        page.set_viewport_size({"width": width, "height": height})
        wait_for_app(page)
    page.evaluate("document.fonts.ready")
    return page.locator('[data-testid="stMain"]').screenshot(path=str(path), animations="disabled")


def take_screenshots(out_dir: Path, *, root: Path = ROOT, chromium: str = CHROMIUM,
                     pages: Sequence[AppPage] | None = None, allow_missing: bool = False,
                     ) -> list[tuple[AppPage, Path, float]]:
    """Capture every page into ``out_dir/<page>.png``; returns (page, path, pixel std) per page."""
    from playwright.sync_api import sync_playwright

    check_chromium(chromium)
    pages = list(pages or app_pages(root))
    missing = [p.file for p in pages if not (root / p.file).exists()]
    if missing and allow_missing:
        print(f"skipping pages whose files do not exist yet: {', '.join(missing)}", file=sys.stderr)
        pages = [p for p in pages if p.file not in missing]
    elif missing:
        raise RuntimeError(f"app.py lists pages that do not exist: {', '.join(missing)}")
    # No file watcher: an edit during the capture would otherwise put a "File change. Rerun" bar on the shots.
    args = ["--theme.base", "light", "--server.fileWatcherType", "none"]
    with StreamlitServer(root, extra_args=args) as server, sync_playwright() as playwright:
        browser = launch_browser(playwright, chromium)
        try:
            return capture_pages(browser, server.base_url, pages, out_dir, phone_pages=PHONE_PAGES)
        finally:
            browser.close()


def sideways_scroll(page: Any) -> int:
    """How many px the page pans sideways (document or main area wider than the viewport); 0 when it fits."""
    return int(page.evaluate(
        """() => {
            const doc = document.documentElement, main = document.querySelector('[data-testid="stMain"]');
            return Math.max(doc.scrollWidth - doc.clientWidth, main ? main.scrollWidth - main.clientWidth : 0);
        }"""))


def capture_pages(browser: Any, base_url: str, pages: Sequence[AppPage], out_dir: Path,
                  phone_pages: Sequence[str] = (), color_scheme: str = "light",
                  ) -> list[tuple[AppPage, Path, float]]:
    """Capture each page of a running app (one fresh browser context each) into ``out_dir/<page>.png``, and the
    pages named in `phone_pages` at PHONE_VIEWPORT into ``out_dir/<page>-phone.png`` (AssertionError when a phone
    page scrolls sideways)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = [(app_page, VIEWPORT, "") for app_page in pages]
    shots += [(app_page, PHONE_VIEWPORT, "-phone") for app_page in pages if app_page.name in phone_pages]
    results = []
    for app_page, viewport, suffix in shots:
        context = new_context(browser, viewport=dict(viewport), color_scheme=color_scheme)
        try:
            page = context.new_page()
            open_page(page, app_page.url(base_url), app_page.load_timeout_ms, PAGE_CHARTS.get(app_page.name, 0))
            if suffix:
                overflow = sideways_scroll(page)
                assert overflow <= 0, f"{app_page.title} scrolls {overflow} px sideways at {viewport['width']} px"
            path = out_dir / f"{app_page.name}{suffix}.png"
            results.append((app_page, path, pixel_std(capture_main(page, path))))
        finally:
            context.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns 0 when every page was captured and none is blank."""
    parser = argparse.ArgumentParser(prog="python -m scripts.screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots", help="output folder")
    parser.add_argument("--chromium", default=CHROMIUM, help="Chromium executable. Default: %(default)s")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip pages app.py lists whose files do not exist (default: fail)")
    args = parser.parse_args(argv)
    try:
        results = take_screenshots(args.out, chromium=args.chromium, allow_missing=args.allow_missing)
    except (RuntimeError, AssertionError) as err:
        print(f"screenshots failed: {err}", file=sys.stderr)
        return 1
    blank = []
    for app_page, path, std in results:
        print(f"{path}  ({app_page.title}, pixel std {std:.1f})")
        if std < MIN_PIXEL_STD:
            blank.append(path)
    if blank:
        print(f"blank screenshots: {', '.join(map(str, blank))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
