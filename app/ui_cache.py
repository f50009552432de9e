"""A bounded, thread-safe, least-recently-used cache for the app's process-wide data (layer
activations, masks, background jobs): at most `max_items` entries and `max_bytes` bytes (numpy
arrays and torch tensors counted by their buffers), so the server's memory stays bounded however
many runs its users open."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable


def nbytes(value: Any) -> int:
    """Bytes held by a value: arrays and tensors by their buffers, tuples/lists/dicts summed."""
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 64


class Lru:
    def __init__(self, max_items: int, max_bytes: int | None = None,
                 on_evict: Callable[[Hashable, Any], None] | None = None):
        self.max_items, self.max_bytes, self.on_evict = max_items, max_bytes, on_evict
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self.lock = threading.RLock()

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self.lock:
            hit = self._data.get(key)
            if hit is None:
                return default
            self._data.move_to_end(key)
            return hit[0]

    def __contains__(self, key: Hashable) -> bool:
        with self.lock:
            return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list:
        with self.lock:
            return list(self._data)

    def put(self, key: Hashable, value: Any, size: int | None = None) -> Any:
        size = nbytes(value) if size is None else size
        with self.lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (value, size)
            self._bytes += size
            while len(self._data) > self.max_items or (
                    self.max_bytes is not None and self._bytes > self.max_bytes and len(self._data) > 1):
                k, (v, s) = self._data.popitem(last=False)
                self._bytes -= s
                if self.on_evict:
                    self.on_evict(k, v)
        return value

    def get_or_put(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The cached value, or make() stored (make runs outside the lock: two callers may both
        compute it; the values are equal, the later one is kept)."""
        hit = self.get(key, _MISSING)
        return self.put(key, make()) if hit is _MISSING else hit

    def pop(self, key: Hashable) -> Any:
        with self.lock:
            old = self._data.pop(key, None)
            if old is None:
                return None
            self._bytes -= old[1]
            return old[0]

    def clear(self) -> None:
        with self.lock:
            self._data.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes


_MISSING = object()
