"""Concurrent explanations: every thread gets exactly its own numbers (no shared model, no global RNG)."""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gru_explainer import DeviceError, ExplainConfig, explain

explain_module = importlib.import_module("gru_explainer.explain")

CONFIGS = [
    ExplainConfig(cell=cell, num_layers=layers, bidirectional=bi, hidden_size=8 + i, seq_len=12, seed=i,
                  target=f"y[:, {i % 12}].sum()")
    for i, (cell, layers, bi) in enumerate([("gru", 1, False), ("lstm", 2, True), ("rnn_tanh", 3, False),
                                            ("rnn_relu", 1, True), ("gru", 2, True), ("lstm", 1, False),
                                            ("rnn_tanh", 2, True), ("gru", 4, False), ("lstm", 3, True),
                                            ("rnn_relu", 2, False)])
]


def _numbers(report) -> list[torch.Tensor]:
    return [report.hidden_grad, report.stacked_grad, report.input_grad, report.output]


@pytest.mark.parametrize("engine", ["fused", "twin"])
def test_threads_get_their_own_numbers(engine: str) -> None:
    expected = [_numbers(explain(cfg, engine=engine)) for cfg in CONFIGS]
    jobs = CONFIGS * 3  # each config three times, interleaved across 10 threads
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda cfg: _numbers(explain(cfg, engine=engine)), jobs))
    for index, got in enumerate(results):
        for a, b in zip(got, expected[index % len(CONFIGS)], strict=True):
            assert torch.equal(a, b)


def test_a_failing_device_gives_a_device_error_with_the_cpu_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """An accelerator fault (here simulated: 'meta' stands in for a device whose kernels fail) is reported."""
    monkeypatch.setattr(explain_module, "resolve_device", lambda name: torch.device("meta"))

    def broken_build(cfg, device):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(explain_module, "build", broken_build)
    with pytest.raises(DeviceError, match="failed on device 'meta'.*OutOfMemoryError.*choose device 'cpu'"):
        explain(ExplainConfig())
