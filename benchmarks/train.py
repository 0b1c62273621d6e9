"""Training benchmark: `gru_explainer.train` with a snapshot through `watch` every 10 steps against the same plain
training loop without `watch`, per cell, in one process.

Run: ``python -m benchmarks.train`` (``--quick`` for fewer repeats; ``--breakdown`` also prints where one snapshot's
time goes, piece by piece, against one plain step's forward+backward; ``--floor`` also times snapshots that do only
the bare adjoint, the least this design can do). One intra-op thread (as the app runs). Each case is a whole run of
STEPS training steps (fresh batches, Adam, gradient clipping, loss and accuracy per step), timed round-robin
(`benchmarks.engine.interleaved_times`); the ratio is the median of each round's ratio against the plain loop run
just before it (compare ratios, not absolute times). The snapshot case is `train(cfg)` itself: 10 watched steps (0,
10, …, 90) plus the final snapshot after the last update, and the tidy tables built at the end. Configs: the page's
default sizes (adding problem, T = 50, H = 32, B = 64) and a larger one (T = 100, H = 128, B = 32), where watch's
fixed per-call cost weighs less. Target (issue 12): ≤ 1.10× with snapshots every 10 steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gru_explainer.adjoint import _linear, _weight_grad
from gru_explainer.report import frame_columns
from gru_explainer.tasks import make_batch, task_accuracy, task_loss, task_spec
from gru_explainer.train import SNAPSHOT_QUANTITIES, TRAIN_CELLS, Adam, TrainConfig, _input_columns, build_model, train
from gru_explainer.watch import watch

from .engine import interleaved_times

STEPS = 100
CONFIGS = {"page default (T=50, H=32, B=64)": TrainConfig(steps=STEPS, snapshot_every=10),
           "larger (T=100, H=128, B=32)": TrainConfig(steps=STEPS, snapshot_every=10, seq_len=100, hidden_size=128,
                                                        batch_size=32)}


def plain_run(cfg: TrainConfig, snapshot=None) -> list[tuple[int, float, float]]:
    """The same training loop as `train` (model, batches, its Adam, clipping, per-step loss and accuracy), no watch.

    snapshot(model, cfg, batch) -> (loss, output), when given, replaces the forward+backward at the steps where
    `train` takes a snapshot, and runs once more after the last update, as `train` does (`floor_run`)."""
    spec = task_spec(cfg.task, cfg.seq_len)
    model = build_model(cfg, spec)
    data = torch.Generator().manual_seed(cfg.seed)
    params = list(model.parameters())
    optimizer = Adam(params, lr=cfg.lr)
    history = []
    for step in range(cfg.steps + (snapshot is not None)):
        batch = make_batch(cfg.task, cfg.batch_size, cfg.seq_len, data)
        optimizer.zero_grad()
        if snapshot is not None and (step == cfg.steps or step % cfg.snapshot_every == 0):
            loss, output = snapshot(model, cfg, batch)
            if step == cfg.steps:
                break
        else:
            output = model(batch.x)
            loss = task_loss(cfg.task, output, batch.target)
            loss.backward()
        history.append((step, float(loss.detach()), task_accuracy(cfg.task, output, batch.target)))
        if cfg.clip_norm > 0:
            nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        optimizer.step()
    return history


def bare_snapshot(model: nn.Module, cfg: TrainConfig, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The least a snapshot of this design does (one layer, LSTM or RNN tanh): the fused forward, the gates
    recomputed from its states, the plain adjoint recursion (no rescaling, no checks: the fewest eager ops per step),
    the parameter gradients (set on the parameters) and one norm per step; no report, no frame. A lower bound."""
    rnn, head = model.rnn, model.head
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    hidden = rnn.hidden_size
    with torch.no_grad():
        y, _ = rnn(batch.x)
    last = y[:, -1].detach().requires_grad_(True)
    output = head(last)
    loss = task_loss(cfg.task, output, batch.target)
    loss.backward()
    with torch.no_grad():
        batch_size, steps, _ = batch.x.shape
        inputs, states = batch.x.transpose(0, 1).contiguous(), y.transpose(0, 1).contiguous()
        prev = torch.cat([states.new_zeros(1, batch_size, hidden), states[:-1]])
        carry = last.grad.clone()
        if cfg.cell == "lstm":
            gates = _linear(torch.cat([prev, inputs], -1), torch.cat([w_hh, w_ih], 1), b_hh + b_ih)
            gates = gates.view(steps, batch_size, 4, hidden)
            gates[:, :, :2].sigmoid_()
            gates[:, :, 3].sigmoid_()
            gates[:, :, 2].tanh_()
            i, f, g, o = gates.unbind(2)
            ig, cell = i * g, torch.empty_like(i)
            c = torch.zeros_like(ig[0])
            for s in range(steps):
                c = torch.addcmul(ig[s], f[s], c, out=cell[s])
            tc = cell.tanh()
            h_to_c = o * (1 - tc * tc)
            coef = torch.stack([g * i * (1 - i), torch.cat([torch.zeros_like(c)[None], cell[:-1]]) * f * (1 - f),
                                i * (1 - g * g), tc * o * (1 - o)], 2)
            d_gates, hidden_grad = torch.empty_like(coef), torch.empty_like(states)
            cell_carry = torch.zeros_like(carry)
            for s in range(steps - 1, -1, -1):
                hidden_grad[s] = carry
                cell_total = torch.addcmul(cell_carry, carry, h_to_c[s])
                torch.mul(cell_total.unsqueeze(1), coef[s, :, :3], out=d_gates[s, :, :3])
                torch.mul(carry, coef[s, :, 3], out=d_gates[s, :, 3])
                cell_carry = cell_total * f[s]
                carry = d_gates[s].view(batch_size, -1) @ w_hh
            flat = d_gates.view(steps * batch_size, -1)
        else:
            slope = 1 - states * states
            flat_steps, hidden_grad = torch.empty_like(states), torch.empty_like(states)
            for s in range(steps - 1, -1, -1):
                hidden_grad[s] = carry
                torch.mul(carry, slope[s], out=flat_steps[s])
                carry = flat_steps[s] @ w_hh
            flat = flat_steps.view(steps * batch_size, -1)
        w_ih.grad = _weight_grad(flat, inputs.view(steps * batch_size, -1))
        w_hh.grad = _weight_grad(flat, prev.view(steps * batch_size, -1))
        b_ih.grad = flat.sum(0)
        b_hh.grad = b_ih.grad.clone()
        torch.linalg.vector_norm(hidden_grad, dim=(1, 2))
    return loss, output


def floor_run(cfg: TrainConfig) -> list[tuple[int, float, float]]:
    """`plain_run` with `bare_snapshot` at the snapshot steps (and one more after the last update), as `train` has."""
    return plain_run(cfg, snapshot=bare_snapshot)


FLOOR_CELLS = ("lstm", "rnn_tanh")


def run_floor(repeats: int) -> None:
    """Print, per config, the plain loop, `floor_run` and `train` (round-robin) for the cells `bare_snapshot` has."""
    torch.set_num_threads(1)
    print("\n== the floor: snapshots that do only the bare adjoint (no rescaling, no checks, no report) ==")
    for name, base in CONFIGS.items():
        for cell in FLOOR_CELLS:
            cfg = base.replace(cell=cell)
            timed = interleaved_times({"plain": lambda cfg=cfg: plain_run(cfg),
                                       "floor": lambda cfg=cfg: floor_run(cfg), "train": lambda cfg=cfg: train(cfg)},
                                      repeats)
            print(f"{name:32s} {cell:9s} plain {statistics.median(timed['plain']):6.0f} ms  floor "
                  f"{paired_ratio(timed['floor'], timed['plain']):5.2f}x  train "
                  f"{paired_ratio(timed['train'], timed['plain']):5.2f}x")


def paired_ratio(times: list[float], base: list[float]) -> float:
    """The median of the per-round ratios (each round's two runs ran back to back, so slow drift cancels)."""
    return statistics.median(a / b for a, b in zip(times, base, strict=True))


def run(repeats: int) -> None:
    """Print, per config and cell, the median time of both runs, the ratio and the steps per second."""
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread; {STEPS} steps per run, snapshots every 10 "
          f"steps; median of {repeats}, round-robin; ratio: the median of the rounds' ratios")
    for name, base in CONFIGS.items():
        print(f"\n== {name} ==")
        print(f"{'cell':10s} {'plain loop':>12s} {'snapshots':>12s} {'ratio':>7s} {'plain steps/s':>14s} "
              f"{'with snapshots':>15s}")
        for cell in TRAIN_CELLS:
            cfg = base.replace(cell=cell)
            timed = interleaved_times({"plain": lambda cfg=cfg: plain_run(cfg),
                                       "snapshots": lambda cfg=cfg: train(cfg)}, repeats)
            plain, snaps = statistics.median(timed["plain"]), statistics.median(timed["snapshots"])
            ratio = paired_ratio(timed["snapshots"], timed["plain"])
            print(f"{cell:10s} {plain:9.0f} ms {snaps:9.0f} ms {ratio:6.2f}x {STEPS / plain * 1000:14.1f} "
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
    parser.add_argument("--quick", action="store_true", help="1 repeat instead of 7")
    parser.add_argument("--repeats", type=int, default=None, help="rounds to take the median of (default 7)")
    parser.add_argument("--breakdown", action="store_true", help="also time one snapshot piece by piece")
    parser.add_argument("--floor", action="store_true",
                        help="also time the floor: snapshots doing only the bare adjoint (LSTM, RNN tanh)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 7)
    run(repeats)
    if args.breakdown:
        print_breakdown()
    if args.floor:
        run_floor(repeats)


if __name__ == "__main__":
    main()
