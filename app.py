"""GRU Gradient Explainer: the Streamlit entry point (page defaults, navigation, the shared config in the URL)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

import ui

HERE = Path(__file__).parent
PAGES = [
    # (file, title, icon): pages whose file is missing are left out, so the app runs while pages are being written.
    ("pages/puzzle.py", "The puzzle", ":material/help:"),
    ("pages/explorer.py", "Gradient explorer", ":material/insights:"),
    ("pages/flow.py", "Gradient flow through time", ":material/trending_down:"),
    ("pages/graph.py", "Autograd graph", ":material/account_tree:"),
    ("pages/devices.py", "Devices & engines", ":material/memory:"),
]


@st.cache_resource
def _process_setup() -> None:
    """Process-wide torch settings, applied once per server process (not per session or rerun)."""
    # set_flush_denormal is a process-wide flag and Streamlit serves every session from threads of this one
    # process, so it is set once here, at startup, deliberately and for everyone. Flushing denormals makes
    # vanishing gradients reach exact zeros sooner; the core reports those as `underflow` (a path exists),
    # never as structural zeros (no path), so the explanation stays correct.
    torch.set_flush_denormal(True)


_process_setup()
st.set_page_config(layout="wide", page_title="GRU Gradient Explainer", page_icon=":material/timeline:")
pages = [st.Page(path, title=title, icon=icon, default=i == 0)
         for i, (path, title, icon) in enumerate(PAGES) if (HERE / path).exists()]
page = st.navigation(pages)
# Read the URL once per session (notices shown here, above every page) and keep it in sync on page switches.
ui.set_shared_config(ui.shared_config())
page.run()
