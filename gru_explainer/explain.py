"""`explain(cfg)`: one config in, one `GradientReport` out (one backward pass per engine).

Engines:
- "fused" (default, fast): the fused module's forward gives every state; the target's direct derivatives
  come from autograd on the outputs alone; the adjoint recursion (`adjoint.py`) turns them into the total
  derivatives of every h_t / c_t and of the input.
- "twin": the unrolled twin (`models.UnrolledTwin`) runs with autograd and ONE `torch.autograd.grad` call
  collects the gradient of every per-step state. Slower; an independent check of the fused engine.

Structural zeros are decided from the graph (what the target reads, causality, direction), never from a
numeric zero: vanishing gradients underflow to exact zeros, which the report flags separately.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .adjoint import AdjointResult, Scaled, adjoint_pass
from .cache import TensorCache
from .config import ENGINES, ExplainConfig, Limits, resolve_device
from .errors import ConfigError, DeviceError, TargetError
from .models import SeedAnswerGRU, UnrolledTwin, answer_as_gru, build, single_layer_view
from .report import GradientReport
from .target import Target, parse_target


def target_shapes(cfg: ExplainConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors the target language can name for this config."""
    batch, steps, hidden, stacks = cfg.batch_size, cfg.seq_len, cfg.hidden_size, cfg.num_layers * cfg.num_directions
    shapes = {"y": (batch, steps, cfg.num_directions * hidden), "h_n": (stacks, batch, hidden)}
    if cfg.cell == "lstm":
        shapes["c_n"] = (stacks, batch, hidden)
    if cfg.head == "linear":
        shapes["out"] = (batch, cfg.head_size, 1)
    return shapes


def compile_target(cfg: ExplainConfig) -> Target:
    """Parse and shape-check cfg.target for this config; raises TargetError naming the problem."""
    target = parse_target(cfg.target)
    shapes = target_shapes(cfg)
    if "c_n" in target.names and "c_n" not in shapes:
        raise TargetError(f"c_n (the final cell state) exists only for cell 'lstm', not {cfg.cell!r}")
    if "out" in target.names and "out" not in shapes:
        raise TargetError("out (the head output) exists only with head 'linear'; this config has head 'none'")
    target.check(shapes)
    return target


def explain(cfg: ExplainConfig, *, engine: str = "fused", limits: Limits | None = None) -> GradientReport:
    """Compute where the gradient of cfg.target goes: stacked outputs, hidden/cell states and inputs.

    Raises ConfigError / TargetError (both ValueErrors) for invalid input, before allocating anything.
    """
    if not isinstance(cfg, ExplainConfig):
        raise ConfigError(f"explain() needs an ExplainConfig, got {type(cfg).__name__}")
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    cfg.validate(limits)
    target = compile_target(cfg)
    device = resolve_device(cfg.device)
    if device.type == "mps" and cfg.dtype == "float64":
        raise ConfigError("dtype float64 is not supported on device 'mps'; choose float32 or device 'cpu'")
    try:
        built = build(cfg, device)
        if isinstance(built.module, SeedAnswerGRU):
            engine = "twin"  # the answer's model is unrolled by construction: its states are graph nodes already
            raw = _run_answer(built.module, built.head, built.inputs, target)
        elif engine == "twin":
            raw = _run_twin(built.module, built.head, built.inputs, target)
        else:
            raw = _run_fused(built.module, built.head, built.inputs, target)
        if "adjoint" not in raw:  # true magnitudes always come from the rescaled pass (same math, same weights)
            fused = answer_as_gru(built.module) if isinstance(built.module, SeedAnswerGRU) else built.module
            raw["adjoint"] = _run_fused(fused, built.head, built.inputs, target)["adjoint"]
        adjoint: AdjointResult = raw.pop("adjoint")
        cpu = {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in raw.items()}
    except RuntimeError as err:  # torch.OutOfMemoryError and driver faults are RuntimeErrors too
        if device.type == "cpu":
            raise
        raise DeviceError(f"the computation failed on device {str(device)!r} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'no message'}); choose device 'cpu' "
                          "to run it on the CPU instead") from err
    masks = _cached_masks(cfg, target)
    return GradientReport(
        config=cfg,
        engine=engine,
        device=str(device),
        module=built.module,
        head=built.head,
        inputs=built.inputs.detach().cpu(),
        output=cpu["y"],
        target_value=float(cpu["target"]),
        stacked_grad=cpu["stacked_grad"],
        input_grad=cpu["input_grad"],
        hidden_grad=cpu["hidden_grad"],
        hidden_states=cpu["hidden_states"],
        cell_grad=cpu["cell_grad"],
        grads={k: v.detach().cpu() for k, v in raw["grads"].items()},
        hidden_magnitude=_to_cpu(adjoint.hidden_magnitude),
        cell_magnitude=_to_cpu(adjoint.cell_magnitude) if adjoint.cell_magnitude is not None else None,
        input_magnitude=_to_cpu(adjoint.input_magnitude),
        direct_log10_norm=adjoint.direct_log10_norm,
        flush_denormal=flushes_denormals(),
        **masks,
    )


def _to_cpu(scaled: Scaled) -> Scaled:
    return Scaled(scaled.mantissa.detach().cpu(), scaled.exponent.cpu())


_DENORMAL = torch.tensor([2.0 ** -140], dtype=torch.float32)  # a float32 denormal (read only)


def flushes_denormals() -> bool:
    """Whether this thread's CPU currently flushes denormals to zero (torch.set_flush_denormal)."""
    return bool((_DENORMAL * 1.0)[0] == 0)


def _named_grads(target_value: Tensor, named: dict[str, Tensor], extra: list[Tensor]) -> tuple[dict, list]:
    """ONE autograd.grad call for the named tensors plus `extra`; unused inputs get zero gradients."""
    inputs = list(named.values()) + extra
    grads = torch.autograd.grad(target_value, inputs, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]
    return dict(zip(named, grads[: len(named)], strict=True)), grads[len(named):]


def fused_forward(module: nn.RNNBase, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor | None]:
    """The fused forward, layer by layer without a graph: (per-layer outputs [B, T, D*H], h_n, c_n or None)."""
    layer_outputs, h_finals, c_finals = [], [], []
    layer_input = x
    with torch.no_grad():
        for layer in range(module.num_layers):
            out, finals = single_layer_view(module, layer)(layer_input)
            if isinstance(finals, tuple):  # LSTM: (h_n, c_n)
                finals, c_final = finals
                c_finals.append(c_final)
            layer_outputs.append(out)
            h_finals.append(finals)
            layer_input = out
    return layer_outputs, torch.cat(h_finals), torch.cat(c_finals) if c_finals else None


def _run_fused(module: nn.RNNBase, head: nn.Module | None, x: Tensor, target: Target) -> dict:
    # 1. Fused forward (cheap, no graph): every state of every layer.
    layer_outputs, h_n, c_n = fused_forward(module, x)
    y = layer_outputs[-1]
    # 2. The target's direct derivatives: autograd on the outputs alone (leaves), head included.
    named = {"y": y.detach().requires_grad_(), "h_n": h_n.requires_grad_()}
    if c_n is not None:
        named["c_n"] = c_n.requires_grad_()
    with torch.enable_grad():
        if head is not None:
            named["out"] = head(named["y"])
        value = target.evaluate(named)
        grads, _ = _named_grads(value, named, [])
    # 3. The rescaled adjoint recursion turns them into total derivatives of every state and of the input.
    adjoint = adjoint_pass(module, x, layer_outputs, grads)
    num_dirs, hidden = (2 if module.bidirectional else 1), module.hidden_size
    states = torch.stack([out.view(*out.shape[:2], num_dirs, hidden).permute(2, 0, 1, 3) for out in layer_outputs])
    return dict(y=y, target=value.detach(), stacked_grad=grads["y"], input_grad=adjoint.input_grad,
                hidden_grad=adjoint.hidden_grad, cell_grad=adjoint.cell_grad, grads=grads, hidden_states=states,
                adjoint=adjoint)


def _run_twin(module: nn.RNNBase, head: nn.Module | None, x: Tensor, target: Target) -> dict:
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        twin = UnrolledTwin(module)(x)
        named = {"y": twin.y, "h_n": twin.h_n}
        if twin.c_n is not None:
            named["c_n"] = twin.c_n
        if head is not None:
            named["out"] = head(twin.y)
        value = target.evaluate(named)
        states = [h for per_layer in twin.hidden for per_dir in per_layer for h in per_dir]
        cells = [c for per_layer in twin.cell for per_dir in per_layer for c in per_dir] if twin.cell else []
        grads, rest = _named_grads(value, named, [x, *states, *cells])
    layers, num_dirs = len(twin.hidden), len(twin.hidden[0])
    batch, steps = x.shape[:2]
    per_state = len(states)
    hidden_grad = torch.stack(rest[1:1 + per_state]).view(layers, num_dirs, steps, batch, -1).transpose(2, 3)
    cell_grad = None
    if cells:
        cell_grad = torch.stack(rest[1 + per_state:]).view(layers, num_dirs, steps, batch, -1).transpose(2, 3)
    with torch.no_grad():
        fused_y = module(x)[0]  # `output` is y as the fused module returns it (the twin agrees to rounding)
    states = torch.stack([torch.stack(h, dim=1) for per_layer in twin.hidden for h in per_layer])
    return dict(y=fused_y, target=value.detach(), stacked_grad=grads["y"], input_grad=rest[0],
                hidden_grad=hidden_grad.contiguous(), cell_grad=None if cell_grad is None else cell_grad.contiguous(),
                grads=grads, hidden_states=states.view(layers, num_dirs, batch, steps, -1))


def _run_answer(model: SeedAnswerGRU, head: nn.Module | None, x: Tensor, target: Target) -> dict:
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        y, hs = model(x)
        named = {"y": y, "h_n": hs[-1].unsqueeze(0)}
        if head is not None:
            named["out"] = head(y)
        value = target.evaluate(named)
        grads, rest = _named_grads(value, named, [x, *hs])
    hidden_grad = torch.stack(rest[1:], dim=1)[None, None]  # [1, 1, B, T, H]
    return dict(y=y.detach(), target=value.detach(), stacked_grad=grads["y"], input_grad=rest[0],
                hidden_grad=hidden_grad, cell_grad=None, grads=grads, hidden_states=y.detach()[None, None])


MASK_CACHE_SIZE = 4
"""Structures whose masks explain's cache keeps (a new seed, scale, dtype or device has the same masks)."""
MASK_CACHE_BYTES = 1 << 19
"""Only masks up to this size are kept (≤ 2 MiB a cache): for larger configs computing them is a small share."""


def _mask_key(cfg: ExplainConfig) -> tuple:
    """What the structural masks depend on: the shapes and the target's text, not the weights or the inputs."""
    return (cfg.cell, cfg.num_layers, cfg.bidirectional, cfg.head, cfg.head_size, cfg.input_size, cfg.hidden_size,
            cfg.seq_len, cfg.batch_size, cfg.target)


_MASKS = TensorCache(MASK_CACHE_SIZE, MASK_CACHE_BYTES)


def _cached_masks(cfg: ExplainConfig, target: Target) -> dict[str, Tensor | None]:
    """`structural_masks`, from a small cache keyed on the structure; copies, so a report may change its own."""
    return _MASKS.get(_mask_key(cfg), lambda: structural_masks(cfg, target))


def structural_masks(cfg: ExplainConfig, target: Target) -> dict[str, Tensor | None]:
    """Which elements have a graph path to the target, from what it reads, causality and direction.

    A state h_t reaches the target if the target reads it directly (via y, h_n or the head), if the layer
    above reads the layer output at t, or if anything is read at a LATER processing step of its direction
    (the recurrence is dense: h_t feeds every unit of step t+1). c_t reaches it through h_t or c_n.
    """
    shapes = target_shapes(cfg)
    reads = target.read_masks({k: shapes[k] for k in target.names})
    batch, steps, hidden = cfg.batch_size, cfg.seq_len, cfg.hidden_size
    layers, num_dirs = cfg.num_layers, cfg.num_directions
    stacked_read = reads.get("y", torch.zeros(shapes["y"], dtype=torch.bool)).clone()
    if "out" in reads:  # the head reads every unit of y[:, -1] for each batch item whose output is read
        stacked_read[:, -1, :] |= reads["out"].flatten(1).any(dim=1, keepdim=True)
    h_n_read = reads.get("h_n", torch.zeros(shapes["h_n"], dtype=torch.bool))
    c_n_read = reads.get("c_n") if cfg.cell == "lstm" else None
    shape = (layers, num_dirs, batch, steps, hidden)
    hidden_reached = torch.zeros(shape, dtype=torch.bool)
    cell_reached = torch.zeros(shape, dtype=torch.bool) if cfg.cell == "lstm" else None
    hidden_read = torch.zeros(shape, dtype=torch.bool)  # what the target (or the layer above) reads directly
    cell_read = torch.zeros(shape, dtype=torch.bool) if cfg.cell == "lstm" else None
    direct = stacked_read  # what the layer above (or the target) reads of this layer's output: [B, T, D*H]
    for layer in range(layers - 1, -1, -1):
        for d in range(num_dirs):
            final = 0 if d == 1 else steps - 1
            index = layer * num_dirs + d
            seed_h = direct[..., d * hidden:(d + 1) * hidden].clone()
            seed_h[:, final] |= h_n_read[index]
            seed_c = torch.zeros_like(seed_h)
            if c_n_read is not None:
                seed_c[:, final] |= c_n_read[index]
            any_read = (seed_h | seed_c).any(dim=2)  # [B, T]
            # later[b, t]: something is read at a step processed after t (t+1.. forward, ..t-1 reverse).
            ordered = any_read if d == 0 else any_read.flip(1)
            later = ordered.flip(1).cumsum(dim=1).flip(1) > 0  # read at this step or after
            later = torch.cat([later[:, 1:], torch.zeros_like(later[:, :1])], dim=1)
            later = later if d == 0 else later.flip(1)
            hidden_reached[layer, d] = seed_h | later.unsqueeze(-1)
            hidden_read[layer, d] = seed_h
            if cell_reached is not None:
                cell_reached[layer, d] = hidden_reached[layer, d] | seed_c
                cell_read[layer, d] = seed_c
        reached = hidden_reached[layer] if cell_reached is None else hidden_reached[layer] | cell_reached[layer]
        step_read = reached.any(dim=(0, 3))  # [B, T]: the layer's gates at t matter, so its input at t is read
        width = cfg.input_size if layer == 0 else num_dirs * hidden
        direct = step_read.unsqueeze(-1).expand(batch, steps, width)
    named_read = {name: reads.get(name, torch.zeros(shape, dtype=torch.bool)) for name, shape in shapes.items()}
    return dict(stacked_read=stacked_read, hidden_reached=hidden_reached, cell_reached=cell_reached,
                input_reached=direct.clone(), hidden_read=hidden_read, cell_read=cell_read, named_read=named_read)
