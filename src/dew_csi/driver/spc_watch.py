"""Real-time SecretProviderClass change detection (DESIGN §2.5).

A watch on SecretProviderClass objects remounts, at once, every volume on this node whose SPC
changed: its spec (objects added, removed or re-versioned, secretObjects) or the value of the
`dew-csi.io/refresh` annotation (an on-demand refresh). Triggers for one volume coalesce: while a
remount runs, any number of further changes cause exactly one more.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from dew_csi import kube
from dew_csi.driver.volumes import PublishError, VolumeManager, spc_fingerprint
from dew_csi.logs import fields

log = logging.getLogger(__name__)


class SpcChangeWatcher:
    def __init__(
        self, cache: kube.WatchCache, volumes: VolumeManager, concurrency: int = 8
    ) -> None:
        self._volumes = volumes
        # Bounded: many volumes changing at once would otherwise all queue on the provider
        # together and each finish only when the whole batch does.
        self._limit = asyncio.Semaphore(concurrency)
        self.cache = cache
        self.cache.add_handler(self._on_event)
        self._running: dict[Path, asyncio.Task[None]] = {}
        self._again: set[Path] = set()
        self.remounts = 0

    async def start(self) -> None:
        """Start watching; return once the first list is in (the cache retries until then)."""
        await self.cache.start(timeout=None)

    async def stop(self) -> None:
        await self.cache.stop()
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _on_event(self, event: kube.CacheEvent) -> None:
        if event.type == kube.EventType.DELETED:
            return
        namespace, name = kube.object_key(event.obj)
        fingerprint = spc_fingerprint(event.obj)
        for volume in self._volumes.volumes_using(namespace, name):
            if volume.spc_fingerprint != fingerprint:
                log.info(
                    "SecretProviderClass changed; remounting",
                    extra=fields(spc=f"{namespace}/{name}", pod=volume.pod_name),
                )
                self.trigger(volume.target_path)

    def trigger(self, target: Path) -> None:
        if target in self._running:
            self._again.add(target)
            return
        self._running[target] = asyncio.create_task(self._remount(target))

    async def _remount(self, target: Path) -> None:
        try:
            while True:
                self._again.discard(target)
                try:
                    async with self._limit:
                        await self._volumes.remount(target, trigger="SecretProviderClass change")
                    self.remounts += 1
                except Exception as error:  # PublishError, KubeError, or a bug: keep watching
                    if not isinstance(error, PublishError | kube.KubeError):
                        log.exception(
                            "remount failed unexpectedly", extra=fields(target=str(target))
                        )
                    await self._volumes.report_remount_failure(
                        target, error, trigger="SecretProviderClass change"
                    )
                if target not in self._again:
                    break
        finally:
            self._running.pop(target, None)
