"""The models: a fused PyTorch module, an unrolled twin that shares its parameter tensors, and the seed's GRU.

The fused modules (nn.GRU / nn.LSTM / nn.RNN, cuDNN on GPUs) run the whole recurrence in one kernel and
never expose the per-step states h_t. `UnrolledTwin` computes the same function one step at a time with the
SAME parameter tensors (no copies), so every h_t (and LSTM c_t) is a node of the autograd graph whose
gradient is the total derivative dL/dh_t. `SeedAnswerGRU` is the hand-written GRU from the seed's answer.

Initialisation is deterministic and never touches the global RNG: every tensor is drawn from one CPU
`torch.Generator` seeded with `cfg.seed`, in this order: the recurrent module's parameters (in
`named_parameters()` order, U(-k, k) with k = weight_scale / sqrt(hidden_size), PyTorch's default range
when weight_scale = 1), then the head (weight, bias; U(-1/sqrt(fan_in), 1/sqrt(fan_in))), then the input
x ~ U[0, 1) of shape [B, T, I] (as the seed's `torch.rand`). Every draw is made in float64 on the CPU
(`torch.empty(shape, dtype=torch.float64).uniform_(-k, k, generator=g)`, `torch.rand(..., dtype=torch.float64,
generator=g)`) and then cast to cfg.dtype and moved to the device, so the float32 model is the float64 model
rounded, and every device gets the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .cache import TensorCache
from .config import ExplainConfig

FUSED_CLASSES = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
GATES = {"gru": 3, "lstm": 4, "rnn_tanh": 1, "rnn_relu": 1, "answer_gru": 3}
"""Gate blocks stacked in weight_ih / weight_hh: GRU (r, z, n), LSTM (i, f, g, o), RNN (one)."""


class SeedAnswerGRU(nn.Module):
    """The seed answer's 1-layer GRU, as written there (its own Linear layers; batch-first input)."""

    def __init__(self, input_size: int, hidden_size: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.lin_r = nn.Linear(input_size + hidden_size, hidden_size, **kw)
        self.lin_z = nn.Linear(input_size + hidden_size, hidden_size, **kw)
        self.lin_in = nn.Linear(input_size, hidden_size, **kw)
        self.lin_hn = nn.Linear(hidden_size, hidden_size, **kw)
        self.hidden_size = hidden_size

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return (y [B, T, H], hs): y stacks the states; hs are the states the recurrence really used."""
        bsz, len_, _ = x.shape
        h = torch.zeros([bsz, self.hidden_size], device=x.device, dtype=x.dtype)
        hs = []
        for i in range(len_):
            r = self.lin_r(torch.cat([x[:, i], h], dim=-1)).sigmoid()
            z = self.lin_z(torch.cat([x[:, i], h], dim=-1)).sigmoid()
            n = (self.lin_in(x[:, i]) + r * self.lin_hn(h)).tanh()
            h = (1.0 - z) * n + z * h
            hs.append(h)
        # Return the output both as a single tensor and as the list of tensors the recurrence used.
        return torch.stack(hs, dim=1), hs


class LinearHead(nn.Module):
    """The seed's MyModel head: Linear(D*H -> head_size) on the last step, viewed as [B, head_size, 1]."""

    def __init__(self, in_features: int, head_size: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, head_size, device=device, dtype=dtype)
        self.head_size = head_size

    def forward(self, y: Tensor) -> Tensor:
        """out = fc(y[:, -1, :]).view(-1, head_size, 1): axis 1 of the result is features, not time."""
        return self.fc(y[:, -1, :]).view(-1, self.head_size, 1)


@dataclass
class Built:
    """Everything `build` makes for one config: the recurrent module, the optional head and the input."""

    module: nn.Module
    head: LinearHead | None
    inputs: Tensor


def build(cfg: ExplainConfig, device: torch.device) -> Built:
    """Build the model and input for a validated config, deterministically from `cfg.seed` (no global RNG).

    The drawn numbers of the last few configs are kept (`_DRAWS`: a new target, device or view of the same model
    draws nothing again; every call gets its own copies)."""
    dtype = cfg.torch_dtype
    meta = torch.device("meta")
    if cfg.cell == "answer_gru":
        module: nn.Module = _materialise(SeedAnswerGRU(cfg.input_size, cfg.hidden_size, device=meta, dtype=dtype),
                                         device)
    else:  # built where it runs, its parameters left uninitialised (all drawn below)
        kwargs = dict(num_layers=cfg.num_layers, batch_first=True, bidirectional=cfg.bidirectional)
        if cfg.cell.startswith("rnn_"):
            kwargs["nonlinearity"] = cfg.cell.removeprefix("rnn_")
        module = _bare(FUSED_CLASSES[cfg.cell], cfg.input_size, cfg.hidden_size, device=device, dtype=dtype, **kwargs)
    head = None
    if cfg.head == "linear":
        head = _materialise(LinearHead(cfg.num_directions * cfg.hidden_size, cfg.head_size, device=meta, dtype=dtype),
                            device)
    drawn = _DRAWS.get(_draw_key(cfg), lambda: _draw(cfg, module, head))
    with torch.no_grad():
        params = list(module.parameters()) + (list(head.parameters()) if head is not None else [])
        for param, values in zip(params, drawn["params"].split([p.numel() for p in params]), strict=True):
            param.copy_(values.view(param.shape))
    if isinstance(module, nn.RNNBase):
        module.flatten_parameters()
    return Built(module=module, head=head, inputs=drawn["inputs"].to(device=device))


def _draw(cfg: ExplainConfig, module: nn.Module, head: LinearHead | None) -> dict[str, Tensor]:
    """Every number `build` draws, in the module docstring's order, on the CPU in cfg's dtype: "params" (the
    module's then the head's parameters, flat, in parameters() order) and "inputs" [B, T, I]."""
    dtype = cfg.torch_dtype
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    parts = []
    if isinstance(module, nn.RNNBase):  # one bound for all: one draw (the same numbers as one draw per parameter)
        bound = cfg.weight_scale / math.sqrt(cfg.hidden_size)
        parts.append(_uniform(torch.Size([sum(p.numel() for p in module.parameters())]), -bound, bound, gen, dtype))
    else:
        for name, param in module.named_parameters():
            bound = cfg.weight_scale / math.sqrt(_linear_fan_in(module, name))
            parts.append(_uniform(param.shape, -bound, bound, gen, dtype).reshape(-1))
    if head is not None:
        bound = 1.0 / math.sqrt(head.fc.in_features)
        parts += [_uniform(param.shape, -bound, bound, gen, dtype).reshape(-1) for param in (head.fc.weight,
                                                                                              head.fc.bias)]
    inputs = torch.rand((cfg.batch_size, cfg.seq_len, cfg.input_size), generator=gen, dtype=torch.float64)
    return {"params": torch.cat(parts), "inputs": inputs.to(dtype=dtype)}


def _draw_key(cfg: ExplainConfig) -> tuple:
    """Everything the drawn numbers depend on (not the target or the device)."""
    return (cfg.cell, cfg.num_layers, cfg.input_size, cfg.hidden_size, cfg.bidirectional, cfg.head, cfg.head_size,
            cfg.seq_len, cfg.batch_size, cfg.dtype, cfg.seed, cfg.weight_scale)


DRAW_CACHE_SIZE = 4
DRAW_CACHE_BYTES = 2 << 20
"""Drawn models of up to 2 MiB each are kept, the last DRAW_CACHE_SIZE (≤ 8 MiB in all)."""
_DRAWS = TensorCache(DRAW_CACHE_SIZE, DRAW_CACHE_BYTES)


def _bare(cls: type[nn.RNNBase], *args, **kwargs) -> nn.RNNBase:
    """cls(*args, **kwargs) with its parameters left uninitialised (`build` draws every one itself; PyTorch's init
    costs ~1 ms on the meta device, where it runs through Python decompositions, and draws numbers only to discard
    them elsewhere): built as a subclass without reset_parameters, then made a plain `cls` again (same layout)."""
    module = _BARE[cls](*args, **kwargs)
    module.__class__ = cls
    return module


_BARE = {cls: type(f"_Bare{cls.__name__}", (cls,), {"reset_parameters": lambda self: None})
         for cls in set(FUSED_CLASSES.values())}


def _materialise(module: nn.Module, device: torch.device) -> nn.Module:
    """`module.to_empty(device=device)` without its first-call cost: to_empty's `empty_like` of a meta tensor runs
    PyTorch's Python reference, whose first call imports sympy (~1 s, most of a cold server's first explain)."""
    return module._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))


def _uniform(shape: torch.Size, low: float, high: float, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    # Drawn in float64, then rounded: the float32 model is the float64 model at lower precision.
    return torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=gen).to(dtype)


def answer_as_gru(model: SeedAnswerGRU) -> nn.GRU:
    """An nn.GRU computing exactly the seed answer's GRU (its Linear weights regrouped; no hidden bias on r, z).

    The answer's gates: r = σ(lin_r([x, h])), z = σ(lin_z([x, h])), n = tanh(lin_in(x) + r ⊙ lin_hn(h)),
    h' = (1 − z) ⊙ n + z ⊙ h — PyTorch's GRU equations with W_ir = lin_r.weight[:, :I], W_hr = lin_r.weight[:, I:],
    b_ir = lin_r.bias, b_hr = 0 (likewise z), W_in = lin_in, W_hn = lin_hn. Used for the rescaled adjoint pass.
    """
    inputs = model.lin_in.in_features
    weight = model.lin_r.weight
    gru = nn.GRU(inputs, model.hidden_size, batch_first=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.cat([model.lin_r.weight[:, :inputs], model.lin_z.weight[:, :inputs],
                                          model.lin_in.weight]))
        gru.weight_hh_l0.copy_(torch.cat([model.lin_r.weight[:, inputs:], model.lin_z.weight[:, inputs:],
                                          model.lin_hn.weight]))
        gru.bias_ih_l0.copy_(torch.cat([model.lin_r.bias, model.lin_z.bias, model.lin_in.bias]))
        gru.bias_hh_l0.copy_(torch.cat([torch.zeros_like(model.lin_r.bias), torch.zeros_like(model.lin_z.bias),
                                        model.lin_hn.bias]))
    gru.flatten_parameters()
    return gru


def _linear_fan_in(module: nn.Module, param_name: str) -> int:
    layer = module.get_submodule(param_name.rsplit(".", 1)[0])
    assert isinstance(layer, nn.Linear)
    return layer.in_features


def layer_params(module: nn.RNNBase, layer: int, direction: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction: the module's own tensors."""
    suffix = f"l{layer}" + ("_reverse" if direction == 1 else "")
    return (getattr(module, f"weight_ih_{suffix}"), getattr(module, f"weight_hh_{suffix}"),
            getattr(module, f"bias_ih_{suffix}"), getattr(module, f"bias_hh_{suffix}"))


def cell_kind(module: nn.RNNBase) -> str:
    """'gru', 'lstm', 'rnn_tanh' or 'rnn_relu' for a fused module."""
    if isinstance(module, nn.GRU):
        return "gru"
    if isinstance(module, nn.LSTM):
        return "lstm"
    return "rnn_" + module.nonlinearity


@dataclass
class TwinOutput:
    """What the twin computes: the fused module's outputs plus every per-step state as a graph node.

    `hidden[l][d][t]` is h_t of layer l, direction d ([B, H], t in original time order);
    `cell` likewise for LSTM c_t (None otherwise).
    """

    y: Tensor
    h_n: Tensor
    c_n: Tensor | None
    hidden: list[list[list[Tensor]]]
    cell: list[list[list[Tensor]]] | None


class UnrolledTwin(nn.Module):
    """The fused module unrolled step by step, using the fused module's own parameter tensors (no copies)."""

    def __init__(self, fused: nn.RNNBase) -> None:
        super().__init__()
        if getattr(fused, "proj_size", 0):
            raise ValueError("LSTM projections are not supported")
        self.fused = fused
        self.kind = cell_kind(fused)

    def forward(self, x: Tensor) -> TwinOutput:
        """Run on batch-first x [B, T, I] from zero initial states."""
        fused, kind = self.fused, self.kind
        num_dirs = 2 if fused.bidirectional else 1
        bsz, seq_len, _ = x.shape
        layer_input = x
        hidden, cells, h_last, c_last = [], [] if kind == "lstm" else None, [], []
        for layer in range(fused.num_layers):
            hidden.append([])
            if cells is not None:
                cells.append([])
            for direction in range(num_dirs):
                w_ih, w_hh, b_ih, b_hh = layer_params(fused, layer, direction)
                # Project every input step in one matmul before the time loop: [B, T, G*H].
                gi_all = torch.nn.functional.linear(layer_input, w_ih, b_ih)
                h = x.new_zeros(bsz, fused.hidden_size)
                c = x.new_zeros(bsz, fused.hidden_size)
                hs: list[Tensor] = [None] * seq_len  # type: ignore[list-item]
                cs: list[Tensor] = [None] * seq_len  # type: ignore[list-item]
                steps = range(seq_len) if direction == 0 else range(seq_len - 1, -1, -1)
                for t in steps:
                    gi, gh = gi_all[:, t], torch.nn.functional.linear(h, w_hh, b_hh)
                    if kind == "gru":
                        i_r, i_z, i_n = gi.chunk(3, dim=-1)
                        h_r, h_z, h_n = gh.chunk(3, dim=-1)
                        r = torch.sigmoid(i_r + h_r)  # reset gate: how much of h feeds the candidate
                        z = torch.sigmoid(i_z + h_z)  # update gate: how much of h is kept
                        n = torch.tanh(i_n + r * h_n)  # candidate state
                        h = (1 - z) * n + z * h  # new state: blend of candidate and old state
                    elif kind == "lstm":
                        i, f, g, o = (gi + gh).chunk(4, dim=-1)
                        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
                        c = f * c + i * g  # cell: forget some of the old, write some of the new
                        h = o * torch.tanh(c)  # hidden: gated view of the cell
                        cs[t] = c
                    elif kind == "rnn_tanh":
                        h = torch.tanh(gi + gh)  # Elman RNN
                    else:
                        h = torch.relu(gi + gh)
                    hs[t] = h
                hidden[layer].append(hs)
                h_last.append(h)
                if cells is not None:
                    cells[layer].append(cs)
                    c_last.append(c)
            # The layer's output stacks the states (a NEW tensor: the next step read h_t, not this stack).
            layer_input = torch.cat([torch.stack(hidden[layer][d], dim=1) for d in range(num_dirs)], dim=-1)
        c_n = torch.stack(c_last) if cells is not None else None
        return TwinOutput(y=layer_input, h_n=torch.stack(h_last), c_n=c_n, hidden=hidden, cell=cells)


def single_layer_view(fused: nn.RNNBase, layer: int) -> nn.RNNBase:
    """A one-layer fused module whose parameters ARE layer `layer` of `fused` (shared tensors, no copies)."""
    if fused.num_layers == 1:
        return fused
    num_dirs = 2 if fused.bidirectional else 1
    in_size = fused.input_size if layer == 0 else num_dirs * fused.hidden_size
    kwargs = dict(num_layers=1, batch_first=fused.batch_first, bidirectional=fused.bidirectional,
                  device=torch.device("meta"))
    if isinstance(fused, nn.RNN):
        kwargs["nonlinearity"] = fused.nonlinearity
    cls = type(fused)
    # (parameters uninitialised: every one is replaced below; PyTorch's init on the meta device costs ~1 ms)
    view = _bare(cls, in_size, fused.hidden_size, **kwargs) if cls in _BARE else cls(in_size, fused.hidden_size,
                                                                                      **kwargs)
    for direction in range(num_dirs):
        suffix = "_reverse" if direction == 1 else ""
        for kind, tensor in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                                layer_params(fused, layer, direction), strict=True):
            # RNNBase.__setattr__ keeps _flat_weights in sync with the assigned Parameter.
            setattr(view, f"{kind}_l0{suffix}", tensor)
    return view
