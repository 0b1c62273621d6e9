"""`GradientReport`: the tensors of one explanation, a tidy DataFrame for charts, and a verdict in words.

All tensors are detached, batch-first and on the CPU. Shapes: B batch, T steps, I input size, H hidden size,
L layers, D directions (2 if bidirectional).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .adjoint import LOG10_2, ZERO_ROW, Scaled, row_max_abs
from .config import ExplainConfig

QUANTITIES = ("stacked_output", "hidden_state", "cell_state", "input")
DIRECTIONS = ("forward", "reverse")
ZERO_CAUSES = ("", "structural", "zero_on_path", "underflow")
"""Why a frame row is exactly zero in the dtype: "" (it is not), "structural" (no graph path to the target),
"zero_on_path" (a path exists but the true value is exactly 0: a zero local derivative such as a dead ReLU, a zero
factor in the target, exact cancellation), "underflow" (the true value is non-zero but below the dtype's range, or
flushed to zero by the caller's flush-denormal flag)."""
FRAME_COLUMNS = ("quantity", "layer", "direction", "t", "norm", "max_abs", "log10_norm", "log10_max_abs",
                 "direct_log10_norm", "exactly_zero", "structurally_zero", "zero_cause", "underflow", "nonfinite",
                 "forward_nonfinite")
"""Columns of `GradientReport.frame`, one row per (quantity, layer, direction, t):
norm, max_abs: L2 norm and largest |value| over batch × units, of the values in the dtype (what autograd gives);
log10_norm, log10_max_abs: log10 of the TRUE norm / largest |value| (finite below or above the dtype's range,
-inf for exact zeros, NaN where the value is undefined: no true size, or computed through inf/NaN forward states,
where autograd's rules still give the number in `norm`); direct_log10_norm: log10 of the norm of what is read at
this step directly (from y, h_n / c_n or the layer above; -inf where nothing is: for the stacked output it equals
log10_norm, for the input it is -inf); exactly_zero: every value is 0 in the dtype; structurally_zero: no graph
path to the target; zero_cause: see ZERO_CAUSES; underflow: zero_cause == "underflow"; nonfinite: some value is
inf/NaN in the dtype; forward_nonfinite: the forward values at this step are inf/NaN."""


@dataclass
class GradientReport:
    """Everything `explain` computed for one config (see the module docstring for shapes)."""

    config: ExplainConfig
    engine: str  # "fused" (fused forward + adjoint recursion) or "twin" (unrolled twin + autograd)
    device: str  # the device the numbers were computed on
    module: nn.Module  # the recurrent module whose parameters define the run
    head: nn.Module | None  # the linear head, when cfg.head == "linear"
    inputs: Tensor  # x [B, T, I]
    output: Tensor  # y [B, T, D*H], as the fused module returned it
    target_value: float  # the scalar target
    stacked_grad: Tensor  # ∂target/∂y [B, T, D*H]: y.retain_grad() semantics (zeros where y is not read)
    input_grad: Tensor  # d target/dx [B, T, I]
    hidden_grad: Tensor  # total d target/d h_t [L, D, B, T, H], original time order for both directions
    cell_grad: Tensor | None  # total d target/d c_t [L, D, B, T, H] for LSTM, else None
    hidden_states: Tensor  # the forward values h_t [L, D, B, T, H] (to spot a forward pass that overflowed)
    grads: dict[str, Tensor]  # ∂target/∂(named tensor) for y, h_n, c_n, out as .retain_grad() gives them
    # (a tensor the target does not use gets zeros here, where .retain_grad() would leave .grad as None)
    stacked_read: Tensor  # bool [B, T, D*H]: elements of y the target reads (directly or via the head)
    hidden_reached: Tensor  # bool [L, D, B, T, H]: h_t elements with a graph path to the target
    cell_reached: Tensor | None  # bool, same for c_t (LSTM)
    input_reached: Tensor  # bool [B, T, I]
    hidden_read: Tensor  # bool [L, D, B, T, H]: h_t elements read directly (by y, h_n or the layer above)
    cell_read: Tensor | None  # bool, c_t elements read directly (c_n), LSTM
    named_read: dict[str, Tensor]  # bool masks of what the target itself reads of y, h_n, c_n, out (its own text)
    hidden_magnitude: Scaled  # hidden_grad rescaled (mantissa [L, D, B, T, H] · 2**exponent [L, D, B, T]): true values
    cell_magnitude: Scaled | None  # cell_grad rescaled (LSTM)
    input_magnitude: Scaled  # input_grad rescaled ([B, T, I], exponent [B, T])
    direct_log10_norm: dict[str, Tensor]  # "hidden_state" / "cell_state" -> [L, D, T]: see FRAME_COLUMNS
    flush_denormal: bool  # whether the computing thread flushed denormals to zero
    _frame: pd.DataFrame | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def frame(self) -> pd.DataFrame:
        """The tidy per-step table (FRAME_COLUMNS; see `build_frame`), built on first use and kept."""
        if self._frame is None:
            self._frame = build_frame(self)
        return self._frame

    def __getstate__(self) -> dict:
        """A pickled report carries its frame (st.cache_data hands out an unpickled copy per hit: built once)."""
        self.frame  # noqa: B018 (builds it)
        return self.__dict__.copy()

    @property
    def stacked_zero_steps(self) -> list[int]:
        """Steps t where y.grad[:, t] is exactly zero everywhere."""
        return [t for t in range(self.output.shape[1]) if not self.stacked_grad[:, t].any()]

    def log10_magnitude(self, quantity: str) -> Tensor:
        """log10 |true gradient| per element (float64), shaped like that quantity's tensor; -inf for exact zeros.

        Finite also where the dtype underflowed to 0 or overflowed to inf (the engine keeps a rescaled copy); NaN
        where no true value exists (computed through forward states that overflowed to inf/NaN).
        """
        if quantity == "stacked_output":
            return torch.log10(self.stacked_grad.double().abs())
        scaled = {"hidden_state": self.hidden_magnitude, "cell_state": self.cell_magnitude,
                  "input": self.input_magnitude}.get(quantity)
        if scaled is None:
            raise KeyError(f"no quantity {quantity!r} in this report (have: "
                           f"{', '.join(q for q in QUANTITIES if q != 'cell_state' or self.cell_grad is not None)})")
        return scaled.log10_abs()

    def unit_frame(self, layer: int, direction: int, batch: int = 0) -> pd.DataFrame:
        """Long table (quantity, t, unit, value, log10_magnitude) of stacked vs hidden (and cell) gradients.

        One heatmap's cells; log10_magnitude is log10 of the true |value| (see `log10_magnitude`).
        """
        cfg = self.config
        hidden = cfg.hidden_size
        if not 0 <= layer < cfg.num_layers or not 0 <= direction < cfg.num_directions:
            raise IndexError(f"no layer {layer} / direction {direction} in this model")
        if not 0 <= batch < cfg.batch_size:
            raise IndexError(f"batch item {batch} is out of range (batch_size {cfg.batch_size})")
        blocks = {"hidden_state": (self.hidden_grad[layer, direction, batch],
                                   self.hidden_magnitude.log10_abs()[layer, direction, batch])}
        if self.cell_grad is not None and self.cell_magnitude is not None:
            blocks["cell_state"] = (self.cell_grad[layer, direction, batch],
                                    self.cell_magnitude.log10_abs()[layer, direction, batch])
        if layer == cfg.num_layers - 1:
            stacked = self.stacked_grad[batch, :, direction * hidden:(direction + 1) * hidden]
            blocks = {"stacked_output": (stacked, torch.log10(stacked.double().abs())), **blocks}
        frames = []
        for quantity, (values, magnitude) in blocks.items():
            steps, units = values.shape
            frames.append(pd.DataFrame({
                "quantity": quantity,
                "t": torch.arange(steps).repeat_interleave(units).numpy(),
                "unit": torch.arange(units).repeat(steps).numpy(),
                "value": values.double().reshape(-1).numpy(),
                "log10_magnitude": magnitude.reshape(-1).numpy(),
            }))
        return pd.concat(frames, ignore_index=True)

    def facts(self) -> list:
        """The verdict's claims as structured `verdict.Fact`s (what, where, which steps, which cause, numbers)."""
        from .verdict import facts

        return facts(self)

    def verdict(self) -> str:
        """A plain-language explanation of THIS report's numbers (markdown), rendered from `facts()`."""
        from .verdict import render

        return render(self.facts())


GroupInputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]
"""One group of N blocks: gradients [N, B, T, K] in the dtype, structural masks [N, B, T, K], rescaled true values
(mantissa [N, B, T, K], exponent [N, B, T]), the log10 norm of what is read directly per step ([N, T], or None: equal
to the total) and the forward values [N, B, T, K] (or None)."""


def _group_stats(groups: dict[str, GroupInputs]) -> dict[str, dict[str, np.ndarray]]:
    """Per-step statistics ([N, T] arrays) of every group (all of one batch and length). The passes over each
    group's big tensors run in torch; what they leave ([N, B, T] and smaller) is joined across groups, so numpy's
    small-array steps run once for all."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    reductions: dict[str, dict[str, np.ndarray]] = {}
    for name, (grad, reached, mantissa, exponent, _direct, forward) in groups.items():
        if grad.numel() == 0:
            stats[name] = _empty_stats(*grad.shape[:3:2])
        else:
            reductions[name] = _group_reductions(grad, reached, mantissa, exponent, forward)
    if reductions:
        joined = _step_stats({key: np.concatenate([r[key] for r in reductions.values()])
                              for key in next(iter(reductions.values()))})
        start = 0
        for name, reduced in reductions.items():
            rows = slice(start, start + len(reduced["structural"]))
            start = rows.stop
            stats[name] = {key: values[rows] for key, values in joined.items()}
            direct = groups[name][4]
            stats[name]["direct_log10_norm"] = (stats[name]["log10_norm"] if direct is None else
                                                direct.double().numpy())
    return stats


def _empty_stats(blocks: int, steps: int) -> dict[str, np.ndarray]:
    """The statistics of blocks without elements (no unit, or no batch item): nothing there is reached."""
    zeros = np.zeros((blocks, steps))
    flags = np.zeros((blocks, steps), dtype=bool)
    minus_inf = np.full((blocks, steps), -np.inf)
    return {"norm": zeros, "max_abs": zeros, "log10_norm": minus_inf, "log10_max_abs": minus_inf,
            "direct_log10_norm": minus_inf, "exactly_zero": ~flags, "structurally_zero": ~flags,
            "zero_cause": np.full((blocks, steps), "structural", dtype=object), "underflow": flags,
            "nonfinite": flags, "forward_nonfinite": flags}


def _group_reductions(grad: Tensor, reached: Tensor, mantissa: Tensor, exponent: Tensor,
                      forward: Tensor | None) -> dict[str, np.ndarray]:
    """The passes over one group's big tensors (see GroupInputs), over units (the contiguous last axis) first:
    [N, B, T] per-row maxima and norms, exponents, and [N, T] structural / forward-non-finite flags."""
    blocks, _, steps, _ = grad.shape
    if forward is None or bool(torch.isfinite(forward.sum())):  # inf/NaN anywhere makes the sum inf/NaN
        forward_nonfinite = np.zeros((blocks, steps), dtype=bool)
    else:
        forward_nonfinite = (~torch.isfinite(forward).all(dim=3).all(dim=1)).numpy()
    grad_max_t = row_max_abs(grad)
    grad_max = grad_max_t.double().numpy()  # NaN/inf iff non-finite there
    unit_norm_t = torch.linalg.vector_norm(grad, dim=3, dtype=torch.float64)
    if grad.dtype == torch.float64 and bool(torch.isinf(unit_norm_t).any()):  # squares past float64's range?
        over = torch.isinf(unit_norm_t) & torch.isfinite(grad_max_t)  # finite values: rescale by the row's max
        if bool(over.any()):
            scale = grad_max_t[over].unsqueeze(-1)
            unit_norm_t[over] = scale[:, 0] * torch.linalg.vector_norm(grad[over] / scale, dim=-1)
    unit_norm = unit_norm_t.numpy()
    # norms accumulate in float64 (a float32 sum of squares is off in the 8th digit: log10 of a norm of exactly 8)
    if mantissa is grad:  # the values are their own true magnitudes (exponent 0): the same reductions
        mantissa_norm, mantissa_max = unit_norm, grad_max
    else:
        mantissa_norm = torch.linalg.vector_norm(mantissa, dim=-1, dtype=torch.float64).numpy()
        mantissa_max = row_max_abs(mantissa).double().numpy()
    return {
        "grad_max": grad_max,
        "unit_norm": unit_norm,
        "mantissa_norm": mantissa_norm,
        "mantissa_max": mantissa_max,
        "exponent": exponent.numpy(),
        "structural": ~_reached_per_step(reached),
        "forward_nonfinite": forward_nonfinite,
    }


def _reached_per_step(reached: Tensor) -> np.ndarray:
    """[N, T]: does any element of block n at step t reach the target (reached: bool [N, B, T, K])? Read as 64-bit
    words of 8 flags where the layout allows (a word is non-zero iff one of its bytes is: 5x faster than bytes)."""
    units = reached.shape[-1]
    if units and units % 8 == 0 and reached.is_contiguous() and reached.storage_offset() % 8 == 0:
        words = reached.view(torch.uint8).view(torch.int64)  # [N, B, T, K / 8]; each word >= 0 (bytes are 0 or 1)
        return words.amax(dim=(1, 3)).numpy() > 0
    return reached.view(torch.uint8).amax(dim=3).amax(dim=1).numpy() > 0  # (10x faster than .any())


def _step_stats(reduced: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The frame's statistics ([N, T]) from `_group_reductions`' arrays (numpy: small arrays)."""
    structural = reduced["structural"]
    max_abs = reduced["grad_max"].max(axis=1)
    exactly_zero = max_abs == 0
    unit_norm, exponents = reduced["unit_norm"], reduced["exponent"]
    log10_norm = _log10_norm_over_batch(reduced["mantissa_norm"], exponents)
    with np.errstate(divide="ignore"):
        log10_max_abs = (np.log10(reduced["mantissa_max"]) + exponents * LOG10_2).max(axis=1)
    true_zero = log10_norm == -np.inf
    underflow = exactly_zero & ~structural & ~true_zero
    zero = exactly_zero & true_zero
    cause = np.where(structural, "structural", np.where(zero, "zero_on_path",
                                                        np.where(underflow, "underflow", ""))).astype(object)
    with np.errstate(over="ignore"):
        norm = np.sqrt(np.sum(unit_norm * unit_norm, axis=1))  # the norm over units, then over the batch
    overflowed = np.isinf(norm) & np.isfinite(unit_norm).all(axis=1)  # float64 rows whose squares overflow
    if overflowed.any():
        norm[overflowed] = np.hypot.reduce(unit_norm.transpose(0, 2, 1)[overflowed], axis=1)
    return {
        "norm": norm,
        "max_abs": max_abs,
        "log10_norm": log10_norm,
        "log10_max_abs": log10_max_abs,
        "exactly_zero": exactly_zero,
        "structurally_zero": structural,
        "zero_cause": cause,
        "underflow": underflow,
        "nonfinite": ~np.isfinite(max_abs),
        "forward_nonfinite": reduced["forward_nonfinite"],
    }


def _log10_norm_over_batch(row_norm: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """log10 of the norm over the batch axis of rows with norms row_norm · 2**exponent ([N, B, T] each) -> [N, T]:
    each (block, step) scaled by its largest power of two (exact), so nothing under- or overflows; -inf where every
    row is zero, inf / NaN where a row is."""
    live = row_norm != 0
    exponent = np.where(live, exponent.astype(np.int64), ZERO_ROW)
    top = np.max(exponent + np.frexp(row_norm)[1], axis=1, keepdims=True)  # the largest row's binary exponent
    scaled = np.ldexp(row_norm, np.clip(exponent - top, -2000, 2000).astype(np.int32))  # <= 1: no overflow
    with np.errstate(divide="ignore"):
        return np.log10(np.sqrt(np.sum(scaled * scaled, axis=1))) + top[:, 0] * LOG10_2


def _by_direction(values: Tensor, num_dirs: int) -> Tensor:
    """[B, T, D*H] -> [D, B, T, H] (a view: one block per direction)."""
    batch, steps, width = values.shape
    return values.view(batch, steps, num_dirs, width // num_dirs).permute(2, 0, 1, 3)


def build_frame(report: GradientReport, quantities: tuple[str, ...] = QUANTITIES) -> pd.DataFrame:
    """One row per (quantity, layer, direction, t): norms in the dtype, true log10 norms, zero causes, flags.

    Rows come block by block: the stacked output (per direction), then per layer and direction dL/dh_t (and dL/dc_t),
    then the input. The statistics of all blocks of one quantity are computed together (one reduction each).
    `quantities` keeps only those rows (the others are not computed): `report.frame` has them all.
    """
    return tidy_frame(frame_columns(report, quantities))


@functools.cache
def _arrow_str_dtype() -> pd.api.extensions.ExtensionDtype | None:
    """pandas' default string dtype when pyarrow backs it (pandas 3 with pyarrow installed, as Streamlit requires),
    else None (looked up on first use, not at import)."""
    dtype = pd.DataFrame({"s": np.array(["s"], dtype=object)})["s"].dtype
    return dtype if getattr(dtype, "storage", None) == "pyarrow" else None


def tidy_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """pd.DataFrame(columns), the same table, built faster: object columns holding only str become pandas' default
    string arrays straight from pyarrow (pandas' own conversion checks element by element: ~0.1 ms a column, most of
    a small frame's cost; other object columns are left to pandas), and the fresh arrays are not copied again."""
    str_dtype = _arrow_str_dtype()
    if str_dtype is None:
        return pd.DataFrame(columns)
    import pyarrow as pa
    from pandas.arrays import ArrowStringArray

    converted = {}
    for name, values in columns.items():
        if isinstance(values, np.ndarray) and values.dtype == object:
            try:
                strings = pa.array(values, type=pa.large_string())
            except (pa.ArrowException, TypeError):  # not all str: pandas' own inference, as before
                strings = None
            if strings is not None and not strings.null_count:
                values = ArrowStringArray(strings, dtype=str_dtype)
        converted[name] = values
    return pd.DataFrame(converted, copy=False)


def frame_columns(report: GradientReport, quantities: tuple[str, ...] = QUANTITIES) -> dict[str, np.ndarray]:
    """`build_frame`'s columns (FRAME_COLUMNS) as arrays, before any DataFrame is made: many reports' columns
    concatenate into one table at the cost of one DataFrame (training snapshots)."""
    cfg = report.config
    layers, num_dirs, steps = cfg.num_layers, cfg.num_directions, cfg.seq_len
    stacks = layers * num_dirs
    batch = report.stacked_grad.shape[0]
    stacked = _by_direction(report.stacked_grad, num_dirs)
    states = report.hidden_states.reshape(stacks, batch, steps, -1)
    groups: dict[str, GroupInputs] = {}
    if "stacked_output" in quantities:
        groups["stacked_output"] = (stacked, _by_direction(report.stacked_read, num_dirs), stacked,
                                    torch.zeros(stacked.shape[:3], dtype=torch.int32), None,
                                    _by_direction(report.output, num_dirs))
    for quantity, grad, reached, magnitude in (
            ("hidden_state", report.hidden_grad, report.hidden_reached, report.hidden_magnitude),
            ("cell_state", report.cell_grad, report.cell_reached, report.cell_magnitude)):
        if grad is None or reached is None or magnitude is None or quantity not in quantities:
            continue
        shape = (stacks, batch, steps, -1)
        groups[quantity] = (grad.reshape(shape), reached.reshape(shape), magnitude.mantissa.reshape(shape),
                            magnitude.exponent.reshape(shape[:3]),
                            report.direct_log10_norm[quantity].reshape(stacks, steps), states)
    if "input" in quantities:
        groups["input"] = (report.input_grad[None], report.input_reached[None], report.input_magnitude.mantissa[None],
                           report.input_magnitude.exponent[None],
                           torch.full((1, steps), -math.inf, dtype=torch.float64), None)
    stats = _group_stats(groups)
    # The frame's block order: (quantity, row of that quantity's [N, T] arrays, layer, direction).
    order = [("stacked_output", d, layers - 1, d) for d in range(num_dirs)]
    for layer in range(layers):
        for d in range(num_dirs):
            order += [(q, layer * num_dirs + d, layer, d) for q in ("hidden_state", "cell_state")]
    order.append(("input", 0, 0, None))
    order = [block for block in order if block[0] in stats]
    if not order:
        return {name: np.array([]) for name in FRAME_COLUMNS}
    columns: dict[str, np.ndarray] = {
        "quantity": np.repeat(np.array([q for q, *_ in order], dtype=object), steps),
        "layer": np.repeat(np.array([layer for *_, layer, _ in order], dtype=np.int64), steps),
        "direction": np.repeat(np.array([DIRECTIONS[d] if d is not None else "n/a" for *_, d in order],
                                        dtype=object), steps),
        "t": np.tile(np.arange(steps), len(order)),
    }
    for name in FRAME_COLUMNS[4:]:
        columns[name] = np.concatenate([stats[q][name][row] for q, row, *_ in order])
    return columns
