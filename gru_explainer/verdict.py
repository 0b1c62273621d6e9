"""The verdict: a plain-language explanation computed from one report's numbers (markdown).

It answers the seed's two questions for THIS config: why is y.grad zero at some steps although gradient
flows back through time, and when do we get zero versus non-zero gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import GradientReport


def format_steps(steps: list[int]) -> str:
    """Compress sorted step indices into ranges: [0, 1, 2, 5, 7, 8] -> 't = 0–2, 5, 7–8'."""
    if not steps:
        return "no step"
    parts, start, prev = [], steps[0], steps[0]
    for t in [*steps[1:], None]:
        if t is not None and t == prev + 1:
            prev = t
            continue
        parts.append(f"{start}" if start == prev else f"{start}–{prev}")
        if t is not None:
            start = prev = t
    return "t = " + ", ".join(parts)


def _steps(frame, **where) -> list[int]:
    mask = True
    for column, value in where.items():
        mask = mask & (frame[column] == value)
    return sorted(int(t) for t in frame.loc[mask, "t"].unique())


def verdict(report: GradientReport) -> str:
    """Explain, in words and from the numbers, where the gradient of the target went."""
    cfg, frame = report.config, report.frame
    steps = cfg.seq_len
    directions = "bidirectional" if cfg.bidirectional else "unidirectional"
    lines: list[str] = [f"**Target** `{cfg.target}` = {report.target_value:.6g} ({cfg.cell.upper()}, "
                        f"{cfg.num_layers} layer(s), {directions}, T = {steps}, on {report.device})."]

    stacked = frame[frame.quantity == "stacked_output"].groupby("t").agg(
        zero=("exactly_zero", "all"), structural=("structurally_zero", "all"))
    zero_t = [int(t) for t in stacked.index[stacked.zero]]
    read_t = [int(t) for t in stacked.index[~stacked.structural]]
    nonzero_t = [int(t) for t in stacked.index[~stacked.zero]]
    lines.append(
        f"- **y.grad** (∂target/∂y, what `y.retain_grad()` shows) is non-zero at {format_steps(nonzero_t)} and "
        f"exactly zero at {format_steps(zero_t)} ({len(zero_t)} of {steps} steps). The target reads y directly "
        f"only at {format_steps(read_t)}. `y` is a *new* tensor that stacks the hidden states after the "
        "recurrence ran; no later step reads it, so its gradient is the direct (partial) derivative only.")

    hidden = frame[frame.quantity == "hidden_state"]
    for (layer, direction), rows in hidden.groupby(["layer", "direction"], sort=True):
        carried = _steps(rows, exactly_zero=False)
        structural = _steps(rows, structurally_zero=True)
        text = (f"- **h_t, layer {layer} {direction}**: the total derivative dL/dh_t is non-zero at "
                f"{format_steps(carried)}")
        if structural:
            why = ("they come after the last step the target reads (causality: h_t only influences later steps)"
                   if direction == "forward" else
                   "the reverse direction runs from t = T−1 down to 0, so a state before the read step only "
                   "influences earlier steps")
            text += f"; structurally zero at {format_steps(structural)}: {why}"
        lines.append(text + ".")
    if len(hidden) and not (hidden.exactly_zero & ~hidden.structurally_zero).all():
        lines.append("- These per-step states are what the recurrence really reads (h_t feeds both y and "
                     "step t+1), so they carry dL/dh_t = ∂L/∂y_t + (∂h_{t+1}/∂h_t)ᵀ dL/dh_{t+1}. Fused modules "
                     "(nn.GRU, nn.LSTM, cuDNN) never expose them; this tool recomputes them.")

    under = frame[frame.underflow]
    if len(under):
        where = ", ".join(sorted({f"{q.replace('_', ' ')}" for q in under.quantity}))
        lines.append(f"- **Underflow**: {len(under)} (quantity, layer, step) rows are exactly zero although a graph "
                     f"path to the target exists ({where}): the gradient vanished below the {cfg.dtype} range "
                     "(or the target multiplies it by zero). These are numeric zeros, not structural ones.")
    overflow = _steps(frame[frame.quantity != "input"], forward_nonfinite=True)
    if overflow:
        lines.append(f"- **The forward pass overflowed** (inf/NaN states) at {format_steps(overflow)}: gradients "
                     "through those states are undefined; the numbers shown are what autograd's rules give there.")
    bad = frame[frame.nonfinite]
    if len(bad):
        lines.append(f"- **Non-finite**: inf/NaN gradients at {len(bad)} rows (first at "
                     f"{bad.quantity.iloc[0].replace('_', ' ')}, t = {int(bad.t.iloc[0])}): the gradients exploded "
                     f"(weight_scale = {cfg.weight_scale:g}). Nothing was clipped; the charts mark these values.")

    inputs = frame[frame.quantity == "input"]
    matters = _steps(inputs, structurally_zero=False)
    ignored = _steps(inputs, structurally_zero=True)
    text = f"- **Inputs**: the target depends on x at {format_steps(matters)}"
    if ignored:
        text += f"; x at {format_steps(ignored)} cannot matter, so its gradient is exactly zero"
    lines.append(text + ".")

    if "out" in report.grads:
        out_grad = report.grads["out"]
        zero_features = [int(f) for f in range(out_grad.shape[1]) if not out_grad[:, f].any()]
        lines.append(
            f"- **Head**: `out` has shape [B, {cfg.head_size}, 1]: axis 1 holds the head's {cfg.head_size} "
            "features, not time (the head reads only y[:, -1]). "
            + (f"out.grad is zero for features {', '.join(map(str, zero_features))} because the target does "
               "not read them — that is the zero the seed's MyModel shows, and it says nothing about time."
               if zero_features else "The target reads every feature of out."))

    lines.append(
        "- **When is a gradient zero?** Exactly when there is no path from the tensor to the target: an output "
        "slice the target does not read (y.grad), a state after the read step or in the reverse direction "
        "before it (causality), or an input that cannot matter. A numeric zero on a real path is underflow.")
    return "\n".join(lines)
