"""Devices in the app: a failing accelerator shows the DeviceError's message and a "Run on the CPU instead" button
that works; an absent device (URL or a stale session) falls back with a notice or offers the same button.

A failing accelerator is simulated in-process (AppTest runs the page script in a thread of this process, so module
attributes patched here are what the page sees): the machine claims a "cuda:0", and building the model on it raises
torch.OutOfMemoryError, exactly what a full GPU does. explain() turns that into a DeviceError.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest

import ui
from gru_explainer import DeviceError, ExplainConfig, available_devices, explain

from .markdown import plain_text
from .vega import explorer_complete

ROOT = Path(__file__).resolve().parents[1]
EXPLORER, FLOW, DEVICES = (str(ROOT / "app_pages" / f"{name}.py") for name in ("explorer", "flow", "devices"))
FAKE_GPU = "cuda:0"
explain_module = importlib.import_module("gru_explainer.explain")
config_module = importlib.import_module("gru_explainer.config")
compare_module = importlib.import_module("gru_explainer.compare")


@pytest.fixture
def failing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine 'has' cuda:0, and every computation on it runs out of memory (the CPU works as usual)."""
    devices = lambda: ["cpu", FAKE_GPU]  # noqa: E731
    for module in (config_module, compare_module, ui):
        monkeypatch.setattr(module, "available_devices", devices)
    real_build = explain_module.build

    def build(cfg, device):
        if device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 0 bytes free)")
        return real_build(cfg, device)

    monkeypatch.setattr(explain_module, "build", build)
    st.cache_data.clear()  # a cached report must not hide the failure (errors are never cached)
    yield
    st.cache_data.clear()


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def cpu_button(at: AppTest):
    buttons = [b for b in at.button if b.label == "Run on the CPU instead"]
    assert len(buttons) == 1, [b.label for b in at.button]
    return buttons[0]


def test_the_simulated_gpu_raises_a_device_error(failing_gpu: None) -> None:
    with pytest.raises(DeviceError, match="failed on device 'cuda:0'.*OutOfMemoryError.*choose device 'cpu'"):
        explain(ExplainConfig(device=FAKE_GPU))


def test_explorer_failing_device_offers_the_cpu_and_the_button_works(failing_gpu: None) -> None:
    at = run(AppTest.from_file(EXPLORER, default_timeout=60))
    assert explorer_complete(at)
    at.selectbox(key="gx_device").set_value(FAKE_GPU)
    run(at)
    assert len(at.error) == 1
    message = plain_text(at.error[0].value)
    assert "failed on device 'cuda:0'" in message and "OutOfMemoryError" in message and "CUDA out of memory" in message
    assert not message.startswith("Unexpected")  # the DeviceError's own message, not a generic one
    # What stays on screen is the last valid (CPU) result, marked as such.
    assert any("Below is the last valid result" in w.value for w in at.warning)
    assert at.query_params["device"] == FAKE_GPU
    cpu_button(at).click()
    run(at)
    assert not at.error and explorer_complete(at)
    assert at.session_state["gx_config"].device == "cpu"
    assert at.selectbox(key="gx_device").value == "cpu"
    assert "device" not in at.query_params  # cpu is the default: the URL drops it
    assert not [b for b in at.button if b.label == "Run on the CPU instead"]


def test_flow_failing_device_offers_the_cpu(failing_gpu: None) -> None:
    at = AppTest.from_file(FLOW, default_timeout=90)
    at.session_state["gx_config"] = ExplainConfig(device=FAKE_GPU, seq_len=6, hidden_size=8)
    run(at)
    assert len(at.error) == 1 and "failed on device 'cuda:0'" in plain_text(at.error[0].value)
    assert not at.get("vega_lite_chart")
    cpu_button(at).click()
    run(at)
    assert not at.error and len(at.get("vega_lite_chart")) == 4  # decay, Jacobians (2), sweep
    assert at.session_state["gx_config"] == ExplainConfig(seq_len=6, hidden_size=8)


def test_devices_page_failing_device_falls_back_to_comparing_on_the_cpu(failing_gpu: None) -> None:
    at = AppTest.from_file(DEVICES, default_timeout=90)
    at.session_state["gx_config"] = ExplainConfig(seq_len=4, hidden_size=4)
    at.session_state["dev_repeats"] = 1
    run(at)
    assert at.multiselect(key="dev_devices").value == ["cpu", FAKE_GPU]
    assert len(at.error) == 1 and "failed on device 'cuda:0'" in plain_text(at.error[0].value)
    cpu_button(at).click()
    run(at)
    assert not at.error
    assert at.multiselect(key="dev_devices").value == ["cpu"]
    assert at.get("vega_lite_chart") and at.table


def test_absent_device_in_the_url_falls_back_with_a_notice() -> None:
    at = AppTest.from_file(EXPLORER, default_timeout=60)
    at.query_params["device"] = "cuda:7"
    run(at)
    assert len(at.warning) == 1 and not at.error
    available = ", ".join(["auto", *available_devices()])
    notice = plain_text(at.warning[0].value)
    assert f"device 'cuda:7' is not available on this machine; available: {available}" in notice
    assert at.session_state["gx_config"].device == "cpu" and "device" not in at.query_params
    assert explorer_complete(at)


def test_a_session_whose_device_went_away_gets_the_cpu_button() -> None:
    """The shared config names a GPU this machine no longer has (e.g. stored before a restart on another host)."""
    at = AppTest.from_file(EXPLORER, default_timeout=60)
    at.session_state["gx_config"] = ExplainConfig(device="cuda:3")
    run(at)
    assert len(at.error) == 1 and "device 'cuda:3' is not available" in plain_text(at.error[0].value)
    cpu_button(at).click()
    run(at)
    assert not at.error and explorer_complete(at)
    assert at.session_state["gx_config"].device == "cpu"
