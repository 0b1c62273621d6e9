"""An independent reference for tests: the same network run with nn.GRUCell / nn.LSTMCell / nn.RNNCell.

It copies the fused module's weights into PyTorch's cell modules (different kernels from both engines) and
lets a test add a perturbation to any state h_t / c_t before the recurrence reads it, so derivatives can be
checked by finite differences in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gru_explainer.models import cell_kind, layer_params

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
