"""How pytest-xdist shares the tests out (scripts/test.sh runs `pytest -n auto --dist loadscope`): every end-to-end
test is one work unit, so one worker runs them in order against its one Streamlit server and the many-session ones
never share the machine with a second server; every other test file is a unit of its own, so a module's expensive
fixture (e.g. test_snippet's runs) is built once, on one worker. Without xdist this file does nothing.

(`--dist loadgroup` with xdist_group marks would say the same, but xdist 3.8 names the groups through a node
attribute pytest 9 no longer reads, so the groups are given here, through xdist's own scheduler hook.)"""

from __future__ import annotations

from typing import Any

import pytest

E2E = "tests/e2e/"


def work_unit(nodeid: str) -> str:
    """The unit a test belongs to: "tests/e2e/" for every browser test, else its file."""
    path = nodeid.split("::", 1)[0]
    return E2E if path.startswith(E2E) else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `--dist loadscope`: xdist's scope scheduler, its units as `work_unit` says; otherwise xdist's default."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class E2ETogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return E2ETogether(config, log)
