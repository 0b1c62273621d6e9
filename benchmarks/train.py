"""Training benchmark: `gru_explainer.train` with a snapshot through `watch` every 10 steps against the same plain
training loop without `watch`, per cell, in one process.

Run: ``python -m benchmarks.train`` (``--quick`` for fewer repeats; ``--breakdown`` also prints where one snapshot's
time goes, piece by piece, against one plain step's forward+backward). One intra-op thread (as the app runs). Each
case is a whole run of STEPS training steps (fresh batches, Adam, gradient clipping, loss and accuracy per step),
timed round-robin (`benchmarks.engine.interleaved_ms`); ratios are against the plain loop measured alongside
(compare ratios, not absolute times). The snapshot case is `train(cfg)` itself: 11 watched steps (0, 10, …, 90)
plus the final snapshot after the last update, and the tidy tables built at the end. Configs: the page's default
sizes (adding problem, T = 50, H = 32, B = 64) and a larger one (T = 100, H = 128, B = 32), where watch's fixed
per-call cost weighs less. Target (issue 12): ≤ 1.10× with snapshots every 10 steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gru_explainer.report import frame_columns
from gru_explainer.tasks import make_batch, task_accuracy, task_loss, task_spec
from gru_explainer.train import SNAPSHOT_QUANTITIES, TRAIN_CELLS, Adam, TrainConfig, _input_columns, build_model, train
from gru_explainer.watch import watch

from .engine import interleaved_ms

STEPS = 100
CONFIGS = {"page default (T=50, H=32, B=64)": TrainConfig(steps=STEPS, snapshot_every=10),
           "larger (T=100, H=128, B=32)": TrainConfig(steps=STEPS, snapshot_every=10, seq_len=100, hidden_size=128,
                                                        batch_size=32)}


def plain_run(cfg: TrainConfig) -> list[tuple[int, float, float]]:
    """The same training loop as `train` (model, batches, its Adam, clipping, per-step loss and accuracy), no watch."""
    spec = task_spec(cfg.task, cfg.seq_len)
    model = build_model(cfg, spec)
    data = torch.Generator().manual_seed(cfg.seed)
    params = list(model.parameters())
    optimizer = Adam(params, lr=cfg.lr)
    history = []
    for step in range(cfg.steps):
        batch = make_batch(cfg.task, cfg.batch_size, cfg.seq_len, data)
        optimizer.zero_grad()
        output = model(batch.x)
        loss = task_loss(cfg.task, output, batch.target)
        loss.backward()
        history.append((step, float(loss.detach()), task_accuracy(cfg.task, output, batch.target)))
        if cfg.clip_norm > 0:
            nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        optimizer.step()
    return history


def run(repeats: int) -> None:
    """Print, per config and cell, the median time of both runs, the ratio and the steps per second."""
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread; {STEPS} steps per run, snapshots every 10 "
          f"steps; median of {repeats}, round-robin")
    for name, base in CONFIGS.items():
        print(f"\n== {name} ==")
        print(f"{'cell':10s} {'plain loop':>12s} {'snapshots':>12s} {'ratio':>7s} {'plain steps/s':>14s} "
              f"{'with snapshots':>15s}")
        for cell in TRAIN_CELLS:
            cfg = base.replace(cell=cell)
            timed = interleaved_ms({"plain": lambda cfg=cfg: plain_run(cfg), "snapshots": lambda cfg=cfg: train(cfg)},
                                   repeats)
            plain, snaps = timed["plain"], timed["snapshots"]
            print(f"{cell:10s} {plain:9.0f} ms {snaps:9.0f} ms {snaps / plain:6.2f}x {STEPS / plain * 1000:14.1f} "
                  f"{STEPS / snaps * 1000:15.1f}")


def snapshot_breakdown(cfg: TrainConfig, repeats: int = 40) -> dict[str, float]:
    """Median CPU ms (this thread) of one plain step's forward+backward and of each piece of one snapshot, on the
    untrained model and one batch: the same steps as `train._snapshot`, timed one by one."""
    spec = task_spec(cfg.task, cfg.seq_len)
    model = build_model(cfg, spec)
    batch = make_batch(cfg.task, cfg.batch_size, cfg.seq_len, torch.Generator().manual_seed(cfg.seed))
    times: dict[str, list[float]] = {}

    def lap(name: str, start: float) -> float:
        now = time.thread_time()
        times.setdefault(name, []).append((now - start) * 1000)
        return now

    for round_ in range(repeats + 5):  # the first 5 rounds warm up
        for param in model.parameters():
            param.grad = None
        start = time.thread_time()
        task_loss(cfg.task, model(batch.x), batch.target).backward()
        plain = lap("plain forward+backward", start)
        for param in model.parameters():
            param.grad = None
        x = batch.x.clone().requires_grad_(True)
        with watch(model) as rec:
            begin = time.thread_time()
            output = model(x)
            mark = lap("snapshot: watched forward", begin)
            loss = task_loss(cfg.task, output, batch.target)
            loss.backward()
            mark = lap("snapshot: loss + adjoint backward", mark)
        report = rec.calls[0].report
        mark = lap("snapshot: report", mark)
        _input_columns(report.input_magnitude.log10_row_norm(), batch.relevant)
        mark = lap("snapshot: input profile", mark)
        frame_columns(report, SNAPSHOT_QUANTITIES)
        lap("snapshot: frame columns", mark)
        lap("snapshot: total", plain)
        if round_ < 5:
            times.clear()
    return {name: statistics.median(values) for name, values in times.items()}


def print_breakdown() -> None:
    """`snapshot_breakdown` of every cell at the page's default sizes."""
    base = CONFIGS["page default (T=50, H=32, B=64)"]
    print("\n== one snapshot, piece by piece (page default; median CPU ms of this thread) ==")
    rows = {cell: snapshot_breakdown(base.replace(cell=cell)) for cell in TRAIN_CELLS}
    print(f"{'':36s}" + "".join(f"{cell:>10s}" for cell in TRAIN_CELLS))
    for name in next(iter(rows.values())):
        print(f"{name:36s}" + "".join(f"{rows[cell][name]:10.2f}" for cell in TRAIN_CELLS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat instead of 3")
    parser.add_argument("--repeats", type=int, default=None, help="rounds to take the median of (default 3)")
    parser.add_argument("--breakdown", action="store_true", help="also time one snapshot piece by piece")
    args = parser.parse_args()
    run(args.repeats or (1 if args.quick else 3))
    if args.breakdown:
        print_breakdown()


if __name__ == "__main__":
    main()
