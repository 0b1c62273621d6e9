"""The CPU work budget, measured: the worst request each page allows at the hosted limits, against 10 s of one core.

    python -m benchmarks.work_budget            # every page (a few minutes)
    python -m benchmarks.work_budget --page devices

For each page it builds the largest requests the budget lets through (`gru_explainer.budget`: the devices page at
the most repeats that fit, the flow page with the longest sweep that fits, the explorer at the hosted maximum),
runs the page's core work exactly as the page does (uncached), and prints the measured CPU seconds (one core,
one intra-op thread and flush-to-zero, as app.py sets them) next to the estimate and the budget. It exits with
status 1 when a measured time exceeds the budget or its estimate (the cost model must be an upper bound).
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from gru_explainer import ExplainConfig, Limits, charts, explain
from gru_explainer.budget import (
    BudgetError,
    check_compare,
    check_flow,
    compare_seconds,
    explorer_seconds,
    flow_seconds,
    max_repeats,
)
from gru_explainer.compare import compare, fused_graph_census
from gru_explainer.flow import cell_config, jacobian_profile, profile_of, sweep

LIMITS = Limits()
BUDGET = LIMITS.max_cpu_seconds
FLOW_CELLS = ["gru", "lstm", "rnn_tanh", "rnn_relu"]
SEQ_LENS = (5, 10, 20, 50, 100, 200)
WEIGHT_SCALES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


def biggest(cell: str, dtype: str, states: int) -> list[ExplainConfig]:
    """Configs at `states` state elements: long and narrow-batch, and short with a big batch (both at 4 × 256 × 2)."""
    base = ExplainConfig(cell=cell, num_layers=1 if cell == "answer_gru" else 4, bidirectional=cell != "answer_gru",
                         hidden_size=256, input_size=64, dtype=dtype)
    per_step = base.num_layers * base.num_directions * base.hidden_size
    long = base.replace(batch_size=1, seq_len=min(LIMITS.max_seq_len, states // per_step))
    wide = base.replace(batch_size=min(LIMITS.max_batch_size, 16), seq_len=max(1, states // per_step // 16))
    return [long, wide]


def cpu(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def explorer_cases() -> list[tuple[str, float, float]]:
    rows = []
    for cell in ("gru", "lstm", "rnn_tanh", "answer_gru"):
        for dtype in ("float32", "float64"):
            for cfg in biggest(cell, dtype, LIMITS.max_state_elements):
                def work(cfg: ExplainConfig = cfg) -> None:
                    report = explain(cfg)
                    charts.gradient_norm_chart(report.frame, True).to_dict(validate=False)
                    charts.unit_heatmap(report.unit_frame(cfg.num_layers - 1, 0, 0)).to_dict(validate=False)
                    charts.input_grad_chart(report.frame).to_dict(validate=False)
                    report.verdict()
                rows.append((f"explorer {label(cfg)}", cpu(work), explorer_seconds(cfg)))
    return rows


def devices_cases() -> list[tuple[str, float, float]]:
    rows = []
    for cell in ("gru", "lstm", "rnn_tanh", "answer_gru"):
        for dtype in ("float32", "float64"):
            for cfg in biggest(cell, dtype, LIMITS.max_state_elements // 2):  # the page's memory cap
                repeats = min(20, max_repeats(cfg, 1, limits=LIMITS))
                if repeats < 1:
                    rows.append((f"devices {label(cfg)}: refused even at 1 repeat", 0.0, compare_seconds(cfg, 1, 1)))
                    continue
                check_compare(cfg, 1, repeats, limits=LIMITS)

                def work(cfg: ExplainConfig = cfg, repeats: int = repeats) -> None:
                    compare(cfg, devices=["cpu"], repeats=repeats)
                    if cfg.cell != "answer_gru":
                        fused_graph_census(cfg, devices=["cpu"])
                rows.append((f"devices {label(cfg)}, repeats {repeats}", cpu(work), compare_seconds(cfg, 1, repeats)))
    return rows


def longest_sweep(cfg: ExplainConfig) -> tuple[list[int], list[float]] | None:
    """The sweep the flow page allows for `cfg` with the most runs (lengths first), or None if the top is refused."""
    try:
        check_flow(cfg, FLOW_CELLS, limits=LIMITS)
    except BudgetError:
        return None
    lens, scales = [cfg.seq_len], [cfg.weight_scale]
    for option in sorted(set(SEQ_LENS) | {cfg.seq_len}, reverse=True):
        if option not in lens and flow_seconds(cfg, FLOW_CELLS, [*lens, option], scales) <= BUDGET:
            lens.append(option)
    for scale in WEIGHT_SCALES:
        if scale not in scales and flow_seconds(cfg, FLOW_CELLS, lens, [*scales, scale]) <= BUDGET:
            scales.append(scale)
    return lens, scales


def flow_cases() -> list[tuple[str, float, float]]:
    rows = []
    for dtype in ("float32", "float64"):
        for states in (LIMITS.max_state_elements, LIMITS.max_state_elements // 4):
            for cfg in biggest("gru", dtype, states):
                picked = longest_sweep(cfg)
                if picked is None:
                    rows.append((f"flow {label(cfg)}: refused (profiles alone)", 0.0, flow_seconds(cfg, FLOW_CELLS)))
                    continue
                lens, scales = picked

                def work(cfg: ExplainConfig = cfg, lens: list[int] = lens, scales: list[float] = scales) -> None:
                    for cell in FLOW_CELLS:
                        one = cell_config(cfg, cell)
                        profile_of(one)
                        jacobian_profile(explain(one), one.num_layers - 1, "forward")
                    sweep(cfg, cells=FLOW_CELLS, seq_lens=lens, weight_scales=scales, skip_errors=True, limits=LIMITS)
                rows.append((f"flow {label(cfg)}, sweep T {lens} × scales {scales}", cpu(work),
                             flow_seconds(cfg, FLOW_CELLS, lens, scales)))
    return rows


def label(cfg: ExplainConfig) -> str:
    return (f"{cfg.cell} {cfg.dtype} L{cfg.num_layers}{'×2' if cfg.bidirectional else ''} H{cfg.hidden_size} "
            f"B{cfg.batch_size} T{cfg.seq_len}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", choices=("explorer", "devices", "flow"), action="append")
    pages = parser.parse_args(argv).page or ["explorer", "devices", "flow"]
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cases = {"explorer": explorer_cases, "devices": devices_cases, "flow": flow_cases}
    warm = explain(ExplainConfig(seq_len=64, hidden_size=64))  # a warm server: imports and first calls done
    charts.unit_heatmap(warm.unit_frame(1, 0, 0)).to_dict(validate=False)
    charts.gradient_norm_chart(warm.frame, True).to_dict(validate=False)
    bad = 0
    print(f"budget: {BUDGET:g} s of CPU per page run (hosted limits); measured = CPU seconds of this process")
    for page in pages:
        rows = cases[page]()
        print(f"\n{page}: worst measured {max(r[1] for r in rows):.2f} s (budget {BUDGET:g} s)")
        for name, measured, estimate in rows:
            flag = ""
            if measured > BUDGET or measured > estimate:
                flag, bad = "  <-- over", bad + 1
            print(f"  {measured:6.2f} s measured  {estimate:6.2f} s estimated  {name}{flag}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
