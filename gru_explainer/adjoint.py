"""The fast engine: the adjoint (backpropagation-through-time) recursion written out, on the fused states, rescaled.

The fused forward already returns every state of a layer. From those, each step's local derivatives can be
recomputed for all t at once (two matmuls), leaving only the adjoint recursion
    dL/dh_{t-1} = direct_{t-1} + (∂h_t/∂h_{t-1})ᵀ dL/dh_t
sequential: per step a few elementwise ops and one [B, G*H] x [G*H, H] matmul.

Rescaled: every carry is held as mantissa × 2**exponent, one integer exponent per (step, batch item), and the
mantissa row is renormalised to a largest |value| in [0.5, 1) every few steps (a multiplication by a power of two:
exact). So no intermediate underflows or becomes denormal, whatever the caller's flush-denormal flag (denormal
arithmetic is several times slower on many CPUs), and the TRUE magnitude is known even far below or above what the
dtype can hold. `Scaled.value()` then rounds to the dtype once, as autograd would have held it.

Everything here is time-major ([T, B, ...]) in *processing order* (reversed time for the reverse direction);
callers convert.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import linear

ZERO_ROW = -(2 ** 30)
"""The exponent of an all-zero mantissa row: below every real exponent, so adding it never shifts anything away."""
LOG10_2 = math.log10(2.0)
LN10 = math.log(10.0)


def _drop_below(dtype: torch.dtype) -> int:
    """Relative shifts below -this are dropped when adding (the smaller term is < 2**-this of the larger one)."""
    return 960 if dtype == torch.float64 else 100


@dataclass
class Scaled:
    """A tensor held as mantissa · 2**exponent, one exponent per row (the row is the last axis).

    mantissa [..., K] in the compute dtype, each row's largest |value| below 2 (all-zero rows have exponent
    ZERO_ROW); exponent [...] int32. Non-finite values stay in the mantissa (inf/NaN propagate as in autograd).
    """

    mantissa: Tensor
    exponent: Tensor

    @classmethod
    def of(cls, values: Tensor) -> Scaled:
        """Exact rescaling of an ordinary tensor (exponent 0 to start with)."""
        return normalize(values, torch.zeros(values.shape[:-1], dtype=torch.int32, device=values.device))

    def value(self, out: Tensor | None = None) -> Tensor:
        """The values as the dtype holds them: rounded once; 0 (or denormal) below its range, ±inf above.

        `out` (optional, the mantissa's shape, any strides) receives them, so a caller can fill its own buffer.
        """
        m, e = self.mantissa, self.exponent
        if m.numel() == 0:
            return m.clone() if out is None else out.copy_(m)
        info = torch.finfo(m.dtype)
        low, high = int(math.log2(info.tiny) + math.log2(info.eps)) - 2, int(math.log2(info.max)) + 1
        factor = torch.exp2(e.clamp(low, high).to(m.dtype)).unsqueeze(-1)  # exact powers of two (0 / inf at ends)
        out = torch.mul(m, factor, out=out) if out is not None else m * factor
        if int(e.max()) >= high:  # 0 * inf would be NaN where the true value is an exact 0
            out.masked_fill_(m == 0, 0)
        return out

    def log10_abs(self) -> Tensor:
        """log10 |true value| per element, in float64 (-inf for exact zeros, NaN where the value is NaN)."""
        m = self.mantissa.double()
        return torch.log10(m.abs()) + self.exponent.double().unsqueeze(-1) * LOG10_2

    def log10_row_norm(self) -> Tensor:
        """log10 of each row's true L2 norm, in float64 ([...]; -inf for all-zero rows)."""
        norm = torch.linalg.vector_norm(self.mantissa, dim=-1)  # mantissas are small: no overflow in the dtype
        return torch.log10(norm.double()) + self.exponent.double() * LOG10_2

    def flip(self, dim: int = 0) -> Scaled:
        """Reverse one of the row axes (time, for the reverse direction)."""
        return Scaled(self.mantissa.flip(dim), self.exponent.flip(dim))

    def transpose(self, dim0: int, dim1: int) -> Scaled:
        """Swap two row axes (e.g. time-major <-> batch-first)."""
        return Scaled(self.mantissa.transpose(dim0, dim1), self.exponent.transpose(dim0, dim1))


SMALL_ELEMENTS = 1 << 19
"""Below this many elements, abs().amax() is faster than two reductions (1.1-1.3x up to ~0.5 M elements, one
thread; above, its temporary costs more: 10x at 8 M). It also gives +0 for a zero row, where max(amax, -amin)
may give -0."""


def row_max_abs(values: Tensor) -> Tensor:
    """max |value| over the last axis (0 for empty rows; NaN where a row holds NaN)."""
    if values.shape[-1] == 0:
        return values.new_zeros(values.shape[:-1])
    if values.numel() < SMALL_ELEMENTS:
        return values.abs().amax(dim=-1)
    return torch.maximum(values.amax(dim=-1), -values.amin(dim=-1))  # (no |values| temporary: faster when large)


def normalize(mantissa: Tensor, exponent: Tensor) -> Scaled:
    """Rescale each row so its largest |value| lies in [0.5, 1); all-zero rows get exponent ZERO_ROW."""
    row_max = row_max_abs(mantissa)
    shift = torch.frexp(row_max).exponent  # 0 for zero, inf and NaN rows
    if shift.numel() and int(shift.abs().max()) > 120:  # two factors, so neither is denormal or infinite
        half = shift // 2
        mantissa = mantissa * torch.exp2(-half.to(mantissa.dtype)).unsqueeze(-1)
        mantissa = mantissa * torch.exp2((half - shift).to(mantissa.dtype)).unsqueeze(-1)
    else:
        mantissa = mantissa * torch.exp2(-shift.to(mantissa.dtype)).unsqueeze(-1)
    return Scaled(mantissa, torch.where(row_max == 0, ZERO_ROW, exponent + shift))


def _power(shift: Tensor, dtype: torch.dtype) -> Tensor:
    """2**shift for integer shifts <= 0, as a [..., 1] factor; exactly 0 below the drop threshold."""
    drop = _drop_below(dtype)
    factor = torch.exp2(shift.clamp(min=-drop).to(dtype))
    return torch.where(shift < -drop, torch.zeros_like(factor), factor).unsqueeze(-1)


def add_scaled(a_m: Tensor, a_e: Tensor, b_m: Tensor, b_e: Tensor) -> tuple[Tensor, Tensor]:
    """a + b for two rescaled tensors (rows aligned): (mantissa, exponent) on the larger exponent of each row."""
    a_e = torch.where(row_max_abs(a_m) == 0, ZERO_ROW, a_e)  # a stale exponent of a zero row must not win
    b_e = torch.where(row_max_abs(b_m) == 0, ZERO_ROW, b_e)
    e = torch.maximum(a_e, b_e)
    return a_m * _power(a_e - e, a_m.dtype) + b_m * _power(b_e - e, b_m.dtype), e


def _add_into(v: Tensor, e: Tensor, b_m: Tensor, b_e: Tensor) -> Tensor:
    """v·2**e += b_m·2**b_e, in place on v, rows aligned (b_m adds to v's first columns); returns the new exponent.

    b_e must be ZERO_ROW where b_m's row is all zero (as `normalize` leaves it). Same numbers as `add_scaled`: both
    terms are scaled by exact powers of two, and the sum is rounded once.
    """
    a_e = torch.where(row_max_abs(v) == 0, ZERO_ROW, e)  # a stale exponent of a zero row must not win
    new_e = torch.maximum(a_e, b_e)
    factors = _power(torch.stack([a_e, b_e]) - new_e, v.dtype)  # [2, B, 1]
    v.mul_(factors[0])
    v[:, :b_m.shape[-1]].addcmul_(b_m, factors[1])
    return new_e


def add(a: Scaled, b: Scaled) -> Scaled:
    """a + b, renormalised."""
    m, e = add_scaled(a.mantissa, a.exponent, b.mantissa, b.exponent)
    return normalize(m, e)


@dataclass
class LayerAdjoint:
    """Total derivatives for one layer and direction, time-major in processing order, rescaled."""

    hidden_grad: Scaled  # [T, B, H]: dL/dh_t
    cell_grad: Scaled | None  # [T, B, H]: dL/dc_t (LSTM); shares hidden_grad's exponents
    input_grad: Scaled  # [T, B, I]: dL/d(layer input)_t through this direction (mantissas not renormalised)
    initial_grad: Scaled | None = None  # [B, H] (LSTM [B, 2H]: dh_0 | dc_0): the carry left after the last step,
    # not renormalised
    param_grads: Callable[..., tuple[Tensor | None, ...]] | None = None
    """(dL/dh_t, dL/dc_t) in the dtype, processing order -> (weight_ih, weight_hh, bias_ih, bias_hh) gradients;
    `gate_values=` the pre-activation gradients in the dtype (`gate_grad.value()`) skips recomputing them."""
    gate_grad: Scaled | None = None
    """[T, B, G·H] dL/d(gate pre-activations) (LSTM, RNN: what the weights' gradients are made of) as the lean loop
    left them, with hidden_grad's exponents; None where the loop did not keep them (packed input, GRU)."""


def _zero_rows(zeros: Tensor) -> Scaled:
    """`Scaled.of` for a tensor known to be all zeros (every row gets exponent ZERO_ROW), without the pass over it."""
    return Scaled(zeros, torch.full(zeros.shape[:-1], ZERO_ROW, dtype=torch.int32, device=zeros.device))


def _shift(states: Tensor, first: Tensor | None = None) -> Tensor:
    """The previous states h_{t-1} for every t (`first`, or zeros, before the first step)."""
    head = torch.zeros_like(states[:1]) if first is None else first.unsqueeze(0).to(states.dtype)
    return torch.cat([head, states[:-1]], dim=0)


def _renormalize(c: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """The loop's rescale: c · 2**-k with k the exponent of each row's maximum; e + k."""
    k = torch.frexp(row_max_abs(c)).exponent
    return torch.ldexp(c, -k.unsqueeze(1)), e + k


RENORM_EVERY = 8
"""At most this many steps between renormalisations of the carry (fewer ops per step)."""
MAX_GROWTH_LOG2 = 50
"""Renormalise before the carry could have grown by 2**this since the last time (float32 holds 2**127)."""


def renorm_interval(gain: float) -> int:
    """Steps between renormalisations when one step multiplies the carry's largest |value| by at most `gain`."""
    if not math.isfinite(gain):
        return 1
    return max(1, min(RENORM_EVERY, int(MAX_GROWTH_LOG2 // max(math.log2(max(gain, 1.0)), 1.0))))


def _lost_precision(mantissa: Tensor) -> bool:
    """Did a carry shrink so far between renormalisations that float precision (or a whole row) may be lost?"""
    row_max = row_max_abs(mantissa)  # [T, B] in processing order; the loop ran from T-1 down to 0
    tiny = 2.0 ** -(_drop_below(mantissa.dtype) // 2)
    before = torch.cat([row_max[1:], torch.ones_like(row_max[:1])])  # the row processed just before
    vanished = (row_max == 0) & (before > 0) & (before < 2.0 ** -20)
    return bool(((row_max > 0) & (row_max < tiny)).any() or vanished.any())


def _recurse(step, start: Scaled, direct: Scaled, every: int,
             valid: Tensor | None = None) -> tuple[list, list[Tensor], Scaled]:
    """The sequential part: for s = T-1 .. 0, v_s = direct_s + carry; store what `step` returns; carry = step's.

    step(s, v) -> (stored, carry mantissa); the carry keeps v's exponent, renormalised every `every` steps.
    valid [T, B] bool (packed sequences): at an invalid (padding) step the carry passes unchanged (the state is
    frozen there). Returns (stored, exponents, the carry left after step 0: the initial state's gradient).
    """
    steps = direct.mantissa.shape[0]
    active = (direct.exponent != ZERO_ROW).any(dim=1).tolist()  # steps where something is read directly
    plan = [(steps - 1 - s) % every == every - 1 for s in range(steps)]
    direct_m, direct_e = direct.mantissa.unbind(0), direct.exponent.unbind(0)
    padded = [False] * steps if valid is None else (~valid).any(dim=1).tolist()
    valid_s = None if valid is None else valid.unsqueeze(-1).unbind(0)
    m, e = start.mantissa, start.exponent
    stored, exps = [], []
    for s in range(steps - 1, -1, -1):
        if active[s]:
            m, e = add_scaled(m, e, direct_m[s], direct_e[s])
        keep, carry = step(s, m)
        m = torch.where(valid_s[s], carry, m) if padded[s] else carry
        stored.append(keep)
        exps.append(e)
        if plan[s]:
            m, e = _renormalize(m, e)
    return stored[::-1], exps[::-1], Scaled(m, e)


def _recurse_into(step_into, start: Scaled, direct: Scaled, every: int, rows: Tensor,
                  row: tuple[Tensor, ...] | None = None) -> tuple[Tensor, list[Tensor], Scaled]:
    """`_recurse` without padding, every carry written straight into its row of one preallocated buffer.

    rows [T + 1, B, W] (W = start's width) is that buffer: rows[s + 1] is step s's row (dL/dh_s; for LSTM
    [dL/dh_s | carried dL/dc_s], which step_into may complete in place), rows[0] the carry left after step 0.
    step_into(s) reads rows[s + 1] and writes the carry into rows[s], with no new tensors (it holds its own views of
    the rows: making a view costs more than a small op). `direct` (normalised) adds to the rows' first columns.
    `row` = rows.unbind(0) when the caller has made those views already. Returns rows[1:], the exponents and the
    carry left. Fewer ops per step than `_recurse`, same numbers.
    """
    steps = direct.mantissa.shape[0]
    active = (direct.exponent != ZERO_ROW).any(dim=1).tolist()
    plan = [(steps - 1 - s) % every == every - 1 for s in range(steps)]
    row = rows.unbind(0) if row is None else row
    direct_m, direct_e = direct.mantissa, direct.exponent  # (indexed at active steps only: often one step is)
    row[steps].copy_(start.mantissa)
    e = start.exponent
    zero_start = bool((e == ZERO_ROW).all())  # the carry starts all zero (nothing read from h_n / c_n)
    exps = []
    for s in range(steps - 1, -1, -1):
        if active[s] and zero_start and s == steps - 1:  # 0 + direct = direct: a copy (`_add_into`'s numbers)
            row[s + 1][:, :direct_m[s].shape[-1]].copy_(direct_m[s])
            e = direct_e[s]
        elif active[s]:
            e = _add_into(row[s + 1], e, direct_m[s], direct_e[s])
        exps.append(e)
        step_into(s)
        if plan[s] and s:
            carry = row[s]
            k = torch.frexp(row_max_abs(carry)).exponent
            torch.ldexp(carry, -k.unsqueeze(1), out=carry)
            e = e + k
    left = Scaled(*_renormalize(row[0], e)) if plan[0] else Scaled(row[0], e)
    return rows[1:], exps[::-1], left


CHUNK_ELEMENTS = 1 << 18
"""Elementwise work over all steps runs in time chunks of about this many elements per tensor (they stay in cache)."""


def _time_chunks(seq_len: int, row_elements: int) -> list[slice]:
    """Slices of the time axis, each holding about CHUNK_ELEMENTS elements of a [T, row_elements] tensor."""
    size = max(1, CHUNK_ELEMENTS // max(row_elements, 1))
    return [slice(t, min(t + size, seq_len)) for t in range(0, seq_len, size)]


FAST_TANH_DTYPES = (torch.float32, torch.float64)
"""Dtypes `tanh_` computes through expm1 on CPU (elsewhere it is torch.tanh)."""


def tanh_(pre: Tensor) -> Tensor:
    """tanh in place. On CPU (float32/64) as expm1(2x) / (expm1(2x) + 2): within 3 ulp of the exact value (torch.tanh:
    1 ulp) and 2-5x faster than torch's CPU tanh (measured at the pass's shapes, one and two threads), which
    recomputing the gates spends a tenth of the pass on. Same special values: ±0, ±1 at ±inf, NaN."""
    if pre.device.type != "cpu" or pre.dtype not in FAST_TANH_DTYPES:
        return pre.tanh_()
    e = torch.mul(pre, 2).clamp_(max=40.0)  # tanh(20) rounds to 1 in both dtypes; expm1(40) is finite in both
    torch.expm1(e, out=e)
    return torch.div(e, e + 2, out=pre)


def _gru_coefficients(inputs: Tensor, prev: Tensor, params: tuple[Tensor | None, ...]) -> tuple[Tensor, Tensor]:
    """The GRU's local derivatives at every step, from its inputs [T, B, I] and previous states [T, B, H].

    Returns coef [T, B, 4, H]: ∂h/∂gh per gate block (r, z, n) and, as a fourth block, z (∂h/∂h_prev directly), so
    one multiplication by dL/dh gives every term of a step; and a_n [T, B, H] (∂h/∂(n pre-activation)). The gate
    pre-activations gi = W_ih x + b_ih and gh = W_hh h_prev + b_hh are recomputed chunk by chunk in time, so they
    stay in cache.
    """
    w_ih, w_hh, b_ih, b_hh = params
    seq_len, batch, hidden = prev.shape
    inputs = inputs.contiguous()  # (a transposed view: the matmul on it is slower)
    coef = prev.new_empty(seq_len, batch, 4, hidden)
    a_all = prev.new_empty(seq_len, batch, hidden)
    one = prev.new_ones(())
    for sl in _time_chunks(seq_len, 3 * batch * hidden):
        gi = _linear(inputs[sl], w_ih, b_ih).view(-1, batch, 3, hidden)
        gh = _linear(prev[sl], w_hh, b_hh).view(-1, batch, 3, hidden)
        c = coef[sl]
        rz = gi[:, :, :2].add_(gh[:, :, :2]).sigmoid_()
        r, z = rz[:, :, 0], c[:, :, 3].copy_(rz[:, :, 1])  # reset gate; update gate
        gh_n = gh[:, :, 2]
        n = tanh_(gi[:, :, 2].addcmul_(r, gh_n))  # candidate
        dn = torch.addcmul(one, n, n, value=-1)  # 1 - n²
        a_n = torch.addcmul(dn, z, dn, value=-1, out=a_all[sl])  # (1 - z)(1 - n²) = ∂h/∂(n pre-activation)
        c_n = torch.mul(a_n, r, out=c[:, :, 2])  # ∂h/∂(W_hn h + b_hn)
        torch.mul(c_n, gh_n, out=c[:, :, 0]).addcmul_(c[:, :, 0], r, value=-1)  # a_n gh_n r (1 - r): ∂h/∂(r pre-act.)
        torch.sub(prev[sl], n, out=c[:, :, 1]).mul_(torch.addcmul(z, z, z, value=-1))  # (h' - n) z (1 - z): z pre-act.
    return coef, a_all


NARROW = 16
"""Below this many output columns a matmul runs transposed (see `_mm`)."""


def _mm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a [M, K] @ b [K, N] (into `out` [M, N] if given); for a narrow result (N < NARROW, e.g. the weights of a
    task's 2 inputs) computed as (bᵀ aᵀ)ᵀ, which BLAS runs 2-10x faster at the pass's shapes (M = T·B rows)."""
    if b.shape[1] >= NARROW:
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    if out is None:
        return torch.mm(b.T, a.T).T
    torch.mm(b.T, a.T, out=out.T)
    return out


@functools.cache
def _onednn_linear() -> Callable[..., Tensor] | None:
    """oneDNN's CPU linear, x [M, K] @ w[N, K]ᵀ (+ bias), when this torch build has it and it agrees with a float64
    matmul on a small check; else None. (torch.mm goes through MKL, which runs the pass's big products 1.5-2.5x slower
    on some CPUs, e.g. AMD EPYC, measured at its shapes; the fused nn.LSTM already runs on oneDNN.)"""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.rand(shape, generator=gen) for shape in ((37, 19), (11, 19), (11,)))
        expected = x.double() @ w.double().T + b.double()
        for args in ((x, w, b), (x.T.contiguous().T, w.T.contiguous().T, None)):  # (transposed views too)
            got = op(args[0], args[1], args[2], "none", [], "")
            want = expected if args[2] is not None else expected - b.double()
            if got.shape != want.shape or not torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5):
                return None
        return lambda x, w, bias=None: op(x, w, bias, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):  # not in this build / not supported here
        return None


def _use_onednn(*tensors: Tensor) -> Callable[..., Tensor] | None:
    """The oneDNN linear for float32 CPU tensors outside autograd (None otherwise: float64 is not oneDNN's)."""
    grad = torch.is_grad_enabled()
    if any(t.device.type != "cpu" or t.dtype != torch.float32 or (grad and t.requires_grad) for t in tensors):
        return None
    return _onednn_linear()


def _linear(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [..., K] @ w [N, K]ᵀ (+ bias [N]) -> [..., N]: torch's linear, through oneDNN where `_use_onednn` allows."""
    op = _use_onednn(x, w) if x.dim() >= 2 else None
    if op is None:
        return _mm(x, w.T) if x.dim() == 2 and bias is None else linear(x, w, bias)
    return op(x.reshape(-1, x.shape[-1]), w, bias).view(*x.shape[:-1], w.shape[0])


WEIGHT_GRAD_ONEDNN_MACS = 1 << 23
"""From this many multiply-adds on, `_weight_grad` goes through oneDNN (below, its fixed cost outweighs the gain:
an Elman RNN's [3200, 32]ᵀ [3200, 32] ran 1.7x slower there, the GRU's [3200, 96]ᵀ [3200, 32] about even)."""


def _weight_grad(d: Tensor, inputs: Tensor) -> Tensor:
    """dᵀ @ inputs ([M, N]ᵀ [M, K] -> [N, K], contiguous): a weight's gradient summed over the M = T·B rows. Through
    oneDNN as (inputsᵀ d)ᵀ (its fast orientation at these shapes) for large products, except for narrow K (`_mm`'s
    case)."""
    large = inputs.shape[1] >= NARROW and d.shape[0] * d.shape[1] * inputs.shape[1] >= WEIGHT_GRAD_ONEDNN_MACS
    op = _use_onednn(d, inputs) if large else None
    product = _mm(d.T, inputs) if op is None else op(inputs.T, d.T).T
    return product.contiguous()  # (as a parameter is laid out: autograd accumulates into it without a copy)


def _mul_blocks(values: Tensor, coef: Tensor, out: Tensor, blocks: int) -> Tensor:
    """out[:, :, k] = values · coef[:, :, k] for the first `blocks` blocks ([T, B, H] times [T, B, G, H]); returns out.
    Plain products, one per block: a broadcast over the block axis runs ~1.5x slower."""
    for block in range(blocks):
        torch.mul(values, coef[:, :, block], out=out[:, :, block])
    return out


def _lstm_gate_grads(dh: Tensor, dc: Tensor, coef: Tensor) -> Tensor:
    """dL/d(gate pre-activations) [T, B, 4H] (i, f, g from dL/dc_t, o from dL/dh_t) given coef [T, B, 4, H]."""
    d = _mul_blocks(dc, coef, torch.empty_like(coef), 3)
    torch.mul(coef[:, :, 3], dh, out=d[:, :, 3])
    return d.view(*coef.shape[:2], -1)


def layer_adjoint(kind: str, inputs: Tensor, states: Tensor, params: tuple[Tensor, Tensor, Tensor, Tensor],
                  direct_h: Scaled, final_c: Tensor | None, every: int | None = None, *,
                  initial: tuple[Tensor | None, Tensor | None] | None = None,
                  valid: Tensor | None = None) -> LayerAdjoint:
    """Run the rescaled adjoint recursion for one layer and direction.

    inputs [T, B, I] and states [T, B, H] are the layer's input and its fused states in processing order;
    direct_h [T, B, H] is what the target (or the layer above) reads from h_t directly, h_n included (at the last
    processed step); final_c [B, H] is the target's direct derivative w.r.t. c_n (LSTM). The carry is renormalised
    every `every` steps (default: as often as a bound on one step's growth, from the weights, requires, at most
    every RENORM_EVERY steps); if it shrank too far in between, the pass reruns renormalising after every step.
    initial = (h_0, c_0) [B, H] each (None: zeros) are the initial states the forward started from. valid [T, B]
    bool marks real steps of a packed batch: the state is frozen at the others (padding; their states must hold
    the frozen state, or h_0, where a later processed step reads them), nothing may be read there directly, and
    they get zero gradients. The result's `initial_grad` is the carry left after step 0 (dL/dh_0 | dL/dc_0) and
    `param_grads` turns the per-step gradients, in the dtype, into the parameter gradients.
    """
    w_ih, w_hh, b_ih, b_hh = params
    seq_len, batch, hidden = states.shape
    h_0, c_0 = initial if initial is not None else (None, None)
    prev = _shift(states, h_0)
    w_sum = float(w_hh.abs().sum(dim=0).max())  # bounds |(u @ w_hh)_j| / max|u|
    zeros = states.new_zeros(batch, hidden)

    if kind == "gru":
        coef, a_n = _gru_coefficients(inputs, prev, params)
        coef_hh = coef[:, :, :3]  # ∂h/∂gh per gate block (r, z, n); coef[:, :, 3] is z
        # |z| <= 1, |c_z| <= 1/2, |a_n r| <= 1, |c_r| <= |gh_n| / 4 <= (max row sum of |W_hn| + max |b_hn|) / 4
        w_hn, b_hn = w_hh[2 * hidden:], (b_hh[2 * hidden:] if b_hh is not None else w_hh.new_zeros(1))
        gain = 1 + w_sum * max(1.0, (float(w_hn.abs().sum(dim=1).max()) + float(b_hn.abs().max())) / 4)
        coef_s = coef.unbind(0)

        def step(s: int, v: Tensor) -> tuple[Tensor, Tensor]:
            row_terms = v.unsqueeze(1) * coef_s[s]
            return v, torch.addmm(row_terms[:, 3], row_terms[:, :3].reshape(batch, 3 * hidden), w_hh)

        terms = states.new_empty(batch, 4, hidden)  # the lean loop's scratch row: v · (∂h/∂gh per block | z)
        gates_flat, direct_term = terms[:, :3].view(batch, 3 * hidden), terms[:, 3]
        rows = states.new_empty(seq_len + 1, batch, hidden)  # `_recurse_into`'s buffer, and views of its rows
        row, row_blocks = rows.unbind(0), rows.unsqueeze(2).unbind(0)
        row_views = row
        gate_rows = None  # (the loop's scratch holds dL/dgh, not dL/dgi: nothing kept)

        def step_into(s: int) -> None:  # carry = v·z + (v·∂h/∂gh) @ W_hh, no new tensors
            torch.mul(row_blocks[s + 1], coef_s[s], out=terms)
            torch.addmm(direct_term, gates_flat, w_hh, out=row[s])

        def gate_grads(v: Tensor, _c: Tensor | None) -> tuple[Tensor, Tensor]:  # (dL/dgi, dL/dgh) [T, B, 3H]
            d_gh = _mul_blocks(v, coef_hh, v.new_empty(seq_len, batch, 3, hidden), 3)
            d_gi = d_gh.clone()
            torch.mul(v, a_n, out=d_gi[:, :, 2])
            return d_gi.view(seq_len, batch, 3 * hidden), d_gh.view(seq_len, batch, 3 * hidden)

        start = _zero_rows(zeros)
    elif kind == "lstm":
        if _use_onednn(prev, w_hh) is not None:  # one product: [h_{t-1} | x_t] @ [W_hh | W_ih]ᵀ + b_hh + b_ih
            bias = b_hh if b_ih is None else (b_ih if b_hh is None else b_hh + b_ih)
            gates = _linear(torch.cat([prev, inputs], dim=-1), torch.cat([w_hh, w_ih], dim=1), bias)
        else:
            gates = linear(prev, w_hh, b_hh).view(-1, 4 * hidden)
            gates.addmm_(inputs.contiguous().view(-1, inputs.shape[-1]), w_ih.T)  # + W_ih x_t (+ b_ih below)
            if b_ih is not None:
                gates.add_(b_ih)
        gates = gates.view(seq_len, batch, 4, hidden)
        gates[:, :, :2].sigmoid_()
        gates[:, :, 3].sigmoid_()
        i, f, g, o = gates.unbind(2)
        tanh_(g)
        # The fused module returns h_t only; recompute c_t = f*c_{t-1} + i*g (elementwise, cheap).
        ig = i * g
        cell = torch.empty_like(ig)
        c = torch.zeros_like(ig[0]) if c_0 is None else c_0.to(ig.dtype)
        frozen = [False] * seq_len if valid is None else (~valid).any(dim=1).tolist()
        ig_s, f_s, cell_s = ig.unbind(0), f.unbind(0), cell.unbind(0)  # (views made once: cheaper than per step)
        for s in range(seq_len):
            if frozen[s]:
                c = torch.where(valid[s].unsqueeze(-1), torch.addcmul(ig_s[s], f_s[s], c), c, out=cell_s[s])
            else:
                c = torch.addcmul(ig_s[s], f_s[s], c, out=cell_s[s])
        tc = tanh_(cell.clone())
        one = tc.new_ones(())
        h_to_c = o * torch.addcmul(one, tc, tc, value=-1)  # ∂h_t/∂c_t = o (1 - tanh²c_t)
        coef = states.new_empty(seq_len, batch, 4, hidden)  # ∂c_t/∂(i, f, g pre-act.), ∂h_t/∂(o pre-act.)
        torch.mul(g, torch.addcmul(i, i, i, value=-1), out=coef[:, :, 0])  # g i (1 - i)
        torch.mul(_shift(cell, c_0), torch.addcmul(f, f, f, value=-1), out=coef[:, :, 1])  # c_{t-1} f (1 - f)
        torch.mul(i, torch.addcmul(one, g, g, value=-1), out=coef[:, :, 2])  # i (1 - g²)
        torch.mul(tc, torch.addcmul(o, o, o, value=-1), out=coef[:, :, 3])  # tanh(c_t) o (1 - o)
        # |h_to_c| <= 1; gate coefficients <= 1 except c_{t-1} f (1 - f) <= max |c| / 4
        gain = 2 * (1 + w_sum * max(1.0, float(row_max_abs(cell.flatten())) / 4)) + 1
        h_to_c_s = h_to_c.unbind(0)

        def step(s: int, v: Tensor) -> tuple[Tensor, Tensor]:  # v = [dL/dh_t | carried dL/dc_t]: one exponent
            v_h, v_c = v[:, :hidden], v[:, hidden:]
            v_c = torch.addcmul(v_c, v_h, h_to_c_s[s])  # dL/dc_t = carried + through h_t = o·tanh(c_t)
            d_gates = (torch.stack((v_c, v_c, v_c, v_h), dim=1) * coef[s]).view(batch, 4 * hidden)
            return (v_h, v_c), torch.cat([d_gates @ w_hh, v_c * f_s[s]], dim=1)

        gate_rows = states.new_empty(seq_len, batch, 4, hidden)  # every step's dL/d(pre-activations), kept
        d_gates_flat = gate_rows.view(seq_len, batch, 4 * hidden).unbind(0)
        d_gates_cell, d_gates_out = gate_rows[:, :, :3].unbind(0), gate_rows[:, :, 3].unbind(0)
        coef_cell_s, coef_out_s = coef[:, :, :3].unbind(0), coef[:, :, 3].unbind(0)
        rows = states.new_empty(seq_len + 1, batch, 2 * hidden)  # `_recurse_into`'s buffer, and views of its rows
        h_row, c_row = rows[..., :hidden].unbind(0), rows[..., hidden:].unbind(0)
        c_row_blocks = rows[..., hidden:].unsqueeze(2).unbind(0)
        row_views = None

        def step_into(s: int) -> None:  # the row's cell half becomes the total dL/dc_t, in place
            v_h, v_c = h_row[s + 1], c_row[s + 1]
            v_c.addcmul_(v_h, h_to_c_s[s])  # dL/dc_t = carried + through h_t = o·tanh(c_t)
            torch.mul(c_row_blocks[s + 1], coef_cell_s[s], out=d_gates_cell[s])
            torch.mul(v_h, coef_out_s[s], out=d_gates_out[s])
            torch.mm(d_gates_flat[s], w_hh, out=h_row[s])
            torch.mul(v_c, f_s[s], out=c_row[s])

        def gate_grads(v: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:  # gi and gh enter alike
            d = _lstm_gate_grads(v, c, coef)
            return d, d

        start = (_zero_rows(torch.cat([zeros, zeros], -1)) if final_c is None or not bool(final_c.any()) else
                 Scaled.of(torch.cat([zeros, final_c], -1)))
    else:
        # Elman RNN: h = act(gi + gh); act' from the state itself, with autograd's rules (relu: 0 where h <= 0, so a
        # NaN state passes its gradient on, as torch's threshold_backward does).
        slope = (1 - states * states) if kind == "rnn_tanh" else (~(states <= 0)).to(states.dtype)
        gain = w_sum  # |slope| <= 1
        slope_s = slope.unbind(0)

        def step(s: int, v: Tensor) -> tuple[Tensor, Tensor]:
            return v, (v * slope_s[s]) @ w_hh

        gate_rows = states.new_empty(seq_len, batch, hidden)  # every step's dL/d(pre-activation), kept
        gate_row = gate_rows.unbind(0)
        rows = states.new_empty(seq_len + 1, batch, hidden)  # `_recurse_into`'s buffer, and views of its rows
        row = row_views = rows.unbind(0)

        def step_into(s: int) -> None:
            torch.mm(torch.mul(row[s + 1], slope_s[s], out=gate_row[s]), w_hh, out=row[s])

        def gate_grads(v: Tensor, _c: Tensor | None) -> tuple[Tensor, Tensor]:
            d = v * slope
            return d, d

        start = _zero_rows(zeros)
    interval = every or renorm_interval(gain)
    if valid is None:  # the lean loop: each carry written into its row, nothing stacked
        mantissa, exps, carry = _recurse_into(step_into, start, direct_h, interval, rows, row_views)
        stored = None
    else:
        direct = direct_h  # _recurse adds whole rows: LSTM rows are [dL/dh | dL/dc], nothing is read from c_t directly
        if kind == "lstm":
            direct = Scaled(torch.cat([direct_h.mantissa, torch.zeros_like(direct_h.mantissa)], -1), direct_h.exponent)
        stored, exps, carry = _recurse(step, start, direct, interval, valid)
    exponent = torch.stack(exps)
    if stored is None:
        hidden_grad = Scaled(mantissa[..., :hidden] if kind == "lstm" else mantissa, exponent)
        cell_grad = Scaled(mantissa[..., hidden:], exponent) if kind == "lstm" else None
    elif kind == "lstm":
        hidden_grad = Scaled(torch.stack([h for h, _ in stored]), exponent)
        cell_grad = Scaled(torch.stack([c for _, c in stored]), exponent)
    else:
        hidden_grad, cell_grad = Scaled(torch.stack(stored), exponent), None
    if valid is not None:  # padding: no state there, so no gradient (the carry passed through unchanged)
        pad = ~valid.unsqueeze(-1)
        hidden_grad.mantissa.masked_fill_(pad, 0)
        if cell_grad is not None:
            cell_grad.mantissa.masked_fill_(pad, 0)
    carried = mantissa if stored is None else hidden_grad.mantissa  # (the lean LSTM rows are [dL/dh | dL/dc])
    if stored is not None and cell_grad is not None:
        carried = torch.cat([hidden_grad.mantissa, cell_grad.mantissa], -1)
    if every != 1 and _lost_precision(carried):
        return layer_adjoint(kind, inputs, states, params, direct_h, final_c, every=1,
                             initial=initial, valid=valid)
    initial_grad = carry  # (not renormalised: `normalize` it before `value()`)
    # The lean loop's per-step gate gradients: the same products as `gate_grads` of the mantissas (each row's
    # mantissa was final when its step ran), so the input gradient and the weights' need not redo them.
    gate_grad = Scaled(gate_rows.view(seq_len, batch, -1), exponent) if stored is None and gate_rows is not None \
        else None

    def param_grads(h_values: Tensor, c_values: Tensor | None,
                    gate_values: Tensor | None = None) -> tuple[Tensor | None, ...]:
        d_gi, d_gh = gate_grads(h_values, c_values) if gate_values is None else (gate_values, gate_values)
        flat_gi, flat_gh = d_gi.reshape(-1, d_gi.shape[-1]), d_gh.reshape(-1, d_gh.shape[-1])
        bias_gi = flat_gi.sum(0) if b_ih is not None else None
        if b_hh is None:
            bias_gh = None
        elif d_gh is d_gi and bias_gi is not None:  # LSTM, RNN: the same gate gradients, so the same sum
            bias_gh = bias_gi.clone()
        else:
            bias_gh = flat_gh.sum(0)
        return (_weight_grad(flat_gi, inputs.reshape(-1, inputs.shape[-1])),
                _weight_grad(flat_gh, prev.reshape(-1, hidden)), bias_gi, bias_gh)

    if kind == "gru":  # ∂h/∂gi equals ∂h/∂gh except the candidate block: a_n, not a_n·r
        input_m = inputs.new_empty(seq_len, batch, w_ih.shape[1])
        v = hidden_grad.mantissa
        chunks = _time_chunks(seq_len, 3 * batch * hidden)
        scratch = v.new_empty(chunks[0].stop - chunks[0].start, batch, 3, hidden)  # dL/dgi of one chunk
        for sl in chunks:
            d_gi = _mul_blocks(v[sl], coef_hh[sl], scratch[:sl.stop - sl.start], 2)  # r, z; the candidate block:
            torch.mul(v[sl], a_n[sl], out=d_gi[:, :, 2])
            input_m[sl].view(-1, w_ih.shape[1]).copy_(_linear(d_gi.view(-1, 3 * hidden), w_ih.T))
        input_grad = Scaled(input_m, exponent)
    else:  # LSTM, RNN: the gate gradients enter W_ih as they enter W_hh
        d_gates = gate_grad.mantissa if gate_grad is not None else gate_grads(
            hidden_grad.mantissa, cell_grad.mantissa if cell_grad is not None else None)[0]
        input_grad = Scaled(_linear(d_gates.reshape(seq_len * batch, -1), w_ih.T).reshape(seq_len, batch, -1),
                            exponent)
    return LayerAdjoint(hidden_grad, cell_grad, input_grad, initial_grad, param_grads, gate_grad)


@dataclass
class AdjointResult:
    """The hidden-state pass of a whole module: values as autograd would give them, plus the true magnitudes.

    Batch-first, original time order. `*_grad` are in the module's dtype (rounded once; below the dtype's range
    they are 0 or denormal, above it inf, and once a step is non-finite every step processed after it is too, as
    in autograd). `*_magnitude` hold the same values rescaled (exact where the dtype is not; NaN rows where they are
    computed through inf/NaN forward states, which give them no true value), and
    `direct_log10_norm[quantity]` [L, D, T] is log10 of the norm of what is read from h_t (c_t) directly: from y,
    h_n / c_n or the layer above, before the recurrence adds what later steps carry back.
    """

    hidden_grad: Tensor  # [L, D, B, T, H]
    cell_grad: Tensor | None
    input_grad: Tensor  # [B, T, I]
    hidden_magnitude: Scaled
    cell_magnitude: Scaled | None
    input_magnitude: Scaled
    direct_log10_norm: dict[str, Tensor]
    initial_hidden_grad: Tensor | None = None  # [L*D, B, H]: dL/dh_0 (when `initial` was given)
    initial_cell_grad: Tensor | None = None  # [L*D, B, H]: dL/dc_0 (LSTM, when `initial` was given)
    param_grads: list[tuple[Tensor | None, ...]] | None = None
    """Per layer * D + direction: (weight_ih, weight_hh, bias_ih, bias_hh) gradients (None: no bias), in the dtype."""


def log10_norm_over(row_log10_norm: Tensor, dim: int) -> Tensor:
    """Combine row norms given as log10 into the log10 of the norm over `dim` (stable, float64)."""
    scaled = row_log10_norm.double() * (2 * math.log(10.0))
    return torch.logsumexp(scaled, dim=dim) / (2 * math.log(10.0))


def log10_sum(log10: np.ndarray, axis: int | None = None) -> np.ndarray:
    """log10 of Σ 10**log10 over `axis` (all elements when None), stable in float64 (numpy: these arrays are small,
    where each torch op costs more than the arithmetic): -inf for an empty sum or one of exact zeros, inf / NaN
    where a term is."""
    top = np.max(log10, axis=axis, keepdims=True, initial=-np.inf)
    finite = np.isfinite(top)
    shift = np.where(finite, top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        terms = np.exp((log10 - shift) * LN10)  # 10**(log10 - shift); exp is 3x faster than np.power here
        summed = np.log10(np.sum(terms, axis=axis, keepdims=True)) + shift
    return np.squeeze(np.where(finite, summed, top), axis=axis)


def _order(direction: int):
    """Time-major tensors to processing order and back (a flip of time for the reverse direction)."""
    return (lambda t: t) if direction == 0 else (lambda t: t.flip(0))


def _all_finite(*values: Tensor | None) -> bool:
    """No inf/NaN in any of these tensors (one sum each: inf/NaN anywhere makes it inf/NaN; a sum that overflows
    only sends the caller to its exact, slower path)."""
    return all(v is None or v.numel() == 0 or bool(torch.isfinite(v.sum())) for v in values)


def _nonfinite_rows(*values: Tensor | None) -> Tensor:
    """[T, B] bool: rows of [T, B, K] tensors holding any inf/NaN (one cheap reduction when there are none)."""
    bad = None
    for v in values:
        if v is None:
            continue
        if v.numel() and bool(torch.isfinite(v.sum())):  # inf/NaN anywhere makes the sum inf/NaN
            rows = torch.zeros(v.shape[:-1], dtype=torch.bool, device=v.device)
        else:
            rows = ~torch.isfinite(v).all(dim=-1)
        bad = rows if bad is None else bad | rows
    return bad


def _through_bad_states(bad: Tensor, live: Tensor, above: Tensor | None) -> tuple[Tensor, Tensor]:
    """Where one layer and direction's gradients are computed through inf/NaN forward states, in processing order:
    there the true value is undefined, though autograd's rules still give numbers (a ReLU passes a gradient
    through a NaN or inf state as if it were active).

    bad [T, B]: the state of that step is inf/NaN; live [T, B]: the carried gradient of that step is non-zero (or
    NaN); above [T, B] or None: what is read at that step directly is undefined already (from the layer above).
    Step s's Jacobian, which carries the gradient of step s back to step s-1, uses the states of steps s and s-1;
    a zero gradient passes a bad step unchanged. Returns [T, B] bool each: the states' gradients, and the layer
    input's gradients (which also use the step's own Jacobian)."""
    entered = torch.zeros_like(bad)
    entered[:-1] = live[1:] & (bad[1:] | bad[:-1])
    if above is not None:
        entered |= above
    undefined = entered.flip(0).cumsum(dim=0).flip(0) > 0  # undefined at s once it entered at s or later
    prev_bad = torch.cat([torch.zeros_like(bad[:1]), bad[:-1]])
    return undefined, undefined | (live & (bad | prev_bad))


def _mark_undefined(mantissa: Tensor, undefined: Tensor) -> None:
    """NaN into the non-zero rows of `mantissa` [..., K] where `undefined` [...] (exact zeros stay zero)."""
    if bool(undefined.any()):
        mantissa[undefined & (row_max_abs(mantissa) != 0)] = math.nan


def module_params(module: torch.nn.RNNBase, layer: int, direction: int) -> tuple[Tensor | None, ...]:
    """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer and direction; the biases are None with bias=False."""
    suffix = f"l{layer}" + ("_reverse" if direction == 1 else "")
    return tuple(getattr(module, f"{name}_{suffix}", None) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


HEAP_WARM_BYTES = 16 << 20
"""The block `warm_heap` frees once per process: glibc then keeps blocks up to this size on its heap."""
_heap_warm = False


def warm_heap() -> None:
    """Let the pass's temporaries reuse heap pages instead of faulting in fresh ones every call (once per process).

    glibc's malloc serves a block above its mmap threshold (128 KiB at start) with a fresh mmap and returns the
    heap's free top above twice that; both thresholds rise on their own only as large mmapped blocks are freed. A
    pass allocates and frees several MB of temporaries of about 1 MB each (a training snapshot at the app's
    defaults: ~13 MB in 25 blocks, ~1,500 minor page faults, each zero-filling a fresh page). Freeing one untouched
    16 MiB block raises both thresholds the same dynamic way glibc would itself: at most 32 MiB of free heap then
    stays mapped per arena (`malloc_trim` still returns it, as the app does after every run). Elsewhere (another
    libc) this allocates and frees 16 MiB of untouched memory: no effect.
    """
    global _heap_warm
    if not _heap_warm:
        _heap_warm = True
        block = torch.empty(HEAP_WARM_BYTES, dtype=torch.uint8)  # never touched: no page is faulted in
        del block


def adjoint_pass(module: torch.nn.RNNBase, x: Tensor, layer_outputs: list[Tensor],
                 grads: dict[str, Tensor], *, initial: tuple[Tensor | None, Tensor | None] | None = None,
                 valid: Tensor | None = None,
                 params: Callable[[int, int], tuple[Tensor | None, ...]] | None = None,
                 want_params: bool = False) -> AdjointResult:
    """The hidden-state pass: every dL/dh_t, dL/dc_t and dL/dx_t from the target's direct derivatives `grads`.

    Runs the rescaled recursion top layer first; each layer hands its input gradient (rescaled) to the layer below.
    `grads` holds ∂target/∂y [B, T, D*H], ∂target/∂h_n and (LSTM) ∂target/∂c_n [L*D, B, H]. Options (for
    `watch`): `initial` = (h_0, c_0) [L*D, B, H] each or None, the states the forward started from (their
    gradients are returned); `valid` [B, T] bool, the real steps of a packed batch (layer_outputs hold zeros at
    the others and h_n is each item's last real state); `params(layer, direction)` the weights the forward used
    (default: the module's); `want_params` also returns the parameter gradients, from the gradients in the dtype.
    """
    from .models import cell_kind

    warm_heap()
    params = params or (lambda layer, d: module_params(module, layer, d))
    kind, num_dirs = cell_kind(module), (2 if module.bidirectional else 1)
    hidden, layers = module.hidden_size, module.num_layers
    batch, steps = x.shape[:2]
    lstm = kind == "lstm"
    with torch.no_grad():
        # Batch-first results, filled per layer and direction through time-major views (one strided copy each).
        shape = (layers, num_dirs, batch, steps)
        h_m, h_e = x.new_empty(*shape, hidden), torch.empty(shape, dtype=torch.int32, device=x.device)
        h_v = x.new_empty(*shape, hidden)
        c_m = x.new_empty(*shape, hidden) if lstm else None
        c_v = x.new_empty(*shape, hidden) if lstm else None
        direct_norm = {"hidden_state": torch.full((layers, num_dirs, steps), -math.inf, dtype=torch.float64)}
        if lstm:
            direct_norm["cell_state"] = direct_norm["hidden_state"].clone()
        direct = Scaled(grads["y"].transpose(0, 1), torch.zeros(steps, batch, dtype=torch.int32, device=x.device))
        direct_bad: Tensor | None = None  # [T, B]: rows the layer above made inf/NaN (autograd's pattern)
        param_grads: list = [None] * (layers * num_dirs)
        h0_grad = x.new_zeros(layers * num_dirs, batch, hidden) if initial is not None else None
        c0_grad = x.new_zeros(layers * num_dirs, batch, hidden) if initial is not None and lstm else None
        # Gradients computed through inf/NaN forward states have no true value: [L, D, B, T] (None: every state is
        # finite, the usual case); read_undefined [T, B]: what the layer above hands down is undefined there.
        undefined = None if _all_finite(*layer_outputs) else torch.zeros(shape, dtype=torch.bool, device=x.device)
        read_undefined: Tensor | None = None
        for layer in range(layers - 1, -1, -1):
            layer_in = (x if layer == 0 else layer_outputs[layer - 1]).transpose(0, 1)
            below: Scaled | None = None
            below_bad = None
            below_undefined: Tensor | None = None
            for d in range(num_dirs):
                order, index = _order(d), layer * num_dirs + d
                cols = slice(d * hidden, (d + 1) * hidden)
                read = normalize(order(direct.mantissa[..., cols]), order(direct.exponent))
                final_h = grads["h_n"][index]
                if bool(final_h.any()):  # h_n is the last processed state: its direct derivative adds there
                    last = add(Scaled(read.mantissa[-1:], read.exponent[-1:]), Scaled.of(final_h[None]))
                    read.mantissa[-1], read.exponent[-1] = last.mantissa[0], last.exponent[0]
                direct_norm["hidden_state"][layer, d] = order(log10_norm_over(read.log10_row_norm(), dim=1))
                final_c = grads["c_n"][index] if lstm else None
                if final_c is not None and bool(final_c.any()):  # (all zero: the norm stays -inf)
                    c_last = direct_norm["cell_state"][layer, d]
                    c_last[-1 if d == 0 else 0] = log10_norm_over(Scaled.of(final_c).log10_row_norm(), dim=0)
                states = order(layer_outputs[layer].transpose(0, 1)[..., cols])
                h_0 = initial[0][index] if initial is not None and initial[0] is not None else None
                c_0 = initial[1][index] if initial is not None and initial[1] is not None else None
                step_valid = None
                if valid is not None:
                    step_valid = order(valid.transpose(0, 1))
                    if d == 1:  # reverse: padding is processed first, with the state held at h_0
                        frozen = h_0 if h_0 is not None else torch.zeros_like(states[0])
                        states = torch.where(step_valid.unsqueeze(-1), states, frozen)
                result = layer_adjoint(kind, order(layer_in), states, params(layer, d), read, final_c,
                                       initial=(h_0, c_0), valid=step_valid)
                # Forward direction: the values go straight into the results (time-major views of them).
                values = result.hidden_grad.value(out=h_v[layer, d].transpose(0, 1) if d == 0 else None)
                cell_values = None
                if result.cell_grad is not None:
                    cell_values = result.cell_grad.value(out=c_v[layer, d].transpose(0, 1) if d == 0 else None)
                # Autograd's non-finite pattern: a step that is inf/NaN (or reads an inf/NaN from above) makes every
                # step processed after it inf/NaN too (dense matmuls spread it to every unit).
                seen = None  # [T, B]: this step or a later one is inf/NaN (None: no step is)
                if direct_bad is not None or not _all_finite(read.mantissa, values, cell_values):
                    read_bad = _nonfinite_rows(read.mantissa)
                    if direct_bad is not None:
                        read_bad = read_bad | order(direct_bad)
                    # (The backward pass runs from the last processed step to the first: "after" is a lower index.)
                    bad = (_nonfinite_rows(values, cell_values) | read_bad).to(torch.int32)
                    seen = bad.flip(0).cumsum(dim=0).flip(0) > 0
                    poisoned = read_bad | torch.cat([seen[1:], torch.zeros_like(seen[:1])])
                    if bool(poisoned.any()):
                        values[poisoned] = math.nan
                        if cell_values is not None:
                            cell_values[poisoned] = math.nan
                if undefined is not None:
                    live = row_max_abs(result.hidden_grad.mantissa) != 0
                    if lstm:
                        live |= row_max_abs(result.cell_grad.mantissa) != 0
                    through, input_through = _through_bad_states(
                        ~torch.isfinite(states).all(dim=-1), live,
                        None if read_undefined is None else order(read_undefined))
                    undefined[layer, d] = order(through).T
                    below_undefined = order(input_through) if below_undefined is None else (
                        below_undefined | order(input_through))
                h_m[layer, d].transpose(0, 1).copy_(order(result.hidden_grad.mantissa))
                h_e[layer, d].transpose(0, 1).copy_(order(result.hidden_grad.exponent))
                if d == 1:
                    h_v[layer, d].transpose(0, 1).copy_(order(values))
                if lstm:
                    c_m[layer, d].transpose(0, 1).copy_(order(result.cell_grad.mantissa))
                    if d == 1:
                        c_v[layer, d].transpose(0, 1).copy_(order(cell_values))
                if want_params:
                    # From the kept gate gradients in the dtype where nothing was made non-finite (the same
                    # numbers as from `values` wherever they are normal), else from `values` themselves.
                    gate_values = result.gate_grad.value() if result.gate_grad is not None and seen is None else None
                    param_grads[index] = result.param_grads(values, cell_values, gate_values=gate_values)
                if initial is not None:
                    first = normalize(result.initial_grad.mantissa, result.initial_grad.exponent).value()
                    if seen is not None:
                        first[seen[0]] = math.nan  # autograd's pattern: something processed before it was inf/NaN
                    h0_grad[index] = first[:, :hidden]
                    if lstm:
                        c0_grad[index] = first[:, hidden:]
                layer_grad = result.input_grad.flip(0) if d == 1 else result.input_grad
                if below is not None:
                    layer_grad = Scaled(*add_scaled(below.mantissa, below.exponent, layer_grad.mantissa,
                                                    layer_grad.exponent))
                below = layer_grad
                if seen is not None:
                    below_bad = order(seen) if below_bad is None else below_bad | order(seen)
            input_values = below.value()
            direct, direct_bad = below, below_bad
            if read_undefined is not None:  # what this layer read from above is undefined there: so is its norm
                block = direct_norm["hidden_state"][layer]  # [D, T]
                block[read_undefined.any(dim=1).cpu().unsqueeze(0) & (block != -math.inf)] = math.nan
            read_undefined = below_undefined
            if not _all_finite(input_values):
                input_bad = _nonfinite_rows(input_values)
                direct_bad = input_bad if direct_bad is None else direct_bad | input_bad
        if direct_bad is not None and bool(direct_bad.any()):
            input_values[direct_bad] = math.nan
        input_m = direct.mantissa.transpose(0, 1).contiguous()
        if undefined is not None:  # the values stay autograd's; the true magnitudes are undefined there
            _mark_undefined(h_m, undefined)
            if c_m is not None:
                _mark_undefined(c_m, undefined)
            _mark_undefined(input_m, read_undefined.T)

    return AdjointResult(
        hidden_grad=h_v,
        cell_grad=c_v,
        input_grad=input_values.transpose(0, 1).contiguous(),
        hidden_magnitude=Scaled(h_m, h_e),
        cell_magnitude=Scaled(c_m, h_e) if lstm else None,
        input_magnitude=Scaled(input_m, direct.exponent.T.contiguous()),
        direct_log10_norm=direct_norm,
        initial_hidden_grad=h0_grad,
        initial_cell_grad=c0_grad,
        param_grads=param_grads if want_params else None,
    )
