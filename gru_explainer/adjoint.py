"""The fast engine: the adjoint (backpropagation-through-time) recursion written out, on the fused states.

The fused forward already returns every state of a layer. From those, each step's local derivatives can be
recomputed for all t at once (two matmuls), leaving only the adjoint recursion
    dL/dh_{t-1} = direct_{t-1} + (∂h_t/∂h_{t-1})ᵀ dL/dh_t
sequential: per step a few elementwise ops and one [B, G*H] x [G*H, H] matmul. Everything here is time-major
([T, B, ...]) in *processing order* (reversed time for the reverse direction); callers convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import linear


@dataclass
class LayerAdjoint:
    """Total derivatives for one layer and direction, time-major in processing order."""

    hidden_grad: Tensor  # [T, B, H]: dL/dh_t
    cell_grad: Tensor | None  # [T, B, H]: dL/dc_t (LSTM)
    input_grad: Tensor  # [T, B, I]: dL/d(layer input)_t through this direction


def _shift(states: Tensor) -> Tensor:
    """The previous states h_{t-1} for every t (zeros before the first step)."""
    return torch.cat([torch.zeros_like(states[:1]), states[:-1]], dim=0)


def layer_adjoint(kind: str, inputs: Tensor, states: Tensor, params: tuple[Tensor, Tensor, Tensor, Tensor],
                  direct_h: Tensor, final_h: Tensor, final_c: Tensor | None) -> LayerAdjoint:
    """Run the adjoint recursion for one layer and direction.

    inputs [T, B, I] and states [T, B, H] are the layer's input and its fused states in processing order;
    direct_h [T, B, H] is what the target (or the layer above) reads from h_t directly; final_h / final_c
    [B, H] are the target's direct derivatives w.r.t. h_n / c_n (the last processed state).
    """
    w_ih, w_hh, b_ih, b_hh = params
    seq_len, batch, hidden = states.shape
    prev = _shift(states)
    gi = linear(inputs, w_ih, b_ih)  # all input projections in one matmul
    gh = linear(prev, w_hh, b_hh)  # all recurrent projections in one matmul (states are known)
    if kind == "gru":
        gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
        gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        n = torch.tanh(gi_n + r * gh_n)
        a_n = (1 - z) * (1 - n * n)  # ∂h/∂(n pre-activation)
        c_r = a_n * gh_n * r * (1 - r)  # ∂h/∂(r pre-activation)
        c_z = (prev - n) * z * (1 - z)  # ∂h/∂(z pre-activation)
        coef_hh = torch.stack([c_r, c_z, a_n * r], dim=2)  # ∂h/∂gh, per gate block: [T, B, 3, H]
        carry = final_h.clone()
        grads = []
        for s in range(seq_len - 1, -1, -1):
            v = direct_h[s] + carry
            grads.append(v)
            carry = torch.addmm(v * z[s], (v.unsqueeze(1) * coef_hh[s]).view(batch, 3 * hidden), w_hh)
        hidden_grad = torch.stack(grads[::-1])
        coef_ih = torch.stack([c_r, c_z, a_n], dim=2)
        d_gi = (hidden_grad.unsqueeze(2) * coef_ih).view(seq_len, batch, 3 * hidden)
        return LayerAdjoint(hidden_grad, None, d_gi @ w_ih)
    if kind == "lstm":
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        # The fused module returns h_t only; recompute c_t = f*c_{t-1} + i*g (elementwise, cheap).
        ig = i * g
        cells, c = [], torch.zeros_like(ig[0])
        for s in range(seq_len):
            c = torch.addcmul(ig[s], f[s], c)
            cells.append(c)
        cell = torch.stack(cells)
        tc = torch.tanh(cell)
        h_to_c = o * (1 - tc * tc)  # ∂h_t/∂c_t
        coef = torch.stack([g * i * (1 - i), _shift(cell) * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], dim=2)
        carry_h = final_h.clone()
        carry_c = final_c.clone() if final_c is not None else torch.zeros_like(carry_h)
        h_grads, c_grads = [], []
        for s in range(seq_len - 1, -1, -1):
            vh = direct_h[s] + carry_h
            vc = torch.addcmul(carry_c, vh, h_to_c[s])
            h_grads.append(vh)
            c_grads.append(vc)
            d_gates = (torch.stack((vc, vc, vc, vh), dim=1) * coef[s]).view(batch, 4 * hidden)
            carry_h = d_gates @ w_hh
            carry_c = vc * f[s]
        hidden_grad, cell_grad = torch.stack(h_grads[::-1]), torch.stack(c_grads[::-1])
        d_gi = (torch.stack((cell_grad, cell_grad, cell_grad, hidden_grad), dim=2) * coef)
        return LayerAdjoint(hidden_grad, cell_grad, d_gi.view(seq_len, batch, 4 * hidden) @ w_ih)
    # Elman RNN: h = act(gi + gh); act' from the state itself.
    slope = (1 - states * states) if kind == "rnn_tanh" else (states > 0).to(states.dtype)
    carry = final_h.clone()
    grads = []
    for s in range(seq_len - 1, -1, -1):
        v = direct_h[s] + carry
        grads.append(v)
        carry = (v * slope[s]) @ w_hh
    hidden_grad = torch.stack(grads[::-1])
    return LayerAdjoint(hidden_grad, None, (hidden_grad * slope) @ w_ih)
