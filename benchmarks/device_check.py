"""Device check: do results on every accelerator match the CPU, and how fast are the engines there?

Run: ``python -m benchmarks.device_check``. For each available device other than the CPU (CUDA, MPS) and a few
configs, runs explain() with both engines and prints the max abs difference against the CPU float64 twin
reference, plus median times of the fused module's own forward+backward, explain(engine="fused") and
explain(engine="twin"). Exits non-zero if any result disagrees beyond tolerance. On a CPU-only machine it
says so and still compares the two engines on the CPU.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from gru_explainer import ExplainConfig, available_devices, explain
from gru_explainer.models import build

CONFIGS = [
    ExplainConfig(cell="gru", num_layers=2, input_size=8, hidden_size=64, seq_len=64, batch_size=8,
                  target="y[:, -1].sum()"),
    ExplainConfig(cell="lstm", num_layers=2, input_size=8, hidden_size=64, bidirectional=True, seq_len=64,
                  batch_size=8, target="y[:, 20].sum() + c_n.mean()"),
    ExplainConfig(cell="rnn_tanh", num_layers=3, input_size=8, hidden_size=64, seq_len=64, batch_size=8,
                  head="linear", target="out.square().mean()"),
    ExplainConfig(cell="gru", num_layers=1, input_size=32, hidden_size=128, seq_len=256, batch_size=16,
                  target="y[:, -1].sum()"),
]
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}  # relative to the largest reference value


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn, device: str, repeats: int = 5) -> float:
    """Median wall time in ms (device synchronised), after a warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def max_rel_diff(report, reference) -> float:
    """Largest abs difference of the gradients, relative to the reference's largest value."""
    worst = 0.0
    for name in ("hidden_grad", "stacked_grad", "input_grad", "cell_grad"):
        a, b = getattr(report, name), getattr(reference, name)
        if a is None:
            continue
        scale = max(b.abs().max().item(), 1e-30)
        worst = max(worst, (a.double() - b.double()).abs().max().item() / scale)
    return worst


def fused_baseline(cfg: ExplainConfig, device: str):
    """The fused module's own forward + backward of the target's simplest form, on `device`."""
    built = build(cfg, torch.device(device))

    def run() -> None:
        y, _ = built.module(built.inputs)
        y[:, -1].sum().backward()

    return run


def main() -> int:
    devices = [d for d in available_devices() if d not in ("cuda",) or "cuda:0" not in available_devices()]
    accelerators = [d for d in devices if d != "cpu"]
    if not accelerators:
        print("No CUDA or MPS device here: comparing the two engines on the CPU only.")
    print(f"torch {torch.__version__}; devices: {', '.join(devices)}")
    failures = 0
    for cfg in CONFIGS:
        reference = explain(cfg.replace(dtype="float64", device="cpu"), engine="twin")
        label = (f"{cfg.cell} L={cfg.num_layers} bi={cfg.bidirectional} B={cfg.batch_size} T={cfg.seq_len} "
                 f"H={cfg.hidden_size}")
        print(f"\n{label}: target {cfg.target}")
        for device in devices:
            for dtype in ("float32", "float64"):
                if device == "mps" and dtype == "float64":
                    continue
                run_cfg = cfg.replace(device=device, dtype=dtype)
                for engine in ("fused", "twin"):
                    report = explain(run_cfg, engine=engine)
                    diff = max_rel_diff(report, reference)
                    ok = diff <= TOLERANCE[dtype]
                    failures += not ok
                    ms = median_ms(lambda c=run_cfg, e=engine: explain(c, engine=e), device, repeats=3)
                    print(f"  {device:7s} {dtype:8s} {engine:6s} rel diff {diff:9.2e} {'ok ' if ok else 'BAD'} "
                          f"explain {ms:8.1f} ms")
            base = median_ms(fused_baseline(cfg, device), device)
            print(f"  {device:7s} float32  fused module forward+backward {base:8.1f} ms")
    print(f"\n{'all results agree' if not failures else f'{failures} result(s) disagree'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
