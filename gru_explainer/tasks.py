"""Long-memory tasks generated in code (no downloads), seeded by a `torch.Generator`.

Each task is read at the LAST step only: the model's head reads y[:, -1], so the "target step" is t = T-1 and the
distance of step t from it is T-1-t. Only a few input positions matter for the answer; `TaskBatch.relevant`
marks them per example, so the input gradient's mass can be split into relevant vs irrelevant positions.

- ``adding`` (Hochreiter & Schmidhuber 1997): each step holds a number v_t ~ U(0, 1) and a marker m_t; exactly two
  steps are marked, one in the first half [0, T//2) and one in the second half [T//2, T). Target: the sum of the
  two marked numbers. Loss: mean squared error. Chance level: the best constant guess is the mean sum 1, whose
  MSE is the variance of a sum of two U(0, 1) = 2/12 = 1/6 ≈ 0.1667. Accuracy: |prediction − target| < 0.04
  (chance: P(|S − 1| < 0.04) = 1 − 0.96² = 7.84 % for the constant guess).
- ``copy`` (delayed recall): the first k = COPY_LENGTH steps hold symbols (one-hot over SYMBOLS symbols), the
  other T − k steps (the delay) a blank channel; at the last step the model recalls all k symbols (k × SYMBOLS
  logits). Loss: cross-entropy averaged over the k symbols. Chance: ln(SYMBOLS) ≈ 1.386; accuracy = symbols
  recalled correctly (chance 1/SYMBOLS = 25 %). Relevant positions: the first k.
- ``marked_recall``: every step holds a random symbol (one-hot) and a marker channel; exactly one step per example,
  chosen uniformly in [0, T − 1), is marked. Target: the symbol at the marked step. Loss: cross-entropy; chance
  ln(SYMBOLS), accuracy chance 1/SYMBOLS. Relevant position: the marked step (a different one per example).

All tensors are float32 on the CPU (targets: float for adding, int64 class indices for the others).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import ConfigError

TASKS = ("adding", "copy", "marked_recall")
TASK_LABELS = {"adding": "adding problem", "copy": "copy (delayed recall)", "marked_recall": "recall the marked symbol"}
SYMBOLS = 4
"""Alphabet size of the copy and marked-recall tasks."""
COPY_LENGTH = 3
"""Symbols the copy task recalls (the first COPY_LENGTH steps)."""
ADDING_TOLERANCE = 0.04
"""An adding prediction counts as correct when |prediction − target| < this."""
MIN_SEQ_LEN = {"adding": 2, "copy": COPY_LENGTH + 1, "marked_recall": 2}
"""The shortest T each task is defined for (adding: one step per half; copy: a delay of at least one step)."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs from the model and what chance level means for it."""

    name: str
    label: str
    input_size: int
    output_size: int  # the head's outputs
    kind: str  # "regression" (MSE) or "classification" (cross-entropy)
    chance_loss: float  # the loss of the best input-independent prediction
    chance_accuracy: float  # the accuracy of that prediction
    relevant_positions: int  # relevant input positions per example
    relevant_text: str  # e.g. "the 2 marked positions"
    description: str  # one sentence


@dataclass(frozen=True)
class TaskBatch:
    """One batch: inputs x [B, T, I], targets, and the relevant input positions per example [B, T] bool."""

    x: Tensor
    target: Tensor  # adding: [B] float; copy: [B, COPY_LENGTH] int64; marked_recall: [B] int64
    relevant: Tensor


def _check(name: str, seq_len: int) -> None:
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}; got {name!r}")
    low = MIN_SEQ_LEN[name]
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < low:
        raise ConfigError(f"seq_len must be an integer >= {low} for the {name} task, got {seq_len!r}")


def task_spec(name: str, seq_len: int) -> TaskSpec:
    """The spec of task `name` at sequence length T = seq_len (ConfigError for an unknown task or too short T)."""
    _check(name, seq_len)
    if name == "adding":
        return TaskSpec(name, TASK_LABELS[name], 2, 1, "regression", 1 / 6, 1 - (1 - ADDING_TOLERANCE) ** 2, 2,
                        "the 2 marked positions",
                        f"Sum the two marked numbers among T = {seq_len} (one marker in each half); read at the last "
                        "step.")
    if name == "copy":
        return TaskSpec(name, TASK_LABELS[name], SYMBOLS + 1, COPY_LENGTH * SYMBOLS, "classification",
                        math.log(SYMBOLS), 1 / SYMBOLS, COPY_LENGTH, f"the first {COPY_LENGTH} positions",
                        f"Recall the first {COPY_LENGTH} symbols (of {SYMBOLS}) after a delay of "
                        f"{seq_len - COPY_LENGTH} blank steps, at the last step.")
    return TaskSpec(name, TASK_LABELS[name], SYMBOLS + 1, SYMBOLS, "classification", math.log(SYMBOLS),
                    1 / SYMBOLS, 1, "the marked position",
                    f"Recall the symbol (of {SYMBOLS}) at the one marked step among T = {seq_len}, at the last step.")


def make_batch(name: str, batch_size: int, seq_len: int, generator: torch.Generator) -> TaskBatch:
    """A batch of task `name`, drawn from `generator` only (never the global RNG)."""
    _check(name, seq_len)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    b, t = batch_size, seq_len
    items = torch.arange(b)
    relevant = torch.zeros(b, t, dtype=torch.bool)
    if name == "adding":
        values = torch.rand(b, t, generator=generator)
        half = t // 2
        first = torch.randint(0, half, (b,), generator=generator)
        second = torch.randint(half, t, (b,), generator=generator)
        relevant[items, first] = True
        relevant[items, second] = True
        x = torch.stack([values, relevant.float()], dim=-1)
        return TaskBatch(x, (values * relevant).sum(dim=1), relevant)
    if name == "copy":
        symbols = torch.randint(0, SYMBOLS, (b, COPY_LENGTH), generator=generator)
        x = torch.zeros(b, t, SYMBOLS + 1)
        x[:, :COPY_LENGTH] = torch.nn.functional.one_hot(symbols, SYMBOLS + 1).float()
        x[:, COPY_LENGTH:, SYMBOLS] = 1.0  # the blank channel during the delay
        relevant[:, :COPY_LENGTH] = True
        return TaskBatch(x, symbols, relevant)
    symbols = torch.randint(0, SYMBOLS, (b, t), generator=generator)
    marked = torch.randint(0, t - 1, (b,), generator=generator)
    x = torch.nn.functional.one_hot(symbols, SYMBOLS + 1).float()
    x[..., SYMBOLS] = 0.0
    x[items, marked, SYMBOLS] = 1.0
    relevant[items, marked] = True
    return TaskBatch(x, symbols[items, marked], relevant)


def task_loss(name: str, output: Tensor, target: Tensor) -> Tensor:
    """The task's loss (mean over the batch) of the head's output [B, output_size]."""
    if name == "adding":
        return torch.nn.functional.mse_loss(output[:, 0], target)
    if name == "copy":
        return torch.nn.functional.cross_entropy(output.reshape(-1, SYMBOLS), target.reshape(-1))
    return torch.nn.functional.cross_entropy(output, target)


def task_accuracy(name: str, output: Tensor, target: Tensor) -> float:
    """Fraction correct: adding |pred − target| < ADDING_TOLERANCE; copy symbols recalled; marked_recall items."""
    with torch.no_grad():
        if name == "adding":
            return float(((output[:, 0] - target).abs() < ADDING_TOLERANCE).float().mean())
        if name == "copy":
            return float((output.reshape(*target.shape, SYMBOLS).argmax(-1) == target).float().mean())
        return float((output.argmax(-1) == target).float().mean())


__all__ = ["ADDING_TOLERANCE", "COPY_LENGTH", "MIN_SEQ_LEN", "SYMBOLS", "TASKS", "TASK_LABELS", "TaskBatch",
           "TaskSpec", "make_batch", "task_accuracy", "task_loss", "task_spec"]
