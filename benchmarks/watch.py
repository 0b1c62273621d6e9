"""watch() benchmark: a training step of a 2-layer GRU model under `watch` against the same step without it.

Run: ``python -m benchmarks.watch`` (``--quick`` for fewer repeats). One process, timed round-robin
(`benchmarks.engine.interleaved_ms`), ratios against the plain step measured alongside (compare ratios, not
absolute times). Model: nn.GRU(I=64, H=128, 2 layers, batch_first) + Linear on the last step, cross-entropy,
B=32, T=128, CPU float32; a step is zero_grad + forward + backward + SGD step. Cases: plain; watch(keep="full")
(every per-step gradient recorded); watch(keep="summary") (the frame built per call, tensors dropped). Then the
memory each record keeps: the full record's tensors versus the summary's frame. Target (issue 11): full <= 1.3x.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from torch import nn

from gru_explainer import watch

from .engine import interleaved_ms

B, T, I, H = 32, 128, 64, 128  # noqa: E741 (the issue's names)


class Model(nn.Module):
    """The benchmark's user model: 2-layer GRU + Linear(H -> 10) on the last step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.GRU(I, H, num_layers=2, batch_first=True)
        self.fc = nn.Linear(H, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the last step's output."""
        return self.fc(self.rnn(x)[0][:, -1])


def make_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, rec=None):
    """One training step (zero_grad, forward, backward, SGD); clears the recording's calls so memory stays flat."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        if rec is not None:
            rec.calls.clear()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()

    return step


def tensor_bytes(value) -> int:
    """Bytes held by the tensors inside (nested dicts, lists, dataclasses of) value."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


def run(repeats: int) -> None:
    """Print medians and ratios of the three cases, then per-record memory."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={B}, T={T}, I={I}, H={H}, 2-layer GRU, "
          "CPU float32")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, I, generator=gen)
    labels = torch.randint(0, 10, (B,), generator=gen)
    plain, full, summary = Model(), Model(), Model()
    with contextlib.ExitStack() as stack:
        rec_full = stack.enter_context(watch(full))
        rec_summary = stack.enter_context(watch(summary, keep="summary"))
        timed = interleaved_ms({"plain training step": make_step(plain, x, labels),
                                "watch(keep='full')": make_step(full, x, labels, rec_full),
                                "watch(keep='summary')": make_step(summary, x, labels, rec_summary)}, repeats)
        base = timed["plain training step"]
        print(f"\n== median of {repeats}, interleaved; ratios against the plain step ==")
        for name, ms in timed.items():
            print(f"{name:30s} {ms:9.1f} ms   {ms / base:6.2f}x")
        full_call, summary_call = rec_full.calls[-1], rec_summary.calls[-1]
        kept = tensor_bytes(full_call._tensors)
        frame_bytes = int(summary_call.frame.memory_usage(deep=True).sum())
        print("\n== memory kept per record ==")
        print(f"keep='full'    {kept / 2**20:9.2f} MiB (per-step gradients, states, inputs, rescaled copies)")
        print(f"keep='summary' {frame_bytes / 2**20:9.3f} MiB (the frame: {len(summary_call.frame)} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 9")
    args = parser.parse_args()
    run(3 if args.quick else 9)


if __name__ == "__main__":
    main()
