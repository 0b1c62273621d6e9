"""Autograd pitfalls around recurrent nets: each one fixed code of ours, run live on the installed torch.

Every pitfall is a pair of plain Python functions (the pitfall and its fix). The code shown on the page is their
source (`inspect.getsource`, without the ``def`` line and docstring), so it cannot drift from what runs. `run`
calls a function and records what it printed, the warnings it raised and the exception it ended with; `Expect`
says what the card's explanation relies on, so a torch release that behaves differently fails the tests (and the
page says so instead of explaining a result it did not get). Nothing here executes text: only these functions.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import threading
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

import torch

EXPLORER_PATH = "explorer"
"""The explorer's URL path (st.navigation derives it from app_pages/explorer.py)."""
_RUN_LOCK = threading.Lock()
"""Warning capture swaps process-wide hooks: one pitfall runs at a time."""


# --------------------------------------------------------------------------------------------------------------------
# 1. y.grad is None for a non-leaf y


def nonleaf_grad_problem() -> None:
    """y is made by autograd (not a leaf): backward does not keep its .grad."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)            # y is not a leaf: the GRU computed it
    y[:, -1].sum().backward()
    print(y.grad)              # None, and torch warns


def nonleaf_grad_fix() -> None:
    """retain_grad() before backward keeps y's gradient."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    y.retain_grad()            # before backward
    y[:, -1].sum().backward()
    print(y.grad[0])           # sequence 0, steps x units


# --------------------------------------------------------------------------------------------------------------------
# 2. retain_grad() after backward


def retain_too_late_problem() -> None:
    """retain_grad() after backward cannot bring back a gradient that was never stored."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    y[:, -1].sum().backward()
    y.retain_grad()            # too late: backward already ran
    print(y.grad)              # None, and now no warning either


def retain_too_late_fix() -> None:
    """Retain before backward, or ask torch.autograd.grad for the tensor directly."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    y.retain_grad()            # before backward
    y[:, -1].sum().backward()
    print((y.grad != 0).any(-1))   # which steps of y got any gradient
    y2, _ = gru(x)             # or, without retain_grad:
    (dy,) = torch.autograd.grad(y2[:, -1].sum(), y2)
    print(torch.equal(dy, y.grad))


# --------------------------------------------------------------------------------------------------------------------
# 3. In-place change of y after the forward


def inplace_problem() -> None:
    """Changing y in place after an op saved it breaks that op's backward."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    loss = y.pow(2).sum()      # pow saves y to compute its gradient
    y[:, 0] = 0                # in place: y's version counter moves on
    loss.backward()            # RuntimeError


def inplace_fix() -> None:
    """Change a copy (or change y before anything reads it)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    loss = y.pow(2).sum()
    masked = y.clone()         # a copy: the y that pow saved stays as it was
    masked[:, 0] = 0
    (loss + masked.sum()).backward()
    print(y[:, 0].abs().sum() > 0)         # y itself is unchanged
    print(gru.weight_hh_l0.grad.shape)


# --------------------------------------------------------------------------------------------------------------------
# 4. Backward twice through one graph


def backward_twice_problem() -> None:
    """Two losses on one forward: the first backward frees what the second needs."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    loss_y = y[:, -1].sum()
    loss_h = h_n.sum()
    loss_y.backward()          # frees the graph's saved tensors
    loss_h.backward()          # RuntimeError: they are gone


def backward_twice_fix() -> None:
    """Add the losses and call backward once, or keep the graph with retain_graph=True."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    (y[:, -1].sum() + h_n.sum()).backward()      # one backward
    once = gru.weight_hh_l0.grad.clone()
    gru.zero_grad()
    y, h_n = gru(x)
    y[:, -1].sum().backward(retain_graph=True)   # or keep the graph
    h_n.sum().backward()
    print(torch.allclose(once, gru.weight_hh_l0.grad))


# --------------------------------------------------------------------------------------------------------------------
# 5. autograd.grad with respect to a tensor the loss never used


def unused_problem() -> None:
    """h_n holds y's last values, but the loss read y: h_n is not in its graph."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    loss = y[:, -1].sum()
    print(torch.equal(y[:, -1], h_n[-1]))   # the same values...
    torch.autograd.grad(loss, h_n)          # ...another tensor: RuntimeError


def unused_fix() -> None:
    """allow_unused=True returns None (materialize_grads=True: zeros); or differentiate what the loss read."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)
    loss = y[:, -1].sum()
    print(torch.autograd.grad(loss, h_n, retain_graph=True, allow_unused=True))
    (zeros,) = torch.autograd.grad(loss, h_n, retain_graph=True,
                                   allow_unused=True, materialize_grads=True)
    print(zeros.abs().sum())
    (dy,) = torch.autograd.grad(loss, y)    # the tensor the loss read
    print(dy[0, -1])


# --------------------------------------------------------------------------------------------------------------------
# 6. Bidirectional output layout


def bidirectional_problem() -> None:
    """y[:, -1] is the forward direction's last state but the reverse direction's first."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True, bidirectional=True)
    x = torch.rand(2, 5, 3)
    y, h_n = gru(x)            # y: [B, T, 2*H], h_n: [2, B, H]
    H = gru.hidden_size
    last = y[:, -1]            # "both directions' final states"?
    print(torch.equal(last[:, :H], h_n[0]))   # forward direction
    print(torch.equal(last[:, H:], h_n[1]))   # reverse direction
    print(last[0, H:])
    print(h_n[1, 0])


def bidirectional_fix() -> None:
    """The reverse direction ends at t = 0: take y[:, 0, H:], or h_n."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True, bidirectional=True)
    x = torch.rand(2, 5, 3, requires_grad=True)
    y, h_n = gru(x)
    H = gru.hidden_size
    final = torch.cat([y[:, -1, :H], y[:, 0, H:]], dim=-1)
    print(torch.equal(final, torch.cat([h_n[0], h_n[1]], dim=-1)))
    (g,) = torch.autograd.grad(y[:, -1, H:].sum(), x)
    print(g[0].abs().sum(-1) != 0)   # steps the reverse half of y[:, -1] read


# --------------------------------------------------------------------------------------------------------------------
# 7. Padding


def padding_problem() -> None:
    """Without packing, the GRU runs over the padding: h_n and the gradients include padded steps."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    x[1, 3:] = 0               # sequence 1 has 3 steps, then padding
    x.requires_grad_()
    y, h_n = gru(x)
    h_n.sum().backward()
    print(torch.equal(h_n[0, 1], y[1, 2]))   # h_n is not its step-2 state
    print(x.grad[1].abs().sum(-1) != 0)      # gradient at every step


def padding_fix() -> None:
    """pack_padded_sequence: the GRU stops at each sequence's length."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    x[1, 3:] = 0
    x.requires_grad_()
    lengths = torch.tensor([5, 3])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_y, h_n = gru(packed)
    y, _ = pad_packed_sequence(packed_y, batch_first=True)
    h_n.sum().backward()
    print(torch.equal(h_n[0, 1], y[1, 2]))   # h_n is the step-2 state
    print(x.grad[1].abs().sum(-1) != 0)      # no gradient at padded steps
    print(y[1, 3:].abs().sum())              # padded outputs are zeros


# --------------------------------------------------------------------------------------------------------------------
# 8. cuDNN: backward in eval mode, double backward (these need a CUDA GPU with cuDNN)


def cudnn_eval_problem(device: str = "cuda") -> None:
    """cuDNN's RNN backward refuses a forward that ran in eval mode."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True).to(device)
    gru.eval()                 # e.g. for saliency maps or attributions
    x = torch.rand(2, 5, 3, device=device, requires_grad=True)
    y, h_n = gru(x)
    y[:, -1].sum().backward()  # cuDNN: RuntimeError
    print(x.grad.abs().sum(-1))


def cudnn_eval_fix(device: str = "cuda") -> None:
    """Run the forward without cuDNN, or under gru_explainer.watch (its backward is not cuDNN's)."""
    import torch
    from torch import nn

    import gru_explainer as gx

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True).to(device)
    gru.eval()
    x = torch.rand(2, 5, 3, device=device, requires_grad=True)
    with torch.backends.cudnn.flags(enabled=False):
        y, h_n = gru(x)        # the native kernel: backward works in eval mode
    y[:, -1].sum().backward()
    print(x.grad.abs().sum(-1))
    x.grad = None
    with gx.watch(gru) as rec:  # the fused forward, the explainer's own backward: every dL/dh_t too
        y, h_n = gru(x)
        y[:, -1].sum().backward()
    print(x.grad.abs().sum(-1))
    print(tuple(rec.calls[0].hidden_grad.shape))  # [layers, directions, batch, steps, hidden]


def cudnn_double_problem(device: str = "cuda") -> None:
    """A gradient of a gradient (e.g. a gradient penalty) through a cuDNN RNN."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True).to(device)
    x = torch.rand(2, 5, 3, device=device, requires_grad=True)
    y, h_n = gru(x)
    (g,) = torch.autograd.grad(y[:, -1].sum(), x, create_graph=True)
    g.pow(2).sum().backward()  # cuDNN: NotImplementedError
    print(gru.weight_hh_l0.grad.norm())


def cudnn_double_fix(device: str = "cuda") -> None:
    """Run the forward without cuDNN: every op then has a derivative of its derivative."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True).to(device)
    x = torch.rand(2, 5, 3, device=device, requires_grad=True)
    with torch.backends.cudnn.flags(enabled=False):
        y, h_n = gru(x)
    (g,) = torch.autograd.grad(y[:, -1].sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    print(gru.weight_hh_l0.grad.norm())
    # gru_explainer.watch does not help here: its backward is once-differentiable (no gradient of a gradient).


# --------------------------------------------------------------------------------------------------------------------
# 9. torch.func over nn.GRU


def func_problem() -> None:
    """vmap over nn.GRU, one sequence at a time."""
    import torch
    from torch import nn
    from torch.func import vmap

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)
    per_sample = vmap(lambda xi: gru(xi.unsqueeze(0))[0].squeeze(0))
    print(per_sample(x).shape)   # RuntimeError: no batching rule


def func_fix() -> None:
    """nn.GRU batches by itself: jacrev of the batched call, then each sample's own block."""
    import torch
    from torch import nn
    from torch.func import jacrev

    torch.manual_seed(0)
    gru = nn.GRU(input_size=3, hidden_size=4, batch_first=True)
    x = torch.rand(2, 5, 3)

    def last(x):
        return gru(x)[0][:, -1]                # [B, H]

    jac = jacrev(last)(x)                      # [B, H, B, T, I]
    per_sample = jac[[0, 1], :, [0, 1]]        # [B, H, T, I]
    print(jac.shape, per_sample.shape)
    print(jac[0, :, 1].abs().max())            # sample 0 never reads sample 1
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(last(xg).sum(), xg)
    print(torch.allclose(per_sample.sum(1), g, atol=1e-6))


# --------------------------------------------------------------------------------------------------------------------
# The cards


@dataclass(frozen=True)
class Expect:
    """What a run must show for a card's explanation to hold: an exception, a warning, printed fragments."""

    error: type[BaseException] | None = None
    message: str = ""
    """A stable part of the exception's message (required when `error` is set)."""
    warning: str = ""
    """A part of a warning the run must emit ("" = none required)."""
    printed: tuple[str, ...] = ()
    """Fragments the printed output must contain, in this order."""
    no_warnings: bool = False
    """True: the run must emit no warning at all."""

    def problems(self, outcome: Outcome) -> list[str]:
        """How `outcome` differs from this expectation (empty when it matches)."""
        if not outcome.ran:
            return [f"it did not run: {outcome.not_run_reason}"]
        found: list[str] = []
        if self.error is None and outcome.error_type is not None:
            found.append(f"expected no error, got {outcome.error_type}: {outcome.error_message}")
        if self.error is not None:
            if outcome.error_type != self.error.__name__:
                found.append(f"expected {self.error.__name__}, got {outcome.error_type or 'no error'}"
                             + (f": {outcome.error_message}" if outcome.error_message else ""))
            elif self.message not in (outcome.error_message or ""):
                found.append(f"expected the {self.error.__name__} message to contain {self.message!r}, got "
                             f"{outcome.error_message!r}")
        if self.warning and not any(self.warning in w for w in outcome.warnings):
            found.append(f"expected a warning containing {self.warning!r}, got {list(outcome.warnings) or 'none'}")
        if self.no_warnings and outcome.warnings:
            found.append(f"expected no warning, got {list(outcome.warnings)}")
        position = 0
        for fragment in self.printed:
            at = outcome.printed.find(fragment, position)
            if at < 0:
                found.append(f"expected the printed output to contain {fragment!r} (in order), got "
                             f"{outcome.printed!r}")
                break
            position = at + len(fragment)
        return found


@dataclass(frozen=True)
class Outcome:
    """What one run of a pitfall's function did, captured now on the installed torch."""

    ran: bool
    torch_version: str
    device: str
    transcript: tuple[str, ...] = ()
    """Printed text and "Category: message" warnings, in the order they happened, then the exception."""
    printed: str = ""
    warnings: tuple[str, ...] = ()
    error_type: str | None = None
    error_message: str | None = None
    seconds: float = 0.0
    not_run_reason: str = ""

    @property
    def text(self) -> str:
        """The run's output as a console would show it (prints, warnings, the exception's last line)."""
        if not self.ran:
            return f"(not run: {self.not_run_reason})"
        return "".join(self.transcript).rstrip("\n") or "(no output)"


@dataclass(frozen=True)
class Pitfall:
    """One card: the pitfall and its fix as functions, why it happens, and an explorer config that shows it."""

    id: str
    title: str
    problem: Callable[..., None]
    fix: Callable[..., None]
    why: str
    expect_problem: Expect
    expect_fix: Expect
    explorer: tuple[tuple[str, str], ...]
    """The explorer's URL query (keys of gru_explainer.urlstate) for a config that shows the effect."""
    explorer_label: str
    needs_cuda: bool = False
    """True: the pitfall only happens with cuDNN; without CUDA it is not run (see `gpu_message`)."""
    gpu_message: str = ""
    """For cuDNN cards: the exception torch raises on a CUDA GPU (quoted, shown as not run here)."""
    gpu_message_source: str = ""
    expect_problem_cpu: Expect | None = None
    """For cuDNN cards: what the same code does on the CPU, where it is run instead."""
    references: tuple[tuple[str, str], ...] = ()
    """(label, url) of reports of this pitfall."""

    @property
    def code(self) -> str:
        """The source of the pitfall's function as it runs (see `source_of`)."""
        return source_of(self.problem)

    @property
    def fix_code(self) -> str:
        """The source of the fix's function as it runs."""
        return source_of(self.fix)

    @property
    def explorer_url(self) -> str:
        """A relative link to the explorer with this card's config ("explorer?cell=…")."""
        query = urlencode(dict(self.explorer))
        return EXPLORER_PATH + (f"?{query}" if query else "")


def source_of(fn: Callable[..., None]) -> str:
    """The body of `fn` without its def line and docstring, dedented; parameters become assignments first.

    For `def f(device: str = "cuda")` the text starts with `device = 'cuda'`, so it runs as shown.
    """
    lines, _ = inspect.getsourcelines(fn)
    source = textwrap.dedent("".join(lines))
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef)
    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
    start = body[0].lineno - 1
    text = textwrap.dedent("".join(source.splitlines(keepends=True)[start:])).rstrip()
    prelude = "".join(f"{name} = {param.default!r}\n" for name, param in inspect.signature(fn).parameters.items())
    return prelude + "\n" + text if prelude else text


def cuda_missing() -> str:
    """Why the cuDNN cards cannot run here ("" when a CUDA GPU with cuDNN is available)."""
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False on this machine"
    if torch.version.hip is not None:
        return f"this is a ROCm build (HIP {torch.version.hip}): its RNNs use MIOpen, not cuDNN"
    if not torch.backends.cudnn.is_available():
        return "torch.backends.cudnn.is_available() is False"
    if not torch.backends.cudnn.enabled:
        return "torch.backends.cudnn.enabled is False"
    return ""


def _device_of(fn: Callable[..., None], device: str | None) -> str:
    """The device a run uses: the `device` argument, the function's default, or the CPU."""
    if device is not None:
        return device
    param = inspect.signature(fn).parameters.get("device")
    return param.default if param is not None else "cpu"


def run_function(fn: Callable[..., None], device: str | None = None) -> Outcome:
    """Call `fn` (a pitfall or fix function of this module) and capture prints, warnings and its exception.

    `print` is rebound in a copy of the function's globals (no process-wide stdout redirect, so other threads'
    output is untouched); warnings are recorded for this thread only, every one of them ("always").
    """
    where = _device_of(fn, device)
    kwargs = {"device": where} if "device" in inspect.signature(fn).parameters else {}
    transcript: list[str] = []
    printed = io.StringIO()
    caught: list[str] = []
    me = threading.get_ident()

    def capture_print(*args: object, sep: str | None = " ", end: str | None = "\n", **_: object) -> None:
        text = (" " if sep is None else sep).join(str(a) for a in args) + ("\n" if end is None else end)
        printed.write(text)
        transcript.append(text)

    isolated = types.FunctionType(fn.__code__, {**fn.__globals__, "print": capture_print}, fn.__name__,
                                  fn.__defaults__, fn.__closure__)
    isolated.__kwdefaults__ = fn.__kwdefaults__
    error: BaseException | None = None
    with _RUN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("always")
        original = warnings.showwarning

        def record(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: object = None, line: str | None = None) -> None:
            if threading.get_ident() != me:  # another thread's warning: show it as usual
                original(message, category, filename, lineno, file, line)  # type: ignore[arg-type]
                return
            text = f"{category.__name__}: {message}"
            caught.append(text)
            transcript.append(text + "\n")

        warnings.showwarning = record
        start = time.perf_counter()
        try:
            isolated(**kwargs)
        except Exception as err:  # the pitfall's point: record it, never let it escape
            error = err
        seconds = time.perf_counter() - start
    if error is not None:
        transcript.append(f"{type(error).__name__}: {error}\n")
    return Outcome(ran=True, torch_version=torch.__version__, device=where, transcript=tuple(transcript),
                   printed=printed.getvalue(), warnings=tuple(caught),
                   error_type=None if error is None else type(error).__name__,
                   error_message=None if error is None else str(error), seconds=seconds)


def run(pitfall: Pitfall, part: str = "problem", device: str | None = None) -> Outcome:
    """Run a card's `part` ("problem" or "fix") now; a cuDNN card without CUDA is not run (unless device="cpu")."""
    if part not in ("problem", "fix"):
        raise ValueError(f"part must be 'problem' or 'fix', not {part!r}")
    fn = pitfall.problem if part == "problem" else pitfall.fix
    where = _device_of(fn, device)
    if pitfall.needs_cuda and where.startswith("cuda") and cuda_missing():
        return Outcome(ran=False, torch_version=torch.__version__, device=where, not_run_reason=cuda_missing())
    return run_function(fn, device)


@functools.lru_cache(maxsize=64)
def run_cached(pitfall_id: str, part: str = "problem", device: str | None = None) -> Outcome:
    """`run` once per process per card, part and device (outcomes are immutable)."""
    return run(get(pitfall_id), part, device)


@dataclass(frozen=True)
class Card:
    """Everything the page shows for one pitfall, computed now."""

    pitfall: Pitfall
    problem: Outcome
    fix: Outcome
    problem_cpu: Outcome | None
    """For a cuDNN card that could not run here: the same code run on the CPU instead."""
    mismatches: tuple[str, ...]
    """How this torch's results differ from what the card explains (empty when they match)."""


def card(pitfall_id: str) -> Card:
    """Run (cached) a card's pitfall and fix and compare them with what the card explains."""
    pitfall = get(pitfall_id)
    problem = run_cached(pitfall_id, "problem")
    fix = run_cached(pitfall_id, "fix")
    problem_cpu = None
    mismatches: list[str] = []
    if pitfall.needs_cuda and not problem.ran:
        problem_cpu = run_cached(pitfall_id, "problem", "cpu")
        fix = run_cached(pitfall_id, "fix", "cpu")
        if pitfall.expect_problem_cpu is not None:
            mismatches += [f"the pitfall on the CPU: {p}" for p in pitfall.expect_problem_cpu.problems(problem_cpu)]
    else:
        mismatches += [f"the pitfall: {p}" for p in pitfall.expect_problem.problems(problem)]
    mismatches += [f"the fix: {p}" for p in pitfall.expect_fix.problems(fix)]
    return Card(pitfall, problem, fix, problem_cpu, tuple(mismatches))


CUDNN_EVAL_MESSAGE = "cudnn RNN backward can only be called in training mode"
CUDNN_DOUBLE_REASON = (
    "Double backwards is not supported for CuDNN RNNs due to limitations in the CuDNN API. To run double backwards, "
    "please disable the CuDNN backend temporarily while running the forward pass of your RNN. For example: \n"
    "with torch.backends.cudnn.flags(enabled=False):\n    output = model(inputs)")
"""torch's kCudnnDoubleBackwardMsg (torch/csrc/autograd/FunctionsManual.cpp); the CPU build's libtorch_cpu carries
it too (the tests check that), because the autograd formulas are compiled for every backend."""

PITFALLS: tuple[Pitfall, ...] = (
    Pitfall(
        id="nonleaf-grad",
        title="`y.grad` is None: y is not a leaf",
        problem=nonleaf_grad_problem, fix=nonleaf_grad_fix,
        why="Backward stores `.grad` only on leaves (tensors you created, like parameters); `y` was computed by "
            "the GRU, so its gradient passes through and is dropped, and torch warns when you read it. "
            "`retain_grad()` before `backward()` keeps it, and then shows the seed's puzzle: only the last step "
            "of `y` gets gradient, because the target reads nothing else of `y`.",
        expect_problem=Expect(printed=("None",), warning="is not a leaf Tensor is being accessed"),
        expect_fix=Expect(printed=("[0., 0., 0., 0.]", "[1., 1., 1., 1.]"), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5")),
        explorer_label="1-layer GRU, T = 5, target `y[:, -1].sum()`: `y.grad` is zero before the last step, "
                       "dL/dh_t is not",
        references=(("pytorch#30531", "https://github.com/pytorch/pytorch/pull/30531"),),
    ),
    Pitfall(
        id="retain-too-late",
        title="`retain_grad()` after `backward()`: too late",
        problem=retain_too_late_problem, fix=retain_too_late_fix,
        why="`retain_grad()` registers a hook that stores the gradient when backward passes through `y`; called "
            "after `backward()` there is nothing left to store, so `.grad` stays None (and since `y` now "
            "retains its gradient, torch no longer warns). Call it before `backward()`, or let "
            "`torch.autograd.grad(loss, y)` return the gradient without touching `.grad`.",
        expect_problem=Expect(printed=("None",), no_warnings=True),
        expect_fix=Expect(printed=("[False, False, False, False,  True]", "True"), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5")),
        explorer_label="1-layer GRU, T = 5, target `y[:, -1].sum()`: what `y.retain_grad()` before backward shows",
    ),
    Pitfall(
        id="inplace",
        title="An in-place change of `y` after the forward breaks backward",
        problem=inplace_problem, fix=inplace_fix,
        why="Every tensor has a version counter that in-place operations increase. `pow` saved `y` (at its version "
            "then) to compute its gradient; `y[:, 0] = 0` changed `y`, so backward refuses to use the stale saved "
            "value rather than return a wrong gradient. Modify a `clone()` (or change `y` before any op reads it).",
        expect_problem=Expect(error=RuntimeError, message="modified by an inplace operation"),
        expect_fix=Expect(printed=("tensor(True)", "torch.Size([12, 4])"), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5"), ("target", "(y ** 2).sum()")),
        explorer_label="target `(y ** 2).sum()`: its gradient 2·y needs the values of y, which pow saved",
    ),
    Pitfall(
        id="backward-twice",
        title="Backward twice through one graph without `retain_graph=True`",
        problem=backward_twice_problem, fix=backward_twice_fix,
        why="`y` and `h_n` come from one forward pass, so their losses share one graph. The first `backward()` "
            "frees the tensors the graph saved (the gates, the states), and the second finds them gone. Add the "
            "losses and call `backward()` once (same gradients, half the work), or pass `retain_graph=True` to "
            "every backward but the last.",
        expect_problem=Expect(error=RuntimeError, message="Trying to backward through the graph a second time"),
        expect_fix=Expect(printed=("True",), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5"), ("target", "y[:, -1].sum() + h_n.sum()")),
        explorer_label="target `y[:, -1].sum() + h_n.sum()`: both losses in one backward",
    ),
    Pitfall(
        id="grad-unused",
        title="`torch.autograd.grad(loss, h_n)` when the loss never used `h_n`",
        problem=unused_problem, fix=unused_fix,
        why="For a one-layer GRU, `h_n[-1]` holds the same numbers as `y[:, -1]`, but it is a different tensor "
            "(another output of the GRU), and the loss read `y`. Autograd follows tensors, not values, so `h_n` is "
            "not in the loss's graph and `grad` refuses; `allow_unused=True` returns None, `materialize_grads=True` "
            "zeros. Differentiate with respect to the tensor the loss read.",
        expect_problem=Expect(printed=("True",), error=RuntimeError, message="appears to not have been used in the "
                                                                            "graph"),
        expect_fix=Expect(printed=("(None,)", "tensor(0.)", "tensor([1., 1., 1., 1.])"), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5")),
        explorer_label="target `y[:, -1].sum()`: the gradient of `h_n` is zero (it is not read), that of "
                       "`y[:, -1]` is not",
    ),
    Pitfall(
        id="bidirectional",
        title="Bidirectional layout: `y[:, -1]` is not the reverse direction's final state",
        problem=bidirectional_problem, fix=bidirectional_fix,
        why="`y[:, t]` concatenates both directions' states at time t: `[:H]` forward, `[H:]` reverse. The reverse "
            "direction reads the sequence from the end, so at t = T-1 it has seen one step and its final state is "
            "at t = 0, which `h_n[1]` (`h_n[-1]` for one layer) holds. A loss on `y[:, -1]` therefore sends the "
            "reverse direction's gradient to the last input step only.",
        expect_problem=Expect(printed=("True", "False"), no_warnings=True),
        expect_fix=Expect(printed=("True", "[False, False, False, False,  True]"), no_warnings=True),
        explorer=(("bidirectional", "true"), ("num_layers", "1"), ("seq_len", "5")),
        explorer_label="bidirectional GRU, target `y[:, -1].sum()`: the reverse direction's dL/dh_t is zero "
                       "before the last step",
        references=(("pytorch#3587", "https://github.com/pytorch/pytorch/issues/3587"),),
    ),
    Pitfall(
        id="padding",
        title="Padding: gradients at padded steps, with and without `pack_padded_sequence`",
        problem=padding_problem, fix=padding_fix,
        why="A padded batch is just a longer tensor to the GRU: it keeps stepping through the padding, so `h_n` of "
            "a short sequence is its state after the padding, and a loss on it sends gradient into the padded "
            "steps. Packing tells the GRU each length: `h_n` is the state at the true last step, padded outputs "
            "are zeros and padded inputs get exactly zero gradient.",
        expect_problem=Expect(printed=("False", "[True, True, True, True, True]"), no_warnings=True),
        expect_fix=Expect(printed=("True", "[ True,  True,  True, False, False]", "tensor(0."), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5"), ("batch_size", "2"), ("target", "y[:, 2].sum()")),
        explorer_label="target `y[:, 2].sum()` (a length-3 sequence's last step): every step after 2 gets "
                       "exactly zero gradient",
        references=(("pytorch#1811", "https://github.com/pytorch/pytorch/issues/1811"),),
    ),
    Pitfall(
        id="cudnn-eval",
        title="cuDNN: backward in eval mode",
        problem=cudnn_eval_problem, fix=cudnn_eval_fix,
        why="On a GPU, `nn.GRU` runs cuDNN's fused kernel, whose backward needs buffers that only a training-mode "
            "forward keeps, so torch refuses backward after `eval()` (a frequent surprise when computing "
            "saliency or attributions). Running the forward with `torch.backends.cudnn.flags(enabled=False)` "
            "uses torch's own kernel, which has no such limit; `train()` works too and computes the same function "
            "when the GRU has no dropout. `gru_explainer.watch` keeps the fused forward and replaces the backward "
            "with its own (no cuDNN backward is called), and records every dL/dh_t on the way.",
        expect_problem=Expect(error=RuntimeError, message=CUDNN_EVAL_MESSAGE),
        expect_fix=Expect(printed=("(1, 1, 2, 5, 4)",), no_warnings=True),
        expect_problem_cpu=Expect(printed=("tensor(",), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5"), ("device", "auto")),
        explorer_label="the explorer on this machine's best device (`auto` prefers a GPU)",
        needs_cuda=True,
        gpu_message=f"RuntimeError: {CUDNN_EVAL_MESSAGE}",
        gpu_message_source="aten/src/ATen/native/cudnn/RNN.cpp in PyTorch's source",
        references=(("pytorch#5878", "https://github.com/pytorch/pytorch/issues/5878"),
                    ("pytorch#15788", "https://github.com/pytorch/pytorch/issues/15788"),
                    ("captum#328", "https://github.com/pytorch/captum/issues/328"),
                    ("captum#564", "https://github.com/pytorch/captum/issues/564"),
                    ("captum#1159", "https://github.com/pytorch/captum/issues/1159")),
    ),
    Pitfall(
        id="cudnn-double",
        title="cuDNN: double backward (a gradient of a gradient)",
        problem=cudnn_double_problem, fix=cudnn_double_fix,
        why="`create_graph=True` records the backward pass itself so it can be differentiated again (gradient "
            "penalties, meta-learning). cuDNN's RNN backward is one fused call without a derivative of its own, "
            "so the second backward fails. Run the forward without cuDNN: torch's own kernel is built from ops "
            "that all have second derivatives.",
        expect_problem=Expect(error=NotImplementedError, message="Double backwards is not supported for CuDNN RNNs"),
        expect_fix=Expect(no_warnings=True),
        expect_problem_cpu=Expect(printed=("tensor(",), no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5"), ("device", "auto")),
        explorer_label="the explorer on this machine's best device (`auto` prefers a GPU)",
        needs_cuda=True,
        gpu_message=f"NotImplementedError: the derivative for '_cudnn_rnn_backward' is not implemented. "
                    f"{CUDNN_DOUBLE_REASON}",
        gpu_message_source="torch/csrc/autograd/FunctionsManual.cpp (not_implemented, kCudnnDoubleBackwardMsg) in "
                           "PyTorch's source",
    ),
    Pitfall(
        id="torch-func",
        title="`torch.func.vmap` / `jacrev` over `nn.GRU`",
        problem=func_problem, fix=func_fix,
        why="`vmap` needs a batching rule for every operator it meets, and `nn.GRU`'s forward is a single operator, "
            "`aten::gru.input`, that has none on this torch (the error names it). `jacrev` runs the forward once, "
            "unbatched, and vmaps only the backward pass, so it works; since `nn.GRU` batches by itself, take "
            "each sample's block of the batched Jacobian (the cross-sample blocks are exactly zero).",
        expect_problem=Expect(error=RuntimeError, message="Batching rule not implemented for aten::gru"),
        expect_fix=Expect(printed=("torch.Size([2, 4, 2, 5, 3]) torch.Size([2, 4, 5, 3])", "tensor(0.", "True"),
                          no_warnings=True),
        explorer=(("num_layers", "1"), ("seq_len", "5")),
        explorer_label="target `y[:, -1].sum()`: its input gradient per step is the sum of the Jacobian's rows",
        references=(("pytorch#134606", "https://github.com/pytorch/pytorch/issues/134606"),),
    ),
)
BY_ID = {p.id: p for p in PITFALLS}


def get(pitfall_id: str) -> Pitfall:
    """The pitfall with this id (KeyError with the known ids otherwise)."""
    try:
        return BY_ID[pitfall_id]
    except KeyError:
        raise KeyError(f"unknown pitfall {pitfall_id!r}; known: {', '.join(BY_ID)}") from None


__all__ = ["PITFALLS", "Card", "Expect", "Outcome", "Pitfall", "card", "cuda_missing", "get", "run", "run_cached",
           "run_function", "source_of"]
