"""warmup.py and app.py's server: `streamlit run app.py` finds the st.App (whose start-up imports torch in the
background) without running the script, and the browser preload names real front-end files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import streamlit as st
from streamlit.web.server.app_discovery import discover_asgi_app

import warmup

ROOT = Path(__file__).resolve().parents[1]


def test_streamlit_run_serves_the_app_with_the_warm_up() -> None:
    """Streamlit's discovery (what `streamlit run app.py` does first) finds `app` in app.py; importing app.py as that
    module builds the st.App and nothing else: no torch, no page, no Streamlit call outside a script run."""
    found = discover_asgi_app(ROOT / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"
    script = """
import sys
import streamlit as st
import app
assert isinstance(app.app, st.App), type(app.app)
assert app.app._user_lifespan is __import__("warmup").lifespan
assert "torch" not in sys.modules and "ui" not in sys.modules and "pandas" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ScriptRunContext" not in done.stderr  # no st.* call ran outside a script run


def test_import_heavy_modules_logs_a_failure_and_stops(caplog) -> None:
    warmup.import_heavy_modules(("json", "gx_no_such_module", "never_reached_module"))
    assert "gx_no_such_module" in caplog.text and "never_reached_module" not in caplog.text
    warmup.import_heavy_modules(("json",))  # a success is only logged


def test_preload_names_this_streamlit_s_component_files(tmp_path: Path) -> None:
    files = warmup.component_files()
    static = Path(st.__file__).parent / "static" / "static" / "js"
    assert {name.split(".")[0] for name in files} == set(warmup.COMPONENTS)
    assert all((static / name).is_file() for name in files)
    assert warmup.component_files.__wrapped__(tmp_path) == ()  # another build: nothing preloaded, nothing breaks
