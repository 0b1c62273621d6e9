"""An independent reference for tests: the same network run with nn.GRUCell / nn.LSTMCell / nn.RNNCell.

It copies the fused module's weights into PyTorch's cell modules (different kernels from both engines) and
lets a test add a perturbation to any state h_t / c_t before the recurrence reads it, so derivatives can be
checked by finite differences in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gru_explainer.models import UnrolledTwin, cell_kind, layer_params
from gru_explainer.target import parse_target

Perturbation = dict[tuple[str, int, int, int], Tensor]  # ("h" | "c", layer, direction, t) -> [B, H]


def _cell(module: nn.RNNBase, layer: int, direction: int) -> nn.Module:
    kind = cell_kind(module)
    w_ih, w_hh, b_ih, b_hh = layer_params(module, layer, direction)
    kw = dict(dtype=w_ih.dtype)
    if kind == "gru":
        cell = nn.GRUCell(w_ih.shape[1], module.hidden_size, **kw)
    elif kind == "lstm":
        cell = nn.LSTMCell(w_ih.shape[1], module.hidden_size, **kw)
    else:
        cell = nn.RNNCell(w_ih.shape[1], module.hidden_size, nonlinearity=kind.removeprefix("rnn_"), **kw)
    with torch.no_grad():
        for name, tensor in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), (w_ih, w_hh, b_ih, b_hh),
                                strict=True):
            getattr(cell, name).copy_(tensor)
    return cell


def reference_outputs(module: nn.RNNBase, x: Tensor, perturb: Perturbation | None = None) -> dict[str, Tensor]:
    """y, h_n (and c_n) of `module` on x, computed with cell modules, with optional state perturbations."""
    perturb = perturb or {}
    kind = cell_kind(module)
    num_dirs = 2 if module.bidirectional else 1
    batch, steps, _ = x.shape
    layer_input, h_last, c_last = x, [], []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(num_dirs):
            cell = _cell(module, layer, d)
            h = x.new_zeros(batch, module.hidden_size)
            c = x.new_zeros(batch, module.hidden_size)
            states: list[Tensor] = [None] * steps  # type: ignore[list-item]
            for t in range(steps) if d == 0 else range(steps - 1, -1, -1):
                if kind == "lstm":
                    h_prev = h
                    h, c = cell(layer_input[:, t], (h, c))
                    if ("c", layer, d, t) in perturb:  # h_t reads the perturbed c_t: h = o * tanh(c)
                        c = c + perturb[("c", layer, d, t)]
                        o_rows = slice(3 * module.hidden_size, 4 * module.hidden_size)
                        o = torch.sigmoid(layer_input[:, t] @ cell.weight_ih[o_rows].T + cell.bias_ih[o_rows]
                                          + h_prev @ cell.weight_hh[o_rows].T + cell.bias_hh[o_rows])
                        h = o * torch.tanh(c)
                else:
                    h = cell(layer_input[:, t], h)
                h = h + perturb.get(("h", layer, d, t), 0.0)
                states[t] = h
            outputs.append(torch.stack(states, dim=1))
            h_last.append(h)
            c_last.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    result = {"y": layer_input, "h_n": torch.stack(h_last)}
    if kind == "lstm":
        result["c_n"] = torch.stack(c_last)
    return result


def float64_autograd_on(report) -> dict[str, torch.Tensor]:
    """dL/dh_t and dL/dx_t by float64 autograd through an unrolled copy of report.module (weights cast exactly)."""
    module = report.module.double()
    head = report.head.double() if report.head is not None else None
    try:
        x = report.inputs.double().requires_grad_()
        twin = UnrolledTwin(module)(x)
        named = {"y": twin.y, "h_n": twin.h_n}
        if twin.c_n is not None:
            named["c_n"] = twin.c_n
        if head is not None:
            named["out"] = head(twin.y)
        value = parse_target(report.config.target).evaluate(named)
        states = [h for per_layer in twin.hidden for per_dir in per_layer for h in per_dir]
        grads = torch.autograd.grad(value, [x, *states], allow_unused=True)
        grads = [torch.zeros_like(s) if g is None else g for s, g in zip([x, *states], grads, strict=True)]
        cfg = report.config
        hidden = torch.stack(grads[1:]).view(cfg.num_layers, cfg.num_directions, cfg.seq_len, cfg.batch_size, -1)
        return {"hidden": hidden.transpose(2, 3), "input": grads[0]}
    finally:
        report.module.float()
        if report.head is not None:
            report.head.float()


def float64_tanh_rnn_grads_at_states(report) -> Tensor:
    """dL/dh_t [B, T, H] of a 1-layer tanh nn.RNN by float64 autograd, linearised at the report's OWN forward states.

    h_t = tanh(x_t W_ihᵀ + b_ih + h_{t-1} W_hhᵀ + b_hh) with its value replaced by the report's (float32) state
    (h + (state - h).detach()), so a chaotic forward pass cannot diverge in float64: only the backward is float64.
    """
    module = report.module
    w_ih, w_hh, b_ih, b_hh = (p.detach().double() for p in layer_params(module, 0, 0))
    states = report.hidden_states[0, 0].double()  # [B, T, H]
    x = report.inputs.double()
    h = x.new_zeros(x.shape[0], module.hidden_size).requires_grad_()  # so every step is part of the graph
    hs = []
    with torch.enable_grad():
        for t in range(x.shape[1]):
            h_new = torch.tanh(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
            h = h_new + (states[:, t] - h_new).detach()
            hs.append(h)
        y = torch.stack(hs, dim=1)
        value = parse_target(report.config.target).evaluate({"y": y, "h_n": h.unsqueeze(0)})
        grads = torch.autograd.grad(value, hs)
    return torch.stack(grads, dim=1)
