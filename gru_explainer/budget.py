"""Bounded work per request: the CPU seconds a page run would take, estimated from the config before any work.

A hosted demo shares a few cores among every visitor, so no single request may hold one for long. Each page's work
is estimated here from its config alone (sizes, cell, dtype, engines, repeats, sweep lengths), and a request whose
estimate exceeds `Limits.max_cpu_seconds` (10 s of one core at the hosted limits; an hour with `Limits.local()`) is
refused with a `BudgetError` naming what to reduce, before anything is computed.

The cost model (`explain_seconds`) is an upper-bound fit of measured `explain` CPU times on one core (torch 2.13 CPU,
one intra-op thread as the app runs, flush-to-zero on): a fixed cost, a cost per step (T × layers × directions),
the per-step recurrent matmuls (H² × gates) and the batch's elementwise work (B × H × gates), per engine and dtype,
times `SAFETY`. `python -m benchmarks.work_budget` measures the worst request each page allows against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .config import ENGINES, ExplainConfig, Limits
from .errors import ConfigError

GATES = {"gru": 3, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1, "answer_gru": 3}
COEFFICIENTS: dict[tuple[str, str], tuple[float, float, float, float]] = {
    # (engine, dtype): seconds = c0 + c1 * steps/1e3 + c2 * steps * H² * (gates+1)/1e9
    #                            + c3 * steps * B * H * (gates+1)/1e6,   steps = T × layers × directions;
    # least squares on relative error over 144 measured configs (2-core dev machine, one thread), every cell and
    # both dtypes; the seed answer's hand-written GRU always costs as the twin. Plus PARAMETER_SECONDS per million
    # weights (building the model).
    ("fused", "float32"): (0.008, 0.062, 0.79, 0.056),
    ("fused", "float64"): (0.008, 0.063, 1.27, 0.094),
    ("twin", "float32"): (0.008, 0.32, 1.19, 0.080),
    ("twin", "float64"): (0.008, 0.32, 1.25, 0.197),
}
PARAMETER_SECONDS = 0.02
"""Seconds per million weights for building the model (drawn in float64, cast, copied into the module): what a
short, wide config (T = 8, B = 16, 4 × 2 × 256) pays on every run, which the per-step terms miss."""
SAFETY = 1.5
"""The estimate is the fit times this. Near the hosted limits (where the budget matters) the measured / fitted ratio
was at most 1.8 (the twin at B = 1, T = 256); small configs, dominated by fixed costs, ran up to 3x their fit, but
they take well under a second. benchmarks/work_budget.py checks the estimate against measurements."""
CHART_SECONDS = {"explorer": 1.0, "flow": 2.0, "devices": 1.0}
"""What a page run costs besides its explanations: frames, charts (Altair specs), verdict and text, an upper bound
of what was measured (explorer: norm and input charts 0.5-0.9 s, verdict 0.1 s; flow: decay, Jacobian and rate
charts; devices: two small charts and the census table)."""
HEATMAP_SECONDS = 5.0
"""The explorer's time × unit heatmap: measured 2-4 s once it holds more than a few thousand cells (T × H), much
less for small models; estimated as HEATMAP_SECONDS × min(1, T × H / HEATMAP_CELLS)."""
HEATMAP_CELLS = 4096
JACOBIAN_SECONDS = 0.5
"""The flow page's step-Jacobian norms of one cell beyond its explanation (`flow.JACOBIAN_BUDGET` bounds them:
measured 0.1-0.4 s at the hosted limits)."""


class BudgetError(ConfigError):
    """A request whose estimated CPU work exceeds `Limits.max_cpu_seconds` (a ConfigError: shown like bad input)."""


def explain_seconds(cfg: ExplainConfig, engine: str = "fused") -> float:
    """Estimated CPU seconds (one core) of one `explain(cfg, engine=engine)` call; cfg's sizes as given."""
    kind = "twin" if engine == "twin" or cfg.cell == "answer_gru" else "fused"
    c0, c1, c2, c3 = COEFFICIENTS[(kind, "float64" if cfg.dtype == "float64" else "float32")]
    steps = cfg.seq_len * cfg.num_layers * cfg.num_directions
    gates = GATES.get(cfg.cell, 4) + 1
    return SAFETY * (c0 + c1 * steps / 1e3 + c2 * steps * cfg.hidden_size ** 2 * gates / 1e9
                     + c3 * steps * cfg.batch_size * cfg.hidden_size * gates / 1e6
                     + PARAMETER_SECONDS * parameters(cfg) / 1e6)


def parameters(cfg: ExplainConfig) -> int:
    """The recurrent module's weight count (each is drawn from the seeded generator when the model is built)."""
    hidden, gates = cfg.hidden_size, GATES.get(cfg.cell, 4)
    inputs = [cfg.input_size] + [cfg.num_directions * hidden] * (cfg.num_layers - 1)
    return cfg.num_directions * sum(gates * hidden * (i + hidden + 2) for i in inputs)


def explorer_seconds(cfg: ExplainConfig) -> float:
    """The explorer's page run: one fused explanation, its frame, charts (the heatmap the largest) and verdict."""
    heatmap = HEATMAP_SECONDS * min(1.0, cfg.seq_len * cfg.hidden_size / HEATMAP_CELLS)
    return explain_seconds(cfg) + CHART_SECONDS["explorer"] + heatmap


def compare_seconds(cfg: ExplainConfig, devices: int = 1, repeats: int = 3, engines: Iterable[str] = ENGINES) -> float:
    """The devices page: the CPU twin reference, then per device and engine a warm-up and `repeats` timed runs,
    and the fused graph census per device. Accelerators are counted as if they were the CPU (an upper bound)."""
    engines = list(dict.fromkeys(engines))
    per_device = sum((1 + repeats) * explain_seconds(cfg, engine) for engine in engines) + explain_seconds(cfg)
    return explain_seconds(cfg, "twin") + devices * per_device + CHART_SECONDS["devices"]


def max_repeats(cfg: ExplainConfig, devices: int = 1, engines: Iterable[str] = ENGINES,
                limits: Limits | None = None) -> int:
    """The most repeats the devices page can run for `cfg` within the budget (0: not even one)."""
    budget = (limits or Limits.from_env()).max_cpu_seconds
    engines = list(dict.fromkeys(engines))
    fixed = compare_seconds(cfg, devices, 0, engines)
    per_repeat = devices * sum(explain_seconds(cfg, engine) for engine in engines)
    return max(0, math.floor((budget - fixed) / per_repeat)) if per_repeat > 0 else 0


def runnable_seconds(cfg: ExplainConfig, limits: Limits | None = None, engine: str = "fused") -> float:
    """`explain_seconds`, or 0 for a config the limits refuse anyway (it is reported, never run)."""
    try:
        cfg.validate(limits or Limits.from_env())
    except ConfigError:
        return 0.0
    return explain_seconds(cfg, engine)


def flow_seconds(cfg: ExplainConfig, cells: Iterable[str], seq_lens: Iterable[int] = (),
                 weight_scales: Iterable[float] = (), limits: Limits | None = None) -> float:
    """The flow page: per cell its decay profile and its step Jacobians (an explanation each, plus the norms), then
    the sweep over cells × lengths × weight scales (the combination the profile already computed is not counted).
    Configs the limits refuse cost nothing (the page shows their error)."""
    from .flow import cell_config

    cells = list(dict.fromkeys(cells))
    total = CHART_SECONDS["flow"]
    for cell in cells:
        one = runnable_seconds(cell_config(cfg, cell), limits)
        total += 2 * one + (JACOBIAN_SECONDS if one else 0.0)
    for cell in cells:
        for seq_len in dict.fromkeys(seq_lens):
            for scale in dict.fromkeys(weight_scales):
                if (seq_len, scale) != (cfg.seq_len, cfg.weight_scale):
                    total += runnable_seconds(cell_config(cfg, cell, seq_len=seq_len, weight_scale=scale), limits)
    return total


def check(seconds: float, what: str, reduce: str, limits: Limits | None = None) -> None:
    """Raise BudgetError when `seconds` (an estimate) exceeds the budget; the message names `what` and `reduce`."""
    budget = (limits or Limits.from_env()).max_cpu_seconds
    if seconds > budget:
        raise BudgetError(f"{what} would take about {seconds:.0f} s of CPU work (estimated from the settings), more "
                          f"than the {budget:g} s one request may use on this server; {reduce}")


def check_compare(cfg: ExplainConfig, devices: int, repeats: int, engines: Iterable[str] = ENGINES,
                  limits: Limits | None = None) -> None:
    """BudgetError when the devices page's comparison of `cfg` exceeds the budget (names the repeats that fit)."""
    fits = max_repeats(cfg, devices, engines, limits)
    hint = (f"choose at most {fits} repeat(s)" if fits >= 1 else
            "choose a smaller model in the sidebar (batch size, sequence length T, layers, directions or hidden size)")
    check(compare_seconds(cfg, devices, repeats, engines), f"Comparing {devices} device(s) × both engines with "
          f"{repeats} repeat(s)", hint + (" or fewer devices" if devices > 1 else "") + ".", limits)


def check_flow(cfg: ExplainConfig, cells: Iterable[str], seq_lens: Iterable[int] = (),
               weight_scales: Iterable[float] = (), limits: Limits | None = None) -> None:
    """BudgetError when the flow page's profiles (and sweep, when given) exceed the budget."""
    cells = list(dict.fromkeys(cells))
    seq_lens, weight_scales = list(dict.fromkeys(seq_lens)), list(dict.fromkeys(weight_scales))
    if seq_lens and weight_scales:
        what = (f"The sweep ({len(cells)} cell(s) × {len(seq_lens)} sequence length(s) × {len(weight_scales)} weight "
                "scale(s)) with the profiles above it")
        reduce = "choose fewer or shorter sequence lengths, fewer weight scales or fewer cells."
    else:
        what = f"Profiling {len(cells)} cell(s) at these sizes"
        reduce = ("compare fewer cells or choose a smaller model in the sidebar (batch size, sequence length T, "
                  "layers, directions or hidden size).")
    check(flow_seconds(cfg, cells, seq_lens, weight_scales, limits), what, reduce, limits)


__all__ = ["BudgetError", "check", "check_compare", "check_flow", "compare_seconds", "explain_seconds",
           "explorer_seconds", "flow_seconds", "max_repeats", "runnable_seconds"]
