"""Hardening in a real browser: eight visitors open the explorer at once, each with a different config in the URL,
against the one server; every page shows exactly its own numbers. One more visitor brings a hostile URL and gets
notices and the defaults, without disturbing the others; then a change in one session leaves the others alone.
(This also is the one-server, several-visitors concurrency test: it had a file of its own with five sessions.)"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from gru_explainer import ExplainConfig, explain
from gru_explainer.urlstate import config_to_query
from scripts.screenshots import new_context, track_layout, wait_for_app

from .helpers import page_url, verdict_line, verdict_value

pytestmark = pytest.mark.e2e
SESSIONS = [
    ExplainConfig(seed=21),
    ExplainConfig(cell="lstm", seed=22, target="c_n.sum()"),
    ExplainConfig(cell="rnn_tanh", bidirectional=True, seq_len=8, seed=23, target="y[:, 3].sum()"),
    ExplainConfig(cell="rnn_relu", num_layers=1, hidden_size=16, seed=24, target="y.mean()"),
    ExplainConfig(cell="answer_gru", num_layers=1, seed=25, target="h_n.sum()"),
    ExplainConfig(head="linear", head_size=3, seed=26, target="out.sum()"),
    ExplainConfig(dtype="float64", hidden_size=12, seq_len=6, seed=27, target="(y[:, -1] ** 2).mean()"),
    ExplainConfig(num_layers=3, hidden_size=8, batch_size=4, seed=28, weight_scale=2.0),
]
WAIT_MS = 300_000
"""Each page's wait (a bound, never a measurement): nine sessions share one server, whose heavy work runs one at a
time, and two busy cores with the browser."""
HOSTILE = ("hidden_size=1e309&cell=%3Cscript%3E&target=__import__('os')&device=cuda:7&seed=1&seed=2"
           "&%5BClick%20to%20fix%20your%20GPU%5D(https%3A%2F%2Fevil)=%F0%9F%92%A5")


def query(cfg: ExplainConfig) -> str:
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in config_to_query(cfg).items())


def test_eight_sessions_at_once_each_see_their_own_numbers(browser, base_url):
    contexts = [new_context(browser) for _ in range(len(SESSIONS) + 1)]
    try:
        tabs = [ctx.new_page() for ctx in contexts]
        # Navigate every session before waiting on any: the server runs their scripts concurrently. Each page records
        # its layout from now on (track_layout): awaited one after another, the later ones have long been still.
        for tab, cfg in zip(tabs, SESSIONS, strict=False):
            tab.goto(page_url(base_url, "/explorer", query(cfg)), wait_until="commit")
            track_layout(tab)
        tabs[-1].goto(page_url(base_url, "/explorer", HOSTILE), wait_until="commit")
        track_layout(tabs[-1])
        # The expected numbers, computed here while the server and the browser load the pages.
        expected = [explain(cfg).target_value for cfg in SESSIONS]
        assert len({f"{v:.6g}" for v in expected}) == len(SESSIONS), "the sessions' target values must be distinct"
        for tab, cfg, value in zip(tabs, SESSIONS, expected, strict=False):
            wait_for_app(tab, timeout_ms=WAIT_MS)
            line = verdict_line(tab)
            expect(line).to_contain_text(cfg.target)
            expect(line).to_contain_text(f"T = {cfg.seq_len}")
            assert f"{verdict_value(line.inner_text()):.6g}" == f"{value:.6g}", cfg  # the verdict prints 6 digits
            assert tab.locator('[data-testid="stAlertContentWarning"]').count() == 0
        hostile = tabs[-1]
        wait_for_app(hostile, timeout_ms=WAIT_MS)
        notices = hostile.locator('[data-testid="stAlertContentWarning"]')
        assert notices.count() >= 6  # one notice per bad value
        text = " ".join(notices.all_inner_texts())
        assert "__import__('os')" in text and "[Click to fix your GPU](https://evil)" in text  # shown literally
        assert hostile.locator('a[href*="evil"]').count() == 0  # URL text never becomes a link
        default = explain(ExplainConfig(seed=2))
        assert f"{verdict_value(verdict_line(hostile).inner_text()):.6g}" == f"{default.target_value:.6g}"
        assert "script" not in hostile.url and "1e309" not in hostile.url  # the URL was cleaned
        # A change in one session leaves the others alone.
        first = tabs[0]
        target = first.locator('[data-testid="stMain"] input[aria-label="Target (scalar to differentiate)"]')
        target.fill("y.sum()")
        target.press("Enter")
        expect(verdict_line(first)).to_contain_text("y.sum()", timeout=WAIT_MS)
        assert f"{verdict_value(verdict_line(first).inner_text()):.6g}" == (
            f"{explain(SESSIONS[0].replace(target='y.sum()')).target_value:.6g}")
        for tab, cfg, value in zip(tabs[1:], SESSIONS[1:], expected[1:], strict=False):
            expect(verdict_line(tab)).to_contain_text(cfg.target)
            assert f"{verdict_value(verdict_line(tab).inner_text()):.6g}" == f"{value:.6g}", cfg
        # (no bound on the total time: timings are benchmarks, never assertions; each page's wait has its timeout)
    finally:
        for ctx in contexts:
            ctx.close()
