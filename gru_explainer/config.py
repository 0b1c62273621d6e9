"""What to explain: the architecture, the data, the target and the device, validated before anything is allocated.

`ExplainConfig` is a frozen dataclass of plain values, so it can key caches and travel through URLs.
`Limits` bounds every size; the defaults fit a hosted demo (~1 GB RAM) and can be raised deliberately,
either per call (`explain(cfg, limits=Limits.local())`) or process-wide with the environment variable
``GRU_EXPLAINER_LIMITS=local``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from typing import Any

import torch

from .errors import ConfigError

CELLS = ("gru", "lstm", "rnn_tanh", "rnn_relu", "answer_gru")
"""Recurrent cells. "answer_gru" is the seed answer's hand-written GRU (one layer, its own Linear layers)."""
CELL_LABELS = {"gru": "GRU", "lstm": "LSTM", "rnn_tanh": "RNN tanh", "rnn_relu": "RNN relu", "answer_gru": "answer GRU"}
"""Short labels of the cells for charts, tables and messages."""
HEADS = ("none", "linear")
DTYPES = ("float32", "float64")
ENGINES = ("fused", "twin")
PRESETS = ("seed-mymodel", "seed-secondmodel", "seed-answer-gru")


@dataclass(frozen=True)
class Limits:
    """Upper bounds on sizes; `explain` refuses configs beyond them before allocating anything."""

    max_num_layers: int = 4
    max_input_size: int = 64
    max_hidden_size: int = 256
    max_seq_len: int = 512
    max_batch_size: int = 64
    max_head_size: int = 64
    max_weight_scale: float = 10.0
    # batch * seq_len * num_layers * directions * hidden_size: bounds the size of every state tensor.
    max_state_elements: int = 524_288
    # CPU seconds (one core) one page run may take, estimated before any work (gru_explainer.budget).
    max_cpu_seconds: float = 10.0

    @classmethod
    def local(cls) -> Limits:
        """Generous limits for a local machine (not for the hosted demo)."""
        return cls(
            max_num_layers=8,
            max_input_size=1024,
            max_hidden_size=2048,
            max_seq_len=8192,
            max_batch_size=1024,
            max_head_size=1024,
            max_weight_scale=1000.0,
            max_state_elements=64 * 1_048_576,
            max_cpu_seconds=3600.0,
        )

    @classmethod
    def from_env(cls) -> Limits:
        """`Limits.local()` when ``GRU_EXPLAINER_LIMITS=local``, else the hosted defaults."""
        value = os.environ.get("GRU_EXPLAINER_LIMITS", "hosted").strip().lower()
        return cls.local() if value == "local" else cls()


def available_devices() -> list[str]:
    """Devices this machine can run: always "cpu", then "cuda", "cuda:N" per GPU, and "mps" when present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
        devices.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str) -> torch.device:
    """Map a device name ("auto" included) to a `torch.device` this machine has, or raise ConfigError."""
    available = available_devices()
    if name == "auto":
        for preferred in ("cuda", "mps"):
            if preferred in available:
                return torch.device(preferred)
        return torch.device("cpu")
    if name not in available:
        raise ConfigError(
            f"device {name!r} is not available on this machine; available: {', '.join(['auto', *available])}"
        )
    return torch.device(name)


@dataclass(frozen=True)
class ExplainConfig:
    """One explanation: architecture, data, target and device. All fields are plain values (hashable)."""

    cell: str = "gru"
    num_layers: int = 2
    input_size: int = 3
    hidden_size: int = 32
    bidirectional: bool = False
    head: str = "none"
    head_size: int = 5
    seq_len: int = 10
    batch_size: int = 2
    target: str = "y[:, -1].sum()"
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    weight_scale: float = 1.0
    """Multiplies PyTorch's default init range U(-1/sqrt(H), 1/sqrt(H)); >1 tends to explode, <1 to vanish."""

    @property
    def num_directions(self) -> int:
        """2 when bidirectional, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def state_elements(self) -> int:
        """batch × steps × layers × directions × hidden: the size of every per-state tensor (the size limit)."""
        return self.batch_size * self.seq_len * self.num_layers * self.num_directions * self.hidden_size

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype named by `dtype`."""
        return torch.float64 if self.dtype == "float64" else torch.float32

    def replace(self, **changes: Any) -> ExplainConfig:
        """A copy with some fields changed (not validated; `validate` or `explain` does that)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for URLs, JSON and cache keys)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExplainConfig:
        """Build from a dict, refusing unknown keys with a ConfigError (values are validated later)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str) -> ExplainConfig:
        """The seed's models: "seed-mymodel", "seed-secondmodel", "seed-answer-gru" (sizes and target as written)."""
        common = dict(input_size=3, hidden_size=32, seq_len=10, batch_size=2, seed=0)
        if name == "seed-mymodel":
            # MyModel: nn.GRU(3, 32, 2 layers) -> Linear(32, 5) on the last step -> view(-1, 5, 1).
            # The seed's `y` is the head output, called `out` here; its axis 1 holds 5 features, not time.
            return cls(cell="gru", num_layers=2, head="linear", head_size=5, target="out[:, -1].sum()", **common)
        if name == "seed-secondmodel":
            return cls(cell="gru", num_layers=2, head="none", target="y[:, -1].sum()", **common)
        if name == "seed-answer-gru":
            return cls(cell="answer_gru", num_layers=1, head="none", target="y[:, -1].sum()", **common)
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")

    def validate(self, limits: Limits | None = None) -> None:
        """Raise ConfigError naming the first invalid field; allocates nothing and never touches a device."""
        limits = limits or Limits.from_env()
        _choice("cell", self.cell, CELLS)
        _choice("head", self.head, HEADS)
        _choice("dtype", self.dtype, DTYPES)
        _int_in("num_layers", self.num_layers, 1, limits.max_num_layers)
        _int_in("input_size", self.input_size, 1, limits.max_input_size)
        _int_in("hidden_size", self.hidden_size, 1, limits.max_hidden_size)
        _int_in("seq_len", self.seq_len, 1, limits.max_seq_len)
        _int_in("batch_size", self.batch_size, 1, limits.max_batch_size)
        _int_in("head_size", self.head_size, 1, limits.max_head_size)
        _int_in("seed", self.seed, 0, 2**31 - 1)
        if not isinstance(self.bidirectional, bool):
            raise ConfigError(f"bidirectional must be true or false, got {self.bidirectional!r}")
        scale = self.weight_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ConfigError(f"weight_scale must be a finite number, got {scale!r}")
        if not 0 < scale <= limits.max_weight_scale:
            raise ConfigError(f"weight_scale must be > 0 and <= {limits.max_weight_scale:g}, got {scale!r}")
        if self.cell == "answer_gru" and (self.num_layers != 1 or self.bidirectional):
            raise ConfigError(
                "cell 'answer_gru' (the seed answer's hand-written GRU) has exactly 1 layer and one direction; "
                f"got num_layers={self.num_layers}, bidirectional={self.bidirectional}"
            )
        states = self.state_elements
        if states > limits.max_state_elements:
            raise ConfigError(
                "batch_size × seq_len × num_layers × directions × hidden_size must be at most "
                f"{limits.max_state_elements:,} (the state-size limit), got {states:,}; reduce one of them"
            )
        if not isinstance(self.target, str) or not self.target.strip():
            raise ConfigError("target must be a non-empty expression such as 'y[:, -1].sum()'")
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as 'cpu' or 'auto', got {self.device!r}")
        allowed_devices = ["auto", *available_devices()]
        if self.device not in allowed_devices:
            raise ConfigError(
                f"device {self.device!r} is not available on this machine; available: {', '.join(allowed_devices)}"
            )


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _int_in(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer between {low} and {high}, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


__all__ = [
    "CELLS",
    "CELL_LABELS",
    "DTYPES",
    "ENGINES",
    "HEADS",
    "PRESETS",
    "ExplainConfig",
    "Limits",
    "available_devices",
    "resolve_device",
]
