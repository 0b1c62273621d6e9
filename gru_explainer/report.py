"""`GradientReport`: the tensors of one explanation, a tidy DataFrame for charts, and a verdict in words.

All tensors are detached, batch-first and on the CPU. Shapes: B batch, T steps, I input size, H hidden size,
L layers, D directions (2 if bidirectional).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn

from .config import ExplainConfig

QUANTITIES = ("stacked_output", "hidden_state", "cell_state", "input")
DIRECTIONS = ("forward", "reverse")
FRAME_COLUMNS = ("quantity", "layer", "direction", "t", "norm", "max_abs", "exactly_zero",
                 "structurally_zero", "underflow", "nonfinite", "forward_nonfinite")


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
    frame: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.frame = build_frame(self)

    @property
    def stacked_zero_steps(self) -> list[int]:
        """Steps t where y.grad[:, t] is exactly zero everywhere."""
        return [t for t in range(self.output.shape[1]) if not self.stacked_grad[:, t].any()]

    def unit_frame(self, layer: int, direction: int, batch: int = 0) -> pd.DataFrame:
        """Long table (quantity, t, unit, value) of stacked vs hidden (and cell) gradients for one heatmap."""
        cfg = self.config
        hidden = cfg.hidden_size
        if not 0 <= layer < cfg.num_layers or not 0 <= direction < cfg.num_directions:
            raise IndexError(f"no layer {layer} / direction {direction} in this model")
        if not 0 <= batch < cfg.batch_size:
            raise IndexError(f"batch item {batch} is out of range (batch_size {cfg.batch_size})")
        blocks = {"hidden_state": self.hidden_grad[layer, direction, batch]}
        if self.cell_grad is not None:
            blocks["cell_state"] = self.cell_grad[layer, direction, batch]
        if layer == cfg.num_layers - 1:
            blocks = {"stacked_output": self.stacked_grad[batch, :, direction * hidden:(direction + 1) * hidden],
                      **blocks}
        frames = []
        for quantity, values in blocks.items():
            steps, units = values.shape
            frames.append(pd.DataFrame({
                "quantity": quantity,
                "t": torch.arange(steps).repeat_interleave(units).numpy(),
                "unit": torch.arange(units).repeat(steps).numpy(),
                "value": values.double().reshape(-1).numpy(),
            }))
        return pd.concat(frames, ignore_index=True)

    def verdict(self) -> str:
        """A plain-language explanation of THIS report's numbers (markdown)."""
        from .verdict import verdict

        return verdict(self)


def _step_stats(grad: Tensor, reached: Tensor, values_fwd: Tensor | None) -> dict[str, Tensor]:
    """Per-step statistics of a [B, T, K] gradient, its structural mask and the forward values it belongs to."""
    steps = grad.shape[1]
    if grad.numel() == 0:
        zeros = torch.zeros(steps, dtype=torch.float64)
        flags = torch.zeros(steps, dtype=torch.bool)
        return {"norm": zeros, "max_abs": zeros, "exactly_zero": ~flags, "structurally_zero": ~flags,
                "underflow": flags, "nonfinite": flags, "forward_nonfinite": flags}
    max_abs = grad.abs().amax(dim=(0, 2)).double()  # NaN or inf here iff the step holds a non-finite value
    exactly_zero = torch.count_nonzero(grad, dim=(0, 2)) == 0
    structurally_zero = ~reached.any(dim=2).any(dim=0)
    forward_nonfinite = (torch.zeros(steps, dtype=torch.bool) if values_fwd is None
                         else ~torch.isfinite(values_fwd.abs().amax(dim=(0, 2))))
    return {
        "norm": torch.linalg.vector_norm(grad, ord=2, dim=(0, 2), dtype=torch.float64),
        "max_abs": max_abs,
        "exactly_zero": exactly_zero,
        "structurally_zero": structurally_zero,
        "underflow": exactly_zero & ~structurally_zero,
        "nonfinite": ~torch.isfinite(max_abs),
        "forward_nonfinite": forward_nonfinite,
    }


def build_frame(report: GradientReport) -> pd.DataFrame:
    """One row per (quantity, layer, direction, t) with norm, max_abs and the zero / non-finite flags."""
    cfg = report.config
    hidden, num_dirs, last = cfg.hidden_size, cfg.num_directions, cfg.num_layers - 1
    blocks: list[tuple[str, int, str, Tensor, Tensor, Tensor | None]] = []
    for d in range(num_dirs):
        cols = slice(d * hidden, (d + 1) * hidden)
        blocks.append(("stacked_output", last, DIRECTIONS[d], report.stacked_grad[..., cols],
                       report.stacked_read[..., cols], report.output[..., cols]))
    for layer in range(cfg.num_layers):
        for d in range(num_dirs):
            states = report.hidden_states[layer, d]
            blocks.append(("hidden_state", layer, DIRECTIONS[d], report.hidden_grad[layer, d],
                           report.hidden_reached[layer, d], states))
            if report.cell_grad is not None and report.cell_reached is not None:
                blocks.append(("cell_state", layer, DIRECTIONS[d], report.cell_grad[layer, d],
                               report.cell_reached[layer, d], states))
    blocks.append(("input", 0, "n/a", report.input_grad, report.input_reached, None))
    frames = []
    steps = torch.arange(cfg.seq_len).numpy()
    for quantity, layer, direction, grad, reached, forward in blocks:
        stats = {k: v.numpy() for k, v in _step_stats(grad, reached, forward).items()}
        frames.append(pd.DataFrame({"quantity": quantity, "layer": layer, "direction": direction, "t": steps,
                                    **stats}))
    frame = pd.concat(frames, ignore_index=True)
    return frame[list(FRAME_COLUMNS)]
