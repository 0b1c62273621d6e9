"""Engine benchmark: explain() and its hidden-state pass against a bare fused forward+backward, in ONE process.

Run: ``python -m benchmarks.engine`` (``--quick`` for fewer repeats, ``--repeats N`` for more). Prints medians and
ratios against the baseline measured in the same process (machines are noisy; compare ratios, not absolute times):

- baseline: the same nn.GRU, ``y, h = gru(x); y[:, -1].sum().backward()`` (parameters require grad);
- explain(): the whole public call and its frame (build, fused forward, direct derivatives, adjoint pass, masks;
  `report.frame` is built on first use, and the case reads it);
- hidden-state pass: the adjoint recursion alone, given the fused states and the direct derivatives;
- twin engine: explain(engine="twin"), the unrolled twin with one autograd.grad over every state;
- the seed answer's hand-written GRU with retain_grad on every h_t, and an nn.GRUCell loop with retain_grad;
then a sweep over T for cost linear in T. Every case runs under the caller's flush-denormal flag off AND on
(``torch.set_flush_denormal``: vanishing gradients reach float32's denormals, which are slow on many CPUs), timed
round-robin, and ratios are against the faster of the two baselines. Targets (issue #8): explain() <= 0.8x in both
caller modes, hidden-state pass <= 0.35x, T=32 <= 1.2x, cost linear in T.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from gru_explainer import ExplainConfig, Limits, explain
from gru_explainer.explain import adjoint_pass, compile_target, fused_forward
from gru_explainer.models import SeedAnswerGRU, build

B, T, I, H = 16, 256, 32, 128  # noqa: E741 (the issue's names)
LOCAL = Limits.local()  # the sweep goes past the hosted state limit


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    return interleaved_ms({"fn": fn}, repeats)["fn"]


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int,
                   flush: dict[str, bool] | None = None) -> dict[str, float]:
    """Median ms of each function, timed round-robin (one call of each per round) so machine drift hits all alike.

    `flush[name]` sets torch.set_flush_denormal for that function's calls (the caller's flag); default off.
    """
    return {name: statistics.median(ts) for name, ts in interleaved_times(fns, repeats, flush).items()}


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int,
                      flush: dict[str, bool] | None = None) -> dict[str, list[float]]:
    """Every round's ms of each function (`interleaved_ms`' timings, round by round: round r of each ran together)."""
    flush = flush or {}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):  # round 0 is the warm-up
        for name, fn in fns.items():
            torch.set_flush_denormal(flush.get(name, False))
            start = time.perf_counter()
            fn()
            elapsed = (time.perf_counter() - start) * 1000
            if round_:
                times[name].append(elapsed)
    torch.set_flush_denormal(False)
    return times


def config(seq_len: int = T) -> ExplainConfig:
    """The benchmark config: GRU, 1 layer, B=16, I=32, H=128, target y[:, -1].sum()."""
    return ExplainConfig(cell="gru", num_layers=1, input_size=I, hidden_size=H, seq_len=seq_len, batch_size=B,
                         target="y[:, -1].sum()", device="cpu", dtype="float32", seed=0)


def cases(cfg: ExplainConfig) -> dict[str, Callable[[], object]]:
    """The functions to time for one config, keyed by name; 'baseline' first."""
    built = build(cfg, torch.device("cpu"))
    gru, x = built.module, built.inputs

    def baseline() -> None:
        y, _ = gru(x)
        y[:, -1].sum().backward()

    target = compile_target(cfg)
    layer_outputs, h_n, _ = fused_forward(gru, x)
    y_leaf = layer_outputs[-1].clone().requires_grad_()
    h_n_leaf = h_n.clone().requires_grad_()
    value = target.evaluate({"y": y_leaf, "h_n": h_n_leaf})
    direct = dict(zip(("y", "h_n"), torch.autograd.grad(value, [y_leaf, h_n_leaf], allow_unused=True), strict=True))
    direct["h_n"] = torch.zeros_like(h_n) if direct["h_n"] is None else direct["h_n"]

    answer = SeedAnswerGRU(cfg.input_size, cfg.hidden_size)

    def seed_answer() -> None:
        y, hs = answer(x)
        for h in hs:
            h.retain_grad()
        y[:, -1].sum().backward()

    cell = nn.GRUCell(cfg.input_size, cfg.hidden_size)

    def grucell_loop() -> None:
        h = x.new_zeros(cfg.batch_size, cfg.hidden_size)
        hs = []
        for t in range(cfg.seq_len):
            h = cell(x[:, t], h)
            h.retain_grad()
            hs.append(h)
        torch.stack(hs, dim=1)[:, -1].sum().backward()

    return {
        "baseline: fused forward+backward": baseline,
        "explain() (fused engine)": lambda: explain(cfg, limits=LOCAL).frame,  # the frame is built on first use
        "hidden-state pass alone": lambda: adjoint_pass(gru, x, layer_outputs, direct),
        "explain(engine='twin')": lambda: explain(cfg, engine="twin", limits=LOCAL).frame,
        "seed answer's GRU + retain_grad": seed_answer,
        "nn.GRUCell loop + retain_grad": grucell_loop,
    }


def run(repeats: int) -> None:
    """Print every case under the caller's flush flag off and on, against the faster bare baseline; then T sweep."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={B}, T={T}, I={I}, H={H}, GRU, CPU")
    fns = cases(config())
    timed_fns, flush = {}, {}
    for name, fn in fns.items():
        for mode in (False, True):
            key = f"{name} [flush {'on' if mode else 'off'}]"
            timed_fns[key], flush[key] = fn, mode
    timed = interleaved_ms(timed_fns, repeats, flush)
    baselines = {k: v for k, v in timed.items() if k.startswith("baseline")}
    best_key = min(baselines, key=baselines.get)
    base = baselines[best_key]
    print(f"\n== median of {repeats}, interleaved; ratios against the faster baseline ({best_key}) ==")
    for name, ms in timed.items():
        print(f"{name:50s} {ms:9.1f} ms   {ms / base:6.2f}x")
    print("\n== sweep over T (caller's flush flag off; baseline = faster of both modes) ==")
    print(f"{'T':>5} {'baseline ms':>12} {'explain ms':>11} {'ratio':>6} {'explain us/step':>16}")
    for steps in (32, 64, 128, 256, 512):
        sweep_fns = cases(config(steps))
        base_fn, ours_fn = sweep_fns["baseline: fused forward+backward"], sweep_fns["explain() (fused engine)"]
        t = interleaved_ms({"base off": base_fn, "base on": base_fn, "ours": ours_fn}, repeats,
                           {"base on": True})
        best = min(t["base off"], t["base on"])
        print(f"{steps:5d} {best:12.1f} {t['ours']:11.1f} {t['ours'] / best:6.2f} {1000 * t['ours'] / steps:16.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 9")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds to take the median of (default 9): more give steadier medians on a noisy machine")
    args = parser.parse_args()
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"argument --repeats: must be at least 1, got {args.repeats}")
    run(args.repeats or (3 if args.quick else 9))


if __name__ == "__main__":
    main()
