"""What the engine's image and prefix caches share: least-recently-used eviction within a byte budget, hit and
miss counts, and dropping everything when the weights' version changes (their entries could never be used)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class WeightBoundLRU(Generic[V]):
    def __init__(self, max_bytes: int, what: str) -> None:
        if max_bytes < 0:
            raise ValueError(f"{what} size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._weights_version: tuple | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def for_weights(self, weights_version: tuple) -> None:
        """Entries are for these weights from now on: those of other weights are dropped."""
        if weights_version != self._weights_version:
            self._entries.clear()
            self.bytes, self._weights_version = 0, weights_version

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.max_bytes

    def items(self) -> Iterator[tuple[Hashable, V]]:
        return ((key, value) for key, (value, _) in self._entries.items())

    def lookup(self, key: Hashable | None) -> V | None:
        """The entry (now the most recently used), or None; counts a hit or a miss."""
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def insert(self, key: Hashable, value: V, nbytes: int) -> None:
        """Keep `value` unless it alone exceeds the budget; evict the least recently used to make room."""
        if not self.fits(nbytes) or key in self._entries:
            return
        self._entries[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            _, (_, old) = self._entries.popitem(last=False)
            self.bytes -= old
