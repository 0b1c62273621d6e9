"""A cold server's first page, sooner (app layer, light: it imports neither torch nor pandas; the core never imports
it).

A session's first script run spends seconds importing torch and pandas before its page sends its first chart or code
block, and only then does the browser fetch and compile the front-end code that draws them (Streamlit loads each
element's component lazily: its chart component pulls in Vega, ~1 MB, its code blocks a 1.5 MB highlighter). Measured
on 2 shared cores, that took ~1 s after the page's script had finished. `preload_components` sends the browser,
before those imports, a script that imports the same modules at once, so it compiles them while Python imports: when
the chart arrives its component is ready. It draws nothing (no element of its own is visible, no chart is faked): the
page's real charts still come from the run's real computation.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import streamlit as st

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


def preload_components() -> None:
    """Send the browser PRELOAD_JS for this Streamlit's COMPONENTS (call it before the heavy imports). Its container
    takes no space (hidden with CSS, like the sidebar closer in `ui`); the browser runs the script once per page
    load (its text never changes), so reruns cost nothing there."""
    files = component_files()
    if not files:
        return
    st.html(f"<style>.st-key-{KEY}, [data-testid='stLayoutWrapper']:has(> .st-key-{KEY}) {{display: none;}}</style>")
    with st.container(key=KEY):
        st.html(PRELOAD_JS.format(files=json.dumps(list(files))), unsafe_allow_javascript=True)
