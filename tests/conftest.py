"""Settings every test process shares: one intra-op torch thread, as app.py runs the app.

The suite runs one pytest-xdist worker per core, each next to a Streamlit server and Chromium when it runs browser
tests; torch's default of one OpenMP thread per core made every worker's kernels compete for the other worker's core
too (and spin waiting for it): the UI sweep of the flow page took 85 s of CPU with 2 threads, 51 s with 1. The models
here are tiny, so one thread is also what the app itself uses. OMP_NUM_THREADS is set before torch is imported, so
the processes the tests start (CLI runs, generated snippets, the cache check) run with one thread as well and compute
exactly what this process computes.
"""

from __future__ import annotations

import os

import pytest

os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402  (after OMP_NUM_THREADS)

torch.set_num_threads(1)

SLOW_FILES_FIRST = (
    "tests/e2e/test_responsive.py",
    "tests/e2e/test_pages.py",
    "tests/e2e/test_explorer.py",
    "tests/test_hardening_sweep.py",
    "tests/e2e/test_hardening.py",
    "tests/test_cli.py",
    "tests/e2e/test_hostile_urls.py",
    "tests/e2e/test_url_roundtrip.py",
    "tests/e2e/test_graph.py",
    "tests/e2e/test_pitfalls.py",
    "tests/e2e/test_screenshots.py",
    "tests/test_app_flow.py",
    "tests/test_hardening_urls.py",
    "tests/e2e/test_flow.py",
    "tests/e2e/test_contrast.py",
)
"""Test files that take longest (measured on 2 cores), run first. pytest-xdist's --dist loadfile hands each worker a
whole file at a time, by default ordered by the number of tests in it, so a file with one long test (the eight
browser sessions, the hostile URLs on every page) came last and ran alone on one core while the other had finished.
Longest first (the rest in collection order) lets the short files fill the gaps at the end. A stale entry only
changes the order, never what runs. This order was measured after the e2e speed-ups (test_responsive 137 s, then the
pages, the explorer, the hardening sweep); the commit that put it here (62f1a3d) is titled a revert but holds the
re-sorted list. Two clean-clone runs with it took 419 and 436 s of pytest time, one run of the older order 427 s."""


def pytest_configure(config: pytest.Config) -> None:
    """Keep the order of pytest_collection_modifyitems under --dist loadfile (xdist's own reorder is by count)."""
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLOW_FILES_FIRST first, in that order; every other file after them, in collection order (a stable sort)."""
    rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
