"""Peak memory (RSS) of one explanation at the largest configs the hosted limits allow. A benchmark: prints numbers.

    python benchmarks/memory.py            # every case, each in a FRESH subprocess (peak RSS is per process)
    python benchmarks/memory.py --quick    # float32 only
    python benchmarks/memory.py --app      # also the Streamlit server's peak RSS serving the explorer (Chromium)
    python benchmarks/memory.py --app-only # only that

Each case runs `explain()` in a new Python process and reports `resource.getrusage(RUSAGE_SELF).ru_maxrss`
after importing, after `explain()`, and after the work the explorer page adds on top (tidy frame, verdict, the
three explorer charts serialised to Vega-Lite JSON, and one pickle of the report as `st.cache_data` makes).
Sizes come from `gru_explainer.config.Limits()` (the hosted defaults): every shape fills the state-size limit
B × T × L × D × H <= max_state_elements at the largest hidden size, layers and input size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


APP_PAGES = ("explorer", "devices", "flow", "graph", "")
"""Pages the --app measurement visits in one session, in this order ("" is the puzzle, the default page)."""


MIB_IN_MB = 1.048576
"""MB per MiB: the issue's targets are in MB, /proc reports KiB."""


def _mib(kib: int) -> float:
    return kib / 1024  # ru_maxrss is in KiB on Linux


def largest_shapes() -> dict[str, dict[str, Any]]:
    """Bidirectional shapes that fill the hosted state-size limit: one long sequence, and a wide batch."""
    from gru_explainer.config import Limits

    lim = Limits()
    layers, hidden, dirs = lim.max_num_layers, lim.max_hidden_size, 2
    per_step = layers * dirs * hidden
    budget = lim.max_state_elements // per_step  # B × T
    longest = min(lim.max_seq_len, budget)
    widest = min(lim.max_batch_size, budget)
    common = dict(num_layers=layers, hidden_size=hidden, input_size=lim.max_input_size, bidirectional=True,
                  head="linear", head_size=lim.max_head_size)
    return {
        "long": dict(common, batch_size=max(1, budget // longest), seq_len=longest),
        "wide": dict(common, batch_size=widest, seq_len=max(1, budget // widest)),
    }


def child(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this process and measure; returns the numbers as a dict."""
    import pickle

    os.environ.pop("GRU_EXPLAINER_LIMITS", None)
    import torch

    from gru_explainer import ExplainConfig, explain
    from gru_explainer.charts import gradient_norm_chart, input_grad_chart, unit_heatmap

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = ExplainConfig(device="cpu", target="y[:, -1].sum()", **case["config"])
    states = cfg.state_elements
    start = time.perf_counter()
    report = explain(cfg, engine=case["engine"])
    seconds = time.perf_counter() - start
    after_explain = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    verdict = report.verdict()
    specs = [gradient_norm_chart(report.frame, True).to_json(), input_grad_chart(report.frame).to_json(),
             unit_heatmap(report.unit_frame(cfg.num_layers - 1, 0, 0)).to_json()]
    blob = pickle.dumps(report)
    page_seconds = time.perf_counter() - start
    after_page = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"imported_mib": _mib(imported), "explain_mib": _mib(after_explain), "page_mib": _mib(after_page),
            "explain_s": seconds, "page_s": page_seconds, "states": states, "pickle_mib": len(blob) / 2**20,
            "chart_json_mib": sum(map(len, specs)) / 2**20, "verdict_chars": len(verdict),
            "engine_used": report.engine}


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`child(case)` in a fresh interpreter (so ru_maxrss is this case's peak alone)."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def app_peak(config: dict[str, Any], pages: tuple[str, ...] = APP_PAGES) -> list[dict[str, Any]]:
    """Peak RSS (VmHWM) of a fresh Streamlit server after serving each page for `config` in Chromium, in turn."""
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    from gru_explainer import ExplainConfig
    from gru_explainer.urlstate import config_to_query
    from scripts.screenshots import StreamlitServer, launch_browser, new_context, open_page

    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in config_to_query(ExplainConfig(**config)).items())
    env = {k: v for k, v in os.environ.items() if k != "GRU_EXPLAINER_LIMITS"}
    rows = []
    with StreamlitServer(ROOT, env=env) as server, sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            page = new_context(browser).new_page()
            rows.append({"page": "(idle server)", "peak_mib": _vm_hwm(server.process.pid), "page_s": 0.0, "note": ""})
            for name in pages:
                start = time.perf_counter()
                note = ""
                try:
                    open_page(page, f"{server.base_url}/{name}?{query}", timeout_ms=300_000)
                except AssertionError as err:  # the page ran, but drew something wrong: measure, and say so
                    note = " ".join(str(err).split())
                except Exception as err:  # e.g. a timeout: still report the memory reached so far
                    note = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
                errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
                if errors:
                    note = (note + " page error: " + " | ".join(" ".join(e.split()) for e in errors))[:300]
                rows.append({"page": name, "peak_mib": _vm_hwm(server.process.pid),
                             "page_s": time.perf_counter() - start, "note": note})
        finally:
            browser.close()
    return rows


SOAK_QUERY = "cell=lstm&num_layers=4&hidden_size=256&seq_len=128&batch_size=4"
"""The issue's largest hosted explorer config (one visitor walks 20 seeds of it)."""
MIXED_URLS = (
    "explorer?" + SOAK_QUERY + "&seed=100",
    "explorer?cell=gru&num_layers=4&hidden_size=256&seq_len=256&batch_size=2&bidirectional=true",
    "flow?cell=lstm&num_layers=2&hidden_size=256&seq_len=512&batch_size=2",
    "devices?cell=lstm&num_layers=4&hidden_size=256&seq_len=64&batch_size=4",
    "graph?cell=lstm&num_layers=2&bidirectional=true",
    "explorer?cell=rnn_tanh&hidden_size=256&seq_len=512&batch_size=16&dtype=float64",
    "?cell=gru",
    "pitfalls",
)
"""Eight sessions at mixed pages and configs, run at the same time."""


class RssSampler:
    """Samples a process's resident set (VmRSS) every `interval` seconds in a thread; `peak()` since `reset()`."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import threading

        self.pid, self.interval, self._peak = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, rss_mib(self.pid))

    def reset(self) -> None:
        self._peak = rss_mib(self.pid)

    def peak(self) -> float:
        return max(self._peak, rss_mib(self.pid))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def rss_mib(pid: int) -> float:
    """A process's current resident set (VmRSS) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_kinds(pid: int) -> dict[str, float]:
    """A process's resident set by kind, in MiB (/proc status): anonymous memory (heaps, arenas, tensors, Python
    objects: what malloc_trim can return) and file-backed pages (the code of the shared libraries it ran so far)."""
    kinds = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            kinds[key] = int(value.split()[0]) / 1024
    return kinds


def rss_by_mapping(pid: int) -> dict[str, float]:
    """Resident MiB per mapping name (/proc smaps): a library's path, "[heap]", "[anon]" for unnamed mappings."""
    totals: dict[str, float] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            name = head[5].strip() if len(head) == 6 else "[anon]"
        elif line.startswith("Rss:"):
            totals[name] = totals.get(name, 0.0) + int(line.split()[1]) / 1024
    return totals


def _growth(before: dict[str, float], after: dict[str, float], top: int = 8) -> str:
    """The mappings that grew most between two `rss_by_mapping` snapshots, as one line."""
    grown = sorted(((after.get(k, 0.0) - before.get(k, 0.0), k) for k in set(before) | set(after)), reverse=True)
    return ", ".join(f"{Path(k).name or k} {d:+.0f}" for d, k in grown[:top] if abs(d) >= 1.0)


def _settle_idle(pid: int, seconds: float = 20.0) -> float:
    """Wait until the server's RSS stops falling (sessions closed, caches trimmed) or `seconds` pass; its RSS."""
    deadline, last = time.monotonic() + seconds, rss_mib(pid)
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = rss_mib(pid)
        if abs(now - last) < 1.0:
            return now
        last = now
    return rss_mib(pid)


def server_soak(seeds: int = 20, mixed: tuple[str, ...] = MIXED_URLS) -> dict[str, float]:
    """The issue's soak against a real server: idle RSS, peak while one visitor walks `seeds` seeds of the largest
    explorer config, peak while the `mixed` sessions run at once, and idle RSS after every session closed."""
    from playwright.sync_api import sync_playwright

    from hosting import IDLE_CLEAR_S
    from scripts.screenshots import StreamlitServer, app_pages, launch_browser, new_context, open_page, wait_for_app

    env = {k: v for k, v in os.environ.items() if k != "GRU_EXPLAINER_LIMITS"}
    out: dict[str, float] = {}
    with StreamlitServer(ROOT, env=env) as server, sync_playwright() as playwright:
        pid = server.process.pid
        sampler = RssSampler(pid)
        browser = launch_browser(playwright)
        try:
            context = new_context(browser)
            warm = context.new_page()
            for app_page in app_pages(ROOT):  # every page once at its defaults: what each imports stays loaded
                open_page(warm, app_page.url(server.base_url), timeout_ms=300_000)
            context.close()
            time.sleep(IDLE_CLEAR_S + 5)  # the warm-up's cached results dropped too: "before" is a bare idle server
            out["idle_before_mib"] = _settle_idle(pid)
            kinds_before, maps_before = rss_kinds(pid), rss_by_mapping(pid)
            print(f"  idle server after one visit to every page at its defaults: {out['idle_before_mib']:.0f} MiB "
                  f"({kinds_before['RssAnon']:.0f} MiB anonymous, {kinds_before['RssFile']:.0f} MiB file-backed)",
                  flush=True)
            context = new_context(browser)
            page = context.new_page()
            sampler.reset()
            start = time.perf_counter()
            for seed in range(seeds):
                open_page(page, f"{server.base_url}/explorer?{SOAK_QUERY}&seed={seed}", timeout_ms=300_000)
            out["seeds_peak_mib"] = sampler.peak()
            print(f"  one visitor, {seeds} seeds of /explorer?{SOAK_QUERY}: peak {out['seeds_peak_mib']:.0f} MiB "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            context.close()
            sampler.reset()
            start = time.perf_counter()
            contexts = [new_context(browser) for _ in mixed]
            pages = [c.new_page() for c in contexts]
            for tab, url in zip(pages, mixed, strict=True):
                tab.goto(f"{server.base_url}/{url}", wait_until="commit", timeout=120_000)
            for tab in pages:
                wait_for_app(tab, 600_000)
            out["mixed_peak_mib"] = sampler.peak()
            print(f"  {len(mixed)} sessions at once (mixed pages and configs): peak {out['mixed_peak_mib']:.0f} MiB "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            for c in contexts:
                c.close()
            time.sleep(IDLE_CLEAR_S + 5)  # the server drops its caches once nobody has been connected that long
            out["idle_after_mib"] = _settle_idle(pid, 60.0)
            kinds_after = rss_kinds(pid)
            out |= {f"{kind}_growth_mib": kinds_after[kind] - kinds_before[kind] for kind in ("RssAnon", "RssFile")}
            print(f"  idle after every session closed: {out['idle_after_mib']:.0f} MiB "
                  f"({out['idle_after_mib'] - out['idle_before_mib']:+.0f} MiB: anonymous "
                  f"{out['RssAnon_growth_mib']:+.0f}, file-backed {out['RssFile_growth_mib']:+.0f}; grew most, MiB: "
                  f"{_growth(maps_before, rss_by_mapping(pid))})", flush=True)
        finally:
            sampler.stop()
            browser.close()
    return out


CACHE_CHECK_PAGES = (
    ("app_pages/explorer.py", "cell=lstm&num_layers=2&hidden_size=64&seq_len=64&batch_size=4"),
    ("app_pages/flow.py", "cell=gru&hidden_size=64&seq_len=64"),
)
"""What `cache_check` loads, each page at a few seeds: moderate configs whose results fill small budgets."""


def cache_check(seeds: int = 3) -> dict[str, Any]:
    """The reduced, in-process form of the soak (CI): load pages through AppTest at several seeds, then compare every
    page cache's bytes (Streamlit's own cache statistics) with its budget from hosting.py.

    Returns {"caches": {name: {bytes, entries, largest, budget}}, "computed": bytes of every report the explorer
    computed (what an unbounded cache would hold), "exceptions": [...]}. Run it with GRU_EXPLAINER_CACHE_SCALE small
    (the test uses a budget below what the loads compute), so eviction must happen for the caches to stay inside.
    Streamlit keeps one entry larger than the whole budget (with a warning), so the bound is max(budget, largest).
    """
    import pickle
    from urllib.parse import parse_qsl

    from streamlit.testing.v1 import AppTest

    import hosting
    import ui

    exceptions, computed = [], 0
    for page, query in CACHE_CHECK_PAGES:
        for seed in range(seeds):
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
            for key, value in [*parse_qsl(query), ("seed", str(seed))]:
                at.query_params[key] = value
            at.switch_page(page).run()
            exceptions += [e.value for e in at.exception]
            if page.endswith("explorer.py"):
                cfg = dict(parse_qsl(query), seed=seed)
                fields = ui.ExplainConfig(**{k: (int(v) if str(v).isdigit() else v) for k, v in cfg.items()})
                computed += len(pickle.dumps(ui._explain_cached(tuple(fields.to_dict().items()), "fused")))
    names = {f"ui.{fn}": key for fn, key in (("_explain_cached", "explain"), ("_chart_spec", "chart_spec"),
                                             ("_profile", "profile"), ("_jacobians", "jacobians"),
                                             ("_compare", "compare"), ("_census", "census"))}
    items: dict[str, list[int]] = {}
    from streamlit.runtime.caching.cache_data_api import _data_caches

    with _data_caches._caches_lock:
        function_caches = [c for per in _data_caches._function_caches.values() for c in per.values()]
    for cache in function_caches:
        for stats in cache.get_stats().values():  # one CacheStat per stored entry
            for stat in stats:
                items.setdefault(stat.cache_name, []).append(stat.byte_length)
    caches = {name: {"bytes": sum(sizes), "entries": len(sizes), "largest": max(sizes),
                     "budget": hosting.cache_budget(names[name])} for name, sizes in items.items() if name in names}
    return {"caches": caches, "computed": computed, "exceptions": exceptions}


def _vm_hwm(pid: int) -> float:
    """A process's peak resident set (VmHWM) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run every case in its own process and print a table of peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="float32 only")
    parser.add_argument("--cells", default="gru,lstm", help="comma-separated cells. Default: %(default)s")
    parser.add_argument("--engines", default="fused,twin", help="comma-separated engines. Default: %(default)s")
    parser.add_argument("--app", action="store_true", help="also measure the Streamlit server (needs Chromium)")
    parser.add_argument("--app-only", action="store_true", help="only the Streamlit server measurement")
    parser.add_argument("--server", action="store_true",
                        help="only the soak against a real server: 20 seeds of the largest config, 8 sessions at once")
    parser.add_argument("--cache-check", action="store_true",
                        help="only the reduced in-process check (AppTest): every page cache within its byte budget")
    parser.add_argument("--seeds", type=int, default=20, help="seeds the --server visitor walks. Default: %(default)s")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per case. Default: %(default)s")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    from gru_explainer.config import Limits

    lim = Limits()
    print(f"hosted limits: max_state_elements={lim.max_state_elements:,}, layers<={lim.max_num_layers}, "
          f"hidden<={lim.max_hidden_size}, T<={lim.max_seq_len}, B<={lim.max_batch_size}, input<={lim.max_input_size}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; each case in a fresh process; RSS in MiB\n")
    if args.cache_check:
        result = cache_check(min(args.seeds, 5))
        print(json.dumps(result))
        within = all(c["bytes"] <= max(c["budget"], c["largest"]) for c in result["caches"].values())
        return 0 if not result["exceptions"] and within else 1
    if args.server:
        print("streamlit server soak (issue 9's targets, in MB: peaks <= 900 MB, idle after within 100 MB of idle "
              "before; RSS printed in MiB = 1.048576 MB)")
        result = server_soak(args.seeds)
        peak_mb = max(result["seeds_peak_mib"], result["mixed_peak_mib"]) * MIB_IN_MB
        idle_growth_mb = (result["idle_after_mib"] - result["idle_before_mib"]) * MIB_IN_MB
        ok = peak_mb <= 900 and idle_growth_mb <= 100
        print(f"peak {peak_mb:.0f} MB, idle growth {idle_growth_mb:+.0f} MB: targets " + ("met" if ok else "NOT met"))
        return 0
    if args.app_only:
        return _print_app()
    dtypes = ["float32"] if args.quick else ["float32", "float64"]
    header = (f"{'cell':5} {'engine':6} {'dtype':7} {'shape':5} {'B':>3} {'T':>4} {'states':>9} "
              f"{'import':>7} {'explain':>8} {'+page':>7} {'explain s':>9} {'page s':>7}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    for shape, sizes in largest_shapes().items():
        for cell in args.cells.split(","):
            for engine in args.engines.split(","):
                for dtype in dtypes:
                    case = {"engine": engine, "config": dict(sizes, cell=cell, dtype=dtype)}
                    result = run_case(case, args.timeout)
                    prefix = (f"{cell:5} {engine:6} {dtype:7} {shape:5} {sizes['batch_size']:>3} "
                              f"{sizes['seq_len']:>4}")
                    if "error" in result:
                        print(f"{prefix} error: {result['error']}")
                        continue
                    worst = max(worst, result["page_mib"])
                    print(f"{prefix} {result['states']:>9,} {result['imported_mib']:>7.0f} "
                          f"{result['explain_mib']:>8.0f} {result['page_mib']:>7.0f} {result['explain_s']:>9.2f} "
                          f"{result['page_s']:>7.2f}", flush=True)
    print(f"\nworst peak RSS of explain() + the explorer's work: {worst:.0f} MiB")
    return _print_app() if args.app else 0


def _print_app() -> int:
    config = dict(largest_shapes()["long"], cell="lstm", dtype="float64")
    print(f"streamlit server, one browser session visiting each page with the config in the URL: {config}")
    for row in app_peak(config):
        print(f"  after {row['page'] or 'puzzle':14} peak RSS {row['peak_mib']:5.0f} MiB  ({row['page_s']:.1f} s)"
              + (f"  note: {row['note']}" if row["note"] else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
