"""Engine benchmark: explain() and its hidden-state pass against a bare fused forward+backward, in ONE process.

Run: ``python -m benchmarks.engine`` (add ``--quick`` for fewer repeats). Prints medians and ratios against the
baseline measured in the same process (machines are noisy; compare ratios, not absolute times):

- baseline: the same nn.GRU, ``y, h = gru(x); y[:, -1].sum().backward()`` (parameters require grad);
- explain(): the whole public call (build, fused forward, direct derivatives, adjoint pass, masks, frame);
- hidden-state pass: the adjoint recursion alone, given the fused states and the direct derivatives;
- twin engine: explain(engine="twin"), the unrolled twin with one autograd.grad over every state;
- the seed answer's hand-written GRU with retain_grad on every h_t, and an nn.GRUCell loop with retain_grad;
then a sweep over T for cost linear in T. Targets (issue #2): explain() <= 1.5x, hidden pass <= 0.5x.
Both denormal modes are measured (``torch.set_flush_denormal``), since vanishing gradients hit float32 denormals.
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
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


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
        "explain() (fused engine)": lambda: explain(cfg, limits=LOCAL),
        "hidden-state pass alone": lambda: adjoint_pass(gru, x, layer_outputs, direct),
        "explain(engine='twin')": lambda: explain(cfg, engine="twin", limits=LOCAL),
        "seed answer's GRU + retain_grad": seed_answer,
        "nn.GRUCell loop + retain_grad": grucell_loop,
    }


def run(repeats: int) -> None:
    """Print the table for both denormal modes, then the sweep over T."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={B}, T={T}, I={I}, H={H}, GRU, CPU")
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        print(f"\n== flush_denormal={flush} (median of {repeats}) ==")
        timed = {name: median_ms(fn, repeats) for name, fn in cases(config()).items()}
        base = next(iter(timed.values()))
        for name, ms in timed.items():
            print(f"{name:38s} {ms:9.1f} ms   {ms / base:6.2f}x baseline")
    torch.set_flush_denormal(False)
    print("\n== sweep over T (flush_denormal=False): cost should be linear in T ==")
    print(f"{'T':>5} {'baseline ms':>12} {'explain ms':>11} {'ratio':>6} {'explain us/step':>16}")
    for steps in (32, 64, 128, 256, 512):
        fns = cases(config(steps))
        base = median_ms(fns["baseline: fused forward+backward"], repeats)
        ours = median_ms(fns["explain() (fused engine)"], repeats)
        print(f"{steps:5d} {base:12.1f} {ours:11.1f} {ours / base:6.2f} {1000 * ours / steps:16.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 9")
    args = parser.parse_args()
    run(3 if args.quick else 9)


if __name__ == "__main__":
    main()
