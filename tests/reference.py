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


def _cell_with_bias(module: nn.RNNBase, layer: int, direction: int) -> nn.Module:
    """The cell module of one layer and direction (weights copied), also for bias=False modules."""
    kind = cell_kind(module)
    suffix = f"l{layer}" + ("_reverse" if direction == 1 else "")
    w_ih = getattr(module, f"weight_ih_{suffix}")
    kw = dict(bias=module.bias, dtype=w_ih.dtype)
    if kind == "gru":
        cell = nn.GRUCell(w_ih.shape[1], module.hidden_size, **kw)
    elif kind == "lstm":
        cell = nn.LSTMCell(w_ih.shape[1], module.hidden_size, **kw)
    else:
        cell = nn.RNNCell(w_ih.shape[1], module.hidden_size, nonlinearity=kind.removeprefix("rnn_"), **kw)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if module.bias else ("weight_ih", "weight_hh")
    with torch.no_grad():
        for name in names:
            getattr(cell, name).copy_(getattr(module, f"{name}_{suffix}"))
    return cell


def unrolled_step_grads(module: nn.RNNBase, x: Tensor, loss_fn, h0: Tensor | None = None, c0: Tensor | None = None,
                        lengths: Tensor | None = None) -> dict[str, Tensor | None]:
    """Per-step gradients of loss_fn(y, h_n, c_n) by autograd through nn.*Cell steps, one zero perturbation per state.

    x is batch-first [B, T, I]; h0 / c0 [L*D, B, H] initial states; lengths [B] makes it a packed batch (a state is
    frozen after its item's last step, y is 0 there, h_n is each item's last real state). Returns hidden / cell
    [L, D, B, T, H] (dL/dh_t, dL/dc_t: the gradients of the perturbations), input [B, T, I], h0 / c0 gradients, y.
    """
    kind = cell_kind(module)
    num_dirs = 2 if module.bidirectional else 1
    batch, steps, _ = x.shape
    hidden = module.hidden_size
    valid = (torch.ones(batch, steps, dtype=torch.bool) if lengths is None
             else torch.arange(steps)[None, :] < lengths[:, None])
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_() if h0 is not None else None
    c0 = c0.detach().clone().requires_grad_() if c0 is not None else None
    shape = (module.num_layers, num_dirs, steps, batch, hidden)
    p_h = torch.zeros(shape, dtype=x.dtype, requires_grad=True)
    p_c = torch.zeros(shape, dtype=x.dtype, requires_grad=True)
    with torch.enable_grad():
        layer_input, h_last, c_last = x, [], []
        for layer in range(module.num_layers):
            outputs = []
            for d in range(num_dirs):
                cell = _cell_with_bias(module, layer, d)
                index = layer * num_dirs + d
                h = h0[index] if h0 is not None else x.new_zeros(batch, hidden)
                c = c0[index] if c0 is not None else x.new_zeros(batch, hidden)
                states: list[Tensor] = [None] * steps  # type: ignore[list-item]
                for t in range(steps) if d == 0 else range(steps - 1, -1, -1):
                    ok = valid[:, t].unsqueeze(-1)
                    if kind == "lstm":
                        h_prev = h
                        h_new, c_new = cell(layer_input[:, t], (h, c))
                        c_new = c_new + p_c[layer, d, t]  # h_t reads the perturbed c_t: h = o * tanh(c)
                        gates = layer_input[:, t] @ cell.weight_ih.T + h_prev @ cell.weight_hh.T
                        if cell.bias_ih is not None:
                            gates = gates + cell.bias_ih + cell.bias_hh
                        o = torch.sigmoid(gates[:, 3 * hidden:])
                        h_new = o * torch.tanh(c_new)
                        c = torch.where(ok, c_new, c)
                    else:
                        h_new = cell(layer_input[:, t], h)
                    h = torch.where(ok, h_new + p_h[layer, d, t], h)
                    states[t] = torch.where(ok, h, torch.zeros_like(h))
                outputs.append(torch.stack(states, dim=1))
                h_last.append(h)
                c_last.append(c)
            layer_input = torch.cat(outputs, dim=-1)
        y, h_n = layer_input, torch.stack(h_last)
        c_n = torch.stack(c_last) if kind == "lstm" else None
        loss = loss_fn(y, h_n, c_n)
        wrt = [p_h, p_c, x] + [t for t in (h0, c0) if t is not None]
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads, strict=True)]
    out = {"hidden": grads[0].transpose(2, 3), "cell": grads[1].transpose(2, 3) if kind == "lstm" else None,
           "input": grads[2], "y": y.detach(), "h0": None, "c0": None}
    rest = grads[3:]
    if h0 is not None:
        out["h0"] = rest.pop(0)
    if c0 is not None:
        out["c0"] = rest.pop(0)
    return out


def unrolled_gate_grads(kind: str, x: Tensor, params: tuple, seed_grad: Tensor) -> tuple[Tensor, tuple]:
    """float64 autograd through an unrolled cell (time-major x [T, B, I]): dL/d(gate pre-activations) per step
    [T, B, G·H] with L = Σ seed_grad · h_T-1 (the last step's state), and the parameters' gradients."""
    w_ih, w_hh, b_ih, b_hh = (p.detach().double().requires_grad_(True) for p in params)
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    h, c = x.new_zeros(batch, hidden, dtype=torch.float64), x.new_zeros(batch, hidden, dtype=torch.float64)
    pre_acts = []
    for s in range(steps):
        pre = x[s].double() @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        pre.retain_grad()
        pre_acts.append(pre)
        if kind == "lstm":
            i, f, g, o = pre.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            h = torch.tanh(pre)
    (h * seed_grad.double()).sum().backward()
    return torch.stack([p.grad for p in pre_acts]), (w_ih.grad, w_hh.grad, b_ih.grad, b_hh.grad)

