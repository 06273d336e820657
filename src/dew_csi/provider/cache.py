"""The provider's secret cache (its entries, like the parsed `parameters.objects` of objects.py,
live in a byte-bounded `lru.BoundedLru`).

- A pinned version (`v3`) never changes in CSMS, so once read it is kept in memory, bounded by
  entry count and total bytes (least recently used goes first), and never read again while kept.
- A `latest` read is coalesced: concurrent requests for the same secret share one CSMS call; the
  answer is kept for a short TTL so a burst of pods starting together costs one read. The version
  it resolved to is also kept as a pinned entry.
- Keys carry the credential identity and the endpoint, so one tenant's read never answers another's.
  Authorisation happens before the cache is consulted (in mount.py); the cache knows nothing of it.
- Failures are not cached: every waiter of a failed read gets the error, the next request retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dew_csi.lru import BoundedLru

T = TypeVar("T")

LATEST = "latest"


@dataclass(frozen=True)
class CacheKey:
    """What a cached value answers: this secret, at this version, read with this identity."""

    identity: str
    endpoint: str
    project_id: str
    secret_name: str
    version: str

    def pinned(self, version: str) -> CacheKey:
        return CacheKey(self.identity, self.endpoint, self.project_id, self.secret_name, version)


@dataclass(frozen=True)
class Lookup(Generic[T]):
    value: T
    from_cache: bool
    """True when no CSMS call was made for this request (held or shared with a concurrent read)."""


@dataclass
class CacheStats:
    pinned_hits: int = 0
    latest_hits: int = 0
    coalesced: int = 0
    misses: int = 0
    evictions: int = 0


class SecretCache(Generic[T]):
    def __init__(
        self,
        *,
        size_of: Callable[[T], int],
        version_of: Callable[[T], str],
        max_entries: int = 1000,
        max_bytes: int = 64 * 1024 * 1024,
        latest_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if latest_ttl < 0:
            raise ValueError("latest TTL must not be negative")
        self._size_of = size_of
        self._version_of = version_of
        self._latest_ttl = latest_ttl
        self._clock = clock
        self._pinned: BoundedLru[CacheKey, T] = BoundedLru(
            max_bytes=max_bytes, max_entries=max_entries
        )
        self._latest: dict[CacheKey, tuple[T, float]] = {}
        self._in_flight: dict[CacheKey, asyncio.Task[T]] = {}
        self.stats = CacheStats()

    # -- reads

    async def get(self, key: CacheKey, fetch: Callable[[], Awaitable[T]]) -> Lookup[T]:
        """The value for `key`, from memory when possible, else from `fetch()` (coalesced)."""
        if key.version == LATEST:
            held = self._latest.get(key)
            if held is not None and held[1] > self._clock():
                self.stats.latest_hits += 1
                return Lookup(held[0], True)
        else:
            pinned = self._pinned.get(key)
            if pinned is not None:
                self.stats.pinned_hits += 1
                return Lookup(pinned, True)
        return await self._fetch_once(key, fetch)

    async def _fetch_once(self, key: CacheKey, fetch: Callable[[], Awaitable[T]]) -> Lookup[T]:
        shared = self._in_flight.get(key)
        if shared is not None:
            self.stats.coalesced += 1
            return Lookup(await asyncio.shield(shared), True)
        self.stats.misses += 1
        # The read runs as its own task, shielded from each requester: one pod's mount being
        # cancelled must not cancel the read the other pods are waiting for.
        task = asyncio.ensure_future(self._fetch_and_store(key, fetch))
        task.add_done_callback(_retrieve_outcome)
        self._in_flight[key] = task
        return Lookup(await asyncio.shield(task), False)

    async def _fetch_and_store(self, key: CacheKey, fetch: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await fetch()
            self._store(key, value)
            return value
        finally:
            del self._in_flight[key]

    # -- writes

    def _store(self, key: CacheKey, value: T) -> None:
        if key.version == LATEST:
            if self._latest_ttl > 0:
                self._latest[key] = (value, self._clock() + self._latest_ttl)
                self._drop_expired_latest()
            key = key.pinned(self._version_of(value))
        evicted = self._pinned.evictions
        self._pinned.put(key, value, self._size_of(value))
        self.stats.evictions += self._pinned.evictions - evicted

    def _drop_expired_latest(self) -> None:
        now = self._clock()
        for key in [k for k, (_, expires) in self._latest.items() if expires <= now]:
            del self._latest[key]

    # -- introspection

    @property
    def pinned_entries(self) -> int:
        return len(self._pinned)

    @property
    def pinned_bytes(self) -> int:
        return self._pinned.bytes


def _retrieve_outcome(task: asyncio.Task[T]) -> None:
    """Mark a shared read's error as seen, even when every requester gave up waiting."""
    if not task.cancelled():
        task.exception()
