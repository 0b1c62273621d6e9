"""Test-run layout for pytest-xdist (scripts/test.sh runs `pytest -n auto --dist loadgroup`): every end-to-end test
in one group, so one worker runs them in order against its one Streamlit server and the timed ones never share the
browser with another server; every other test file is a group of its own, so a module's expensive fixture (e.g.
test_snippet's runs) is built once, on one worker. Without xdist the markers do nothing."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its xdist group: "e2e", or its file."""
    for item in items:
        group = "e2e" if item.get_closest_marker("e2e") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
