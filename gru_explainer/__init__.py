"""GRU Gradient Explainer: where gradients go inside recurrent networks (stacked outputs vs hidden states)."""

from .config import ExplainConfig, Limits, available_devices
from .errors import ConfigError, TargetError

__all__ = ["ConfigError", "ExplainConfig", "Limits", "TargetError", "available_devices"]
