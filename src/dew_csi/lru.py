"""One LRU map for every bounded cache: the provider's secrets and parsed `parameters.objects`
(bounded in bytes), and the Event recorder's memory (bounded in entries)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """Values with their size in bytes, bounded in total bytes and/or in entries; the least
    recently used go first. A value larger than the whole byte bound is not kept."""

    def __init__(self, *, max_bytes: int | None = None, max_entries: int | None = None) -> None:
        if max_bytes is None and max_entries is None:
            raise ValueError("a cache needs a byte or an entry bound")
        if (max_bytes is not None and max_bytes < 1) or (
            max_entries is not None and max_entries < 1
        ):
            raise ValueError("cache bounds must be positive")
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, size: int = 0) -> None:
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= previous[1]
        if self._max_bytes is not None and size > self._max_bytes:
            return  # larger than the whole cache: serve it, do not keep it
        self._entries[key] = (value, size)
        self._bytes += size
        while (self._max_bytes is not None and self._bytes > self._max_bytes) or (
            self._max_entries is not None and len(self._entries) > self._max_entries
        ):
            _, (_, evicted_size) = self._entries.popitem(last=False)
            self._bytes -= evicted_size
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes
