"""The hosted server's memory policy, in one place (app layer; the core never imports it).

Measured on a real server (`python benchmarks/memory.py --server`): one visitor walking 20 seeds of the largest
hosted explorer config peaked at 1.29 GB and 8 sessions at once at 1.46 GB; after they closed the server stayed
708 MB above its idle size (414 MiB after one visit). The causes, and what this module does about each:
- page caches bounded by entry counts held up to ~600 MB of pickled results: every `st.cache_data` now has a byte
  budget (CACHE_BUDGET, 128 MB in all), and the caches are dropped once nobody has been connected for a while;
- memory freed after a run stayed in glibc's heap and in the malloc arenas of Streamlit's per-run threads: the number
  of arenas is capped and free memory is handed back to the OS after every script run (malloc_trim);
- eight sessions computing at once each held their own transient tensors and chart data: at most HEAVY_AT_ONCE
  heavy computations run at a time (the others wait, with their spinner, first come first served; the host has 2
  cores anyway), and a training run (the one request allowed up to a minute) gives the slot to waiting visitors at
  each of its checkpoints (`take_turns`), so nobody waits behind it for more than one checkpoint;
- building a large heatmap let Altair validate 17k inline rows at construction (~160 MB): charts.chart_data skips it;
- closed tabs' sessions stayed in Streamlit's reconnect store after their TTL (it only hides expired entries until
  its next write), each with its session state and last run: 8 closed sessions held 55 MiB of tensors on an idle
  server. The idle watchdog now shuts them down (`forget_expired_sessions`) before it clears the caches.
With all of it, on a fresh server: 703 MiB and 800 MiB peaks (README, "Memory", has the warmed server's too).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator

import streamlit as st
from streamlit.logger import get_logger

MB = 1 << 20
CACHE_BUDGET = {
    "explain": 48 * MB,  # pickled GradientReports: ~0.1 MB at the defaults, ~21 MB at the largest hosted config
    "chart_spec": 16 * MB,  # Vega-Lite specs with their data: a heatmap at the largest config is ~4 MB
    "profile": 8 * MB,
    "jacobians": 4 * MB,
    "graph": 4 * MB,
    "compare": 4 * MB,
    "census": 2 * MB,
    "train": 32 * MB,  # the training page keeps both cells' runs: ~11 MB each at the largest hosted run
    "model_inspect": 2 * MB,
    "model_explain": 8 * MB,
}
"""Bytes of pickled values each page cache may hold (Streamlit evicts the least recently used entries beyond)."""
CACHE_SCALE_ENV = "GRU_EXPLAINER_CACHE_SCALE"
"""Environment variable: a factor for every budget (e.g. 4 on a host with more memory; the tests use a small one)."""
HEAVY_AT_ONCE = 1
"""Heavy computations (explain, charts, sweeps, training) that may run at the same time across all sessions: one, so
concurrent visitors never hold several transient working sets at once (measured on a fresh server: 8 sessions at
once peaked at 1,047 MiB with 2, 843 MiB with 1, and finished sooner: 60 s instead of 107 s); the others wait
behind their spinner."""
IDLE_CLEAR_S = 40.0
"""Drop every page cache once no session has been connected for this long (the memory goes back to the OS); longer
than the server's disconnectedSessionTTL (30 s in .streamlit/config.toml), so closed tabs' sessions are gone too."""
M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20
"""Blocks of at least this size are mmapped, so a freed large tensor goes straight back to the OS (glibc otherwise
raises the threshold to the largest block freed, up to 32 MB, and keeps such blocks in its heaps)."""
_LOG = get_logger(__name__)
_held = threading.local()
_configured = threading.Lock()
_state: dict[str, object] = {}


def cache_budget(name: str) -> int:
    """The byte budget of page cache `name` (a key of CACHE_BUDGET) times the GRU_EXPLAINER_CACHE_SCALE factor, for
    `st.cache_data(max_size=...)`. A malformed or non-positive factor is ignored (budgets as listed)."""
    try:
        scale = float(os.environ.get(CACHE_SCALE_ENV, "1"))
    except ValueError:
        scale = 1.0
    scale = scale if 0 < scale < float("inf") else 1.0
    return max(1, int(CACHE_BUDGET[name] * scale))


class FairSlots:
    """`slots` places handed out first come, first served (threading.Semaphore wakes waiters in no set order): a
    long run that gives its place back with `take_turns` lines up behind everyone already waiting."""

    def __init__(self, slots: int) -> None:
        self._cond = threading.Condition()
        self._free = slots
        self._queue: collections.deque[object] = collections.deque()

    def acquire(self) -> None:
        """Wait for a place, in arrival order."""
        with self._cond:
            ticket = object()
            self._queue.append(ticket)
            while self._queue[0] is not ticket or self._free == 0:
                self._cond.wait()
            self._queue.popleft()
            self._free -= 1
            self._cond.notify_all()  # the next in line may find a free place too

    def release(self) -> None:
        """Give a place back."""
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    def waiting(self) -> int:
        """How many threads are waiting for a place."""
        with self._cond:
            return len(self._queue)


_heavy = FairSlots(HEAVY_AT_ONCE)


@contextlib.contextmanager
def heavy() -> Iterator[None]:
    """Hold one of the HEAVY_AT_ONCE slots for a heavy computation; re-entrant within a thread (a cached chart that
    needs its cached report takes one slot, not two), so nested calls cannot deadlock."""
    depth = getattr(_held, "depth", 0)
    if depth == 0:
        _heavy.acquire()
    _held.depth = depth + 1
    try:
        yield
    finally:
        _held.depth = depth
        if depth == 0:
            _heavy.release()


def take_turns() -> bool:
    """For a long run inside `heavy()` (training: up to a minute at the hosted limits), at each checkpoint: when other
    visitors wait, give the slot to them and line up again, so a short request never waits behind a long one for
    more than one checkpoint interval. True when it gave the slot away; a no-op outside `heavy()`."""
    if getattr(_held, "depth", 0) == 0 or _heavy.waiting() == 0:
        return False
    _heavy.release()
    _heavy.acquire()
    return True


def _libc() -> ctypes.CDLL | None:
    """glibc, when this process runs on it (malloc_trim / mallopt exist only there); else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (AttributeError on a libc without them)
    except (OSError, AttributeError):
        return None
    return libc


def release_memory() -> None:
    """Hand free heap memory back to the OS (glibc's malloc_trim over every arena); a no-op elsewhere."""
    libc = _state.get("libc")
    if libc is not None:
        libc.malloc_trim(0)


def configure() -> None:
    """Once per process: cap glibc's malloc arenas and start the idle watchdog. Cheap and idempotent per run."""
    if "configured" in _state:
        return
    with _configured:
        if "configured" in _state:
            return
        libc = _libc()
        _state["libc"] = libc
        if libc is not None:
            libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        threading.Thread(target=_watch_idle, name="gx-idle-watchdog", daemon=True).start()
        _state["configured"] = True


def _active_sessions() -> int | None:
    """Connected sessions of this Streamlit server, or None when that cannot be read (no runtime, another API)."""
    try:
        from streamlit import runtime

        if not runtime.exists():
            return None
        return int(runtime.get_instance()._session_mgr.num_active_sessions())  # noqa: SLF001 (no public API)
    except Exception:  # noqa: BLE001 (an internal API that may change: then the watchdog just does nothing)
        return None


def forget_expired_sessions(timeout_s: float = 10.0) -> bool:
    """Shut down the closed tabs' sessions whose disconnectedSessionTTL has run out; True when it ran.

    Streamlit keeps a closed tab's session (its AppSession: session state, widgets, the last run's elements, uploaded
    files, media and dataframe sources) in a TTL store for a reconnect. Once the TTL has passed it only hides the
    entry: the entry goes at the store's next write, which on a quiet server never comes, and then without the
    session's shutdown (which frees its uploads and media). Measured: after 8 sessions closed, their 8 AppSessions
    held 55 MiB of tensors for good. Here each expired session is removed and shut down, as Streamlit's close_session
    does. The store is not thread-safe and Streamlit uses it on its event loop, so this runs there (waiting up to
    `timeout_s`). A no-op (False) without a running Streamlit server or where its internals differ."""
    try:
        from streamlit import runtime

        if not runtime.exists():
            return False
        instance = runtime.get_instance()
        store = instance._session_mgr._session_storage._cache  # noqa: SLF001 (no public API)
        loop = instance._get_async_objs().eventloop  # noqa: SLF001
        expire = store.expire
    except Exception:  # noqa: BLE001 (internal APIs that may change: then the sessions go as Streamlit decides)
        return False
    done = threading.Event()

    def on_loop() -> None:
        try:
            for _, info in expire():
                with contextlib.suppress(Exception):  # one session's failing shutdown must not keep the others
                    info.session.shutdown()
        finally:
            done.set()

    try:
        loop.call_soon_threadsafe(on_loop)
    except RuntimeError:  # the loop is closed: the server is stopping
        return False
    return done.wait(timeout_s)


def clear_caches() -> None:
    """Drop every page cache's values and the expired sessions, and hand the memory back (what the watchdog does
    once the server is idle)."""
    forget_expired_sessions()
    st.cache_data.clear()
    from gru_explainer.cache import TensorCache  # (here: importing the core imports torch)

    TensorCache.clear_all()  # the core's caches of structural masks and drawn models (a few MB)
    gc.collect()
    release_memory()
    _LOG.info("no session for %.0f s: page caches and closed sessions dropped, free memory returned to the OS",
              IDLE_CLEAR_S)


def _watch_idle(poll_s: float = 2.0, active_sessions: Callable[[], int | None] = _active_sessions,
                clock: Callable[[], float] = time.monotonic) -> None:
    """Every poll: shut down the closed sessions whose TTL ran out (while others are connected too: Streamlit itself
    would drop them at its store's next write without their shutdown, keeping their uploads). Clear the page caches
    once no session has been connected for IDLE_CLEAR_S (once per idle period)."""
    idle_since: float | None = None
    cleared = True  # nothing cached before the first visit
    while True:
        time.sleep(poll_s)
        sessions = active_sessions()
        if sessions is None:  # not a server (e.g. AppTest): nothing to watch
            continue
        forget_expired_sessions()
        if sessions > 0:
            idle_since, cleared = None, False
            continue
        idle_since = idle_since or clock()
        if not cleared and clock() - idle_since >= IDLE_CLEAR_S:
            clear_caches()
            cleared = True
