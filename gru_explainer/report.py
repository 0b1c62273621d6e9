"""`GradientReport`: the tensors of one explanation, a tidy DataFrame for charts, and a verdict in words.

All tensors are detached, batch-first and on the CPU. Shapes: B batch, T steps, I input size, H hidden size,
L layers, D directions (2 if bidirectional).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .adjoint import Scaled, log10_norm_over, row_max_abs
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
-inf for exact zeros, NaN where the value is undefined); direct_log10_norm: log10 of the norm of what is read at
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
    frame: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.frame = build_frame(self)

    @property
    def stacked_zero_steps(self) -> list[int]:
        """Steps t where y.grad[:, t] is exactly zero everywhere."""
        return [t for t in range(self.output.shape[1]) if not self.stacked_grad[:, t].any()]

    def log10_magnitude(self, quantity: str) -> Tensor:
        """log10 |true gradient| per element (float64), shaped like that quantity's tensor; -inf for exact zeros.

        Finite also where the dtype underflowed to 0 or overflowed to inf (the engine keeps a rescaled copy).
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


def _step_stats(grad: Tensor, reached: Tensor, magnitude: Scaled, direct: Tensor | None,
                values_fwd: Tensor | None) -> dict[str, Tensor]:
    """Per-step statistics of a [B, T, K] gradient, its structural mask, its rescaled true values (exponent [B, T]),
    the log10 norm of what is read directly per step ([T], or None: equal to the total) and the forward values."""
    steps = grad.shape[1]
    if grad.numel() == 0:
        zeros = torch.zeros(steps, dtype=torch.float64)
        flags = torch.zeros(steps, dtype=torch.bool)
        minus_inf = torch.full((steps,), -torch.inf, dtype=torch.float64)
        return {"norm": zeros, "max_abs": zeros, "log10_norm": minus_inf, "log10_max_abs": minus_inf,
                "direct_log10_norm": minus_inf, "exactly_zero": ~flags, "structurally_zero": ~flags,
                "zero_cause": np.full(steps, "structural", dtype=object), "underflow": flags, "nonfinite": flags,
                "forward_nonfinite": flags}
    max_abs = torch.maximum(grad.amax(dim=(0, 2)), -grad.amin(dim=(0, 2))).double()  # NaN/inf iff non-finite there
    exactly_zero = max_abs == 0
    structurally_zero = reached.view(torch.uint8).amax(dim=(0, 2)) == 0  # (10x faster than bool .any() here)
    log10_norm = log10_norm_over(magnitude.log10_row_norm(), dim=0)
    row_max = row_max_abs(magnitude.mantissa).double()
    log10_max_abs = (torch.log10(row_max) + magnitude.exponent.double() * math.log10(2.0)).amax(dim=0)
    true_zero = log10_norm == -math.inf
    underflow = exactly_zero & ~structurally_zero & ~true_zero
    cause = np.where(structurally_zero.numpy(), "structural",
                     np.where((exactly_zero & true_zero).numpy(), "zero_on_path",
                              np.where(underflow.numpy(), "underflow", ""))).astype(object)
    forward_nonfinite = (torch.zeros(steps, dtype=torch.bool) if values_fwd is None
                         else ~torch.isfinite(row_max_abs(values_fwd).amax(dim=0)))
    return {
        # the norm over units, then over the batch (float64): the same norm, several times faster than dim=(0, 2)
        "norm": torch.linalg.vector_norm(torch.linalg.vector_norm(grad, dim=2, dtype=torch.float64), dim=0),
        "max_abs": max_abs,
        "log10_norm": log10_norm,
        "log10_max_abs": log10_max_abs,
        "direct_log10_norm": log10_norm if direct is None else direct,
        "exactly_zero": exactly_zero,
        "structurally_zero": structurally_zero,
        "zero_cause": cause,
        "underflow": underflow,
        "nonfinite": ~torch.isfinite(max_abs),
        "forward_nonfinite": forward_nonfinite,
    }


def build_frame(report: GradientReport) -> pd.DataFrame:
    """One row per (quantity, layer, direction, t): norms in the dtype, true log10 norms, zero causes, flags."""
    cfg = report.config
    hidden, num_dirs, last = cfg.hidden_size, cfg.num_directions, cfg.num_layers - 1
    steps = cfg.seq_len
    blocks: list[tuple[str, int, str, Tensor, Tensor, Scaled, Tensor | None, Tensor | None]] = []
    for d in range(num_dirs):
        cols = slice(d * hidden, (d + 1) * hidden)
        stacked = report.stacked_grad[..., cols]
        blocks.append(("stacked_output", last, DIRECTIONS[d], stacked, report.stacked_read[..., cols],
                       Scaled(stacked, torch.zeros(stacked.shape[:2], dtype=torch.int32)), None,
                       report.output[..., cols]))
    h_mag, c_mag = report.hidden_magnitude, report.cell_magnitude
    for layer in range(cfg.num_layers):
        for d in range(num_dirs):
            states = report.hidden_states[layer, d]
            blocks.append(("hidden_state", layer, DIRECTIONS[d], report.hidden_grad[layer, d],
                           report.hidden_reached[layer, d],
                           Scaled(h_mag.mantissa[layer, d], h_mag.exponent[layer, d]),
                           report.direct_log10_norm["hidden_state"][layer, d], states))
            if report.cell_grad is not None and report.cell_reached is not None and c_mag is not None:
                blocks.append(("cell_state", layer, DIRECTIONS[d], report.cell_grad[layer, d],
                               report.cell_reached[layer, d],
                               Scaled(c_mag.mantissa[layer, d], c_mag.exponent[layer, d]),
                               report.direct_log10_norm["cell_state"][layer, d], states))
    blocks.append(("input", 0, "n/a", report.input_grad, report.input_reached, report.input_magnitude,
                   torch.full((steps,), -math.inf, dtype=torch.float64), None))
    columns: dict[str, list] = {name: [] for name in FRAME_COLUMNS}
    t = np.arange(steps)
    for quantity, layer, direction, grad, reached, magnitude, direct, forward in blocks:
        stats = _step_stats(grad, reached, magnitude, direct, forward)
        columns["quantity"].append(np.full(steps, quantity, dtype=object))
        columns["layer"].append(np.full(steps, layer, dtype=np.int64))
        columns["direction"].append(np.full(steps, direction, dtype=object))
        columns["t"].append(t)
        for name, values in stats.items():
            columns[name].append(values.numpy() if isinstance(values, Tensor) else values)
    return pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})

