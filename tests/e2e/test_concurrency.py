"""One server, several visitors at once: each browser session sees the numbers of its own config."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from gru_explainer import ExplainConfig, explain
from gru_explainer.urlstate import config_to_query
from scripts.screenshots import new_context, wait_for_app

from .helpers import page_url, verdict_line, verdict_value

pytestmark = pytest.mark.e2e
CONFIGS = [
    ExplainConfig(seed=1),
    ExplainConfig(cell="lstm", bidirectional=True, seed=2),
    ExplainConfig(cell="rnn_tanh", seq_len=7, target="y[:, 2].sum()"),
    ExplainConfig(hidden_size=16, num_layers=3, target="h_n[-1].sum()", seed=3),
    ExplainConfig(cell="answer_gru", num_layers=1, target="y.mean()", seed=4),
]


def query(cfg: ExplainConfig) -> str:
    """The URL query for a config, as the app writes it (only non-default fields)."""
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in config_to_query(cfg).items())


def test_sessions_at_once_each_show_their_own_numbers(browser, base_url):
    expected = [explain(cfg).target_value for cfg in CONFIGS]
    assert len({round(v, 4) for v in expected}) == len(CONFIGS), "the configs must give distinct target values"
    contexts = [new_context(browser) for _ in CONFIGS]
    try:
        tabs = [ctx.new_page() for ctx in contexts]
        # Start every session before waiting for any, so the server runs their scripts concurrently.
        for tab, cfg in zip(tabs, CONFIGS, strict=True):
            tab.goto(page_url(base_url, "/explorer", query(cfg)), wait_until="commit")
        for tab, cfg, value in zip(tabs, CONFIGS, expected, strict=True):
            wait_for_app(tab, timeout_ms=120_000)
            line = verdict_line(tab)
            expect(line).to_contain_text(f"{cfg.target}")
            expect(line).to_contain_text(f"T = {cfg.seq_len}")
            shown = verdict_value(line.inner_text())
            assert shown == pytest.approx(value, rel=1e-4), f"{cfg}: page shows {shown}, expected {value}"
            others = [v for v in expected if v != value]
            assert all(shown != pytest.approx(v, rel=1e-4) for v in others)
        # A change in one session leaves the others alone.
        first = tabs[0]
        target = first.locator('[data-testid="stMain"] input[aria-label="Target (scalar to differentiate)"]')
        target.fill("y.sum()")
        target.press("Enter")
        expect(verdict_line(first)).to_contain_text("y.sum()", timeout=60_000)
        for tab, cfg in zip(tabs[1:], CONFIGS[1:], strict=True):
            expect(verdict_line(tab)).to_contain_text(cfg.target)
    finally:
        for ctx in contexts:
            ctx.close()
