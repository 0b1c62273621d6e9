"""GRU Gradient Explainer: where gradients go inside recurrent networks (stacked outputs vs hidden states).

    from gru_explainer import ExplainConfig, explain
    report = explain(ExplainConfig(cell="gru", num_layers=2, target="y[:, -1].sum()"))
    report.stacked_grad   # ∂target/∂y: zero where y is not read (the seed's puzzle)
    report.hidden_grad    # total d target/d h_t for every layer, direction and step
    print(report.verdict())
"""

from .config import ExplainConfig, Limits, available_devices
from .errors import ConfigError, DeviceError, TargetError
from .explain import explain
from .report import GradientReport
from .watch import Recording, WatchedCall, WatchError, watch

__all__ = [
    "ConfigError",
    "DeviceError",
    "ExplainConfig",
    "GradientReport",
    "Limits",
    "Recording",
    "TargetError",
    "WatchError",
    "WatchedCall",
    "available_devices",
    "explain",
    "watch",
]
