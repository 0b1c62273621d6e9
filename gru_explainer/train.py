"""Train a small recurrent model on a long-memory task and watch where the gradient goes while it learns.

    from gru_explainer.train import TrainConfig, train
    result = train(TrainConfig(task="adding", cell="lstm", seq_len=50))
    result.history      # loss and accuracy per training step (on that step's batch, before its update)
    result.snapshots    # every K steps: ‖dL/dh_t‖, ‖dL/dc_t‖ (LSTM), ‖dL/dx_t‖ per step, TRUE magnitudes + zero causes
    result.summary      # one row per snapshot: loss, accuracy, share of the input-gradient mass on relevant positions
    torch.save(result.state_dict, "model.pt")   # the "Your model" page and `explain --state-dict` load it

The model is a recurrent cell (nn.GRU, nn.LSTM or nn.RNN tanh; batch_first) followed by a Linear head on the last
step's output y[:, -1] (the seed's MyModel), trained with Adam on fresh batches of `tasks.make_batch`, gradients
clipped to `clip_norm`. Every `snapshot_every` steps (and at step 0) the training step itself runs inside
`gru_explainer.watch`: its backward is the rescaled adjoint, which returns the same parameter gradients as autograd
(so the update is unchanged) and records every dL/dh_t on the way. After the last update one more snapshot is taken
on a fresh batch (no update): step == `steps`, the trained weights.

Deterministic: the weights are drawn from a `torch.Generator` seeded with `seed` (in float64, cast to float32) and
the batches from a second generator seeded with `seed` as well, which no other code touches; the global RNG is
never used. The same config gives the same curves; two cells with the same task and seed see the same batches.

Limits: `TrainLimits` bounds each size and the work steps × batch × T × H × layers, refused by
`TrainConfig.validate` (ConfigError naming the field) before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .adjoint import log10_sum
from .config import CELL_LABELS
from .errors import ConfigError
from .report import frame_columns, tidy_frame
from .tasks import MIN_SEQ_LEN, TASKS, TaskBatch, TaskSpec, make_batch, task_accuracy, task_loss, task_spec
from .watch import watch

TRAIN_CELLS = ("gru", "lstm", "rnn_tanh")
"""Cells `train` supports (nn.GRU, nn.LSTM, nn.RNN with tanh)."""
SNAPSHOT_QUANTITIES = ("hidden_state", "cell_state", "input")
"""Frame quantities kept per snapshot: dL/dh_t, dL/dc_t (LSTM) and dL/dx_t."""
SNAPSHOT_COLUMNS = ("step", "cell", "quantity", "layer", "direction", "t", "distance", "norm", "max_abs", "log10_norm",
                    "log10_max_abs", "direct_log10_norm", "exactly_zero", "structurally_zero", "zero_cause",
                    "underflow", "nonfinite", "forward_nonfinite")
"""Columns of `TrainResult.snapshots`: the watched call's frame columns (see `report.FRAME_COLUMNS`) plus the
training step, the cell and distance = T-1-t (steps back from the target step, the last one)."""
LOG10_2 = math.log10(2.0)


@dataclass(frozen=True)
class TrainLimits:
    """Bounds on a training run, so the largest allowed run takes about a minute on one CPU core (hosted).

    Time grows with the sequential part steps × T × layers (every time step of every layer is one kernel call in the
    forward and one in the backward, whatever the sizes) and with the arithmetic steps × batch × T × H × layers.
    Measured on one busy CPU core (torch 2.13, a second process competing): 0.25-0.75 ms per (step, time step,
    layer) (GRU slowest), watched snapshots 60-260 ms each; the default run (20,000 sequential, 25.6 M work, 21
    snapshots) trains in 3-6 s; at the bounds below a run takes about 40-70 s there.
    """

    max_steps: int = 3000
    max_batch_size: int = 128
    max_seq_len: int = 200
    max_hidden_size: int = 128
    max_num_layers: int = 2
    max_snapshots: int = 60
    """steps / snapshot_every: bounds the snapshot table, the page's cache and the watched steps' time."""
    max_sequential: int = 80_000
    """steps × seq_len × num_layers (4× the default run)."""
    max_work: int = 100_000_000
    """steps × batch_size × seq_len × hidden_size × num_layers (about 4× the default run)."""

    @classmethod
    def local(cls) -> TrainLimits:
        """Generous limits for a local machine."""
        return cls(max_steps=200_000, max_batch_size=4096, max_seq_len=4096, max_hidden_size=2048, max_num_layers=8,
                   max_snapshots=5000, max_sequential=10**12, max_work=10**15)

    @classmethod
    def from_env(cls) -> TrainLimits:
        """`TrainLimits.local()` when ``GRU_EXPLAINER_LIMITS=local``, else the hosted defaults."""
        value = os.environ.get("GRU_EXPLAINER_LIMITS", "hosted").strip().lower()
        return cls.local() if value == "local" else cls()


@dataclass(frozen=True)
class TrainConfig:
    """One training run. All fields are plain values (hashable: they key caches and travel through URLs)."""

    task: str = "adding"
    cell: str = "lstm"
    num_layers: int = 1
    hidden_size: int = 32
    seq_len: int = 50
    steps: int = 400
    batch_size: int = 64
    lr: float = 0.03
    seed: int = 0
    snapshot_every: int = 20
    clip_norm: float = 1.0
    """Clip the global gradient norm to this before each update (0: no clipping)."""

    @property
    def work(self) -> int:
        """steps × batch_size × seq_len × hidden_size × num_layers (the time limit)."""
        return self.steps * self.batch_size * self.seq_len * self.hidden_size * self.num_layers

    @property
    def sequential(self) -> int:
        """steps × seq_len × num_layers (the sequential-time limit)."""
        return self.steps * self.seq_len * self.num_layers

    @property
    def snapshot_steps(self) -> list[int]:
        """The training steps with a snapshot: 0, K, 2K, … below `steps`, then `steps` (after the last update)."""
        return [*range(0, self.steps, self.snapshot_every), self.steps]

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (not validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys (ConfigError); values are validated by `validate`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def validate(self, limits: TrainLimits | None = None) -> None:
        """Raise ConfigError naming the first invalid field; allocates nothing."""
        limits = limits or TrainLimits.from_env()
        _choice("task", self.task, TASKS)
        _choice("cell", self.cell, TRAIN_CELLS)
        _int_in("num_layers", self.num_layers, 1, limits.max_num_layers)
        _int_in("hidden_size", self.hidden_size, 1, limits.max_hidden_size)
        _int_in("seq_len", self.seq_len, MIN_SEQ_LEN[self.task], limits.max_seq_len)
        _int_in("steps", self.steps, 1, limits.max_steps)
        _int_in("batch_size", self.batch_size, 1, limits.max_batch_size)
        _int_in("seed", self.seed, 0, 2**31 - 1)
        _int_in("snapshot_every", self.snapshot_every, 1, limits.max_steps)
        _float_in("lr", self.lr, 0.0, 1.0, low_open=True)
        _float_in("clip_norm", self.clip_norm, 0.0, 1000.0)
        snapshots = len(self.snapshot_steps)
        if snapshots > limits.max_snapshots + 1:
            lowest = -(-self.steps // limits.max_snapshots)
            raise ConfigError(f"snapshot_every must be at least {lowest} for {self.steps} steps (at most "
                              f"{limits.max_snapshots} snapshots plus the final one), got {self.snapshot_every}")
        if self.work > limits.max_work:
            raise ConfigError(f"steps × batch_size × seq_len × hidden_size × num_layers must be at most "
                              f"{limits.max_work:,} (the training-time limit), got {self.work:,}; reduce steps, "
                              "batch_size, seq_len, hidden_size or num_layers")
        if self.sequential > limits.max_sequential:
            raise ConfigError(f"steps × seq_len × num_layers must be at most {limits.max_sequential:,} (the "
                              f"training-time limit: every time step is one kernel call per layer), got "
                              f"{self.sequential:,}; reduce steps, seq_len or num_layers")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _int_in(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer between {low} and {high}, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


def _float_in(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok:
        ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bound = ">" if low_open else ">="
        raise ConfigError(f"{name} must be a number {bound} {low:g} and <= {high:g}, got {value!r}")


# --- The model -------------------------------------------------------------------------------------------------------


class TaskModel(nn.Module):
    """A recurrent module `rnn` (batch_first) + Linear `head` on its last step's output: head(y[:, -1])."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, output_size: int) -> None:
        super().__init__()
        kwargs = dict(num_layers=num_layers, batch_first=True)
        if cell == "gru":
            self.rnn: nn.RNNBase = nn.GRU(input_size, hidden_size, **kwargs)
        elif cell == "lstm":
            self.rnn = nn.LSTM(input_size, hidden_size, **kwargs)
        else:
            self.rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", **kwargs)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        """The head's output [B, output_size] from y[:, -1]."""
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


def build_model(cfg: TrainConfig, spec: TaskSpec) -> TaskModel:
    """The untrained model of `cfg`: every parameter drawn from U(±1/√H) (PyTorch's RNN init) in float64 from a
    generator seeded with cfg.seed, then cast to float32."""
    gen = torch.Generator().manual_seed(cfg.seed)
    model = TaskModel(cfg.cell, spec.input_size, cfg.hidden_size, cfg.num_layers, spec.output_size)
    bound = 1.0 / math.sqrt(cfg.hidden_size)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_((torch.rand(param.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
    return model


# --- Snapshots -------------------------------------------------------------------------------------------------------


def _input_columns(input_log10: Tensor, relevant: Tensor) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """`input_profile`'s rows as arrays (before any DataFrame is made) and its totals."""
    log10 = input_log10.double().numpy()
    relevant = relevant.numpy()
    columns: dict[str, np.ndarray] = {"t": np.arange(log10.shape[1])}
    for name, mask in (("relevant", relevant), ("irrelevant", ~relevant)):
        count = mask.sum(axis=0)
        summed = log10_sum(np.where(mask, log10, -np.inf), axis=0)
        mean = summed - np.log10(np.maximum(count, 1))
        columns[f"{name}_log10"] = np.where(count > 0, mean, np.nan)
        columns[f"{name}_items"] = count
    rel, irr = float(log10_sum(log10[relevant])), float(log10_sum(log10[~relevant]))
    top = max(rel, irr)
    if not math.isfinite(top):
        share = math.nan
    else:
        a, b = 10.0 ** (rel - top), 10.0 ** (irr - top)
        share = a / (a + b)
    totals = {"input_relevant_log10": rel, "input_irrelevant_log10": irr, "relevant_share": share,
              "relevant_fraction": float(relevant.mean())}
    return columns, totals


def input_profile(input_log10: Tensor, relevant: Tensor) -> tuple[pd.DataFrame, dict[str, float]]:
    """Split ‖dL/dx_{b,t}‖ (true magnitudes as log10 [B, T]) into relevant and irrelevant positions.

    Returns per-step rows (t; log10 of the mean norm per relevant / irrelevant (example, step) pair at t, NaN where
    there is none; the pair counts) and the totals: log10 of the summed norms on relevant / irrelevant positions,
    the relevant share of the summed norms (the "mass") and the share of positions that are relevant (what a
    uniform spread would give).
    """
    columns, totals = _input_columns(input_log10, relevant)
    return pd.DataFrame(columns), totals


@dataclass
class Snapshot:
    """What one watched step leaves behind: its frame's and input profile's columns (arrays: `_tables` makes one
    DataFrame of all snapshots, far cheaper than one per snapshot) and the input totals."""

    frame: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    totals: dict[str, float]


def _snapshot(model: TaskModel, cfg: TrainConfig, batch: TaskBatch, step: int,
              ) -> tuple[Tensor, Tensor, Snapshot]:
    """Forward and backward of `batch` inside `watch` (parameter gradients as autograd's); returns loss, output and
    the snapshot's rows."""
    x = batch.x.clone().requires_grad_(True)  # so the adjoint returns dL/dx too
    with watch(model) as rec:
        output = model(x)
        loss = task_loss(cfg.task, output, batch.target)
        loss.backward()
    report = rec.calls[0].report
    inputs, totals = _input_columns(report.input_magnitude.log10_row_norm(), batch.relevant)
    # Only the kept quantities are computed, as arrays; the frame is made and labelled once for all snapshots at the
    # end (`_tables`): one pandas operation on the whole table costs far less than one per snapshot.
    return loss, output, Snapshot(frame_columns(report, SNAPSHOT_QUANTITIES), inputs, totals)


# --- Training --------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """A finished run: curves, snapshots, the trained weights and the final snapshot's batch."""

    config: TrainConfig
    task: TaskSpec
    history: pd.DataFrame
    """One row per training step: step, loss, accuracy (that step's batch, before its update)."""
    snapshots: pd.DataFrame
    """SNAPSHOT_COLUMNS: per snapshot × quantity (hidden_state, cell_state for LSTM, input) × layer × t."""
    inputs: pd.DataFrame
    """Per snapshot × t: relevant_log10 / irrelevant_log10 (mean ‖dL/dx‖ per (example, step) pair, true magnitude)
    and how many pairs each averages (relevant_items, irrelevant_items)."""
    summary: pd.DataFrame
    """One row per snapshot: step, cell, loss, accuracy, input_relevant_log10, input_irrelevant_log10,
    relevant_share (of the summed input-gradient norms), relevant_fraction (of the positions), hidden_first_log10 /
    hidden_last_log10 (log10 ‖dL/dh_t‖ at t = 0 and t = T-1, top layer), hidden_zero_steps."""
    state_dict: dict[str, Tensor]
    """The trained weights (CPU float32): rnn.weight_ih_l0, …, head.weight, head.bias."""
    probe: TaskBatch
    """The batch of the final snapshot (step == steps), to check its gradients independently."""
    seconds: float

    @property
    def final(self) -> pd.Series:
        """The summary row of the final snapshot (the trained weights)."""
        return self.summary.iloc[-1]

    def model(self) -> TaskModel:
        """A fresh model with the trained weights."""
        model = build_model(self.config, self.task)
        model.load_state_dict(self.state_dict)
        return model

    def state_dict_bytes(self) -> bytes:
        """The trained state_dict as `torch.save` bytes (what the "Your model" page uploads)."""
        buffer = io.BytesIO()
        torch.save(self.state_dict, buffer)
        return buffer.getvalue()

    def summary_dict(self) -> dict[str, Any]:
        """Strict-JSON summary: the config, the task, chance levels and the final snapshot's numbers."""
        final = self.final
        first = self.summary.iloc[0]

        def num(value: Any) -> float | None:
            value = float(value)
            return value if math.isfinite(value) else None

        return {
            "config": self.config.to_dict(),
            "task": {"name": self.task.name, "label": self.task.label, "description": self.task.description,
                     "chance_loss": self.task.chance_loss, "chance_accuracy": self.task.chance_accuracy,
                     "relevant_positions": self.task.relevant_positions},
            "seconds": self.seconds,
            "snapshots": len(self.summary),
            "initial": {"loss": num(first["loss"]), "accuracy": num(first["accuracy"]),
                        "relevant_share": num(first["relevant_share"])},
            "final": {"step": int(final["step"]), "loss": num(final["loss"]), "accuracy": num(final["accuracy"]),
                      "loss_over_chance": num(final["loss"] / self.task.chance_loss),
                      "relevant_share": num(final["relevant_share"]),
                      "relevant_fraction": num(final["relevant_fraction"]),
                      "hidden_first_log10": num(final["hidden_first_log10"]),
                      "hidden_last_log10": num(final["hidden_last_log10"])},
            "state_dict_keys": list(self.state_dict),
        }

    def save(self, out: str | Path) -> list[Path]:
        """Write history.csv, snapshots.csv, inputs.csv, summary.csv, summary.json and model.pt into `out`."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, frame in (("history", self.history), ("snapshots", self.snapshots), ("inputs", self.inputs),
                            ("summary", self.summary)):
            path = out / f"{name}.csv"
            frame.to_csv(path, index=False)
            paths.append(path)
        path = out / "summary.json"
        path.write_text(json.dumps(self.summary_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        paths.append(path)
        path = out / "model.pt"
        torch.save(self.state_dict, path)
        paths.append(path)
        return paths


Progress = Callable[[float, str], None]


class Adam:
    """Adam (Kingma & Ba) with torch.optim.Adam's defaults and its exact single-tensor arithmetic on CPU (betas 0.9
    and 0.999, eps 1e-8, no weight decay; same numbers, checked in tests). Written out because torch.optim's first
    use imports torch._dynamo: ~2.4 s and 67 MiB on a fresh server's first training run."""

    def __init__(self, params: list[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (set_to_none, as torch.optim does by default)."""
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        self.steps += 1
        step = float(self.steps)
        step_size = self.lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        for param, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if param.grad is None:
                continue
            grad = param.grad
            exp_avg.lerp_(grad, 1 - beta1)  # first moment
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # second moment
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


def train(cfg: TrainConfig, limits: TrainLimits | None = None, progress: Progress | None = None) -> TrainResult:
    """Train `cfg` (validated first: ConfigError naming the field, nothing allocated) with snapshots via `watch`.

    `progress(fraction, message)` is called about 50 times (fraction in [0, 1]).
    """
    cfg.validate(limits)
    spec = task_spec(cfg.task, cfg.seq_len)
    model = build_model(cfg, spec)
    data = torch.Generator().manual_seed(cfg.seed)
    params = list(model.parameters())
    optimizer = Adam(params, lr=cfg.lr)
    label = CELL_LABELS[cfg.cell]
    history: list[tuple[int, float, float]] = []
    snapshots: list[tuple[int, float, float, Snapshot]] = []
    every_report = max(1, cfg.steps // 50)
    start = time.perf_counter()
    for step in range(cfg.steps + 1):
        batch = make_batch(cfg.task, cfg.batch_size, cfg.seq_len, data)
        final = step == cfg.steps
        optimizer.zero_grad()
        if final or step % cfg.snapshot_every == 0:
            loss, output, snap = _snapshot(model, cfg, batch, step)
            record = (step, float(loss.detach()), task_accuracy(cfg.task, output, batch.target))
            snapshots.append((*record, snap))
            if final:
                break
        else:
            output = model(batch.x)
            loss = task_loss(cfg.task, output, batch.target)
            loss.backward()
            record = (step, float(loss.detach()), task_accuracy(cfg.task, output, batch.target))
        history.append(record)
        if cfg.clip_norm > 0:
            nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        optimizer.step()
        if progress is not None and (step + 1) % every_report == 0:
            progress((step + 1) / cfg.steps,
                     f"Training {label}: step {step + 1} of {cfg.steps}, loss {float(loss.detach()):.4g}")
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(1.0, f"Trained {label} in {seconds:.1f} s")
    return _result(cfg, spec, model, batch, history, snapshots, seconds)


def _tables(cfg: TrainConfig, snapshots: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The snapshots' frames and input profiles as two tidy tables (SNAPSHOT_COLUMNS; step, cell, t, ...), each made
    as one DataFrame from the joined arrays."""

    def columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        steps = np.concatenate([np.full(len(part["t"]), step) for (step, *_), part in zip(snapshots, parts,
                                                                                          strict=True)])
        joined = {"step": steps, "cell": np.full(len(steps), cfg.cell, dtype=object)}
        joined.update({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})
        return joined

    frames = columns([s.frame for *_, s in snapshots])
    frames["distance"] = cfg.seq_len - 1 - frames["t"]
    inputs = columns([s.inputs for *_, s in snapshots])
    return tidy_frame({name: frames[name] for name in SNAPSHOT_COLUMNS}), tidy_frame(inputs)


def _hidden_summary(frame: dict[str, np.ndarray], top: int) -> dict[str, float]:
    """The top layer's ‖dL/dh_t‖ at the first and the last step (log10; the first / last that is not NaN) and how
    many of its steps have a zero cause, from one snapshot's frame columns (rows in t order)."""
    rows = (frame["quantity"] == "hidden_state") & (frame["layer"] == top)
    values = frame["log10_norm"][rows]
    known = values[~np.isnan(values)]
    return {"hidden_first_log10": float(known[0]) if len(known) else math.nan,
            "hidden_last_log10": float(known[-1]) if len(known) else math.nan,
            "hidden_zero_steps": int((frame["zero_cause"][rows] != "").sum())}


def _result(cfg: TrainConfig, spec: TaskSpec, model: TaskModel, probe: TaskBatch, history: list, snapshots: list,
            seconds: float) -> TrainResult:
    frames, inputs = _tables(cfg, snapshots)
    top = cfg.num_layers - 1
    rows = [{"step": step, "cell": cfg.cell, "loss": loss, "accuracy": accuracy, **snap.totals,
             **_hidden_summary(snap.frame, top)} for step, loss, accuracy, snap in snapshots]
    summary = pd.DataFrame(rows)
    history_frame = pd.DataFrame(history, columns=["step", "loss", "accuracy"])
    history_frame.insert(1, "cell", cfg.cell)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return TrainResult(cfg, spec, history_frame, frames, inputs, summary, state, probe, seconds)


def first_step_below(history: pd.DataFrame, level: float, window: int) -> int | None:
    """The first step whose trailing mean loss (over `window` steps) is below `level`, or None."""
    smooth = history["loss"].rolling(window, min_periods=window).mean().to_numpy()
    hits = np.flatnonzero(smooth < level)
    return int(history["step"].iloc[hits[0]]) if hits.size else None


# --- Command line: python -m gru_explainer train ... --out DIR ------------------------------------------------------

_TRAIN_HELP = {
    "task": "long-memory task: adding (sum the 2 marked numbers), copy (recall the first 3 symbols after a delay), "
            "marked_recall (recall the symbol at the one marked step)",
    "cell": "recurrent cell",
    "num_layers": "stacked recurrent layers",
    "hidden_size": "hidden units per layer",
    "seq_len": "time steps T (for copy: 3 symbols + T-3 delay steps)",
    "steps": "training steps (Adam updates)",
    "batch_size": "examples per step (fresh batches every step)",
    "lr": "Adam learning rate",
    "seed": "seeds the weights and the batches",
    "snapshot_every": "a snapshot through watch every K steps (and after the last update)",
    "clip_norm": "clip the gradient norm to this before each update (0: off)",
}
_TRAIN_CHOICES = {"task": TASKS, "cell": TRAIN_CELLS}


def _train_option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_command(commands: Any) -> None:
    """Add the `train` subcommand to the CLI's subparsers."""
    hosted = TrainLimits()
    default = TrainConfig()
    sub = commands.add_parser(
        "train", help="train a small model on a long-memory task and write its learning curves, gradient snapshots "
                      "and weights to a folder",
        description="Train a recurrent cell + linear head on a long-memory task with Adam; every K steps a snapshot "
                    "through watch records ‖dL/dh_t‖ (true magnitudes, zero causes), ‖dL/dc_t‖ (LSTM) and "
                    "‖dL/dx_t‖ split into relevant vs irrelevant positions. Writes history.csv, snapshots.csv, "
                    "inputs.csv, summary.csv, summary.json and model.pt (a state_dict the explain --state-dict "
                    "command and the Your model page load).",
        epilog=f"Hosted limits: steps <= {hosted.max_steps}, batch <= {hosted.max_batch_size}, T <= "
               f"{hosted.max_seq_len}, hidden <= {hosted.max_hidden_size}, layers <= {hosted.max_num_layers}, "
               f"snapshots <= {hosted.max_snapshots}, steps × T × layers <= {hosted.max_sequential:,}, "
               f"steps × batch × T × hidden × layers <= {hosted.max_work:,}; --limits local raises them. "
               "Exit codes: 0 written, 2 invalid options, 1 writing failed.")
    sub.set_defaults(command_parser=sub)
    sub.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write into (created)")
    sub.add_argument("--limits", choices=("hosted", "local"), default=None,
                     help="size limits: hosted (the demo's) or local. Default: GRU_EXPLAINER_LIMITS or hosted")
    sub.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    for f in fields(TrainConfig):
        value = getattr(default, f.name)
        kwargs: dict[str, Any] = {"default": None, "dest": f"train_{f.name}"}
        if f.name in _TRAIN_CHOICES:
            kwargs["choices"] = _TRAIN_CHOICES[f.name]
        else:
            kwargs["type"] = type(value)
            kwargs["metavar"] = "N" if isinstance(value, int) else "X"
        sub.add_argument(_train_option(f.name), help=f"{_TRAIN_HELP[f.name]}. Default: {value}", **kwargs)


def run_train_command(args: Any) -> int:
    """Run `train` from parsed CLI options; bad options exit 2 (one message naming the option)."""
    import sys

    parser = args.command_parser
    changes = {f.name: getattr(args, f"train_{f.name}") for f in fields(TrainConfig)
               if getattr(args, f"train_{f.name}") is not None}
    cfg = TrainConfig().replace(**changes)
    limits = None if args.limits is None else (TrainLimits.local() if args.limits == "local" else TrainLimits())
    try:
        cfg.validate(limits)
    except ConfigError as err:
        message = str(err)
        named = [f.name for f in fields(TrainConfig) if message.startswith(f.name + " must")]
        if named:
            parser.error(f"argument {_train_option(named[0])}: {message}")
        parser.error(f"invalid training config: {message}")
    torch.set_num_threads(1)  # this process only: the models are far too small to gain from threads (see app.py)
    result = train(cfg, limits)
    try:
        paths = result.save(args.out)
    except OSError as err:
        print(f"{parser.prog}: writing failed: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        final = result.final
        print(f"trained {CELL_LABELS[cfg.cell]} on {result.task.label} (T = {cfg.seq_len}) for {cfg.steps} steps in "
              f"{result.seconds:.1f} s: loss {final['loss']:.4g} ({final['loss'] / result.task.chance_loss:.1%} of "
              f"chance {result.task.chance_loss:.4g}), accuracy {final['accuracy']:.1%}, "
              f"{final['relevant_share']:.1%} of the input-gradient mass on {result.task.relevant_text}; wrote "
              f"{len(paths)} files to {args.out}:")
        for path in paths:
            print(f"  {path}")
    return 0


__all__ = ["SNAPSHOT_COLUMNS", "SNAPSHOT_QUANTITIES", "TRAIN_CELLS", "Adam", "TaskModel", "TrainConfig", "TrainLimits",
           "TrainResult", "add_train_command", "build_model", "first_step_below", "input_profile", "run_train_command",
           "train"]
