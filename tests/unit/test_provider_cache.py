"""The provider cache: pinned versions kept and bounded, `latest` coalesced and kept for a TTL,
identities kept apart, failures not cached."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from dew_csi.provider.cache import CacheKey, SecretCache


@dataclass(frozen=True)
class Value:
    version: str
    data: bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_cache(clock: FakeClock | None = None, **bounds: int | float) -> SecretCache[Value]:
    return SecretCache(
        size_of=lambda v: len(v.data),
        version_of=lambda v: v.version,
        clock=clock or FakeClock(),
        **bounds,  # type: ignore[arg-type]
    )


def key(name: str = "secret_1", version: str = "v1", identity: str = "ak-1") -> CacheKey:
    return CacheKey(identity, "https://kms.example", "project", name, version)


class Reads:
    """A CSMS stand-in that counts reads and can be held open."""

    def __init__(self, version: str = "v1") -> None:
        self.count = 0
        self.version = version
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> Value:
        self.count += 1
        await self.gate.wait()
        return Value(self.version, b"x" * 10)


async def test_pinned_versions_are_read_once() -> None:
    cache, reads = make_cache(), Reads()
    first = await cache.get(key(), reads)
    second = await cache.get(key(), reads)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert reads.count == 1
    assert cache.stats.pinned_hits == 1


async def test_latest_is_coalesced_across_concurrent_requests() -> None:
    cache, reads = make_cache(), Reads("v7")
    reads.gate.clear()
    waiting = [asyncio.ensure_future(cache.get(key(version="latest"), reads)) for _ in range(100)]
    await asyncio.sleep(0)
    reads.gate.set()
    results = await asyncio.gather(*waiting)
    assert reads.count == 1
    assert {r.value.version for r in results} == {"v7"}
    assert sum(not r.from_cache for r in results) == 1
    # The resolved version is now held as a pinned entry too.
    pinned = await cache.get(key(version="v7"), reads)
    assert pinned.from_cache
    assert reads.count == 1


async def test_latest_expires_after_ttl() -> None:
    clock = FakeClock()
    cache, reads = make_cache(clock, latest_ttl=5.0), Reads("v1")
    await cache.get(key(version="latest"), reads)
    clock.now += 4.9
    assert (await cache.get(key(version="latest"), reads)).from_cache
    clock.now += 0.2
    reads.version = "v2"
    refreshed = await cache.get(key(version="latest"), reads)
    assert (refreshed.from_cache, refreshed.value.version, reads.count) == (False, "v2", 2)


async def test_identities_do_not_share_entries() -> None:
    cache, reads = make_cache(), Reads()
    await cache.get(key(identity="tenant-a"), reads)
    other = await cache.get(key(identity="tenant-b"), reads)
    assert not other.from_cache
    assert reads.count == 2


async def test_bounded_by_entries_least_recently_used_first() -> None:
    cache, reads = make_cache(max_entries=2), Reads()
    await cache.get(key("a"), reads)
    await cache.get(key("b"), reads)
    await cache.get(key("a"), reads)  # a is now the most recently used
    await cache.get(key("c"), reads)  # evicts b
    assert cache.pinned_entries == 2
    assert (await cache.get(key("a"), reads)).from_cache
    assert not (await cache.get(key("b"), reads)).from_cache
    assert cache.stats.evictions >= 1


async def test_bounded_by_bytes() -> None:
    cache, reads = make_cache(max_bytes=25), Reads()  # each value is 10 bytes
    for name in ("a", "b", "c"):
        await cache.get(key(name), reads)
    assert cache.pinned_bytes <= 25
    assert cache.pinned_entries == 2
    huge = make_cache(max_bytes=5)
    result = await huge.get(key(), reads)
    assert not result.from_cache
    assert huge.pinned_entries == 0  # larger than the whole cache: served, not kept


async def test_failures_are_shared_but_not_cached() -> None:
    cache = make_cache()
    calls = 0
    gate = asyncio.Event()

    async def failing() -> Value:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise ConnectionError("CSMS down")

    waiting = [asyncio.ensure_future(cache.get(key(version="latest"), failing)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    with pytest.raises(ConnectionError):
        await cache.get(key(version="latest"), failing)
    assert calls == 2


async def test_a_cancelled_requester_does_not_cancel_the_shared_read() -> None:
    cache, reads = make_cache(), Reads("v3")
    reads.gate.clear()
    first = asyncio.ensure_future(cache.get(key(version="latest"), reads))
    second = asyncio.ensure_future(cache.get(key(version="latest"), reads))
    await asyncio.sleep(0)
    first.cancel()
    reads.gate.set()
    assert (await second).value.version == "v3"
    assert reads.count == 1


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        make_cache(max_entries=0)
    with pytest.raises(ValueError, match="TTL"):
        make_cache(latest_ttl=-1)
