"""Median AppTest rerun time of the explorer page after a widget change (a benchmark, not a test).

    PYTHONPATH=. python benchmarks/app_rerun.py [--repeats 15]

Four kinds of change: a view-only widget (log toggle: no core call; in the browser it reruns only its
`st.fragment`, AppTest reruns the whole page), a config change back to a setting seen before (a cache hit), a new
seed every time (a sidebar change at the defaults: a cache miss, the full `explain` runs) and a new sequence length
every time (a T change: a cache miss at T = 11, 12, ...).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "explorer.py")


def timed_rerun(at: AppTest) -> float:
    """Seconds for one rerun; fails loudly if the page raised."""
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    at = AppTest.from_file(PAGE, default_timeout=120)
    first = timed_rerun(at)
    results: dict[str, list[float]] = {"log toggle (view only)": [], "hidden size 32 <-> 16 (cache hit)": [],
                                       "new seed (cache miss)": [], "new T (cache miss)": []}
    for i in range(args.repeats):
        at.toggle(key="gx_log").set_value(i % 2 == 0)
        results["log toggle (view only)"].append(timed_rerun(at))
    at.number_input(key="gx_hidden_size").set_value(16)
    timed_rerun(at)  # fill the cache for both settings
    for i in range(args.repeats):
        at.number_input(key="gx_hidden_size").set_value(32 if i % 2 == 0 else 16)
        results["hidden size 32 <-> 16 (cache hit)"].append(timed_rerun(at))
    for i in range(args.repeats):
        at.number_input(key="gx_seed").set_value(1000 + i)
        results["new seed (cache miss)"].append(timed_rerun(at))
    for i in range(args.repeats):
        at.number_input(key="gx_seq_len").set_value(11 + i)
        results["new T (cache miss)"].append(timed_rerun(at))
    print(f"explorer first load (includes imports): {first * 1000:.0f} ms")
    for name, times in results.items():
        print(f"{name:38s} median {statistics.median(times) * 1000:7.1f} ms  "
              f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={len(times)})")


if __name__ == "__main__":
    main()
