"""Gradient flow through time: how dL/dh_t shrinks or grows with the distance from the step the target reads.

Backpropagation through time multiplies the gradient by one Jacobian ∂h_t/∂h_{t-1} per step back, so its norm
behaves roughly geometrically: ‖dL/dh_{t_0 - k}‖ ≈ C · rate^k. `decay_profile` lays one report's hidden-state
gradient norms out against that distance k; `fit_decay_rate` estimates `rate` (the per-step factor: < 1 vanishes,
> 1 explodes); `sweep` repeats this over cells, sequence lengths and weight scales for the flow page.

Distance is counted in *processing* steps of each layer and direction. The anchor (k = 0) is the last step, in
processing order, whose state has a graph path to the target (for ``y[:, -1].sum()``: t = T-1 of a forward
direction); steps processed after it cannot influence the target (structural zeros) and are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .config import CELL_LABELS, ExplainConfig
from .errors import ConfigError, TargetError
from .explain import explain
from .report import DIRECTIONS, GradientReport

PROFILE_COLUMNS = ("cell", "seq_len", "weight_scale", "layer", "direction", "t", "distance", "norm", "relative",
                   "exactly_zero", "underflow", "nonfinite")
"""Columns of `decay_profile` (and of `sweep`)."""
RATE_COLUMNS = ("cell", "seq_len", "weight_scale", "layer", "direction", "rate", "log10_rate", "log10_intercept",
                "points",
                "zero_steps", "nonfinite_steps", "anchor_norm")
"""Columns of `decay_rates`."""
GROUP_KEYS = ["cell", "seq_len", "weight_scale", "layer", "direction"]
Progress = Callable[[float, str], None]
"""A progress callback: (fraction done in [0, 1], message)."""


def cell_label(cell: str) -> str:
    """A short human label for a cell name ("rnn_tanh" -> "RNN tanh")."""
    return CELL_LABELS.get(cell, cell)


def decay_profile(report: GradientReport) -> pd.DataFrame:
    """One row per (layer, direction, step) reached by the target: distance from the anchor step vs ‖dL/dh_t‖.

    `norm` is the 2-norm of hidden_grad[layer, direction, :, t, :] over batch and hidden units (the report's
    frame); `relative` divides by the norm at distance 0 (NaN when that is zero or not finite). Zeros
    (underflow) and non-finite norms stay in the table, flagged, so a chart can mark them.
    """
    cfg = report.config
    frame = report.frame
    hidden = frame[frame.quantity == "hidden_state"]
    parts = []
    for (layer, direction), rows in hidden.groupby(["layer", "direction"], sort=True):
        reached = rows[~rows.structurally_zero.astype(bool)]
        if reached.empty:
            continue
        forward = direction == DIRECTIONS[0]
        anchor = int(reached.t.max()) if forward else int(reached.t.min())
        distance = (anchor - reached.t) if forward else (reached.t - anchor)
        anchor_norm = float(reached.loc[reached.t == anchor, "norm"].iloc[0])
        usable = math.isfinite(anchor_norm) and anchor_norm > 0
        part = pd.DataFrame({
            "layer": int(layer),
            "direction": direction,
            "t": reached.t.astype(int).to_numpy(),
            "distance": distance.astype(int).to_numpy(),
            "norm": reached.norm.astype(float).to_numpy(),
            "exactly_zero": reached.exactly_zero.astype(bool).to_numpy(),
            "underflow": reached.underflow.astype(bool).to_numpy(),
            "nonfinite": reached.nonfinite.astype(bool).to_numpy(),
        })
        part["relative"] = part.norm / anchor_norm if usable else math.nan
        parts.append(part.sort_values("distance"))
    if parts:
        out = pd.concat(parts, ignore_index=True)
    else:
        out = pd.DataFrame({c: pd.Series(dtype=object) for c in PROFILE_COLUMNS})
    out["cell"] = cfg.cell
    out["seq_len"] = cfg.seq_len
    out["weight_scale"] = float(cfg.weight_scale)
    return out[list(PROFILE_COLUMNS)].reset_index(drop=True)


def fit_decay(distance: Sequence[float] | np.ndarray, norm: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Least-squares line log10(norm) = intercept + slope·distance; returns (10**slope, intercept).

    Only points with a finite distance and a finite norm > 0 count (exact zeros from underflow and inf/NaN are
    excluded: they carry no magnitude). (NaN, NaN) when fewer than two distinct distances remain.
    """
    d = np.asarray(distance, dtype=float).reshape(-1)
    n = np.asarray(norm, dtype=float).reshape(-1)
    if d.shape != n.shape:
        raise ValueError(f"distance and norm must have the same length, got {d.size} and {n.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.isfinite(d) & np.isfinite(n) & (n > 0)
    d, logn = d[keep], np.log10(n[keep])
    if d.size < 2 or np.unique(d).size < 2:
        return math.nan, math.nan
    dc = d - d.mean()
    slope = float(np.dot(dc, logn - logn.mean()) / np.dot(dc, dc))
    return float(10.0 ** slope), float(logn.mean() - slope * d.mean())


def fit_decay_rate(distance: Sequence[float] | np.ndarray, norm: Sequence[float] | np.ndarray) -> float:
    """The per-step factor by which the gradient norm changes per step further from the target.

    Least-squares fit of log10(norm) = a + b·distance over the points whose norm is finite and > 0 (exact zeros,
    i.e. underflow, and inf/NaN are excluded); returns 10**b. So 0.5 means "halves every step back" (vanishing),
    1 means constant, 2 means "doubles every step back" (exploding). NaN when fewer than two distinct distances
    remain.
    """
    return fit_decay(distance, norm)[0]


def decay_rates(profile: pd.DataFrame) -> pd.DataFrame:
    """The fitted per-step rate (see `fit_decay_rate`) for each (cell, seq_len, weight_scale, layer, direction)."""
    rows = []
    for keys, group in profile.groupby(GROUP_KEYS, sort=False):
        rate, intercept = fit_decay(group.distance.to_numpy(), group.norm.to_numpy())
        norms = group.norm.to_numpy(dtype=float)
        anchor = group.loc[group.distance == group.distance.min(), "norm"]
        rows.append({
            **dict(zip(GROUP_KEYS, keys, strict=True)),
            "rate": rate,
            "log10_rate": math.log10(rate) if rate > 0 else math.nan,
            "log10_intercept": intercept,
            "points": int((np.isfinite(norms) & (norms > 0)).sum()),
            "zero_steps": int(group.exactly_zero.sum()),
            "nonfinite_steps": int(group.nonfinite.sum()),
            "anchor_norm": float(anchor.iloc[0]) if not anchor.empty else math.nan,
        })
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RATE_COLUMNS})
    return pd.DataFrame(rows)[list(RATE_COLUMNS)]


def cell_config(base: ExplainConfig, cell: str, **changes: object) -> ExplainConfig:
    """`base` with another cell (and other changes); "answer_gru" is forced to 1 layer, one direction."""
    cfg = base.replace(cell=cell, **changes)
    if cell == "answer_gru":
        cfg = cfg.replace(num_layers=1, bidirectional=False)
    return cfg


def profile_of(cfg: ExplainConfig, engine: str = "fused") -> pd.DataFrame:
    """`decay_profile(explain(cfg))`: the default per-config step of `sweep`."""
    return decay_profile(explain(cfg, engine=engine))


def sweep(
    base_cfg: ExplainConfig,
    cells: Iterable[str] = ("gru", "lstm", "rnn_tanh", "rnn_relu"),
    seq_lens: Iterable[int] | None = None,
    weight_scales: Iterable[float] | None = None,
    progress: Progress | None = None,
    profile: Callable[[ExplainConfig], pd.DataFrame] | None = None,
    skip_errors: bool = False,
) -> pd.DataFrame:
    """Decay profiles for every (cell, seq_len, weight_scale) combination, concatenated (PROFILE_COLUMNS).

    `seq_lens` / `weight_scales` default to the base config's value. `progress(fraction, message)` is called
    before each run and once at the end (1.0). `profile` computes one config's profile (default `profile_of`;
    a page passes a cached version). Errors (ConfigError / TargetError) propagate, so the first bad combination
    stops the sweep, unless `skip_errors`: then bad combinations are left out and listed in
    ``frame.attrs["skipped"]`` as (cell, seq_len, weight_scale, message) tuples.
    """
    cells = list(dict.fromkeys(cells))
    seq_lens = list(dict.fromkeys(seq_lens)) if seq_lens is not None else [base_cfg.seq_len]
    scales = list(dict.fromkeys(weight_scales)) if weight_scales is not None else [base_cfg.weight_scale]
    run = profile or profile_of
    combos = [(c, s, w) for c in cells for s in seq_lens for w in scales]
    parts: list[pd.DataFrame] = []
    skipped: list[tuple[str, int, float, str]] = []
    for i, (cell, seq_len, scale) in enumerate(combos):
        if progress is not None:
            progress(i / len(combos), f"{cell_label(cell)}, T = {seq_len}, weight scale {scale:g} "
                                      f"({i + 1}/{len(combos)})")
        try:
            parts.append(run(cell_config(base_cfg, cell, seq_len=seq_len, weight_scale=scale)))
        except (ConfigError, TargetError) as err:
            if not skip_errors:
                raise
            skipped.append((cell, seq_len, scale, str(err)))
    if progress is not None:
        progress(1.0, f"done: {len(combos)} run(s)")
    if parts:
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in PROFILE_COLUMNS})
    frame.attrs["skipped"] = skipped
    return frame


__all__ = [
    "PROFILE_COLUMNS",
    "RATE_COLUMNS",
    "cell_config",
    "cell_label",
    "decay_profile",
    "decay_rates",
    "fit_decay",
    "fit_decay_rate",
    "profile_of",
    "sweep",
]
