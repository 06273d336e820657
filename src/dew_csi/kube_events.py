"""Events recorded the way client-go's recorder does: repeats raise the count of one Event,
and many distinct messages of one kind are combined (see `EventRecorder`).

It writes through `kube.Kube` (create and merge-patch of core/v1 Events); `Kube.record_event`
is the entry point the components call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from dew_csi.kube import EVENT, AlreadyExists, KubeObject, NotFound
from dew_csi.lru import BoundedLru

if TYPE_CHECKING:
    from dew_csi.kube import Kube


EVENT_CACHE_SIZE: Final = 4096
"""Entries in each of the recorder's LRU caches (client-go's maxLruCacheEntries)."""
AGGREGATE_MAX_EVENTS: Final = 10
AGGREGATE_INTERVAL: Final = 600.0
"""client-go's aggregation: the 10th distinct message of one kind of Event (same object, source,
type and reason) within 10 minutes of the previous one goes to a single combined Event."""
AGGREGATE_PREFIX: Final = "(combined from similar events): "


def _timestamp(moment: datetime) -> str:
    """An Event timestamp as the API server writes metav1.Time: RFC 3339, whole seconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Observation:
    """What the recorder knows of an Event it wrote (client-go's eventLog)."""

    name: str
    namespace: str
    count: int
    first_timestamp: str


@dataclass
class _SimilarMessages:
    """The distinct messages lately seen for one kind of Event (client-go's aggregateRecord)."""

    messages: set[str]
    last_seen: datetime


class EventRecorder:
    """core/v1 Events recorded the way client-go's recorder does (tools/record, EventCorrelator).

    - De-duplication (eventLogger): an Event equal to one recorded before (same source component
      and host, involved object kind/namespace/name/fieldPath/uid/apiVersion, type, reason and
      message) is not created again: the existing Event's `count`, `lastTimestamp` (and
      `message`) are merge-patched. `kubectl describe` then shows "(x4 over 12s)".
    - Aggregation (EventAggregator): when one kind of Event (the same but for its message) has
      had 10 distinct messages, each less than 10 minutes after the previous, further ones go to
      one Event whose message is "(combined from similar events): <latest message>".
    - When the patch finds the Event gone (expired by the API server's TTL, or deleted), it is
      created again under its old name with the running count and first timestamp, as
      client-go does.
    - What the recorder remembers is bounded: LRU caches of 4096 entries each.
    - Concurrent records of the same Event are serialised (one lock per cache key), so they
      never create two Events; different Events are written concurrently.
    - Names are client-go's `<object name>.<hex nanoseconds>`: Events of one object sort by the
      time they were first seen, and a name seen in `kubectl get events` is easy to match to
      a log line. The nanoseconds never repeat within a process.

    client-go's third stage, the per-object spam filter (a token bucket of 25 Events, refilled
    one per 5 minutes), is left out: it drops Events, and the repeats it exists for are the
    ones the two stages above already fold into one Event.
    """

    def __init__(
        self,
        kube: Kube,
        *,
        cache_size: int = EVENT_CACHE_SIZE,
        aggregate_max_events: int = AGGREGATE_MAX_EVENTS,
        aggregate_interval: float = AGGREGATE_INTERVAL,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._kube = kube
        self._clock = clock or (lambda: datetime.now(UTC))
        self._seen: BoundedLru[tuple[str, ...], _Observation] = BoundedLru(max_entries=cache_size)
        self._similar: BoundedLru[tuple[str, ...], _SimilarMessages] = BoundedLru(
            max_entries=cache_size
        )
        self._aggregate_max_events = aggregate_max_events
        self._aggregate_interval = aggregate_interval
        self._locks: dict[tuple[str, ...], tuple[asyncio.Lock, int]] = {}
        self._last_nanos = 0

    @property
    def cached(self) -> int:
        """How many Events the recorder remembers (bounded by the cache size)."""
        return len(self._seen)

    async def record(
        self,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        warning: bool = False,
        component: str = "csi-secrets-store",
        host: str | None = None,
    ) -> KubeObject:
        """Create the Event, or raise the count of the same Event recorded before; the Event
        as the API server returned it. Errors are `KubeError`s; nothing is retried."""
        now = self._clock()
        event = self._make_event(involved, reason, message, warning, component, host, now)
        key = self._aggregate(event, now)
        async with self._serialised(key):
            seen = self._seen.get(key)
            if seen is None:
                written = await self._create(event)
            else:
                written = await self._repeat(event, seen)
            self._seen.put(
                key,
                _Observation(
                    name=str(written["metadata"]["name"]),
                    namespace=str(event["metadata"]["namespace"]),
                    count=int(written.get("count") or 1),
                    first_timestamp=str(written.get("firstTimestamp") or event["firstTimestamp"]),
                ),
            )
        return written

    async def _repeat(self, event: KubeObject, seen: _Observation) -> KubeObject:
        count = seen.count + 1
        patch = {
            "count": count,
            "lastTimestamp": event["lastTimestamp"],
            "message": event["message"],
        }
        try:
            return await self._kube.patch(EVENT, seen.name, patch, seen.namespace)
        except NotFound:
            # Expired or deleted: write it again, under its name, keeping the running count.
            event["metadata"]["name"] = seen.name
            event["count"] = count
            event["firstTimestamp"] = seen.first_timestamp
            return await self._create(event)

    async def _create(self, event: KubeObject) -> KubeObject:
        try:
            return await self._kube.create(EVENT, event)
        except AlreadyExists:
            # Another writer (another process recording about the same object) took the name.
            event["metadata"]["name"] = self._name(event["involvedObject"]["name"])
            return await self._kube.create(EVENT, event)

    def _make_event(
        self,
        involved: Mapping[str, Any],
        reason: str,
        message: str,
        warning: bool,
        component: str,
        host: str | None,
        now: datetime,
    ) -> KubeObject:
        meta = involved["metadata"]
        timestamp = _timestamp(now)
        reference = {
            "kind": involved.get("kind"),
            "apiVersion": involved.get("apiVersion"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "fieldPath": involved.get("fieldPath"),
        }
        return {
            "metadata": {
                "name": self._name(str(meta["name"])),
                # A cluster-scoped object's Events live in "default" (as client-go's do).
                "namespace": meta.get("namespace") or "default",
            },
            # Absent, not null, as the real recorder writes it.
            "involvedObject": {k: v for k, v in reference.items() if v is not None},
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": component, **({"host": host} if host else {})},
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
            "reportingComponent": component,
        }

    def _aggregate(self, event: KubeObject, now: datetime) -> tuple[str, ...]:
        """The cache key the Event is counted under; turns `event` into the combined Event
        when its kind has had too many distinct messages lately."""
        similar_key = _similar_key(event)
        similar = self._similar.get(similar_key)
        if similar is None or (now - similar.last_seen).total_seconds() > self._aggregate_interval:
            similar = _SimilarMessages(set(), now)
        similar.messages.add(event["message"])
        similar.last_seen = now
        self._similar.put(similar_key, similar)
        if len(similar.messages) < self._aggregate_max_events:
            return (*similar_key, event["message"])
        similar.messages.pop()  # the set stays below the threshold, as client-go's does
        event["message"] = AGGREGATE_PREFIX + event["message"]
        return similar_key

    def _name(self, object_name: str) -> str:
        nanos = max(time.time_ns(), self._last_nanos + 1)
        self._last_nanos = nanos
        return f"{object_name}.{nanos:x}"

    @contextlib.asynccontextmanager
    async def _serialised(self, key: tuple[str, ...]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _similar_key(event: Mapping[str, Any]) -> tuple[str, ...]:
    """What makes two Events the same but for their message (client-go's aggregate key, with
    fieldPath, as its de-duplication key has)."""
    source = event.get("source") or {}
    ref = event.get("involvedObject") or {}
    return (
        str(source.get("component") or ""),
        str(source.get("host") or ""),
        *(str(ref.get(k) or "") for k in ("kind", "namespace", "name", "fieldPath", "uid")),
        str(ref.get("apiVersion") or ""),
        str(event.get("type") or ""),
        str(event.get("reason") or ""),
    )
