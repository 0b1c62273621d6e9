"""`TensorCache`: a small, thread-safe LRU of tensors by key that hands out copies (the core's only cache)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

from torch import Tensor


class TensorCache:
    """Small tensors by key (structural masks, drawn models): a few entries, least recently used dropped first,
    thread-safe.

    `get(key, compute)` returns copies, so a caller may change its own. `TensorCache.clear_all()` empties every
    cache of the process (a hosted server's idle clean-up)."""

    _all: weakref.WeakSet[TensorCache] = weakref.WeakSet()

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size, self.max_bytes = size, max_bytes
        self.entries: OrderedDict[tuple, dict] = OrderedDict()
        self.lock = threading.Lock()
        TensorCache._all.add(self)

    @classmethod
    def clear_all(cls) -> None:
        """Empty every cache of the process."""
        for cache in list(cls._all):
            cache.clear()

    def get(self, key: tuple, compute: Callable[[], dict[str, Tensor | dict | None]]) -> dict[str, Tensor | None]:
        """Copies of the tensors cached under `key`, computed (and kept when at most max_bytes) on a miss."""
        with self.lock:
            values = self.entries.get(key)
            if values is not None:
                self.entries.move_to_end(key)
        if values is None:
            values = compute()
            if _nbytes(values) <= self.max_bytes:
                with self.lock:
                    self.entries[key] = values
                    while len(self.entries) > self.size:
                        self.entries.popitem(last=False)
        return {name: _copy(value) for name, value in values.items()}

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


def _nbytes(value: Tensor | dict | None) -> int:
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0 if value is None else value.numel() * value.element_size()


def _copy(value: Tensor | dict | None) -> Tensor | dict | None:
    if isinstance(value, dict):
        return {name: tensor.clone() for name, tensor in value.items()}
    return None if value is None else value.clone()
