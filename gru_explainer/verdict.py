"""The verdict: structured facts computed from one report's numbers, and their rendering in words (markdown).

It answers the seed's two questions for THIS config: why is y.grad zero at some steps although gradient flows back
through time, and when do we get zero versus non-zero gradients. `facts(report)` returns the claims (what, where,
which steps, which cause, which numbers); `render(facts)` only turns them into sentences, so every sentence can be
tested against an independent computation through its fact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .report import GradientReport

STRUCTURAL_CAUSES = {
    "not_read": "the target reads nothing of this layer and direction, nor anything it feeds",
    "after_last_read": "they come after the last step whose state is read (causality: h_t only influences later "
                       "steps)",
    "before_first_read": "the reverse direction runs from t = T−1 down to 0, so a state before the first read step "
                         "only influences earlier steps, which are not read",
    "cell_only": "the target reads the cell state c_t there, not h_t, and h_t only influences steps processed "
                 "after it",
    "no_path": "no graph path leads from them to the target",
}
"""Why a state has no graph path to the target (kind "structural")."""
ZERO_ON_PATH_CAUSES = ("target_constant", "zero_factor", "zero_local_derivative", "from_states")
NONFINITE_CAUSES = ("exploding", "forward_overflow", "nonfinite_target")
QUANTITY_WORDS = {"stacked_output": "y.grad", "hidden_state": "dL/dh_t", "cell_state": "dL/dc_t",
                  "input": "dL/dx_t"}


@dataclass
class Fact:
    """One claim of the verdict: its kind, where it holds (quantity, layer, direction, steps), why, and numbers."""

    kind: str
    quantity: str = ""
    layer: int | None = None
    direction: str | None = None
    steps: tuple[int, ...] = ()
    cause: str = ""
    numbers: dict[str, object] = field(default_factory=dict)


def format_steps(steps) -> str:
    """Compress sorted step indices into ranges: [0, 1, 2, 5, 7, 8] -> 't = 0–2, 5, 7–8'."""
    steps = sorted(int(t) for t in steps)
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


def _steps(rows, mask) -> tuple[int, ...]:
    return tuple(sorted(int(t) for t in rows.loc[mask, "t"]))


def _runs(steps: tuple[int, ...]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive steps as (first, last)."""
    runs: list[tuple[int, int]] = []
    for t in steps:
        if runs and t == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    return runs


def _dtype_range(dtype: str) -> tuple[float, float, float]:
    """(log10 smallest denormal, log10 smallest normal, log10 largest) of a dtype name."""
    info = torch.finfo(getattr(torch, dtype))
    # In logs: float64's smallest denormal (tiny × eps) is itself a denormal, which a flush-to-zero CPU makes 0.
    return math.log10(info.tiny) + math.log10(info.eps), math.log10(info.tiny), math.log10(info.max)


def facts(report: GradientReport) -> list[Fact]:
    """Every claim the verdict makes about this report, computed from its tensors, masks and frame."""
    cfg, frame = report.config, report.frame
    result = [Fact("target", numbers=dict(value=report.target_value, cell=cfg.cell, num_layers=cfg.num_layers,
                                          bidirectional=cfg.bidirectional, seq_len=cfg.seq_len,
                                          device=report.device, dtype=cfg.dtype, target=cfg.target))]
    constant = _target_is_constant(report)
    result.append(_stacked_fact(report))
    for quantity in ("hidden_state", "cell_state"):
        rows = frame[frame.quantity == quantity]
        for (layer, direction), group in rows.groupby(["layer", "direction"], sort=True):
            result += _state_facts(report, quantity, int(layer), str(direction), group, constant)
    result += _zero_on_path_facts(report, frame[frame.quantity.isin(["stacked_output", "input"])], constant)
    result += _underflow_facts(report)
    result += _nonfinite_facts(report)
    result.append(_input_fact(report))
    if "out" in report.grads:
        result.append(_head_fact(report))
    if (frame[frame.quantity == "hidden_state"].log10_norm != -math.inf).any():
        result.append(Fact("recurrence", cause="graph_nodes" if cfg.cell == "answer_gru" else "fused",
                           numbers=dict(num_layers=cfg.num_layers)))
    causes = frame.zero_cause.value_counts()
    result.append(Fact("rule", numbers={c: int(causes.get(c, 0)) for c in ("structural", "zero_on_path", "underflow")}
                       | dict(dtype=cfg.dtype)))
    return result


def _target_is_constant(report: GradientReport) -> bool:
    """The target reads something, yet its derivative w.r.t. everything it reads is exactly 0 (e.g. a − a)."""
    reads_something = any(bool(mask.any()) for mask in report.named_read.values())
    return reads_something and all(not bool(grad.any()) for grad in report.grads.values())


def _stacked_fact(report: GradientReport) -> Fact:
    cfg, frame = report.config, report.frame
    rows = frame[frame.quantity == "stacked_output"].groupby("t").agg(zero=("exactly_zero", "all"))
    y_read = report.named_read["y"]
    direct_steps = tuple(int(t) for t in torch.nonzero(y_read.any(dim=(0, 2))).flatten())
    head_steps = (cfg.seq_len - 1,) if "out" in report.named_read and bool(report.named_read["out"].any()) else ()
    return Fact("stacked_output", quantity="stacked_output", layer=cfg.num_layers - 1,
                steps=tuple(int(t) for t in rows.index[~rows.zero]),
                numbers=dict(zero_steps=tuple(int(t) for t in rows.index[rows.zero]), read_steps=direct_steps,
                             head_steps=head_steps, seq_len=cfg.seq_len,
                             names=tuple(sorted(n for n, m in report.named_read.items() if bool(m.any())))))


def _state_facts(report: GradientReport, quantity: str, layer: int, direction: str, rows, constant: bool) -> list:
    d = 0 if direction == "forward" else 1
    read_h = report.hidden_read[layer, d].any(dim=(0, 2))  # [T]
    read_c = report.cell_read[layer, d].any(dim=(0, 2)) if report.cell_read is not None else torch.zeros_like(read_h)
    read_any = [int(t) for t in torch.nonzero(read_h | read_c).flatten()]
    where = dict(quantity=quantity, layer=layer, direction=direction)
    # (Carried: not exactly zero. A row without a true size, NaN, is still no zero: it is inf/NaN or a number.)
    out = [Fact("carried", steps=_steps(rows, rows.log10_norm != -math.inf), numbers=dict(read_steps=tuple(read_any)),
                **where)]
    structural = _steps(rows, rows.structurally_zero)
    if structural:
        if not read_any:
            groups = {"not_read": structural}
        else:
            edge = max(read_any) if d == 0 else min(read_any)
            beyond = tuple(t for t in structural if (t > edge if d == 0 else t < edge))
            at_edge = tuple(t for t in structural if t == edge and quantity == "hidden_state" and not read_h[t])
            other = tuple(t for t in structural if t not in beyond and t not in at_edge)
            groups = {"after_last_read" if d == 0 else "before_first_read": beyond, "cell_only": at_edge,
                      "no_path": other}
        for cause, steps in groups.items():
            if steps:
                edge_key = "last_read" if cause == "after_last_read" else "first_read"
                numbers = {edge_key: (max(read_any) if d == 0 else min(read_any))} if read_any else {}
                out.append(Fact("structural", steps=steps, cause=cause, numbers=numbers, **where))
    out += _zero_on_path_facts(report, rows, constant)
    return out


def _zero_on_path_facts(report: GradientReport, rows, constant: bool) -> list[Fact]:
    """One fact per (quantity, layer, direction, cause) of rows that are exactly 0 although a path exists."""
    cfg = report.config
    out: list[Fact] = []
    for (quantity, layer, direction), group in rows.groupby(["quantity", "layer", "direction"], sort=True):
        steps = _steps(group, group.zero_cause == "zero_on_path")
        if not steps:
            continue
        where = dict(quantity=str(quantity), layer=int(layer), direction=str(direction))
        if constant:
            out.append(Fact("zero_on_path", steps=steps, cause="target_constant", **where))
            continue
        if quantity == "stacked_output":
            out.append(Fact("zero_on_path", steps=steps, cause="zero_factor", **where))
            continue
        if quantity == "input":
            out.append(Fact("zero_on_path", steps=steps, cause="from_states", **where))
            continue
        # A run of zero steps ends (in the backward pass) where a step's local derivative is exactly zero, or the
        # run starts at a read whose derivative is exactly zero (a zero factor).
        d = 0 if direction == "forward" else 1
        nonzero = set(_steps(group, group.log10_norm != -math.inf))  # (NaN: no true size, but not a zero)
        blocked, factor = [], []
        for first, last in _runs(steps):
            block = last + 1 if d == 0 else first - 1
            run = tuple(range(first, last + 1))
            if block in nonzero:
                states = report.hidden_states[int(layer), d, :, block]
                dead = cfg.cell == "rnn_relu" and bool((states <= 0).all())
                blocked.append((run, block, dead))
            else:
                factor += run
        for run, block, dead in blocked:
            out.append(Fact("zero_on_path", steps=run, cause="zero_local_derivative",
                            numbers=dict(blocked_at=block, dead_relu=dead), **where))
        if factor:
            out.append(Fact("zero_on_path", steps=tuple(factor), cause="zero_factor", **where))
    return out


def _underflow_facts(report: GradientReport) -> list[Fact]:
    cfg, frame = report.config, report.frame
    denormal, normal, _ = _dtype_range(cfg.dtype)
    out = []
    for quantity in ("stacked_output", "hidden_state", "cell_state", "input"):
        rows = frame[(frame.quantity == quantity) & frame.underflow]
        if rows.empty:
            continue
        flushed = rows[rows.log10_max_abs >= denormal]  # a denormal could have held the largest value: a flush did it
        out.append(Fact("underflow", quantity=quantity, steps=tuple(sorted(set(int(t) for t in rows.t))),
                        cause="flushed" if len(flushed) == len(rows) else "below_range",
                        numbers=dict(rows=len(rows), min_log10_norm=float(rows.log10_norm.min()),
                                     dtype=cfg.dtype, flush_denormal=report.flush_denormal,
                                     flushed_rows=len(flushed), log10_smallest=denormal, log10_normal=normal)))
    return out


def _nonfinite_facts(report: GradientReport) -> list[Fact]:
    cfg, frame = report.config, report.frame
    _, _, largest = _dtype_range(cfg.dtype)
    out = []
    forward = frame[(frame.quantity != "input") & frame.forward_nonfinite]
    if not forward.empty:
        out.append(Fact("forward_overflow", steps=tuple(sorted(set(int(t) for t in forward.t)))))
    target_bad = any(not bool(torch.isfinite(g).all()) for g in report.grads.values())
    for quantity in ("stacked_output", "hidden_state", "cell_state", "input"):
        rows = frame[(frame.quantity == quantity) & frame.nonfinite]
        if rows.empty:
            continue
        parts = [(rows, None)]
        if not target_bad and not forward.empty:  # rows computed through the inf/NaN states have no true size
            undefined = np.isnan(rows.log10_norm.to_numpy(dtype=float))
            parts = [(rows[~undefined], None), (rows[undefined], "forward_overflow")]
        for part, known in parts:
            if part.empty:
                continue
            true = part.log10_norm.to_numpy(dtype=float)
            beyond = np.isfinite(true) & (true > largest)
            cause = known or ("nonfinite_target" if target_bad else "exploding" if beyond.any() or forward.empty
                              else "forward_overflow")
            out.append(Fact("nonfinite", quantity=quantity, steps=tuple(sorted(set(int(t) for t in part.t))),
                            cause=cause, numbers=dict(rows=len(part), max_log10_norm=float(np.nanmax(true))
                                                      if np.isfinite(true).any() else math.nan,
                                                      log10_largest=largest, dtype=cfg.dtype,
                                                      weight_scale=cfg.weight_scale)))
    return out


def _input_fact(report: GradientReport) -> Fact:
    rows = report.frame[report.frame.quantity == "input"]
    return Fact("inputs", quantity="input", steps=_steps(rows, ~rows.structurally_zero),
                numbers=dict(cannot_matter=_steps(rows, rows.structurally_zero)))


def _head_fact(report: GradientReport) -> Fact:
    cfg = report.config
    out_grad, out_read = report.grads["out"], report.named_read["out"]
    features = range(out_grad.shape[1])
    read = tuple(f for f in features if bool(out_read[:, f].any()))
    zero = tuple(f for f in features if not bool(out_grad[:, f].any()))
    not_read = tuple(f for f in zero if f not in read)
    zero_read = tuple(f for f in zero if f in read)
    mymodel = not_read == tuple(range(cfg.head_size - 1)) and read == (cfg.head_size - 1,) and not zero_read
    return Fact("head", quantity="out", numbers=dict(head_size=cfg.head_size, read=read, zero_not_read=not_read,
                                                     zero_read=zero_read, seed_mymodel_pattern=mymodel))


# --- Rendering ------------------------------------------------------------------------------------------------------


def _features(values) -> str:
    return ", ".join(map(str, values))


def _e(log10: float) -> str:
    """10**log10 as a short number, also far outside float64 (1e-90, 3.2e+60)."""
    if not math.isfinite(log10):
        return "0" if log10 < 0 else "inf"
    exponent = math.floor(log10)
    mantissa = float(f"{10 ** (log10 - exponent):.2g}")
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:g}e{exponent}"


def _where(fact: Fact) -> str:
    if fact.quantity in ("hidden_state", "cell_state"):
        return f"layer {fact.layer} {fact.direction}"
    return ""


def render(items: list[Fact]) -> str:
    """The verdict in markdown: one line per fact (or group of facts), nothing that is not in the facts."""
    lines: list[str] = []
    by_kind: dict[str, list[Fact]] = {}
    for fact in items:
        by_kind.setdefault(fact.kind, []).append(fact)
    head = by_kind.get("target", [None])[0]
    if head is not None:
        n = head.numbers
        directions = "bidirectional" if n["bidirectional"] else "unidirectional"
        lines.append(f"**Target** `{n['target']}` = {n['value']:.6g} ({str(n['cell']).upper()}, {n['num_layers']} "
                     f"layer(s), {directions}, T = {n['seq_len']}, {n['dtype']}, on {n['device']}).")
    for fact in by_kind.get("stacked_output", []):
        lines.append(_render_stacked(fact))
    state_lines: dict[tuple, list[Fact]] = {}
    for fact in items:
        if fact.quantity in ("hidden_state", "cell_state") and fact.kind in ("carried", "structural", "zero_on_path"):
            state_lines.setdefault((fact.quantity, fact.layer, fact.direction), []).append(fact)
    for (quantity, layer, direction), group in state_lines.items():
        lines.append(_render_state(quantity, layer, direction, group))
    for fact in by_kind.get("zero_on_path", []):
        if fact.quantity in ("stacked_output", "input"):
            lines.append(_render_zero_on_path(fact))
    for fact in by_kind.get("recurrence", []):
        lines.append(_render_recurrence(fact))
    for fact in by_kind.get("underflow", []):
        lines.append(_render_underflow(fact))
    for fact in by_kind.get("forward_overflow", []):
        lines.append(f"- **The forward pass overflowed** (inf/NaN states) at {format_steps(fact.steps)}: gradients "
                     "computed through those states are undefined. The numbers shown are what autograd's rules give "
                     "there; no true size is claimed for them.")
    for fact in by_kind.get("nonfinite", []):
        lines.append(_render_nonfinite(fact))
    for fact in by_kind.get("inputs", []):
        text = f"- **Inputs**: the target depends on x at {format_steps(fact.steps)}"
        if fact.numbers["cannot_matter"]:
            text += (f"; x at {format_steps(fact.numbers['cannot_matter'])} cannot matter (no path), so its gradient "
                     "is exactly zero")
        lines.append(text + ".")
    for fact in by_kind.get("head", []):
        lines.append(_render_head(fact))
    for fact in by_kind.get("rule", []):
        lines.append(_render_rule(fact))
    return "\n".join(lines)


def _render_stacked(fact: Fact) -> str:
    n = fact.numbers
    zero = n["zero_steps"]
    text = (f"- **y.grad** (∂target/∂y, what `y.retain_grad()` shows) is non-zero at {format_steps(fact.steps)} and "
            f"exactly zero at {format_steps(zero)} ({len(zero)} of {n['seq_len']} steps). ")
    read, via_head = n["read_steps"], n["head_steps"]
    if read and via_head:
        text += (f"The target reads y directly at {format_steps(read)} and through the head, which reads y[:, -1] "
                 f"({format_steps(via_head)}). ")
    elif read:
        text += f"The target reads y directly only at {format_steps(read)}. "
    elif via_head:
        text += f"The target reads y only through the head, which reads y[:, -1] ({format_steps(via_head)}). "
    else:
        text += f"The target does not read y at all (it reads {', '.join(n['names']) or 'nothing'}). "
    return text + ("`y` is a *new* tensor that stacks the hidden states after the recurrence ran; no step of the "
                   "recurrence reads it, so its gradient is the direct (partial) derivative only.")


def _render_state(quantity: str, layer: int, direction: str, group: list[Fact]) -> str:
    symbol = "h_t" if quantity == "hidden_state" else "c_t"
    carried = next((f for f in group if f.kind == "carried"), None)
    text = f"- **{symbol}, layer {layer} {direction}**: the total derivative d{'L'}/d{symbol} is "
    text += f"non-zero at {format_steps(carried.steps)}" if carried is not None else "computed"
    for fact in group:
        if fact.kind == "structural":
            why = STRUCTURAL_CAUSES[fact.cause]
            if fact.cause == "after_last_read":
                why = (f"they come after t = {fact.numbers['last_read']}, the last step whose state is read "
                       f"(causality: {symbol} only influences later steps)")
            elif fact.cause == "before_first_read":
                why = (f"the reverse direction runs from t = T−1 down to 0, so a state before t = "
                       f"{fact.numbers['first_read']} (the first read step) only influences earlier steps, which "
                       "are not read")
            text += f"; structurally zero at {format_steps(fact.steps)}: {why}"
        elif fact.kind == "zero_on_path":
            text += f"; {_zero_on_path_reason(fact)}"
    return text + "."


def _zero_on_path_reason(fact: Fact) -> str:
    steps = format_steps(fact.steps)
    if fact.cause == "target_constant":
        return (f"exactly zero at {steps} although a path exists: the target's derivative with respect to "
                "everything it reads is exactly 0 (its terms cancel or are multiplied by 0), so it cannot change")
    if fact.cause == "zero_factor":
        return (f"exactly zero at {steps} although a path exists: the target reads it with a derivative of exactly 0 "
                "(a zero factor)")
    if fact.cause == "from_states":
        return (f"exactly zero at {steps} although a path exists: no gradient reaches the first layer's gates at "
                "those steps (their states' gradients are exactly 0)")
    block = fact.numbers["blocked_at"]
    before = block - 1 if fact.direction == "forward" else block + 1
    why = (f"every unit of h_{block} is ≤ 0 (dead ReLU units), so ∂h_{block}/∂h_{before} = 0 and nothing passes"
           if fact.numbers.get("dead_relu") else f"the local derivative of step t = {block} is exactly 0")
    return f"exactly zero at {steps} although a path exists: {why}"


def _render_zero_on_path(fact: Fact) -> str:
    return f"- **{QUANTITY_WORDS.get(fact.quantity, fact.quantity)}** is {_zero_on_path_reason(fact)}."


def _render_recurrence(fact: Fact) -> str:
    feeds = ("h_t feeds y and step t+1" if fact.numbers["num_layers"] == 1 else
             "h_t of the top layer feeds y and step t+1; h_t of a lower layer feeds the layer above and step t+1")
    text = (f"- These per-step states are what the recurrence really reads ({feeds}), so they carry "
            "dL/dh_t = ∂L/∂y_t + (∂h_{t+1}/∂h_t)ᵀ dL/dh_{t+1}. ")
    if fact.cause == "graph_nodes":
        return text + ("The answer's hand-written GRU keeps each h_t as a tensor of the graph (its list `hs`), so "
                       "`h.retain_grad()` shows dL/dh_t directly: nothing is recomputed.")
    return text + ("Fused modules (nn.GRU, nn.LSTM, cuDNN) never expose them; this tool recomputes them from the "
                   "fused states.")


def _render_underflow(fact: Fact) -> str:
    n = fact.numbers
    words = QUANTITY_WORDS.get(fact.quantity, fact.quantity)
    text = (f"- **Underflow** ({words}: {n['rows']} row(s), {format_steps(fact.steps)}): the gradient is not zero "
            f"there, but {n['dtype']} shows 0 — its true norm goes down to {_e(n['min_log10_norm'])}, below "
            f"{n['dtype']}'s range (smallest {_e(n['log10_smallest'])}). The charts draw the true magnitudes.")
    if n["flush_denormal"]:
        text += (f" Flush-to-zero is on (`torch.set_flush_denormal(True)`): values below {_e(n['log10_normal'])} "
                 f"become 0, {n['flushed_rows']} of these row(s) included.")
    return text


def _render_nonfinite(fact: Fact) -> str:
    n = fact.numbers
    words = QUANTITY_WORDS.get(fact.quantity, fact.quantity)
    steps = format_steps(fact.steps)
    if fact.cause == "exploding":
        true = (f" (true norm up to {_e(n['max_log10_norm'])}; the largest {n['dtype']} is {_e(n['log10_largest'])})"
                if math.isfinite(n["max_log10_norm"]) and n["max_log10_norm"] > n["log10_largest"] else "")
        return (f"- **Exploding gradients** ({words}: {n['rows']} row(s), {steps}): the gradient grows past "
                f"{n['dtype']}'s range{true}, so {n['dtype']} (like plain autograd) gives inf/NaN there "
                f"(weight_scale = {n['weight_scale']:g}). Nothing was clipped; the charts mark these values.")
    if fact.cause == "nonfinite_target":
        return (f"- **Non-finite** ({words}: {n['rows']} row(s), {steps}): the target's own derivative is inf/NaN, "
                "and it propagates back. Nothing was clipped; the charts mark these values.")
    return (f"- **Non-finite** ({words}: {n['rows']} row(s), {steps}): the forward pass overflowed, so these "
            "gradients are undefined (inf/NaN). Nothing was clipped; the charts mark these values.")


def _render_head(fact: Fact) -> str:
    n = fact.numbers
    text = (f"- **Head**: `out` has shape [B, {n['head_size']}, 1]: axis 1 holds the head's {n['head_size']} features, "
            "not time (the head reads only y[:, -1]). ")
    if n["zero_not_read"]:
        text += f"out.grad is zero for feature(s) {_features(n['zero_not_read'])} because the target does not read them"
        text += (" — the same zeros the seed's MyModel shows, and they say nothing about time"
                 if n["seed_mymodel_pattern"] else "")
        text += ". "
    if n["zero_read"]:
        text += (f"Feature(s) {_features(n['zero_read'])} are read, but with a derivative of exactly 0 (a zero "
                 "factor), so their gradient is zero too. ")
    if not n["zero_not_read"] and not n["zero_read"]:
        text += "The target reads every feature of out with a non-zero derivative. "
    return text.rstrip()


def _render_rule(fact: Fact) -> str:
    n = fact.numbers
    return ("- **When is a gradient exactly zero?** When no graph path leads from the tensor to the target "
            f"(structural: {n['structural']} row(s) here), when a path exists but a local derivative or the target's "
            f"own factor is exactly 0 (zero on a path: {n['zero_on_path']} here), or when the true value lies below "
            f"{n['dtype']}'s range (underflow: {n['underflow']} here). A zero is never taken as proof of no path: "
            "structure is decided from the graph.")


def verdict(report: GradientReport) -> str:
    """Explain, in words and from the numbers, where the gradient of the target went."""
    return render(facts(report))
