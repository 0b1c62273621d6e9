"""The two errors `explain` may raise for bad input; both are `ValueError`s with a message naming the field."""

from __future__ import annotations


class ConfigError(ValueError):
    """An `ExplainConfig` field is invalid (wrong type, unknown choice, beyond the limits, absent device)."""


class TargetError(ValueError):
    """The target expression cannot be parsed, uses something outside the target language, or is not scalar."""


class DeviceError(RuntimeError):
    """The computation failed on an accelerator (out of memory, driver fault); the CPU remains a fallback."""
