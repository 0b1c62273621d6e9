"""Gradient flow through time: how dL/dh_t shrinks or grows with the distance from the step the target reads.

Backpropagation through time multiplies the gradient by one Jacobian ∂h_t/∂h_{t-1} per step back, so its norm
behaves roughly geometrically: ‖dL/dh_{t_0 - k}‖ ≈ C · rate^k. `decay_profile` lays one report's hidden-state
gradient norms out against that distance k; `fit_decay_rate` estimates `rate` (the per-step factor: < 1 vanishes,
> 1 explodes); `sweep` repeats this over cells, sequence lengths and weight scales for the flow page.

Distance is counted in *processing* steps of each layer and direction. The anchor (k = 0) is the last step, in
processing order, whose state has a graph path to the target (for ``y[:, -1].sum()``: t = T-1 of a forward
direction); steps processed after it cannot influence the target (structural zeros) and are left out.

For an LSTM the profile also holds ‖dL/dc_t‖ (quantity "cell_state"), at the hidden state's distances: the cell
path c_t = f_t·c_{t-1} + … multiplies the gradient by the forget gate only, so it can reach further back than
dL/dh_t. Rates are fitted per quantity; `hidden_rows` keeps what the per-cell comparisons of ‖dL/dh_t‖ use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .adjoint import Scaled
from .budget import check, runnable_seconds
from .config import CELL_LABELS, ExplainConfig, Limits
from .errors import ConfigError, TargetError
from .explain import explain
from .models import SeedAnswerGRU, answer_as_gru, cell_kind, layer_params
from .report import DIRECTIONS, GradientReport

PROFILE_COLUMNS = ("cell", "seq_len", "weight_scale", "layer", "direction", "quantity", "t", "distance", "side",
                   "norm", "log10_norm", "relative", "exactly_zero", "zero_cause", "underflow", "nonfinite")
"""Columns of `decay_profile` (and of `sweep`)."""
RATE_COLUMNS = ("cell", "seq_len", "weight_scale", "layer", "direction", "quantity", "rate", "log10_rate",
                "log10_intercept", "points", "zero_steps", "nonfinite_steps", "undefined_steps", "anchor_norm",
                "anchor_t", "peak_t", "peak_log10_norm", "ahead_steps")
"""Columns of `decay_rates`."""
QUANTITIES = ("hidden_state", "cell_state")
"""The profile's quantities: ‖dL/dh_t‖ for every cell, ‖dL/dc_t‖ for the LSTM."""
SYMBOLS = {"hidden_state": "dL/dh_t", "cell_state": "dL/dc_t"}
"""The gradient each quantity's norm is of, as the page writes it."""
GROUP_KEYS = ["cell", "seq_len", "weight_scale", "layer", "direction", "quantity"]
Progress = Callable[[float, str], None]
"""A progress callback: (fraction done in [0, 1], message)."""


def cell_label(cell: str) -> str:
    """A short human label for a cell name ("rnn_tanh" -> "RNN tanh")."""
    return CELL_LABELS.get(cell, cell)


def decay_profile(report: GradientReport) -> pd.DataFrame:
    """One row per (layer, direction, quantity, step) reached by the target: distance from the read step vs the norm.

    The anchor (distance 0) is the *read step* of the hidden state: the reached step where the most gradient is
    read directly (from y, h_n or the layer above; the largest `direct_log10_norm`, the last in processing order on
    ties). Positive distances count processing steps back from it — the side the recurrence carries the gradient
    to; negative ones (side "ahead") are steps the gradient reaches only from the layer above (e.g. a lower layer of
    a bidirectional model). `quantity` is "hidden_state" (‖dL/dh_t‖) for every cell; an LSTM also has
    "cell_state" rows (‖dL/dc_t‖) with the same anchor and distances, so both share one distance axis. `norm` is
    the dtype's value, `log10_norm` the true magnitude (finite where float32 underflowed or overflowed), `relative`
    = true norm / the same quantity's true norm at the anchor. Zeros and non-finite rows stay, flagged.
    """
    cfg = report.config
    frame = report.frame
    hidden = frame[frame.quantity == "hidden_state"]
    cell = frame[frame.quantity == "cell_state"]
    parts = []
    for (layer, direction), rows in hidden.groupby(["layer", "direction"], sort=True):
        reached = rows[~rows.structurally_zero.astype(bool)]
        if reached.empty:
            continue
        forward = direction == DIRECTIONS[0]
        anchor = _read_step(reached, forward)
        cell_rows = cell[(cell.layer == layer) & (cell.direction == direction) & ~cell.structurally_zero.astype(bool)]
        for quantity, steps in (("hidden_state", reached), ("cell_state", cell_rows)):
            if not steps.empty:
                parts.append(_profile_part(steps, int(layer), str(direction), quantity, anchor, forward))
    if parts:
        out = pd.concat(parts, ignore_index=True)
    else:
        out = pd.DataFrame({c: pd.Series(dtype=object) for c in PROFILE_COLUMNS})
    out["cell"] = cfg.cell
    out["seq_len"] = cfg.seq_len
    out["weight_scale"] = float(cfg.weight_scale)
    return out[list(PROFILE_COLUMNS)].reset_index(drop=True)


def _profile_part(steps: pd.DataFrame, layer: int, direction: str, quantity: str, anchor: int,
                  forward: bool) -> pd.DataFrame:
    """The profile rows of one quantity of one layer and direction, by distance from `anchor` (processing steps)."""
    distance = (anchor - steps.t) if forward else (steps.t - anchor)
    log10 = steps.log10_norm.astype(float).to_numpy()
    at_anchor = steps.loc[steps.t == anchor, "log10_norm"]
    anchor_log10 = float(at_anchor.iloc[0]) if not at_anchor.empty else math.nan
    part = pd.DataFrame({
        "layer": layer,
        "direction": direction,
        "quantity": quantity,
        "t": steps.t.astype(int).to_numpy(),
        "distance": distance.astype(int).to_numpy(),
        "norm": steps.norm.astype(float).to_numpy(),
        "log10_norm": log10,
        "exactly_zero": steps.exactly_zero.astype(bool).to_numpy(),
        "zero_cause": steps.zero_cause.astype(str).to_numpy(),
        "underflow": steps.underflow.astype(bool).to_numpy(),
        "nonfinite": steps.nonfinite.astype(bool).to_numpy(),
    })
    part["side"] = np.where(part.distance >= 0, "back", "ahead")
    with np.errstate(over="ignore", invalid="ignore"):
        part["relative"] = np.power(10.0, log10 - anchor_log10) if math.isfinite(anchor_log10) else math.nan
    return part.sort_values("distance")


def with_quantity(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (a profile or rates) with a `quantity` column: profiles made before it existed are all hidden_state."""
    return frame if "quantity" in frame else frame.assign(quantity="hidden_state")


def hidden_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The ‖dL/dh_t‖ rows of a profile or of rates: what compares every cell alike (metrics, sweeps, Jacobians)."""
    frame = with_quantity(frame)
    return frame[frame["quantity"] == "hidden_state"]


def _read_step(reached: pd.DataFrame, forward: bool) -> int:
    """The reached step with the most gradient read directly; the last in processing order on ties (or if none)."""
    direct = reached.direct_log10_norm.astype(float).to_numpy()
    steps = reached.t.astype(int).to_numpy()
    order = np.argsort(steps if forward else -steps, kind="stable")  # processing order
    direct, steps = direct[order], steps[order]
    finite = np.isfinite(direct) | (direct == np.inf)
    if not finite.any():
        return int(steps[-1])
    best = np.nanmax(np.where(finite, direct, -np.inf))
    return int(steps[np.flatnonzero(finite & (direct == best))[-1]])


def fit_log10_decay(distance: Sequence[float] | np.ndarray,
                    log10_norm: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Least-squares line log10_norm = intercept + slope·distance; returns (10**slope, intercept).

    Only points with a finite distance and a finite log10 norm count (exact zeros, -inf, and undefined NaN values
    carry no magnitude). (NaN, NaN) when fewer than two distinct distances remain.
    """
    d = np.asarray(distance, dtype=float).reshape(-1)
    logn = np.asarray(log10_norm, dtype=float).reshape(-1)
    if d.shape != logn.shape:
        raise ValueError(f"distance and log10_norm must have the same length, got {d.size} and {logn.size}")
    keep = np.isfinite(d) & np.isfinite(logn)
    d, logn = d[keep], logn[keep]
    if d.size < 2 or np.unique(d).size < 2:
        return math.nan, math.nan
    dc = d - d.mean()
    slope = float(np.dot(dc, logn - logn.mean()) / np.dot(dc, dc))
    return float(10.0 ** slope), float(logn.mean() - slope * d.mean())


def _log10(norm: Sequence[float] | np.ndarray) -> np.ndarray:
    n = np.asarray(norm, dtype=float).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.log10(np.where(n > 0, n, 1.0)), np.where(np.isnan(n), np.nan, -np.inf))


def fit_decay(distance: Sequence[float] | np.ndarray, norm: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """`fit_log10_decay` on plain norms: points with a norm that is 0, inf or NaN are excluded."""
    return fit_log10_decay(distance, _log10(norm))


def fit_decay_rate(distance: Sequence[float] | np.ndarray, norm: Sequence[float] | np.ndarray) -> float:
    """The per-step factor by which a gradient norm changes per step further from the read step.

    Least-squares fit of log10(norm) = a + b·distance over the points whose norm is finite and > 0; returns 10**b.
    So 0.5 means "halves every step back" (vanishing), 1 constant, 2 "doubles every step back" (exploding). NaN
    when fewer than two distinct distances remain.
    """
    return fit_decay(distance, norm)[0]


def decay_rates(profile: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, seq_len, weight_scale, layer, direction, quantity): the rate fitted on the side the gradient travels.

    `quantity` is "hidden_state" (‖dL/dh_t‖) or, for an LSTM, also "cell_state" (‖dL/dc_t‖). The fit uses the
    true magnitudes (`log10_norm`) of the steps at distance >= 0 from the read step (`anchor_t`); `peak_t` is where
    the true norm is largest over all reached steps (it differs from the anchor when the gradient grows going back,
    or arrives from the layer above); `ahead_steps` counts the steps not fitted (distance < 0).
    """
    rows = []
    for keys, group in with_quantity(profile).groupby(GROUP_KEYS, sort=False):
        back = group[group.distance >= 0]
        log10 = back.log10_norm.to_numpy(dtype=float)
        rate, intercept = fit_log10_decay(back.distance.to_numpy(), log10)
        anchor = group[group.distance == 0]
        all_log10 = group.log10_norm.to_numpy(dtype=float)
        usable = np.where(np.isnan(all_log10), -np.inf, all_log10)
        peak = int(group.t.to_numpy()[int(np.argmax(usable))]) if np.isfinite(usable).any() else int(anchor.t.iloc[0])
        rows.append({
            **dict(zip(GROUP_KEYS, keys, strict=True)),
            "rate": rate,
            "log10_rate": math.log10(rate) if rate > 0 else math.nan,
            "log10_intercept": intercept,
            "points": int(np.isfinite(log10).sum()),
            "zero_steps": int(back.exactly_zero.sum()),
            "nonfinite_steps": int(back.nonfinite.sum()),
            "undefined_steps": int(np.isnan(log10).sum()),  # no true size: through inf/NaN forward states
            "anchor_norm": float(anchor.norm.iloc[0]) if not anchor.empty else math.nan,
            "anchor_t": int(anchor.t.iloc[0]) if not anchor.empty else -1,
            "peak_t": peak,
            "peak_log10_norm": float(np.max(usable)) if usable.size else math.nan,
            "ahead_steps": int((group.distance < 0).sum()),
        })
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RATE_COLUMNS})
    return pd.DataFrame(rows)[list(RATE_COLUMNS)]


def _fitted(rate: float) -> bool:
    return math.isfinite(rate) and rate > 0


def _change(rate: float) -> str:
    """How a norm changes per step at `rate`: "shrinks ×0.5 per step (10× every 3.32 steps)", "keeps its size"."""
    if rate == 1:
        return "keeps its size"
    way = "shrinks" if rate < 1 else "grows"
    return f"{way} ×{rate:.3g} per step (10× every {1 / abs(math.log10(rate)):.3g} steps)"


def describe_rate(row) -> str:
    """One sentence for one fitted rate, from its numbers: the read step, the direction back, the factor, the peak."""
    toward = "t = 0" if row.direction == DIRECTIONS[0] else "t = T−1"
    symbol = SYMBOLS[getattr(row, "quantity", "hidden_state")]
    if not _fitted(row.rate):
        text = (f"Too few steps with a magnitude behind the read step t = {row.anchor_t} (toward {toward}) to fit a "
                f"rate of ‖{symbol}‖")
    else:
        text = f"From the read step t = {row.anchor_t} back toward {toward}, ‖{symbol}‖ {_change(row.rate)}"
    text += "; it peaks at " + (f"t = {row.peak_t}, the read step" if row.peak_t == row.anchor_t else
                                f"t = {row.peak_t}, not at the read step")
    undefined = int(getattr(row, "undefined_steps", 0) or 0)
    if undefined:
        text += (f". {undefined} step(s) behind the read step have no true size (their gradient is computed through "
                 "inf/NaN forward states): they are marked in the band above the plot, not fitted")
    if row.ahead_steps and symbol == SYMBOLS["hidden_state"]:
        text += (f". {row.ahead_steps} step(s) on the other side get their gradient only from the layer above; "
                 "they are drawn (negative distance) but not fitted")
    elif row.ahead_steps:  # a c_t read directly after h's read step (e.g. c_n): drawn, not fitted
        text += (f". {row.ahead_steps} step(s) lie on the other side of the read step of h; they are drawn "
                 "(negative distance) but not fitted")
    return text + "."


CLOSE_RATES = 0.05
"""Two rates whose log10 differ by at most this fraction of the larger count as about the same (`describe_cell_path`:
×0.62 vs ×0.623 is no difference worth a sentence; ×0.54 vs ×0.59 is)."""


def describe_cell_path(rates: pd.DataFrame) -> list[str]:
    """One sentence per LSTM (layer, direction, T, weight scale) in `rates`: its fitted ‖dL/dc_t‖ rate beside its
    ‖dL/dh_t‖ rate, and which of the two keeps more of the gradient per step back (the one nearer 1 when the
    rates lie on different sides of 1; "about alike" when their log10 differ by at most CLOSE_RATES of the larger);
    [] without cell-state rates."""
    rates = with_quantity(rates)
    keys = [k for k in GROUP_KEYS if k != "quantity"]
    hidden = rates[rates["quantity"] == "hidden_state"].set_index(keys)["rate"]
    lines = []
    for row in rates[rates["quantity"] == "cell_state"].itertuples(index=False):
        key = tuple(getattr(row, k) for k in keys)
        h_rate = float(hidden.get(key, math.nan))
        c_rate = float(row.rate)
        text = f"{cell_label(row.cell)}: ‖dL/dc_t‖ "
        text += _change(c_rate) if _fitted(c_rate) else "has too few steps with a magnitude to fit a rate"
        text += f" vs ‖dL/dh_t‖ ×{h_rate:.3g}" if _fitted(h_rate) else " (‖dL/dh_t‖: no rate)"
        if _fitted(c_rate) and _fitted(h_rate):
            c_log, h_log = math.log10(c_rate), math.log10(h_rate)
            if abs(c_log - h_log) <= CLOSE_RATES * max(abs(c_log), abs(h_log)):
                text += ": both change at about the same rate"
            elif c_log < 0 and h_log < 0:  # both vanish: the slower one reaches further back
                text += (": the cell path carries the gradient further back" if c_log > h_log else
                         ": the hidden path carries the gradient further back")
            elif c_log > 0 and h_log > 0:
                text += ": the cell-state gradient grows faster" if c_log > h_log else \
                    ": the hidden-state gradient grows faster"
            else:
                text += (": the cell-state gradient stays nearer a constant size" if abs(c_log) < abs(h_log) else
                         ": the hidden-state gradient stays nearer a constant size")
        lines.append(text + ".")
    return lines


def describe_sweep(rates: pd.DataFrame) -> str:
    """Which cell keeps its gradient closest to a constant size in a sweep (median fitted rate of ‖dL/dh_t‖ nearest
    1), or ""."""
    rates = hidden_rows(rates)
    rate = rates["rate"].astype(float)
    fitted = rates[np.isfinite(rate) & (rate > 0)]
    if fitted["cell"].nunique() < 2:
        return ""
    medians = fitted.groupby("cell", sort=False)["rate"].median()
    order = np.abs(np.log10(medians.to_numpy(dtype=float))).argsort(kind="stable")
    best, worst = medians.index[order[0]], medians.index[order[-1]]
    return (f" In this sweep {cell_label(best)} keeps its gradient closest to a constant size (median rate "
            f"×{medians[best]:.3g} per step) and {cell_label(worst)} the least (×{medians[worst]:.3g}).")


JACOBIAN_COLUMNS = ("cell", "layer", "direction", "batch", "t", "distance", "sigma_max", "log10_sigma_max",
                    "log10_bound", "log10_state_norm")
"""Columns of `jacobian_profile`."""
JACOBIAN_CHUNK = 16
"""Steps per batch of Jacobians (at most 16 × 512 × 512 float64, 32 MiB, for a 256-unit LSTM)."""
JACOBIAN_BUDGET = 2 ** 27
"""Work budget of `jacobian_profile` in S³ units (an S × S singular value problem per step): 64 steps at S = 128,
8 at S = 256 (a 256-unit GRU or a 128-unit LSTM), at least 4."""


def jacobian_steps(state_size: int, seq_len: int) -> int:
    """How many steps back from the read step `jacobian_profile` covers within JACOBIAN_BUDGET."""
    return max(4, min(seq_len, JACOBIAN_BUDGET // state_size ** 3))


def step_jacobians(report: GradientReport, layer: int, direction: int, batch: int = 0,
                   steps: Sequence[int] | None = None) -> Tensor:
    """∂s_t/∂s_{t-1} for every step (or the given `steps`) of one layer and direction, batch item `batch`:
    [T or len(steps), S, S] in float64.

    s is the recurrent state: h (GRU, RNN) or (h, c) stacked (LSTM, S = 2H); "t-1" is the previous step in the
    direction's processing order (t+1 for the reverse direction). Built from the fused states with the cell's
    own derivative formulas (the same local derivatives the engine's backward pass multiplies by).
    """
    module = answer_as_gru(report.module) if isinstance(report.module, SeedAnswerGRU) else report.module
    kind = cell_kind(module)
    w_ih, w_hh, b_ih, b_hh = (p.detach().double() for p in layer_params(module, layer, direction))
    hidden = module.hidden_size
    states = report.hidden_states.double()
    x = report.inputs.double()[batch] if layer == 0 else torch.cat(
        [states[layer - 1, d, batch] for d in range(states.shape[1])], dim=-1)  # [T, I]
    h = states[layer, direction, batch]  # [T, H]
    if direction == 1:  # processing order
        x, h = x.flip(0), h.flip(0)
    h_prev = torch.cat([h.new_zeros(1, hidden), h[:-1]])
    gi, gh = x @ w_ih.T + b_ih, h_prev @ w_hh.T + b_hh  # [T, G*H]
    eye = torch.eye(hidden, dtype=torch.float64)
    seq_len = len(h)
    wanted = torch.arange(seq_len) if steps is None else torch.as_tensor(list(steps), dtype=torch.long)
    idx = wanted if direction == 0 else seq_len - 1 - wanted  # positions in processing order

    def at(*tensors: Tensor) -> list[Tensor]:  # the per-step vectors of the wanted steps only
        return [t[idx] for t in tensors]

    def rows(scale: Tensor, weight: Tensor) -> Tensor:  # diag(scale_t) @ weight, for every t: [T, H, H]
        return scale.unsqueeze(-1) * weight

    if kind == "gru":
        w_r, w_z, w_n = w_hh.split(hidden)
        r, z = torch.sigmoid(gi[:, :hidden] + gh[:, :hidden]), torch.sigmoid(gi[:, hidden:2 * hidden]
                                                                            + gh[:, hidden:2 * hidden])
        gh_n = gh[:, 2 * hidden:]
        n = torch.tanh(gi[:, 2 * hidden:] + r * gh_n)  # h = (1 - z) n + z h_prev
        d_n = (1 - z) * (1 - n * n)  # ∂h/∂(n pre-activation)
        z, r, n, d_n, gh_n, h_prev = at(z, r, n, d_n, gh_n, h_prev)
        jac = (z.unsqueeze(-1) * eye + rows((h_prev - n) * z * (1 - z), w_z)
               + rows(d_n * r, w_n) + rows(d_n * gh_n * r * (1 - r), w_r))
    elif kind == "lstm":
        w_i, w_f, w_g, w_o = w_hh.split(hidden)
        pre = gi + gh
        i, f = torch.sigmoid(pre[:, :hidden]), torch.sigmoid(pre[:, hidden:2 * hidden])
        g, o = torch.tanh(pre[:, 2 * hidden:3 * hidden]), torch.sigmoid(pre[:, 3 * hidden:])
        c, cells = h.new_zeros(hidden), []
        for t in range(len(h)):  # c_t = f c_{t-1} + i g (the fused module returns h only)
            c = f[t] * c + i[t] * g[t]
            cells.append(c)
        cell = torch.stack(cells)
        c_prev = torch.cat([cell.new_zeros(1, hidden), cell[:-1]])
        i, f, g, o, cell, c_prev = at(i, f, g, o, cell, c_prev)
        tc = torch.tanh(cell)
        dc_dh = rows(c_prev * f * (1 - f), w_f) + rows(g * i * (1 - i), w_i) + rows(i * (1 - g * g), w_g)
        dh_dh = rows(tc * o * (1 - o), w_o) + (o * (1 - tc * tc)).unsqueeze(-1) * dc_dh  # h = o tanh(c)
        dc_dc = f.unsqueeze(-1) * eye
        dh_dc = (o * (1 - tc * tc) * f).unsqueeze(-1) * eye
        jac = torch.cat([torch.cat([dh_dh, dh_dc], dim=2), torch.cat([dc_dh, dc_dc], dim=2)], dim=1)
    else:
        (h,) = at(h)
        slope = (1 - h * h) if kind == "rnn_tanh" else (~(h <= 0)).double()
        jac = rows(slope, w_hh)
    return jac  # in the order of `steps` (original time order by default)


def jacobian_profile(report: GradientReport, layer: int, direction: str, batch: int = 0,
                     max_steps: int | None = None) -> pd.DataFrame:
    """Why the gradient vanishes or explodes, as numbers: ‖∂s_t/∂s_{t-1}‖₂ per step and its running product.

    One row per step on the read step's back side (distance 0 .. max_steps-1; default `jacobian_steps`, a work
    budget), for batch item `batch`: sigma_max (largest singular value of the step
    Jacobian), log10_state_norm (the measured true ‖dL/ds_t‖ of that item; s = h, or (h, c) for LSTM) and
    log10_bound = log10_state_norm at the read step + Σ log10 sigma_max of the steps between: an upper bound on
    log10_state_norm wherever nothing but the read step injects gradient (‖Aᵀv‖ <= ‖A‖₂‖v‖).
    """
    d = DIRECTIONS.index(direction)
    profile = hidden_rows(decay_profile(report))  # the steps and read step of h; ‖dL/ds_t‖ covers c itself
    rows = profile[(profile.layer == layer) & (profile.direction == direction)].sort_values("distance")
    state_size = report.config.hidden_size * (2 if report.cell_grad is not None else 1)
    limit = max_steps if max_steps is not None else jacobian_steps(state_size, report.config.seq_len)
    rows = rows[(rows.distance >= 0) & (rows.distance < limit)]
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in JACOBIAN_COLUMNS})
    sigma = np.full(report.config.seq_len, np.nan)
    needed = rows.t.astype(int).tolist()
    for start in range(0, len(needed), JACOBIAN_CHUNK):  # bounded memory: a chunk of [S, S] matrices at a time
        chunk = needed[start:start + JACOBIAN_CHUNK]
        sigma[chunk] = torch.linalg.matrix_norm(step_jacobians(report, layer, d, batch, chunk), ord=2).numpy()
    with np.errstate(divide="ignore"):
        log_sigma = np.log10(sigma)
    state = _item_log10_norms(report, layer, d, batch)  # [T]
    steps_t = rows.t.astype(int).to_numpy()
    anchor_t = int(rows.loc[rows.distance == 0, "t"].iloc[0])
    bound = []
    for t in steps_t:
        # Back from the read step t0 to t: the Jacobians of steps t+1 .. t0 (forward) or t0 .. t-1 (reverse).
        between = range(t + 1, anchor_t + 1) if d == 0 else range(anchor_t, t)
        bound.append(float(state[anchor_t] + sum(log_sigma[s] for s in between)))
    return pd.DataFrame({
        "cell": report.config.cell, "layer": layer, "direction": direction, "batch": batch, "t": steps_t,
        "distance": rows.distance.astype(int).to_numpy(), "sigma_max": sigma[steps_t],
        "log10_sigma_max": log_sigma[steps_t], "log10_bound": bound, "log10_state_norm": state[steps_t],
    })[list(JACOBIAN_COLUMNS)]


def describe_jacobians(frame: pd.DataFrame) -> list[str]:
    """One sentence per cell of a `jacobian_profile` frame: the range of sigma_max, the bound's and the measured
    change over the steps shown, and whether the Jacobians' product shrinks the gradient more than their norms."""
    lines = []
    for cell, rows in frame.groupby("cell", sort=False):
        rows = rows.sort_values("distance")
        sigma = rows.sigma_max.astype(float)
        first, last = rows.iloc[0], rows.iloc[-1]
        bound = float(last.log10_bound - first.log10_bound)
        measured = float(last.log10_state_norm - first.log10_state_norm)
        change = (f"the measured ‖dL/ds_t‖ changes ×{10 ** measured:.3g}" if not math.isnan(measured) else
                  "the measured ‖dL/ds_t‖ has no true size at one end (computed through inf/NaN forward states)")
        text = (f"{cell_label(str(cell))}: σ_max is {sigma.min():.3g}–{sigma.max():.3g} over the {len(rows)} steps "
                f"back from t = {int(first.t)}; their product allows a change of at most ×{10 ** bound:.3g}, "
                f"{change}")
        if math.isfinite(measured) and math.isfinite(bound) and measured < bound - 1:
            text += " — the Jacobians' product shrinks the gradient far more than their norms alone would"
        lines.append(text + ".")
    return lines


def _item_log10_norms(report: GradientReport, layer: int, direction: int, batch: int) -> np.ndarray:
    """log10 of the true ‖dL/ds_t‖ of one batch item per step (s = h, or (h, c) for LSTM): [T]."""
    parts = [report.hidden_magnitude] + ([report.cell_magnitude] if report.cell_magnitude is not None else [])
    ln10, squares = math.log(10.0), None  # natural log of the squared norm, summed over the parts
    for scaled in parts:
        row = Scaled(scaled.mantissa[layer, direction, batch], scaled.exponent[layer, direction, batch])
        part = 2 * ln10 * row.log10_row_norm()
        squares = part if squares is None else torch.logaddexp(squares, part)
    return (squares / (2 * ln10)).numpy()


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
    limits: Limits | None = None,
) -> pd.DataFrame:
    """Decay profiles for every (cell, seq_len, weight_scale) combination, concatenated (PROFILE_COLUMNS).

    `seq_lens` / `weight_scales` default to the base config's value. `progress(fraction, message)` is called
    before each run and once at the end (1.0). `profile` computes one config's profile (default `profile_of`;
    a page passes a cached version). Errors (ConfigError / TargetError) propagate, so the first bad combination
    stops the sweep, unless `skip_errors`: then bad combinations are left out and listed in
    ``frame.attrs["skipped"]`` as (cell, seq_len, weight_scale, message) tuples. A sweep whose estimated CPU work
    (`budget.explain_seconds` per run) exceeds `limits.max_cpu_seconds` raises BudgetError before any run.
    """
    cells = list(dict.fromkeys(cells))
    seq_lens = list(dict.fromkeys(seq_lens)) if seq_lens is not None else [base_cfg.seq_len]
    scales = list(dict.fromkeys(weight_scales)) if weight_scales is not None else [base_cfg.weight_scale]
    run = profile or profile_of
    combos = [(c, s, w) for c in cells for s in seq_lens for w in scales]
    check(sum(runnable_seconds(cell_config(base_cfg, c, seq_len=s, weight_scale=w), limits) for c, s, w in combos),
          f"A sweep of {len(combos)} run(s)", "choose fewer or shorter sequence lengths, fewer weight scales or fewer "
          "cells.", limits)
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
    "QUANTITIES",
    "SYMBOLS",
    "decay_rates",
    "describe_cell_path",
    "describe_rate",
    "describe_sweep",
    "describe_jacobians",
    "fit_decay",
    "fit_log10_decay",
    "jacobian_profile",
    "jacobian_steps",
    "step_jacobians",
    "fit_decay_rate",
    "hidden_rows",
    "profile_of",
    "sweep",
    "with_quantity",
]
