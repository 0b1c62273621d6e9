"""GRU Gradient Explainer: the Streamlit entry point (page defaults, navigation, the shared config in the URL).

This file has two roles. `streamlit run app.py` first imports it as a module (``__name__ == "app"``) to find the
server it defines, `app` (Streamlit's `st.App`): started once per process, before any visitor, it imports torch and
pandas in the background (`warmup.lifespan`: on a cold server they took ~3 s of the first page) while the first
browser still loads Streamlit's front end. The server then runs this file as the script of every session's run
(``__name__ == "__main__"``, as also under AppTest): the ``else`` branch below.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import streamlit as st

import warmup

HERE = Path(__file__).parent
PAGES = [
    # (file, title, icon): pages whose file is missing are left out, so the app runs while pages are being written.
    ("app_pages/puzzle.py", "The puzzle", ":material/help:"),
    ("app_pages/explorer.py", "Gradient explorer", ":material/insights:"),
    ("app_pages/flow.py", "Gradient flow through time", ":material/trending_down:"),
    ("app_pages/graph.py", "Autograd graph", ":material/account_tree:"),
    ("app_pages/devices.py", "Devices & engines", ":material/memory:"),
    ("app_pages/pitfalls.py", "Pitfalls", ":material/report_problem:"),
    ("app_pages/your_model.py", "Your model", ":material/upload_file:"),
    ("app_pages/learn.py", "Watch it learn", ":material/school:"),
]
# The favicon is an emoji drawn as an inline data: SVG (a :material/…: icon would be fetched from fonts.gstatic.com,
# which fails offline). It is the SVG Streamlit itself makes of an emoji icon, given as a percent-encoded (ASCII)
# data: URL: an emoji string made set_page_config load Streamlit's emoji catalogue, ~0.35 s of a cold server's first
# page.
FAVICON = "data:image/svg+xml," + quote("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 100 100'>"
                                        "<text y='.9em' font-size='90'>📉</text></svg>")

if __name__ != "__main__":  # imported by `streamlit run app.py` (or an ASGI server): the server, once per process
    app = st.App(__file__, lifespan=warmup.lifespan)
else:  # a session's script run
    # First the page config and the preload (warmup.py), before the heavy imports: the browser gets the page's title
    # and compiles the charts' front-end code while this run still imports torch and pandas (or waits for the
    # server's background import of them to finish).
    st.set_page_config(layout="wide", page_title="GRU Gradient Explainer", page_icon=FAVICON)
    warmup.preload_components()

    import torch

    import hosting
    import ui

    # Flush denormals to zero: plain autograd (the twin engine, the graph and devices pages) stays fast when
    # vanishing gradients reach float32's denormals. The fused engine's rescaled adjoint is unaffected (it never holds
    # a denormal and keeps the true magnitudes); values the flag turns into zeros are reported as `underflow`, and the
    # verdict says that flush-to-zero is on. It is deliberately one setting for the whole server, the same value for
    # every session. Note that the CPU flag behind it (MXCSR on x86) belongs to a thread, not the process, and
    # Streamlit executes each script run in its own thread, so this line runs at the start of every run, here in the
    # entry point: setting it is a cheap, idempotent register write, and every page's computation (and any thread it
    # starts) then sees it.
    torch.set_flush_denormal(True)
    # One intra-op thread (process-wide, idempotent): these models are far too small to gain from threads, and on a
    # small shared host sessions run in parallel; measured on 2 busy cores, a 12-run flow sweep took 2.46 s with
    # torch's 2 threads and 0.18 s with 1.
    torch.set_num_threads(1)
    pages = [st.Page(path, title=title, icon=icon, default=i == 0)
             for i, (path, title, icon) in enumerate(PAGES) if (HERE / path).exists()]
    # Memory for a hosted server (hosting.py): glibc's malloc arenas capped once, caches dropped when nobody is
    # connected.
    hosting.configure()
    page = st.navigation(pages)
    ui.close_sidebar_on_narrow_screens(page.url_path)  # Streamlit itself closes it after a page switch only on phones
    # Read the URL once per session (notices shown here, above every page) and keep it in sync on page switches.
    ui.set_shared_config(ui.shared_config())
    try:
        page.run()
    except BaseException as stopped_by:  # a rerun, st.stop, a closed session, an error
        ui.run_ended(stopped_by)
        raise
    else:
        ui.run_ended(None)
    finally:  # also when the run stops early: free memory goes back to the OS
        hosting.release_memory()
