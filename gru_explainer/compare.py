"""Devices and engines: the same config on every device and with both engines, timed and checked against each other.

Engines: "fused" runs the fused module (cuDNN / oneDNN / PyTorch's native loop) forward and gets the total
derivatives dL/dh_t from the adjoint recursion; "twin" runs the unrolled twin under autograd. The reference is
the CPU twin: `compare` reports, per (device, engine), the median wall time of `explain` and the largest absolute
difference of hidden_grad / stacked_grad / input_grad from that reference, and whether they agree within a
dtype-dependent tolerance (`tolerance`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable

import pandas as pd
import torch
from torch import Tensor

from .budget import check_compare
from .config import ENGINES, ExplainConfig, Limits, available_devices, resolve_device
from .errors import ConfigError, DeviceError
from .explain import explain
from .models import build
from .report import GradientReport

COMPARED = ("hidden_grad", "stacked_grad", "input_grad")
"""The report tensors compared across devices and engines."""
COMPARE_COLUMNS = ("device", "engine", "engine_used", "time_ms", "hidden_grad_diff", "stacked_grad_diff",
                   "input_grad_diff", "max_diff", "tolerance", "agrees", "reference")
"""Columns of `compare`."""
TOLERANCES = {"float32": (1e-4, 1e-6), "float64": (1e-9, 1e-12)}
"""(rtol, atol) per dtype on the CPU, relative to the largest reference magnitude (reordered float sums)."""
ACCELERATOR_TOLERANCES = {"float32": (2e-2, 1e-5), "float64": (1e-9, 1e-12)}
"""(rtol, atol) per dtype on GPUs: cuDNN runs float32 RNNs with TF32 tensor cores by default
(``torch.backends.cudnn.allow_tf32``), a 10-bit mantissa, so float32 states differ from the CPU's by ~1e-3."""
MAX_REPEATS = 20

WHY_FUSED = """\
**Why a fused kernel cannot hand you h_t.** `nn.GRU`, `nn.LSTM` and `nn.RNN` run the recurrence inside library
code: cuDNN on NVIDIA GPUs (one call for every step, layer and direction), oneDNN for float32 LSTMs on CPUs (one
call per layer and direction, every step inside it), or PyTorch's own C++ loop otherwise. The module returns only
NEW tensors: `output`, which stacks the top layer's states after the loop has run, and `h_n` (`c_n`). The states
h_t that each step actually read live in the kernel's workspace (the "reserve space" cuDNN keeps for its own
backward pass), or, in the C++ loop, as intermediate tensors that no Python name reaches. With cuDNN autograd sees
one `CudnnRnnBackward0` node for the whole recurrence; with oneDNN one `MkldnnRnnLayerBackward0` node per layer and
direction, whose inputs are that layer's input sequence, its initial states and its weights; in the C++ loop every
step's operations are autograd nodes, but their outputs have no Python name. Either way there is no Python tensor
for h_t to call `retain_grad()` on, and `output.grad` can only hold the *partial* derivative ∂L/∂output, which is
zero wherever the loss does not read `output` directly. The *total* derivative dL/dh_t, including the path
through every later step, is formed inside the backward pass and thrown away. To see it you need either an
unrolled model whose states are graph nodes (the "twin" engine: T·L small steps, slower, especially on GPUs where
each step is a kernel launch) or the adjoint recursion written out on the fused states (the "fused" engine here:
the fused forward, then one small matmul per step going backwards).\
"""
"""Markdown: why fused / cuDNN RNN kernels cannot expose the per-step states or their gradients."""


def distinct_devices(devices: Iterable[str] | None = None) -> list[str]:
    """The devices to compare, one name per physical device: "cuda" is dropped when "cuda:N" names the same GPU.

    None means every device of `available_devices()`. "auto" resolves to its device. Unknown or absent devices
    raise ConfigError (via `resolve_device`).
    """
    names = list(devices) if devices is not None else available_devices()
    seen: dict[str, str] = {}
    for name in names:
        device = resolve_device(name)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        if key not in seen:
            seen[key] = key
    return list(seen)


def tolerance(dtype: str, scale: float, device: str = "cpu") -> float:
    """The largest absolute difference accepted for values of magnitude up to `scale` in `dtype` on `device`."""
    table = TOLERANCES if str(device).startswith("cpu") else ACCELERATOR_TOLERANCES
    rtol, atol = table.get(dtype, table["float32"])
    return atol + rtol * (scale if math.isfinite(scale) else 0.0)


def max_abs_diff(a: Tensor | None, b: Tensor | None) -> float:
    """max |a - b| in float64; 0 where both are the same inf/NaN, inf where only one is non-finite."""
    if a is None and b is None:
        return 0.0
    if a is None or b is None or a.shape != b.shape:
        return math.inf
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    if a.numel() == 0:
        return 0.0
    both_finite = torch.isfinite(a) & torch.isfinite(b)
    same_special = (a == b) | (torch.isnan(a) & torch.isnan(b))
    if bool((~both_finite & ~same_special).any()):
        return math.inf
    diff = (a - b).abs().where(both_finite, torch.zeros_like(a))
    return float(diff.max())


def _finite_max(t: Tensor | None) -> float:
    if t is None or t.numel() == 0:
        return 0.0
    values = t.detach().double().abs()
    values = values[torch.isfinite(values)]
    return float(values.max()) if values.numel() else 0.0


def timed_explain(cfg: ExplainConfig, engine: str, repeats: int) -> tuple[GradientReport, float]:
    """One warm-up run (its report is returned) and the median wall time (ms) of `repeats` timed runs."""
    report = explain(cfg, engine=engine)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explain(cfg, engine=engine)
        times.append((time.perf_counter() - start) * 1000.0)
    return report, statistics.median(times) if times else math.nan


def compare(
    cfg: ExplainConfig,
    devices: list[str] | None = None,
    repeats: int = 3,
    engines: Iterable[str] = ENGINES,
    progress: Callable[[float, str], None] | None = None,
) -> pd.DataFrame:
    """Run `cfg` on every device (default: all distinct available ones) and engine; one row each (COMPARE_COLUMNS).

    `time_ms` is the median of `repeats` runs of `explain` after a warm-up (model build and device transfer
    included: what the page pays). Differences are max |·| against the CPU twin reference; `agrees` holds when
    every difference is within `tolerance(cfg.dtype, largest reference magnitude, device)`. cfg.device is ignored.
    Raises ConfigError / TargetError for invalid input, and BudgetError (a ConfigError) when the estimated CPU work
    (`budget.compare_seconds`) exceeds `Limits.max_cpu_seconds`, before anything runs.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= MAX_REPEATS:
        raise ConfigError(f"repeats must be an integer between 1 and {MAX_REPEATS}, got {repeats!r}")
    engines = list(dict.fromkeys(engines))
    for engine in engines:
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    base = cfg.replace(device="cpu")
    limits = Limits.from_env()
    base.validate(limits)
    states = base.state_elements
    budget = limits.max_state_elements // 2  # every engine on every device, plus the reference, in one process
    if states > budget:
        raise ConfigError(
            f"the comparison runs every engine on every device several times, so it takes at most {budget:,} "
            "state elements (batch_size × seq_len × num_layers × directions × hidden_size); "
            f"this config has {states:,}: reduce one of them")
    names = distinct_devices(devices)
    check_compare(base, len(names), repeats, engines, limits)  # bounded CPU work, refused before any run
    reference = explain(base, engine="twin")
    scales = {name: _finite_max(getattr(reference, name)) for name in COMPARED}
    runs = [(d, e) for d in names for e in engines]
    rows = []
    for i, (device, engine) in enumerate(runs):
        if progress is not None:
            progress(i / len(runs), f"{engine} engine on {device} ({i + 1}/{len(runs)})")
        report, ms = timed_explain(base.replace(device=device), engine, repeats)
        diffs = {name: max_abs_diff(getattr(report, name), getattr(reference, name)) for name in COMPARED}
        tols = {name: tolerance(cfg.dtype, scales[name], device) for name in COMPARED}
        rows.append({
            "device": device,
            "engine": engine,
            "engine_used": report.engine,
            "time_ms": ms,
            **{f"{name}_diff": diffs[name] for name in COMPARED},
            "max_diff": max(diffs.values()),
            "tolerance": max(tols.values()),
            "agrees": all(diffs[name] <= tols[name] for name in COMPARED),
            "reference": device == "cpu" and report.engine == "twin",
        })
    if progress is not None:
        progress(1.0, f"done: {len(runs)} run(s)")
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def fused_graph_census(cfg: ExplainConfig, devices: list[str] | None = None) -> pd.DataFrame:
    """What autograd sees of the FUSED module on each device: the output's grad_fn, node count, opaque RNN nodes.

    Evidence for WHY_FUSED: on CUDA the whole recurrence is one `CudnnRnnBackward0`; on CPU it is one oneDNN
    `MkldnnRnnLayerBackward0` per layer and direction (float32 LSTM) or PyTorch's C++ loop, whose per-step nodes
    exist but have no Python tensor to read. Columns: device, output_grad_fn, nodes, rnn_kernel_nodes, kernels.
    """
    base = cfg.replace(device="cpu", head="none")
    base.validate()
    if base.cell == "answer_gru":
        raise ConfigError("cell 'answer_gru' is the seed answer's hand-written GRU: it has no fused kernel")
    rows = []
    for name in distinct_devices(devices):
        try:
            built = build(base, torch.device(name))
            x = built.inputs.detach().requires_grad_()
            with torch.enable_grad():
                y, _ = built.module(x)
        except RuntimeError as err:  # out of memory, driver fault: the same error explain() gives, CPU named
            if name == "cpu":
                raise
            raise DeviceError(f"the fused module failed on device {name!r} ({type(err).__name__}); choose device "
                              "'cpu' to run it on the CPU instead") from err
        seen: dict[int, object] = {}
        stack = [y.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or id(fn) in seen:
                continue
            seen[id(fn)] = fn
            stack.extend(child for child, _ in fn.next_functions)
        kernels = sorted({type(f).__name__ for f in seen.values() if "Rnn" in type(f).__name__})
        rows.append({
            "device": name,
            "output_grad_fn": type(y.grad_fn).__name__ if y.grad_fn is not None else "none",
            "nodes": len(seen),
            "rnn_kernel_nodes": sum("Rnn" in type(f).__name__ for f in seen.values()),
            "kernels": ", ".join(kernels) or "none (PyTorch's native loop: per-step nodes without Python tensors)",
        })
    return pd.DataFrame(rows, columns=["device", "output_grad_fn", "nodes", "rnn_kernel_nodes", "kernels"])


__all__ = [
    "COMPARED",
    "COMPARE_COLUMNS",
    "ACCELERATOR_TOLERANCES",
    "TOLERANCES",
    "WHY_FUSED",
    "compare",
    "distinct_devices",
    "fused_graph_census",
    "max_abs_diff",
    "tolerance",
]
