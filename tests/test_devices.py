"""Accelerators give the CPU's numbers (skipped where there is none; see benchmarks/device_check.py)."""

from __future__ import annotations

import pytest
import torch

from gru_explainer import ExplainConfig, explain

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@CUDA
@pytest.mark.parametrize("engine", ["fused", "twin"])
@pytest.mark.parametrize(("cell", "bidirectional"), [("gru", False), ("lstm", True), ("rnn_tanh", True)])
def test_cuda_matches_cpu(cell: str, bidirectional: bool, engine: str) -> None:
    cfg = ExplainConfig(cell=cell, num_layers=2, bidirectional=bidirectional, hidden_size=16, seq_len=12,
                        dtype="float64", target="y[:, 5].sum() + h_n.mean()")
    cpu, gpu = explain(cfg, engine=engine), explain(cfg.replace(device="cuda"), engine=engine)
    assert gpu.device.startswith("cuda")
    for name in ("hidden_grad", "stacked_grad", "input_grad", "output"):
        assert torch.allclose(getattr(gpu, name), getattr(cpu, name), rtol=1e-9, atol=1e-12), name


def test_same_model_on_every_dtype() -> None:
    """The float32 model is the float64 model rounded, so their numbers agree to float32 precision."""
    cfg = ExplainConfig(cell="gru", num_layers=2, hidden_size=16, seq_len=12, target="y[:, -1].sum()")
    single, double = explain(cfg), explain(cfg.replace(dtype="float64"))
    assert torch.allclose(single.hidden_grad.double(), double.hidden_grad, rtol=1e-4, atol=1e-6)
