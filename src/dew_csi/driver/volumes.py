"""The driver's volumes on this node: first mount, remount, unmount, and recovery after a restart.

Every path that changes a volume goes through `VolumeManager` under that volume's lock:
NodePublishVolume and NodeUnpublishVolume (node.py), the rotation reconciler (rotation.py) and
SecretProviderClass change detection (spc_watch.py). One flow serves them all:

    read the SPC -> ask the provider -> write the files atomically -> record the SPCPS
    -> sync secretObjects into Secrets

A first mount that fails leaves nothing behind (kubelet retries). A remount that fails leaves the
last good files, SPCPS and Secrets untouched and records `MountRotationFailed`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dew_csi import DRIVER_NAME, kube, spc
from dew_csi.driver import podstatus, secret_sync
from dew_csi.driver.atomic_writer import (
    AtomicWriter,
    FileProjection,
    PayloadError,
    WriteError,
    run_off_loop,
    validate_payload,
)
from dew_csi.driver.metrics import DriverMetrics
from dew_csi.driver.mounter import (
    Mounter,
    MountFailed,
    TargetRefused,
    cleanup_mount_point,
    ensure_mount_point,
)
from dew_csi.driver.provider_client import ProviderClients, ProviderError, ProviderResult
from dew_csi.kube import Kube, KubeObject
from dew_csi.logs import fields
from dew_csi.volume_context import (
    EPHEMERAL,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    SERVICE_ACCOUNT_NAME,
)
from dew_csi.volume_context import SECRET_PROVIDER_CLASS as SPC_ATTRIBUTE

log = logging.getLogger(__name__)

REFRESH_ANNOTATION: Final = "dew-csi.io/refresh"
DEFAULT_PERMISSION: Final = 0o644
TARGET_PATH_PATTERN: Final = re.compile(r"/pods/([^/]+)/volumes/kubernetes\.io~csi/([^/]+)/mount$")


class PublishError(Exception):
    """A publish failed; `code` is the gRPC status name, `reason` the metrics error_type."""

    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class PublishRequest:
    """A NodePublishVolume request, validated."""

    volume_id: str
    target_path: Path
    volume_context: Mapping[str, str]
    secrets: Mapping[str, str] | None

    @property
    def spc_name(self) -> str:
        return self.volume_context.get(SPC_ATTRIBUTE, "")

    @property
    def pod_name(self) -> str:
        return self.volume_context.get(POD_NAME, "")

    @property
    def namespace(self) -> str:
        return self.volume_context.get(POD_NAMESPACE, "")

    @property
    def pod_uid(self) -> str:
        return self.volume_context.get(POD_UID, "")


@dataclass
class MountedVolume:
    """What the driver remembers of a mounted volume, to remount it without kubelet."""

    target_path: Path
    pod_name: str
    namespace: str
    pod_uid: str
    spc_name: str
    volume_context: dict[str, str]
    secrets: dict[str, str] | None
    versions: dict[str, str] = field(default_factory=dict)
    spc_fingerprint: str = ""
    pod_status: KubeObject | None = field(default=None, repr=False)
    """The SPCPS as last written: its uid owns the synced Secrets."""

    @property
    def pod_reference(self) -> KubeObject:
        return kube.involved_object(
            kube.POD, {"name": self.pod_name, "namespace": self.namespace, "uid": self.pod_uid}
        )


@dataclass(frozen=True)
class RemountOutcome:
    files_changed: bool
    versions_changed: bool
    secrets_changed: tuple[str, ...]


def spc_fingerprint(spc_object: Mapping[str, Any]) -> str:
    """What makes a remount necessary: the spec and the on-demand refresh annotation."""
    annotations = spc_object.get("metadata", {}).get("annotations") or {}
    material = json.dumps(
        [spc_object.get("spec"), annotations.get(REFRESH_ANNOTATION)], sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()


class VolumeManager:
    def __init__(
        self,
        *,
        client: Kube,
        node_id: str,
        providers: ProviderClients,
        mounter: Mounter,
        metrics: DriverMetrics,
        spc_cache: kube.WatchCache | None = None,
        provider_timeout: float = 60.0,
    ) -> None:
        self._kube = client
        self._spc_cache = spc_cache
        self.node_id = node_id
        self._providers = providers
        self._mounter = mounter
        self._metrics = metrics
        self._provider_timeout = provider_timeout
        self._volumes: dict[Path, MountedVolume] = {}
        self._target_locks: dict[Path, asyncio.Lock] = {}
        # The last failure message recorded per volume: kubelet retries a failing mount every
        # few seconds, and one event per distinct problem is enough beside kubelet's own.
        self._last_failure: dict[Path, str] = {}

    # ------------------------------------------------------------------ registry

    def mounted(self) -> list[MountedVolume]:
        return list(self._volumes.values())

    def volume(self, target: Path) -> MountedVolume | None:
        return self._volumes.get(target)

    def volumes_using(self, namespace: str, spc_name: str) -> list[MountedVolume]:
        return [
            v for v in self._volumes.values() if v.namespace == namespace and v.spc_name == spc_name
        ]

    def _lock(self, target: Path) -> asyncio.Lock:
        return self._target_locks.setdefault(target, asyncio.Lock())

    # ------------------------------------------------------------------ publish

    async def publish(self, request: PublishRequest) -> None:
        target = request.target_path
        async with self._lock(target):
            known = self._volumes.get(target)
            if known is not None and self._mounter.is_mounted(target):
                return  # a repeated publish of a healthy mount: nothing to do
            try:
                await self._first_mount(request)
            except kube.KubeError as error:
                raise PublishError(
                    "UNAVAILABLE",
                    "KubernetesAPIError",
                    f"reading or writing Kubernetes objects failed: {error.message}",
                ) from None

    async def _first_mount(self, request: PublishRequest) -> None:
        target = request.target_path
        spc_object = await self._read_spc(request.namespace, request.spc_name)
        provider = _provider_of(spc_object)
        attributes = _attributes(spc_object, request.volume_context)
        mounted_here = False
        try:
            try:
                if not await ensure_mount_point(target, self._mounter):
                    await self._mounter.mount(target)
                    mounted_here = True
            except TargetRefused as refused:
                reason = "FailedToEnsureMountPoint"
                raise PublishError(refused.code, reason, refused.message) from None
            except (MountFailed, OSError) as error:
                message = f"mounting failed: {error}"
                raise PublishError("INTERNAL", "FailedToMount", message) from None
            result = await self._call_provider(provider, attributes, request.secrets, target, {})
            await self._write(target, result)
            volume = MountedVolume(
                target_path=target,
                pod_name=request.pod_name,
                namespace=request.namespace,
                pod_uid=request.pod_uid,
                spc_name=request.spc_name,
                volume_context=dict(request.volume_context),
                secrets=dict(request.secrets) if request.secrets is not None else None,
                versions=dict(result.versions),
                spc_fingerprint=spc_fingerprint(spc_object),
            )
            await self._record_status(volume)
            await self._sync_secrets(volume, spc_object, result)
        except BaseException:
            if mounted_here:
                # Leave nothing behind: kubelet retries the whole publish.
                try:
                    await cleanup_mount_point(target, self._mounter)
                except Exception:
                    log.exception("cleaning up %s after a failed mount", target)
            raise
        self._volumes[target] = volume
        self._last_failure.pop(target, None)
        log.info(
            "mounted secrets",
            extra=fields(
                pod=f"{volume.namespace}/{volume.pod_name}",
                spc=volume.spc_name,
                objects=len(result.versions),
            ),
        )

    # ------------------------------------------------------------------ remount

    async def remount(self, target: Path, *, trigger: str) -> RemountOutcome | None:
        """Mount again with the current SPC and secrets; None when the volume is gone."""
        async with self._lock(target):
            volume = self._volumes.get(target)
            if volume is None:
                return None
            started = time.perf_counter()
            spc_object = await self._read_spc(volume.namespace, volume.spc_name)
            provider = _provider_of(spc_object)
            attributes = _attributes(spc_object, volume.volume_context)
            result = await self._call_provider(
                provider, attributes, volume.secrets, target, volume.versions
            )
            files_changed = await self._write(target, result)
            versions_changed = result.versions != volume.versions
            fingerprint = spc_fingerprint(spc_object)
            spc_changed = fingerprint != volume.spc_fingerprint
            if versions_changed or spc_changed or volume.pod_status is None:
                volume.versions = dict(result.versions)
                await self._record_status(volume)
            volume.spc_fingerprint = fingerprint
            secrets_changed: tuple[str, ...] = ()
            if files_changed or spc_changed:
                secrets_changed = await self._sync_secrets(volume, spc_object, result)
            outcome = RemountOutcome(files_changed, versions_changed, secrets_changed)
            await self._report_remount(volume, outcome, trigger, time.perf_counter() - started)
            self._metrics.rotation_done(provider, rotated=files_changed or versions_changed)
            return outcome

    async def _report_remount(
        self, volume: MountedVolume, outcome: RemountOutcome, trigger: str, seconds: float
    ) -> None:
        self._metrics.rotation_duration(seconds)
        if outcome.files_changed or outcome.versions_changed:
            log.info(
                "remounted",
                extra=fields(
                    pod=f"{volume.namespace}/{volume.pod_name}",
                    spc=volume.spc_name,
                    trigger=trigger,
                ),
            )
            await self._event(
                volume,
                "MountRotationComplete",
                f"successfully rotated mounted contents for spc {volume.namespace}/"
                f"{volume.spc_name} ({trigger})",
            )
        for name in outcome.secrets_changed:
            await self._event(
                volume,
                "SecretRotationComplete",
                f"successfully rotated K8s secret {name}",
            )

    async def report_remount_failure(
        self, target: Path, error: BaseException, *, trigger: str, provider: str = "cce"
    ) -> None:
        volume = self._volumes.get(target)
        reason = error.reason if isinstance(error, PublishError) else "FailedToRotate"
        self._metrics.rotation_failed(provider, reason)
        if volume is None:
            return
        message = error.message if isinstance(error, PublishError) else str(error)
        log.warning(
            "remount failed, keeping the mounted files",
            extra=fields(
                pod=f"{volume.namespace}/{volume.pod_name}", trigger=trigger, error=message
            ),
        )
        await self._event(
            volume,
            "MountRotationFailed",
            f"failed to rotate mounted contents for spc {volume.namespace}/{volume.spc_name}: "
            f"{message}",
            warning=True,
        )

    # ------------------------------------------------------------------ unpublish

    async def unpublish(self, target: Path) -> None:
        async with self._lock(target):
            await cleanup_mount_point(target, self._mounter)
            self._volumes.pop(target, None)
        self._target_locks.pop(target, None)
        self._last_failure.pop(target, None)

    # ------------------------------------------------------------------ recovery

    async def recover(self) -> int:
        """After a restart: find this node's mounted volumes again from their SPCPS objects."""
        statuses, _ = await self._kube.list_objects(
            kube.SECRET_PROVIDER_CLASS_POD_STATUS,
            kube.ALL_NAMESPACES,
            labels={kube.NODE_NAME_LABEL: self.node_id},
        )
        recovered = 0
        for status in statuses:
            try:
                volume = await self._volume_from_status(status)
            except kube.KubeError as error:
                log.warning("cannot recover %s: %s", status["metadata"]["name"], error)
                continue
            if volume is not None and self._mounter.is_mounted(volume.target_path):
                self._volumes.setdefault(volume.target_path, volume)
                recovered += 1
        return recovered

    async def _volume_from_status(self, status: Mapping[str, Any]) -> MountedVolume | None:
        body = status.get("status") or {}
        namespace = status["metadata"]["namespace"]
        target = Path(str(body.get("targetPath", "")))
        match = TARGET_PATH_PATTERN.search(str(target))
        pod = await self._kube.find(kube.POD, str(body.get("podName", "")), namespace)
        if match is None or pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        volume_spec = next(
            (
                v
                for v in pod.get("spec", {}).get("volumes") or []
                if v.get("name") == match.group(2)
                and (v.get("csi") or {}).get("driver") == DRIVER_NAME
            ),
            None,
        )
        if volume_spec is None:
            return None
        csi = volume_spec["csi"]
        context = {
            POD_NAME: pod["metadata"]["name"],
            POD_NAMESPACE: namespace,
            POD_UID: pod["metadata"]["uid"],
            SERVICE_ACCOUNT_NAME: pod.get("spec", {}).get("serviceAccountName") or "default",
            EPHEMERAL: "true",
            **(csi.get("volumeAttributes") or {}),
        }
        secrets = await self._node_publish_secrets(csi, namespace)
        spc_object = await self._kube.find(
            kube.SECRET_PROVIDER_CLASS, context.get(SPC_ATTRIBUTE, ""), namespace
        )
        return MountedVolume(
            target_path=target,
            pod_name=pod["metadata"]["name"],
            namespace=namespace,
            pod_uid=pod["metadata"]["uid"],
            spc_name=str(body.get("secretProviderClassName", "")),
            volume_context=context,
            secrets=secrets,
            versions=podstatus.recorded_versions(status),
            spc_fingerprint=spc_fingerprint(spc_object) if spc_object else "",
        )

    async def _node_publish_secrets(
        self, csi: Mapping[str, Any], namespace: str
    ) -> dict[str, str] | None:
        reference = csi.get("nodePublishSecretRef") or {}
        if not reference.get("name"):
            return None
        secret = await self._kube.get(kube.SECRET, reference["name"], namespace)
        return {
            key: base64.b64decode(value).decode("utf-8", "replace")
            for key, value in (secret.get("data") or {}).items()
        }

    # ------------------------------------------------------------------ steps

    async def _read_spc(self, namespace: str, name: str) -> KubeObject:
        if not name:
            raise PublishError(
                "INVALID_ARGUMENT",
                "SecretProviderClassNotFound",
                "the volume has no secretProviderClass attribute: set "
                "volumeAttributes.secretProviderClass on the pod's CSI volume",
            )
        spc_object = None
        if self._spc_cache is not None and self._spc_cache.synced:
            spc_object = self._spc_cache.get(name, namespace)
        if spc_object is None:  # not watched yet, or created a moment ago
            spc_object = await self._kube.find(kube.SECRET_PROVIDER_CLASS, name, namespace)
        if spc_object is None:
            raise PublishError(
                "NOT_FOUND",
                "SecretProviderClassNotFound",
                f'SecretProviderClass "{name}" not found in namespace "{namespace}"; create it '
                f"in the pod's namespace",
            )
        return spc_object

    async def _call_provider(
        self,
        provider: str,
        attributes: Mapping[str, str],
        secrets: Mapping[str, str] | None,
        target: Path,
        current: Mapping[str, str],
    ) -> ProviderResult:
        try:
            result = await self._providers.mount(
                provider,
                attributes=attributes,
                secrets=secrets,
                target_path=str(target),
                permission=DEFAULT_PERMISSION,
                current_versions=current,
                timeout=self._provider_timeout,
            )
        except ProviderError as error:
            code = error.code if error.code in _GRPC_CODE_NAMES else "UNKNOWN"
            raise PublishError(code, error.code, error.message) from None
        return result

    async def _write(self, target: Path, result: ProviderResult) -> bool:
        files = [FileProjection(f.path, f.mode, f.contents) for f in result.files]

        def write_into_our_mount() -> bool:
            # Checked right before the write, in its thread: secrets go only into the driver's
            # own tmpfs, never onto the node's disk (an unmounted or foreign target).
            if not self._mounter.owns(target):
                raise PublishError(
                    "FAILED_PRECONDITION",
                    "FailedToMount",
                    f"refusing to write secrets to {target}: it is not a tmpfs mounted by the "
                    "driver (was it unmounted?)",
                )
            return AtomicWriter(target).write(files)

        try:
            validate_payload(files)
            return await run_off_loop(write_into_our_mount)
        except (PayloadError, WriteError) as error:
            raise PublishError("INTERNAL", "FileWriteError", str(error)) from None

    async def _record_status(self, volume: MountedVolume) -> None:
        desired = podstatus.build_pod_status(
            pod_name=volume.pod_name,
            namespace=volume.namespace,
            pod_uid=volume.pod_uid,
            spc_name=volume.spc_name,
            node_id=self.node_id,
            target_path=str(volume.target_path),
            versions=volume.versions,
        )
        volume.pod_status = await podstatus.upsert_pod_status(
            self._kube, desired, known=volume.pod_status
        )

    async def _sync_secrets(
        self,
        volume: MountedVolume,
        spc_object: KubeObject,
        result: ProviderResult,
    ) -> tuple[str, ...]:
        if not spc_object.get("spec", {}).get("secretObjects"):
            return ()
        try:
            parsed = spc.validate_spc(spc_object)
        except spc.SpcValidationError as error:
            raise PublishError("INVALID_ARGUMENT", "FailedToCreateSecret", str(error)) from None
        files = {f.path: f.contents for f in result.files}
        if volume.pod_status is None:
            await self._record_status(volume)
        assert volume.pod_status is not None
        owner = secret_sync.owner_reference(volume.pod_status)
        changed: list[str] = []
        started = time.perf_counter()
        for synced in parsed.secret_objects:
            try:
                data = secret_sync.secret_data(synced, files)
                desired = secret_sync.build_secret(synced, volume.namespace, data)
                if await secret_sync.sync_secret(self._kube, desired, owner):
                    changed.append(synced.secret_name)
            except (secret_sync.SecretSyncError, kube.KubeError) as error:
                await self._event(
                    volume,
                    "FailedToCreateSecret",
                    f"failed to sync Secret {synced.secret_name}: {error}",
                    warning=True,
                )
                raise PublishError(
                    "FAILED_PRECONDITION",
                    "FailedToCreateSecret",
                    f"failed to sync Secret {synced.secret_name}: {error}",
                ) from None
        self._metrics.secret_sync_duration(time.perf_counter() - started)
        return tuple(changed)

    async def _event(
        self, volume: MountedVolume, reason: str, message: str, *, warning: bool = False
    ) -> None:
        await self._pod_event(volume.pod_reference, reason, message, warning=warning)

    async def _pod_event(
        self, pod: KubeObject, reason: str, message: str, *, warning: bool = False
    ) -> None:
        try:
            await self._kube.record_event(
                pod,
                reason=reason,
                message=message,
                warning=warning,
                host=self.node_id,
            )
        except kube.KubeError as error:
            log.warning("could not record event %s: %s", reason, error)

    async def record_publish_failure(self, request: PublishRequest, message: str) -> None:
        """A Warning event on the pod, beside kubelet's own FailedMount (once per message)."""
        if not (request.pod_name and request.namespace):
            return
        if self._last_failure.get(request.target_path) == message:
            return
        self._last_failure[request.target_path] = message
        pod = {"name": request.pod_name, "namespace": request.namespace, "uid": request.pod_uid}
        await self._pod_event(
            kube.involved_object(kube.POD, pod), "FailedToMountSecrets", message, warning=True
        )


_GRPC_CODE_NAMES: Final = frozenset(
    {
        "INVALID_ARGUMENT",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "INTERNAL",
    }
)


def _provider_of(spc_object: Mapping[str, Any]) -> str:
    provider = (spc_object.get("spec") or {}).get("provider")
    if not provider:
        name = spc_object.get("metadata", {}).get("name")
        raise PublishError(
            "INVALID_ARGUMENT",
            "ProviderError",
            f'SecretProviderClass "{name}" has no spec.provider; dew-csi serves provider "cce"',
        )
    return str(provider)


def _attributes(spc_object: Mapping[str, Any], volume_context: Mapping[str, str]) -> dict[str, str]:
    """SPC parameters with every volume_context key copied over them, as upstream builds them."""
    parameters = (spc_object.get("spec") or {}).get("parameters") or {}
    if not parameters:
        name = spc_object.get("metadata", {}).get("name")
        raise PublishError(
            "INVALID_ARGUMENT",
            "ProviderError",
            f'SecretProviderClass "{name}" has no spec.parameters; list the secrets in '
            f"parameters.objects",
        )
    attributes = {str(k): str(v) for k, v in parameters.items()}
    attributes.update(volume_context)
    return attributes
