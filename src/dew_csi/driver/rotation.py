"""Scheduled rotation (DESIGN §2.4): every `rotation_poll_interval`, remount every volume on the
node; only `latest` objects are read again (the provider serves pinned ones from memory)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Final

from dew_csi import kube
from dew_csi.driver.volumes import MountedVolume, PublishError, VolumeManager
from dew_csi.durations import format_duration, parse_duration
from dew_csi.logs import fields

log = logging.getLogger(__name__)

MIN_MINUTES: Final = 1
MAX_MINUTES: Final = 1440
_MINUTES: Final = re.compile(r"^(\d+)m$")


def parse_rotation_interval(text: str, *, sandbox: bool = False) -> float:
    """Seconds in the add-on's `rotation_poll_interval` (`<N>m`, 1m..1440m).

    With `sandbox`, any duration (`5s`, `500ms`) is accepted too, for local runs and tests.
    """
    value = text.strip()
    match = _MINUTES.match(value)
    if match and MIN_MINUTES <= int(match.group(1)) <= MAX_MINUTES:
        return int(match.group(1)) * 60.0
    if sandbox:
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0.0
        if seconds > 0:
            return seconds
    hint = ""
    if not sandbox and not match:
        try:
            parse_duration(value)
            hint = " (sub-minute intervals such as 5s are accepted only with --sandbox)"
        except ValueError:
            pass
    raise ValueError(
        f"rotation_poll_interval {text!r} is invalid: give whole minutes with the unit m "
        f"(not min), from {MIN_MINUTES}m to {MAX_MINUTES}m, for example 2m{hint}"
    )


@dataclass(frozen=True)
class PassReport:
    volumes: int
    rotated: int
    failed: int
    seconds: float


class RotationReconciler:
    def __init__(self, volumes: VolumeManager, interval: float, concurrency: int = 8) -> None:
        self._volumes = volumes
        self.interval = interval
        self._limit = asyncio.Semaphore(concurrency)
        self.passes = 0

    async def run(self) -> None:
        log.info(
            "starting rotation reconciler",
            extra=fields(rotationPollInterval=format_duration(self.interval)),
        )
        while True:
            await asyncio.sleep(self.interval)
            report = await self.reconcile_once()
            log.info(
                "rotation pass finished",
                extra=fields(
                    volumes=report.volumes,
                    rotated=report.rotated,
                    failed=report.failed,
                    seconds=round(report.seconds, 3),
                ),
            )

    async def reconcile_once(self) -> PassReport:
        started = time.perf_counter()
        volumes = self._volumes.mounted()
        results = await asyncio.gather(*(self._rotate(v) for v in volumes))
        self.passes += 1
        return PassReport(
            volumes=len(volumes),
            rotated=sum(r == "rotated" for r in results),
            failed=sum(r == "failed" for r in results),
            seconds=time.perf_counter() - started,
        )

    async def _rotate(self, volume: MountedVolume) -> str:
        async with self._limit:
            try:
                outcome = await self._volumes.remount(volume.target_path, trigger="rotation")
            except (PublishError, kube.KubeError) as error:
                await self._volumes.report_remount_failure(
                    volume.target_path, error, trigger="rotation"
                )
                return "failed"
            except Exception as error:
                # A bug in one volume's remount must not end rotation for the whole node.
                log.exception(
                    "remount failed unexpectedly", extra=fields(target=str(volume.target_path))
                )
                await self._volumes.report_remount_failure(
                    volume.target_path, error, trigger="rotation"
                )
                return "failed"
        if outcome is not None and (outcome.files_changed or outcome.versions_changed):
            return "rotated"
        return "unchanged"
