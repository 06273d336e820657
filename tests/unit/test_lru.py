"""The one bounded LRU map (dew_csi.lru) behind the provider's caches and the Event recorder."""

from __future__ import annotations

import pytest

from dew_csi.lru import BoundedLru


def test_bounded_in_bytes_least_recently_used_first() -> None:
    cache: BoundedLru[str, str] = BoundedLru(max_bytes=10)
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    assert cache.get("a") == "A"  # now b is the least recently used
    cache.put("c", "C", 4)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    assert cache.bytes == 8
    assert cache.evictions == 1


def test_bounded_in_entries() -> None:
    cache: BoundedLru[int, int] = BoundedLru(max_entries=2)
    for key in range(5):
        cache.put(key, key * 10)
    assert len(cache) == 2
    assert [cache.get(k) for k in range(5)] == [None, None, None, 30, 40]


def test_a_value_larger_than_the_whole_bound_is_not_kept_nor_left_stale() -> None:
    cache: BoundedLru[str, str] = BoundedLru(max_bytes=10)
    cache.put("k", "small", 2)
    cache.put("k", "huge", 11)
    assert cache.get("k") is None  # the old value does not answer for the new one
    assert cache.bytes == 0


def test_replacing_a_key_counts_its_bytes_once() -> None:
    cache: BoundedLru[str, str] = BoundedLru(max_bytes=10, max_entries=5)
    cache.put("k", "v1", 6)
    cache.put("k", "v2", 6)
    assert (cache.get("k"), cache.bytes, len(cache)) == ("v2", 6, 1)


@pytest.mark.parametrize(
    "bounds", [{}, {"max_bytes": 0}, {"max_entries": 0}, {"max_bytes": 5, "max_entries": -1}]
)
def test_bounds_must_exist_and_be_positive(bounds: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="bound"):
        BoundedLru(**bounds)
