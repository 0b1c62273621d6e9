"""hosting.py: every page cache has a byte budget and stays inside it, heavy work is bounded, memory is released."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hosting

ROOT = Path(__file__).resolve().parents[1]
APP_FILES = [ROOT / "ui.py", *sorted((ROOT / "app_pages").glob("*.py"))]


def _cache_decorators(path: Path) -> list[ast.Call]:
    """Every `st.cache_data(...)` / `st.cache_resource(...)` call used as a decorator in a file."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute)
                        and deco.func.attr in ("cache_data", "cache_resource")):
                    calls.append(deco)
                elif isinstance(deco, ast.Attribute) and deco.attr in ("cache_data", "cache_resource"):
                    calls.append(ast.Call(func=deco, args=[], keywords=[]))  # bare @st.cache_data: no budget
    return calls


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.name)
def test_every_page_cache_has_a_byte_budget_from_hosting(path: Path) -> None:
    for call in _cache_decorators(path):
        sizes = [kw.value for kw in call.keywords if kw.arg == "max_size"]
        where = f"{path.name}:{call.lineno}"
        assert sizes, f"{where}: st.cache_data without max_size (a byte budget from hosting.cache_budget)"
        value = sizes[0]
        assert (isinstance(value, ast.Call) and ast.unparse(value.func) == "hosting.cache_budget"
                and isinstance(value.args[0], ast.Constant)), f"{where}: max_size must be hosting.cache_budget(name)"
        assert value.args[0].value in hosting.CACHE_BUDGET, f"{where}: unknown budget {value.args[0].value!r}"


def test_every_budget_is_used_and_the_total_is_what_the_docs_say() -> None:
    used = {call.keywords[[kw.arg for kw in call.keywords].index("max_size")].value.args[0].value
            for path in APP_FILES for call in _cache_decorators(path)
            if any(kw.arg == "max_size" for kw in call.keywords)}
    assert used == set(hosting.CACHE_BUDGET), "budgets nobody uses, or caches without one"
    total_mb = sum(hosting.CACHE_BUDGET.values()) / hosting.MB
    assert f"{total_mb:.0f} MB in all" in hosting.__doc__


@pytest.mark.parametrize(("raw", "factor"), [(None, 1.0), ("0.5", 0.5), ("4", 4.0), ("0", 1.0), ("-2", 1.0),
                                             ("nan", 1.0), ("inf", 1.0), ("lots", 1.0)])
def test_cache_budget_scale(monkeypatch: pytest.MonkeyPatch, raw: str | None, factor: float) -> None:
    if raw is None:
        monkeypatch.delenv(hosting.CACHE_SCALE_ENV, raising=False)
    else:
        monkeypatch.setenv(hosting.CACHE_SCALE_ENV, raw)
    assert hosting.cache_budget("explain") == int(hosting.CACHE_BUDGET["explain"] * factor)


def test_heavy_bounds_concurrent_work_and_is_reentrant() -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with hosting.heavy(), hosting.heavy():  # nested (a cached chart needing its cached report): one slot
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4 * hosting.HEAVY_AT_ONCE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "heavy() deadlocked"
    assert peak[0] == hosting.HEAVY_AT_ONCE  # bounded, and the slots were really used in parallel


def test_heavy_releases_its_slot_on_error() -> None:
    for _ in range(hosting.HEAVY_AT_ONCE + 1):
        with pytest.raises(RuntimeError), hosting.heavy():
            raise RuntimeError("boom")
    assert hosting._heavy._free == hosting.HEAVY_AT_ONCE and hosting._heavy.waiting() == 0  # every slot back


def test_slots_go_first_come_first_served() -> None:
    order: list[int] = []

    def request(i: int) -> None:
        with hosting.heavy():
            order.append(i)

    with hosting.heavy():  # hold the slot while the others line up, one after another
        threads = []
        for i in range(5):
            threads.append(threading.Thread(target=request, args=(i,)))
            threads[-1].start()
            _wait_until(lambda i=i: hosting._heavy.waiting() == i + 1)
    for t in threads:
        t.join(timeout=30)
    assert order == [0, 1, 2, 3, 4]
    assert hosting._heavy._free == hosting.HEAVY_AT_ONCE


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_long_run_that_takes_turns_lets_a_short_request_in() -> None:
    """A 'training run' holding the slot with a checkpoint every 5 ms: a request arriving meanwhile is served at a
    checkpoint while the run is still going (the run then goes on); without waiters take_turns keeps the slot."""
    running, served = threading.Event(), threading.Event()
    gave_away: list[bool] = []
    served_during_run: list[bool] = []

    def long_run() -> None:
        with hosting.heavy():
            running.set()
            deadline = time.monotonic() + 60.0  # a safety net if the request is never let in (then the test fails)
            while not served.is_set() and time.monotonic() < deadline:
                time.sleep(0.005)
                gave_away.append(hosting.take_turns())
            for _ in range(5):  # the run goes on after the visitor: nobody waits now
                time.sleep(0.005)
                gave_away.append(hosting.take_turns())
            running.clear()

    def short_request() -> None:
        with hosting.heavy():
            served_during_run.append(running.is_set())
            served.set()

    runner = threading.Thread(target=long_run)
    runner.start()
    _wait_until(lambda: len(gave_away) >= 5)
    assert not any(gave_away)  # nobody waiting: the run kept its slot at every checkpoint
    visitor = threading.Thread(target=short_request)
    visitor.start()
    visitor.join(timeout=90)
    runner.join(timeout=90)
    assert served_during_run == [True]  # served at a checkpoint, not after the run
    assert gave_away.count(True) == 1  # the slot went away exactly once: when somebody waited
    assert not any(gave_away[-5:])
    assert not hosting.take_turns()  # outside heavy(): nothing to give


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_configure_and_release_memory_run_on_glibc() -> None:
    hosting.configure()
    hosting.configure()  # idempotent
    assert hosting._state.get("libc") is not None
    hosting.release_memory()
    assert sum(t.name == "gx-idle-watchdog" for t in threading.enumerate()) == 1
    assert hosting._active_sessions() is None  # no Streamlit server in this process: the watchdog does nothing


def test_forget_expired_sessions_is_a_no_op_without_a_server() -> None:
    assert hosting.forget_expired_sessions() is False  # no Streamlit runtime in this process


class _Session:
    def __init__(self, shutdowns: list[tuple[str, threading.Thread]], name: str, fails: bool = False) -> None:
        self.shutdowns, self.name, self.fails = shutdowns, name, fails

    def shutdown(self) -> None:
        self.shutdowns.append((self.name, threading.current_thread()))
        if self.fails:
            raise RuntimeError("a session whose shutdown fails")


def test_forget_expired_sessions_shuts_down_the_expired_ones_on_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit's own TTL store (the one its session manager keeps closed tabs in) with two sessions past the TTL and
    one within it: the expired two are removed and shut down, on the server's event loop; the recent one stays."""
    import asyncio
    from types import SimpleNamespace

    from streamlit import runtime
    from streamlit.runtime.caching.ttl_cache import TTLCache

    clock, shutdowns = [0.0], []
    store: TTLCache = TTLCache(maxsize=128, ttl=30, timer=lambda: clock[0])
    store["a"] = SimpleNamespace(session=_Session(shutdowns, "a", fails=True))
    store["b"] = SimpleNamespace(session=_Session(shutdowns, "b"))
    clock[0] = 20.0
    store["recent"] = SimpleNamespace(session=_Session(shutdowns, "recent"))
    clock[0] = 40.0  # a and b expired: hidden from reads, but still held until the store's next write
    assert "a" not in store and list(store._data) == ["a", "b", "recent"]
    loop = asyncio.new_event_loop()
    server_loop = threading.Thread(target=loop.run_forever, name="event loop", daemon=True)
    server_loop.start()
    instance = SimpleNamespace(_session_mgr=SimpleNamespace(_session_storage=SimpleNamespace(_cache=store)),
                               _get_async_objs=lambda: SimpleNamespace(eventloop=loop))
    monkeypatch.setattr(runtime, "exists", lambda: True)
    monkeypatch.setattr(runtime, "get_instance", lambda: instance)
    try:
        assert hosting.forget_expired_sessions() is True
    finally:
        loop.call_soon_threadsafe(loop.stop)
        server_loop.join(timeout=10)
        loop.close()
    assert list(store._data) == ["recent"]
    assert shutdowns == [("a", server_loop), ("b", server_loop)]  # b too, although a's shutdown raised


def test_streamlit_keeps_closed_sessions_where_forget_expired_sessions_looks() -> None:
    """The internals forget_expired_sessions relies on (it does nothing where they differ): a Streamlit upgrade that
    changes them fails here instead of silently keeping closed sessions again."""
    import inspect

    from streamlit.runtime import Runtime
    from streamlit.runtime.app_session import AppSession
    from streamlit.runtime.caching.ttl_cache import TTLCache
    from streamlit.runtime.memory_session_storage import MemorySessionStorage
    from streamlit.runtime.runtime import AsyncObjects
    from streamlit.runtime.websocket_session_manager import WebsocketSessionManager

    assert isinstance(MemorySessionStorage()._cache, TTLCache) and callable(TTLCache.expire)
    assert "self._session_storage = session_storage" in inspect.getsource(WebsocketSessionManager.__init__)
    assert "self._session_mgr" in inspect.getsource(Runtime.__init__) and callable(Runtime._get_async_objs)
    assert "eventloop" in AsyncObjects.__annotations__ and callable(AppSession.shutdown)


class _StopWatchingError(Exception):
    pass


def test_the_watchdog_forgets_expired_sessions_every_poll_and_clears_only_when_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Visitors connected for two polls (expired sessions shut down each time, caches kept), then nobody: the caches
    are cleared once the idle time has passed, and only once."""
    clock, events = [0.0], []
    polls = iter([2, 1, 0, 0, 0, 0])

    def active_sessions() -> int:
        clock[0] += hosting.IDLE_CLEAR_S / 2  # each poll half the idle time later
        try:
            return next(polls)
        except StopIteration:
            raise _StopWatchingError from None

    monkeypatch.setattr(hosting, "forget_expired_sessions", lambda: events.append("forget") or True)
    monkeypatch.setattr(hosting, "clear_caches", lambda: events.append("clear"))
    with pytest.raises(_StopWatchingError):
        hosting._watch_idle(poll_s=0, active_sessions=active_sessions, clock=lambda: clock[0])
    # idle from the third poll on: cleared at the fifth (IDLE_CLEAR_S later), not again at the sixth
    assert events == ["forget", "forget", "forget", "forget", "forget", "clear", "forget"]


def test_clear_caches_forgets_sessions_then_clears_and_trims(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(hosting, "forget_expired_sessions", lambda: calls.append("sessions") or True)
    monkeypatch.setattr(hosting.st.cache_data, "clear", lambda: calls.append("caches"))
    monkeypatch.setattr(hosting, "release_memory", lambda: calls.append("trim"))
    from gru_explainer.cache import TensorCache

    monkeypatch.setattr(TensorCache, "clear_all", classmethod(lambda cls: calls.append("masks")))
    hosting.clear_caches()
    assert calls == ["sessions", "caches", "masks", "trim"]


def test_page_caches_stay_within_their_budgets_under_load() -> None:
    """The reduced soak (benchmarks/memory.py --cache-check) in a fresh process, with budgets far below what its
    loads compute: every page cache must evict and stay within its byte budget, and no page may fail."""
    env = dict(os.environ, **{hosting.CACHE_SCALE_ENV: "0.05"})
    env.pop("GRU_EXPLAINER_LIMITS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--cache-check", "--seeds", "3"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, check=False)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["exceptions"], result["exceptions"]
    caches = result["caches"]
    assert {"ui._explain_cached", "ui._chart_spec", "ui._profile"} <= set(caches), caches
    reports = caches["ui._explain_cached"]
    assert reports["largest"] < reports["budget"] < result["computed"] and reports["entries"] < 3, (
        "one report must fit and the loads must overfill the budget, or the check proves nothing", reports)
    for name, cache in caches.items():  # (Streamlit keeps one entry larger than the whole budget, with a warning)
        assert 0 < cache["bytes"] <= max(cache["budget"], cache["largest"]), (name, cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
