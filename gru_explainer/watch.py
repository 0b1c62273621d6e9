"""`watch(model)`: per-step gradients of every nn.GRU / nn.LSTM / nn.RNN inside the user's own model and loss.

    import gru_explainer as gx
    with gx.watch(model) as rec:
        loss = loss_fn(model(x), labels)
        loss.backward()                  # or torch.autograd.grad(...)
    call = rec.calls[0]                  # one record per call of a recurrent module, in call order
    call.hidden_grad                     # total dL/dh_t [L, D, B, T, H]
    print(call.verdict())

Inside the block each recurrent module's `forward` is an instance attribute (removed on exit, also after an
exception) that runs a `torch.autograd.Function`: its forward is the fused kernel, layer by layer without a graph;
its backward is the rescaled adjoint (`adjoint.py`), which turns the gradients arriving at the outputs into every
dL/dh_t, dL/dc_t, the input's, the initial states' and the parameters' gradients (from the gate derivatives in the
dtype, as autograd computes them). So a training loop keeps working inside the block; the per-step gradients are
recorded on the way.

What counts as structural for a user's loss: the code after the module cannot be inspected, so every element of an
output that autograd hands a gradient for (y, h_n, c_n) is treated as read; an output autograd passes no gradient
for (nothing downstream uses it) is not read, and zeros follow from that by causality and direction as in
`explain`. An exact zero on a read output (y.grad at steps the loss ignores) is therefore reported as
"zero_on_path", never as structural. Padded steps of a packed batch have no state: their gradients are 0, `mask`
is False there and the frame counts them (`padded_items`; `zero_cause` "padding" where every item is padded).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .adjoint import AdjointResult, Scaled, adjoint_pass, module_params
from .cache import TensorCache
from .config import CELL_LABELS, ExplainConfig
from .models import cell_kind
from .report import GradientReport

KEEP = ("full", "summary")
"""What a record keeps: "full" (every tensor; frame and verdict on demand) or "summary" (only the frame)."""
WATCH_TARGET = "your loss"
"""The target text of a watched call's report (the loss is the user's own code)."""
_CLASSES = (nn.GRU, nn.LSTM, nn.RNN)
_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class WatchError(ValueError):
    """`watch` cannot handle this model or input (the message names the feature and what is allowed)."""


def _base_class(module: nn.Module) -> type | None:
    """nn.GRU, nn.LSTM or nn.RNN when `module` is one (subclasses included), else None."""
    return next((cls for cls in _CLASSES if isinstance(module, cls)), None)


def _label(name: str, module: nn.Module) -> str:
    return f"{name or 'the model'} ({type(module).__name__})"


def _check_module(name: str, module: nn.RNNBase) -> None:
    """Refuse what the engine does not reproduce exactly, naming the feature."""
    where = _label(name, module)
    base = _base_class(module)
    if type(module).forward is not base.forward:
        raise WatchError(f"watch: {where} overrides forward(); only nn.GRU / nn.LSTM / nn.RNN (or subclasses that "
                         "keep their forward) can be watched")
    if "forward" in module.__dict__:
        raise WatchError(f"watch: {where} already has an instance-level forward (watched twice, or patched by "
                         "other code); nested watch() on the same module is not supported")
    if getattr(module, "proj_size", 0):
        raise WatchError(f"watch: LSTM proj_size={module.proj_size} in {where} is not supported; only LSTMs "
                         "without projections (proj_size=0) can be watched")
    dtype = module_params(module, 0, 0)[0].dtype
    if dtype not in (torch.float32, torch.float64):
        raise WatchError(f"watch: {where} has dtype {dtype}; only float32 and float64 modules can be watched")


def _check_call(name: str, module: nn.RNNBase) -> None:
    """Refuse, at call time, what depends on the module's mode."""
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise WatchError(f"watch: inter-layer dropout in training mode ({_label(name, module)}: "
                         f"dropout={module.dropout}, num_layers={module.num_layers}) is not supported: the fused "
                         "kernel draws its masks internally, so they cannot be replayed; call module.eval() or set "
                         "dropout=0 while watching")


# --- Batch layout: padded tensors and packed sequences ------------------------------------------------------------


@dataclass
class _Layout:
    """The batch layout of one call: B, T, the valid-step mask and, for packed input, the index maps."""

    batch: int
    steps: int
    valid: Tensor | None  # [B, T] bool for packed input, None for tensors (every step valid)
    packed: tuple[Tensor, Tensor | None, Tensor | None] | None = None  # batch_sizes, sorted, unsorted
    rows: tuple[Tensor, Tensor] | None = None  # (batch index, step index) of each packed data row

    @classmethod
    def of_packed(cls, seq: PackedSequence) -> _Layout:
        """Index maps of a PackedSequence: data row k holds (item b_k, step t_k) in the original batch order."""
        sizes = seq.batch_sizes
        steps, batch = len(sizes), int(sizes[0])
        device = seq.data.device
        order = seq.sorted_indices.to(device) if seq.sorted_indices is not None else torch.arange(batch,
                                                                                                   device=device)
        counts = sizes.to(device)
        t_idx = torch.repeat_interleave(torch.arange(steps, device=device), counts)
        rank = torch.arange(len(t_idx), device=device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts,
                                                                                 counts)
        b_idx = order[rank]
        valid = torch.zeros(batch, steps, dtype=torch.bool, device=device)
        valid[b_idx, t_idx] = True
        return cls(batch, steps, valid, (sizes, seq.sorted_indices, seq.unsorted_indices), (b_idx, t_idx))

    def to_padded(self, data: Tensor) -> Tensor:
        """Packed data [N, K] -> [B, T, K] (zeros at padding)."""
        b_idx, t_idx = self.rows
        out = data.new_zeros(self.batch, self.steps, data.shape[-1])
        out[b_idx, t_idx] = data
        return out

    def to_data(self, padded: Tensor) -> Tensor:
        """[B, T, K] -> packed data [N, K]."""
        b_idx, t_idx = self.rows
        return padded[b_idx, t_idx]

    def wrap(self, data: Tensor) -> PackedSequence:
        """Packed data back into a PackedSequence with this batch's sizes and orders."""
        sizes, sorted_idx, unsorted_idx = self.packed
        return PackedSequence(data, sizes, sorted_idx, unsorted_idx)


# --- Records -------------------------------------------------------------------------------------------------------


@dataclass
class WatchedCall:
    """One call of a recurrent module inside `watch`: its per-step gradients (after backward), frame and verdict.

    hidden_grad / cell_grad are [L, D, B, T, H], batch-first, original time order; output_grad and input_grad are
    laid out like the call's output and input (padded batch-first [B, T, ...] for packed sequences); mask [B, T]
    marks real steps. Tensors stay on the module's device. With keep="summary" only `frame` is kept.
    """

    name: str
    module: nn.RNNBase
    index: int  # position in rec.calls
    keep: str
    batch_first: bool
    packed: bool
    mask: Tensor
    backward_count: int = 0  # backward passes that went through this call (the latest one is recorded)
    _tensors: dict = field(default_factory=dict, repr=False)
    _report: GradientReport | None = field(default=None, repr=False)
    _frame: pd.DataFrame | None = field(default=None, repr=False)

    def _get(self, key: str) -> Tensor | None:
        if self.backward_count == 0:
            raise WatchError(f"watch: no backward pass has gone through call {self.index} ({self.name!r}) yet; run "
                             "loss.backward() or torch.autograd.grad(...) inside the watch block first")
        if self.keep == "summary":
            raise WatchError(f"watch(..., keep='summary') keeps only call.frame; {key} is not kept (use "
                             "keep='full')")
        return self._tensors[key]

    @property
    def hidden_grad(self) -> Tensor:
        """Total dL/dh_t [L, D, B, T, H] (batch-first, original time order)."""
        return self._get("hidden_grad")

    @property
    def cell_grad(self) -> Tensor | None:
        """Total dL/dc_t [L, D, B, T, H] for LSTM, else None."""
        return self._get("cell_grad")

    @property
    def output_grad(self) -> Tensor | None:
        """What output.retain_grad() would show (None when nothing downstream used the output)."""
        return self._get("output_grad")

    @property
    def input_grad(self) -> Tensor:
        """dL/d(input) of this call, laid out like the input (zeros when the input needs no gradient)."""
        return self._get("input_grad")

    @property
    def h0_grad(self) -> Tensor | None:
        """dL/dh_0 [L*D, B, H] when the call was given initial states, else None."""
        return self._get("h0_grad")

    @property
    def c0_grad(self) -> Tensor | None:
        """dL/dc_0 [L*D, B, H] for an LSTM given initial states, else None."""
        return self._get("c0_grad")

    @property
    def param_grads(self) -> dict[str, Tensor]:
        """This call's contribution to each parameter's gradient, by parameter name (e.g. weight_hh_l0)."""
        return self._get("param_grads")

    @property
    def report(self) -> GradientReport:
        """The call as a `GradientReport` (CPU tensors, structural masks for a user's loss; keep='full')."""
        self._get("hidden_grad")
        if self._report is None:
            self._report = _build_report(self)
        return self._report

    @property
    def frame(self) -> pd.DataFrame:
        """One row per (quantity, layer, direction, t): GradientReport's columns plus `padded_items`."""
        if self._frame is None:
            self._frame = _frame_of(self.report, self.mask)
        return self._frame

    def facts(self) -> list:
        """The verdict's structured facts for this call (keep='full')."""
        return self.report.facts()

    def verdict(self) -> str:
        """The explanation of this call's gradients in words (markdown; keep='full')."""
        return _verdict(self)


@dataclass
class Recording:
    """What `watch` yields: the watched modules by name and one `WatchedCall` per call, in call order."""

    modules: dict[str, nn.RNNBase]
    keep: str
    calls: list[WatchedCall] = field(default_factory=list)
    _views: dict = field(default_factory=dict, repr=False)

    def by_name(self, name: str) -> list[WatchedCall]:
        """The calls of the module with this qualified name, in call order."""
        return [call for call in self.calls if call.name == name]


# --- The patch -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def watch(model: nn.Module, *, keep: str = "full") -> Iterator[Recording]:
    """Record per-step gradients of every nn.GRU / nn.LSTM / nn.RNN in `model` (or `model` itself) in this block.

    Gradients everywhere equal autograd's without watch; outside the block the model is unchanged. keep="summary"
    keeps only each call's frame (for long training runs). Raises WatchError (a ValueError) naming what is not
    supported: LSTM proj_size, inter-layer dropout in training mode, modules overriding forward, float16/bfloat16.
    """
    if not isinstance(model, nn.Module):
        raise WatchError(f"watch() needs an nn.Module, got {type(model).__name__}")
    if keep not in KEEP:
        raise WatchError(f"keep must be one of {', '.join(KEEP)}; got {keep!r}")
    modules = {name: m for name, m in model.named_modules() if _base_class(m) is not None}
    if not modules:
        raise WatchError(f"watch: {type(model).__name__} contains no nn.GRU, nn.LSTM or nn.RNN to watch")
    for name, module in modules.items():
        _check_module(name, module)
    recording = Recording(modules=modules, keep=keep)
    patched: list[nn.Module] = []
    try:
        for name, module in modules.items():
            module.forward = _make_forward(recording, name, module)
            patched.append(module)
        yield recording
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)


def _make_forward(recording: Recording, name: str, module: nn.RNNBase):
    """The instance-level forward installed by `watch` (same signature as the module's own)."""
    original = type(module).forward

    def forward(input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, Tensor] | None = None):
        return _watched_call(recording, name, module, original, input, hx)

    return forward


def _watched_call(recording: Recording, name: str, module: nn.RNNBase, original, input, hx):
    """Run one call through the watched Function (or the original forward when no gradient can flow)."""
    _check_call(name, module)
    lstm = isinstance(module, nn.LSTM)
    h0, c0 = (hx if hx is not None else (None, None)) if lstm else (hx, None)
    names = _param_names(module)
    params = [getattr(module, n) for n in names]
    packed = isinstance(input, PackedSequence)
    x = input.data if packed else input
    tensors = [t for t in (x, h0, c0, *params) if isinstance(t, Tensor)]
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return original(module, input, hx)  # nothing to differentiate: not recorded
    unbatched = not packed and x.dim() == 2
    _check_input(name, module, x, packed, h0, c0, unbatched)
    if packed:
        layout = _Layout.of_packed(input)
        xb = x
    else:
        if unbatched:
            x = x.unsqueeze(0 if module.batch_first else 1)
            h0 = h0.unsqueeze(1) if h0 is not None else None
            c0 = c0.unsqueeze(1) if c0 is not None else None
        xb = x if module.batch_first else x.transpose(0, 1)
        layout = _Layout(int(xb.shape[0]), int(xb.shape[1]), None)
    mask = layout.valid if layout.valid is not None else torch.ones(layout.batch, layout.steps, dtype=torch.bool)
    call = WatchedCall(name=name, module=module, index=len(recording.calls), keep=recording.keep,
                       batch_first=module.batch_first, packed=packed, mask=mask.cpu())
    recording.calls.append(call)
    ctx_info = _CallInfo(recording, call, layout, names, unbatched)
    outputs = _WatchedRNN.apply(ctx_info, xb, h0, c0, *params)
    y, h_n = outputs[0], outputs[1]
    if packed:
        y = layout.wrap(y)
    elif not module.batch_first:
        y = y.transpose(0, 1)
    if unbatched:
        y = y.squeeze(0 if module.batch_first else 1)
        h_n = h_n.squeeze(1)
    if lstm:
        c_n = outputs[2].squeeze(1) if unbatched else outputs[2]
        return y, (h_n, c_n)
    return y, h_n


def _param_names(module: nn.RNNBase) -> list[str]:
    """The module's parameter names, per layer and direction: weight_ih, weight_hh (, bias_ih, bias_hh)."""
    kinds = _PARAM_KINDS if module.bias else _PARAM_KINDS[:2]
    dirs = ("", "_reverse") if module.bidirectional else ("",)
    return [f"{kind}_l{layer}{suffix}" for layer in range(module.num_layers) for suffix in dirs for kind in kinds]


def _check_input(name: str, module: nn.RNNBase, x: Tensor, packed: bool, h0: Tensor | None, c0: Tensor | None,
                 unbatched: bool) -> None:
    """Shapes and dtypes, refused with the field named (as the module would, but as a WatchError)."""
    where = _label(name, module)
    if not packed and x.dim() not in (2, 3):
        raise WatchError(f"watch: {where} got input of shape {tuple(x.shape)}; expected [B, T, I] / [T, B, I] "
                         "(batch_first decides) or unbatched [T, I]")
    if x.shape[-1] != module.input_size:
        raise WatchError(f"watch: {where} expects input size {module.input_size}, got {x.shape[-1]}")
    dtype = module_params(module, 0, 0)[0].dtype
    if x.dtype != dtype:
        raise WatchError(f"watch: {where} has dtype {dtype} but its input is {x.dtype}; cast one of them")
    if isinstance(module, nn.LSTM) and (h0 is None) != (c0 is None):
        raise WatchError(f"watch: {where} needs both h_0 and c_0 (or neither)")


@dataclass
class _CallInfo:
    """What the Function needs besides tensors: where to record, the batch layout, the parameter names."""

    recording: Recording
    call: WatchedCall
    layout: _Layout
    names: list[str]
    unbatched: bool


def _layer_view(recording: Recording, module: nn.RNNBase, layer: int) -> Callable[..., tuple]:
    """A batch-first one-layer module whose parameters ARE layer `layer` of `module` (cached, refreshed per call).

    A batch-first one-layer module is its own view: its class's forward, bound to it (not the watched forward)."""
    if module.num_layers == 1 and module.batch_first:
        return functools.partial(_base_class(module).forward, module)
    key = (id(module), layer)
    view = recording._views.get(key)
    num_dirs = 2 if module.bidirectional else 1
    if view is None:
        in_size = module.input_size if layer == 0 else num_dirs * module.hidden_size
        kwargs = dict(num_layers=1, bias=module.bias, batch_first=True, bidirectional=module.bidirectional,
                      device=torch.device("meta"))
        if isinstance(module, nn.RNN):
            kwargs["nonlinearity"] = module.nonlinearity
        view = _base_class(module)(in_size, module.hidden_size, **kwargs)
        recording._views[key] = view
    for d in range(num_dirs):
        suffix = "_reverse" if d == 1 else ""
        for kind, tensor in zip(_PARAM_KINDS, module_params(module, layer, d), strict=True):
            if tensor is not None:
                setattr(view, f"{kind}_l0{suffix}", tensor)  # RNNBase keeps _flat_weights in sync
    return view


class _WatchedRNN(torch.autograd.Function):
    """Forward: the fused kernel layer by layer (no graph). Backward: the rescaled adjoint, recorded."""

    @staticmethod
    def forward(ctx, info: _CallInfo, x: Tensor, h0: Tensor | None, c0: Tensor | None, *params: Tensor):
        """x is batch-first [B, T, I] (or packed data [N, I]); returns (y, h_n[, c_n]) with y like x."""
        ctx.set_materialize_grads(False)
        module, layout = info.call.module, info.layout
        num_dirs = 2 if module.bidirectional else 1
        lstm = isinstance(module, nn.LSTM)
        layer_in = layout.wrap(x) if layout.packed is not None else x
        outs, h_fin, c_fin = [], [], []
        for layer in range(module.num_layers):
            rows = slice(layer * num_dirs, (layer + 1) * num_dirs)
            hx = None
            if h0 is not None:
                hx = (h0[rows], c0[rows]) if lstm else h0[rows]
            out, finals = _layer_view(info.recording, module, layer)(layer_in, hx)
            if lstm:
                finals, c_final = finals
                c_fin.append(c_final)
            h_fin.append(finals)
            outs.append(layout.to_padded(out.data) if layout.packed is not None else out)
            layer_in = out
        y = layer_in.data if layout.packed is not None else layer_in
        h_n = torch.cat(h_fin)
        hidden_outs = outs[:-1] if layout.packed is None else outs  # y itself is saved as an output
        ctx.info = info
        ctx.save_for_backward(x, h0, c0, y, *hidden_outs, *params)
        if lstm:
            return y, h_n, torch.cat(c_fin)
        return y, h_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None = None):
        """The rescaled adjoint from the gradients arriving at y, h_n (and c_n); records them on the call."""
        info: _CallInfo = ctx.info
        module, layout, call = info.call.module, info.layout, info.call
        layers = module.num_layers
        saved = ctx.saved_tensors
        x, h0, c0, y = saved[:4]
        packed = layout.packed is not None
        n_outs = layers if packed else layers - 1
        outs = list(saved[4:4 + n_outs])
        params = dict(zip(info.names, saved[4 + n_outs:], strict=True))
        if not packed:
            outs.append(y)
        x_pad = layout.to_padded(x) if packed else x
        grads = {
            "y": (layout.to_padded(grad_y) if packed else grad_y) if grad_y is not None else torch.zeros_like(outs[-1]),
            "h_n": grad_h if grad_h is not None else outs[-1].new_zeros(h0.shape if h0 is not None else
                                                                        _final_shape(module, layout)),
        }
        if isinstance(module, nn.LSTM):
            grads["c_n"] = grad_c if grad_c is not None else torch.zeros_like(grads["h_n"])

        def weights(layer: int, d: int) -> tuple[Tensor | None, ...]:
            suffix = f"_l{layer}" + ("_reverse" if d == 1 else "")
            return tuple(params.get(kind + suffix) for kind in _PARAM_KINDS)

        needs = ctx.needs_input_grad
        want_params = any(needs[4:])
        adjoint = adjoint_pass(module, x_pad, outs, grads, initial=(h0, c0) if h0 is not None else None,
                               valid=layout.valid, params=weights, want_params=want_params)
        input_grad = layout.to_data(adjoint.input_grad) if packed else adjoint.input_grad
        param_grads: dict[str, Tensor] = {}
        if want_params:
            num_dirs = 2 if module.bidirectional else 1
            for layer in range(layers):
                for d in range(num_dirs):
                    suffix = f"_l{layer}" + ("_reverse" if d == 1 else "")
                    for kind, grad in zip(_PARAM_KINDS, adjoint.param_grads[layer * num_dirs + d], strict=True):
                        if grad is not None:
                            param_grads[kind + suffix] = grad
        _record(call, info, layout, x_pad, outs, grads, (grad_y is not None, grad_h is not None,
                                                         grad_c is not None), adjoint, param_grads)
        result = [None, input_grad if needs[1] else None,
                  adjoint.initial_hidden_grad if needs[2] else None,
                  adjoint.initial_cell_grad if needs[3] else None]
        result += [param_grads[n] if need else None for n, need in zip(info.names, needs[4:], strict=True)]
        return tuple(result)


def _final_shape(module: nn.RNNBase, layout: _Layout) -> tuple[int, int, int]:
    return (module.num_layers * (2 if module.bidirectional else 1), layout.batch, module.hidden_size)


def _record(call: WatchedCall, info: _CallInfo, layout: _Layout, x: Tensor, outs: list[Tensor], grads: dict,
            present: tuple[bool, bool, bool], adjoint: AdjointResult, param_grads: dict[str, Tensor]) -> None:
    """Store one backward pass on its call (the latest pass wins); summary keeps only the frame."""
    from .explain import flushes_denormals

    module = call.module
    output_grad = grads["y"] if present[0] else None
    input_grad = adjoint.input_grad
    if layout.packed is None:
        if output_grad is not None and not module.batch_first:
            output_grad = output_grad.transpose(0, 1)
        if not module.batch_first:
            input_grad = input_grad.transpose(0, 1)
        if info.unbatched:
            output_grad = output_grad.squeeze(0 if module.batch_first else 1) if output_grad is not None else None
            input_grad = input_grad.squeeze(0 if module.batch_first else 1)
    h0_grad, c0_grad = adjoint.initial_hidden_grad, adjoint.initial_cell_grad
    if info.unbatched and h0_grad is not None:
        h0_grad = h0_grad.squeeze(1)
        c0_grad = c0_grad.squeeze(1) if c0_grad is not None else None
    # Detached: the saved output y comes back from ctx.saved_tensors with this Function's node as its grad_fn, and
    # that node holds `info` -> call. The report's states, stacked from y, then had a grad_fn leading back to the
    # node: a cycle through autograd's C++ graph that Python's gc cannot see, so every watched call whose report
    # was built stayed in memory for good (~75 MB per training run of the app's default, 20 snapshots).
    call._tensors = dict(hidden_grad=adjoint.hidden_grad, cell_grad=adjoint.cell_grad, output_grad=output_grad,
                         input_grad=input_grad, h0_grad=h0_grad, c0_grad=c0_grad, param_grads=param_grads,
                         _x=x.detach(), _outs=[out.detach() for out in outs],
                         _grads={name: grad.detach() for name, grad in grads.items()}, _present=present,
                         _adjoint=adjoint, _flush=flushes_denormals())
    call._report, call._frame = None, None
    call.backward_count += 1
    if call.keep == "summary":
        call._frame = _frame_of(_build_report(call), call.mask)
        call._tensors = {}


# --- Reports, frames and verdicts ----------------------------------------------------------------------------------


def _watch_masks(kind: str, layers: int, num_dirs: int, hidden: int, inputs: int, valid: Tensor,
                 present: tuple[bool, bool, bool]) -> dict[str, Tensor | None]:
    """Structural masks for a user's loss: outputs autograd passed a gradient for are read (every element of them),
    the others are not; causality and direction as in `explain.structural_masks`; padding is never reached."""
    batch, steps = valid.shape
    y_read, h_read, c_read = present
    lstm = kind == "lstm"
    stacked_read = valid.unsqueeze(-1).expand(batch, steps, num_dirs * hidden) & y_read
    lengths = valid.sum(dim=1)  # each item's last real step is lengths - 1 (forward direction)
    shape = (layers, num_dirs, batch, steps, hidden)
    hidden_reached = torch.zeros(shape, dtype=torch.bool)
    hidden_read = torch.zeros(shape, dtype=torch.bool)
    cell_reached = torch.zeros(shape, dtype=torch.bool) if lstm else None
    cell_read = torch.zeros(shape, dtype=torch.bool) if lstm else None
    items = torch.arange(batch)
    direct = stacked_read
    for layer in range(layers - 1, -1, -1):
        for d in range(num_dirs):
            final = (lengths - 1).clamp(min=0) if d == 0 else torch.zeros_like(lengths)
            seed_h = direct[..., d * hidden:(d + 1) * hidden].clone()
            seed_c = torch.zeros_like(seed_h)
            if h_read:
                seed_h[items, final] = True
            if lstm and c_read:
                seed_c[items, final] = True
            any_read = (seed_h | seed_c).any(dim=2)  # [B, T]
            ordered = any_read if d == 0 else any_read.flip(1)
            later = ordered.flip(1).cumsum(dim=1).flip(1) > 0
            later = torch.cat([later[:, 1:], torch.zeros_like(later[:, :1])], dim=1)
            later = later if d == 0 else later.flip(1)
            hidden_reached[layer, d] = (seed_h | later.unsqueeze(-1)) & valid.unsqueeze(-1)
            hidden_read[layer, d] = seed_h & valid.unsqueeze(-1)
            if lstm:
                cell_reached[layer, d] = (hidden_reached[layer, d] | seed_c) & valid.unsqueeze(-1)
                cell_read[layer, d] = seed_c & valid.unsqueeze(-1)
        reached = hidden_reached[layer] if not lstm else hidden_reached[layer] | cell_reached[layer]
        step_read = reached.any(dim=(0, 3))
        width = inputs if layer == 0 else num_dirs * hidden
        direct = step_read.unsqueeze(-1).expand(batch, steps, width)
    named_read = {"y": stacked_read.clone(), "h_n": torch.full((layers * num_dirs, batch, hidden), h_read)}
    if lstm:
        named_read["c_n"] = torch.full((layers * num_dirs, batch, hidden), c_read)
    return dict(stacked_read=stacked_read.clone(), hidden_reached=hidden_reached, cell_reached=cell_reached,
                input_reached=direct.clone(), hidden_read=hidden_read, cell_read=cell_read, named_read=named_read)


_MASKS = TensorCache(size=2, max_bytes=1 << 23)
"""Masks of unpadded calls by structure (a training run's snapshots all share one entry; ≤ 16 MiB in all)."""


def _cpu(scaled: Scaled) -> Scaled:
    return Scaled(scaled.mantissa.detach().cpu(), scaled.exponent.cpu())


def _build_report(call: WatchedCall) -> GradientReport:
    """The call as a GradientReport: its config, tensors (CPU, batch-first) and masks for a user's loss."""
    t = call._tensors
    module, x, outs, grads, adjoint = call.module, t["_x"], t["_outs"], t["_grads"], t["_adjoint"]
    kind = cell_kind(module)
    num_dirs, hidden = (2 if module.bidirectional else 1), module.hidden_size
    batch, steps = x.shape[:2]
    cfg = ExplainConfig(cell=kind, num_layers=module.num_layers, input_size=module.input_size, hidden_size=hidden,
                        bidirectional=module.bidirectional, head="none", seq_len=steps, batch_size=batch,
                        target=WATCH_TARGET, device=str(x.device),
                        dtype="float64" if x.dtype == torch.float64 else "float32")
    structure = (kind, module.num_layers, num_dirs, hidden, module.input_size, call.mask, t["_present"])
    if bool(call.mask.all()):  # no padding: the masks depend on the shapes and on what was read, so they are cached
        masks = _MASKS.get((*structure[:5], tuple(call.mask.shape), structure[6]), lambda: _watch_masks(*structure))
    else:
        masks = _watch_masks(*structure)
    states = torch.stack([out.view(batch, steps, num_dirs, hidden).permute(2, 0, 1, 3) for out in outs])
    return GradientReport(
        config=cfg, engine="watch", device=str(x.device), module=module, head=None,
        inputs=x.detach().cpu(), output=outs[-1].detach().cpu(), target_value=math.nan,
        stacked_grad=grads["y"].detach().cpu(), input_grad=adjoint.input_grad.cpu(),
        hidden_grad=adjoint.hidden_grad.cpu(), hidden_states=states.cpu(),
        cell_grad=adjoint.cell_grad.cpu() if adjoint.cell_grad is not None else None,
        grads={k: v.detach().cpu() for k, v in grads.items()},
        hidden_magnitude=_cpu(adjoint.hidden_magnitude),
        cell_magnitude=_cpu(adjoint.cell_magnitude) if adjoint.cell_magnitude is not None else None,
        input_magnitude=_cpu(adjoint.input_magnitude), direct_log10_norm=adjoint.direct_log10_norm,
        flush_denormal=t["_flush"], **masks)


def _frame_of(report: GradientReport, mask: Tensor) -> pd.DataFrame:
    """report.frame plus `padded_items` (batch items with no real step there); zero_cause "padding" where all are."""
    frame = report.frame.copy()
    padded = (~mask).sum(dim=0).numpy()  # [T]
    frame["padded_items"] = padded[frame["t"].to_numpy()]
    all_padded = frame["padded_items"].to_numpy() == mask.shape[0]
    frame.loc[all_padded & frame["exactly_zero"].to_numpy(), "zero_cause"] = "padding"
    frame.loc[all_padded, "structurally_zero"] = False
    return frame


def _verdict(call: WatchedCall) -> str:
    """Render the call's facts, with the target and y.grad lines written for a user's loss."""
    from .verdict import format_steps, render

    report = call.report
    items = report.facts()
    cfg = report.config
    present = call._tensors["_present"]
    directions = "bidirectional" if cfg.bidirectional else "unidirectional"
    lines = [f"**Call {call.index}** of `{call.name or 'model'}` ({CELL_LABELS[cfg.cell]}, {cfg.num_layers} layer(s), "
             f"{directions}, T = {cfg.seq_len}, B = {cfg.batch_size}, {cfg.dtype}, on {report.device}); the target "
             "is your own loss."]
    stacked = next(f for f in items if f.kind == "stacked_output")
    zero = stacked.numbers["zero_steps"]
    if not present[0]:
        lines.append("- **output.grad**: nothing after this call uses its output (autograd passed no gradient for "
                     "it), so ∂L/∂y is structurally zero at every step; the states get their gradient through "
                     "h_n" + (" / c_n" if cfg.cell == "lstm" else "") + " only.")
    else:
        text = (f"- **output.grad** (∂L/∂y, what `output.retain_grad()` shows) is non-zero at "
                f"{format_steps(stacked.steps)} and exactly zero at {format_steps(zero)} ({len(zero)} of "
                f"{cfg.seq_len} steps).")
        if zero:
            text += (" Your loss's derivative is exactly 0 there: the code after the module does not read those "
                     "steps, or reads them with a zero factor (this record cannot see that code, so these zeros "
                     "are reported as zero on a path, not structural).")
        lines.append(text + " `y` stacks the states after the recurrence ran; no step of the recurrence reads it.")
    padded = int((~call.mask).sum())
    if padded:
        lines.append(f"- **Padding**: {padded} (item, step) pairs of this packed batch are padding (no state): their "
                     "gradients are 0, call.mask is False there.")
    rest = [f for f in items if f.kind not in ("target", "stacked_output")
            and not (f.kind == "zero_on_path" and f.quantity == "stacked_output")]
    return "\n".join(lines) + "\n" + render(rest)
