"""A cold server's first page, sooner (app layer; importing this module is light: Streamlit only). Two parts:
the server imports torch, pandas and the core in a background thread as soon as it starts (`lifespan`, app.py's
`st.App`), and the browser fetches the code that draws charts while the first script run still works
(`preload_components`).

A session's first script run spends seconds importing torch and pandas before its page sends its first chart or code
block, and only then does the browser fetch and compile the front-end code that draws them (Streamlit loads each
element's component lazily: its chart component pulls in Vega, ~1 MB, its code blocks a 1.5 MB highlighter). Measured
on 2 shared cores, that took ~1 s after the page's script had finished. `preload_components` sends the browser,
before those imports, a script that imports the same modules at once, so it compiles them while Python imports: when
the chart arrives its component is ready. It draws nothing (no element of its own is visible, no chart is faked): the
page's real charts still come from the run's real computation.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import streamlit as st
from streamlit.logger import get_logger

COMPONENTS = ("ArrowVegaLiteChart", "StreamlitSyntaxHighlighter")
"""Streamlit's front-end chunks (file stems in its static/js folder) of the elements every page draws: Vega-Lite
charts and st.code blocks."""
KEY = "gx_preload"
PRELOAD_JS = """<script>
(() => {{ // fetch and compile the front-end code of charts and code blocks now, while the server still computes
  const entry = document.querySelector('script[type="module"][src*="/static/js/index."]');
  if (!entry) return;
  for (const file of {files}) import(new URL(file, entry.src).href).catch(() => {{}});
}})();
</script>"""


@functools.cache
def component_files(static: Path | None = None) -> tuple[str, ...]:
    """The file names of COMPONENTS in this Streamlit's front-end build (hashed names, so looked up once); empty
    where its build differs (then nothing is preloaded and every element still loads its own code)."""
    static = static or Path(st.__file__).parent / "static" / "static" / "js"
    return tuple(sorted(path.name for stem in COMPONENTS for path in static.glob(f"{stem}.*.js")))


def hidden_script(key: str, script: str) -> None:
    """Run `script` (a <script> element, `st.html`'s supported JavaScript option) in the browser from a container
    keyed `key` that takes no space on the page (hidden with CSS; a style-only `st.html` adds none either)."""
    st.html(f"<style>.st-key-{key}, [data-testid='stLayoutWrapper']:has(> .st-key-{key}) {{display: none;}}</style>")
    with st.container(key=key):
        st.html(script, unsafe_allow_javascript=True)


def preload_components() -> None:
    """Send the browser PRELOAD_JS for this Streamlit's COMPONENTS (call it before the heavy imports), as a
    `hidden_script`; the browser runs it once per page load (its text never changes), so reruns cost nothing there."""
    files = component_files()
    if files:
        hidden_script(KEY, PRELOAD_JS.format(files=json.dumps(list(files))))


HEAVY_MODULES = ("torch", "pandas", "gru_explainer", "gru_explainer.charts", "gru_explainer.compare",
                 "gru_explainer.flow", "gru_explainer.graph", "gru_explainer.urlstate")
"""What a session's first run would otherwise import itself (~3 s on 2 shared cores: torch 2.3-2.7 s, pandas
0.6 s, the core modules `ui` reads ~0.1 s): third-party packages and the core, never the app layer (`ui`, the
pages), so the background import and a session's own can only wait for each other, never deadlock (the core imports
nothing of the app layer, and these modules import one another only in this order). Not Altair (only some pages'
charts need it) nor torch._dynamo (an optimizer's first use imports it: 2.4 s and 67 MiB, for the training page
alone)."""
_LOG = get_logger(__name__)


def import_heavy_modules(modules: tuple[str, ...] = HEAVY_MODULES) -> None:
    """Import `modules` (in a background thread at the server's start: see `lifespan`). A failure is logged and left
    to the script run, which imports the same modules and shows its error as usual."""
    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (the session's own import raises it again, where it is shown)
            _LOG.warning("warm-up: importing %s failed", name, exc_info=True)
            return
    _LOG.info("warm-up: %s and %d more modules imported in %.1f s", modules[0], len(modules) - 1,
              time.perf_counter() - started)


@contextlib.asynccontextmanager
async def lifespan(app: object) -> AsyncIterator[None]:
    """The server's start-up (app.py's `st.App`): import HEAVY_MODULES in a daemon thread and serve at once, so a
    cold server's first visitor does not wait for torch after the front end has loaded. A session whose run needs
    them before they are ready just waits for that import (Python's import locks) instead of starting its own."""
    threading.Thread(target=import_heavy_modules, name="gx-warm-imports", daemon=True).start()
    yield
