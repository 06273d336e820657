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
from dataclasses import dataclass, field, replace
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
    DEFAULT_KUBELET_ROOT,
    Mounter,
    MountFailed,
    TargetRefused,
    check_target_path,
    cleanup_mount_point,
    ensure_mount_point,
)
from dew_csi.driver.provider_client import ProviderClients, ProviderError, ProviderResult
from dew_csi.kube import Kube, KubeObject
from dew_csi.logs import fields
from dew_csi.volume_context import (
    KUBELET_OWNED,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    merge_pod_info,
    pod_info,
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
    """The nodePublishSecretRef data kubelet sent at the first mount."""
    secret_ref: str | None = None
    """The pod volume's nodePublishSecretRef: read again at every remount, so rotated
    credentials take effect without restarting the pod."""
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
        kubelet_root: Path = DEFAULT_KUBELET_ROOT,
    ) -> None:
        self._kube = client
        self._kubelet_root = kubelet_root
        self._spc_cache = spc_cache
        self.node_id = node_id
        self._providers = providers
        self._mounter = mounter
        self._metrics = metrics
        self._provider_timeout = provider_timeout
        self._volumes: dict[Path, MountedVolume] = {}
        self._target_locks: dict[Path, asyncio.Lock] = {}
        self.ready = asyncio.Event()
        """Set by the driver once this node's volumes are recovered and the SPC cache is synced;
        until then only unpublish and repeat publishes are served."""

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

    async def publish(self, request: PublishRequest, *, timeout: float | None = None) -> None:
        """NodePublishVolume. Before the driver has reached the Kubernetes API once since it
        started, a new volume waits for that up to `timeout` seconds (the call's deadline)."""
        target = request.target_path
        async with self._lock(target):
            known = self._volumes.get(target)
            if known is not None and self._mounter.is_mounted(target):
                return  # a repeated publish of a healthy mount: nothing to do
            if not self.ready.is_set():
                if self._mounter.owns(target) and (target / "..data").exists():
                    # Mounted with files before a restart; recovery takes it back when the API
                    # answers. Kubelet must not see an error for a volume that works.
                    return
                await self._wait_ready(timeout)
            try:
                trusted, pod = await self._trusted_request(request)
            except kube.KubeError as error:
                raise _api_failure(error) from None
            # From here the pod is known to be the one kubelet mounts for, so an Event about a
            # failure goes to it (never to a pod a spoofed context names).
            try:
                await self._first_mount(trusted, pod)
            except (PublishError, kube.KubeError) as error:
                failure = _api_failure(error) if isinstance(error, kube.KubeError) else error
                await self._pod_event(
                    _pod_reference(trusted), "FailedToMountSecrets", failure.message, warning=True
                )
                raise failure from None

    async def _wait_ready(self, timeout: float | None) -> None:
        # Answer a little before the caller's deadline, so kubelet reads our message rather
        # than its own DEADLINE_EXCEEDED.
        wait = None if timeout is None else max(0.0, timeout - 1.0)
        try:
            await asyncio.wait_for(self.ready.wait(), wait)
        except TimeoutError:
            raise PublishError(
                "UNAVAILABLE",
                "KubernetesAPIError",
                "the driver has not reached the Kubernetes API since it started (see its log); "
                "kubelet retries the mount",
            ) from None

    async def _trusted_request(self, request: PublishRequest) -> tuple[PublishRequest, KubeObject]:
        """The request with kubelet's pod info taken from the Pod object, and that Pod.

        Kubelet's pod info already wins over `volumeAttributes` (podInfoOnMount). Reading the
        Pod proves it: the context must name the pod whose uid is in the target path, and a
        CSIDriver installed without podInfoOnMount cannot let a user's attributes through."""
        context = request.volume_context
        missing = [key for key in (POD_NAME, POD_NAMESPACE, POD_UID) if not context.get(key)]
        if missing:
            raise PublishError(
                "FAILED_PRECONDITION",
                "PodInfoMissing",
                f"kubelet sent no pod information ({', '.join(missing)}): the CSIDriver "
                f"{DRIVER_NAME} must have podInfoOnMount: true",
            )
        match = TARGET_PATH_PATTERN.search(str(request.target_path))
        pod = await self._kube.find(kube.POD, context[POD_NAME], context[POD_NAMESPACE])
        uid = pod["metadata"].get("uid") if pod is not None else None
        if pod is None or uid != context[POD_UID] or match is None or match.group(1) != uid:
            raise PublishError(
                "PERMISSION_DENIED",
                "PodMismatch",
                f"the volume context names pod {context[POD_NAMESPACE]}/{context[POD_NAME]} "
                f"(uid {context[POD_UID]}), which is not the pod that owns target path "
                f"{request.target_path}",
            )
        trusted = merge_pod_info(context, pod_info(pod))
        return replace(request, volume_context=trusted), pod

    async def _first_mount(self, request: PublishRequest, pod: KubeObject) -> None:
        target = request.target_path
        spc_object = await self._read_spc(request.namespace, request.spc_name)
        provider = _provider_of(spc_object)
        attributes = _attributes(spc_object, request.volume_context)
        mounted_here = False
        status_written = False
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
                secret_ref=_publish_secret_ref(pod, target),
                versions=dict(result.versions),
                spc_fingerprint=spc_fingerprint(spc_object),
            )
            status_written = True
            await self._record_status(volume)
            await self._sync_secrets(volume, spc_object, result)
        except BaseException:
            if mounted_here:
                # Leave nothing behind: kubelet retries the whole publish.
                try:
                    await cleanup_mount_point(target, self._mounter)
                except Exception:
                    log.exception("cleaning up %s after a failed mount", target)
                if status_written:
                    await self._forget_status(request)
            raise
        self._volumes[target] = volume
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
            secrets = await self._publish_secrets(volume)
            result = await self._call_provider(
                provider, attributes, secrets, target, volume.versions
            )
            files_changed = await self._write(target, result)
            versions_changed = result.versions != volume.versions
            # Every pass restores the SPCPS and the synced Secrets from what is mounted, should
            # someone have edited or deleted them; each costs a read, and a write only when it
            # differs. The volume remembers the new versions and SPC only once both are written,
            # so a failed API call is retried by the next pass, not forgotten.
            await self._record_status(volume, dict(result.versions), verify=True)
            secrets_changed = await self._sync_secrets(volume, spc_object, result)
            volume.versions = dict(result.versions)
            volume.spc_fingerprint = spc_fingerprint(spc_object)
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
        if isinstance(error, PublishError):
            message = error.message
        elif isinstance(error, kube.KubeError):
            message = _api_failure(error).message
        else:  # a bug: its text may hold anything, so it stays in the driver's log
            message = f"internal error in the driver ({type(error).__name__}); see its log"
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

    # ------------------------------------------------------------------ recovery

    async def recover_in_background(self, *, max_delay: float = 30.0) -> int:
        """`recover` until it succeeds: the API may be down while the driver starts."""
        delay = 0.5
        while True:
            try:
                recovered = await self.recover()
            except kube.KubeError as error:
                log.warning(
                    "cannot list this node's volumes yet; retrying",
                    extra=fields(error=error.message, retryIn=delay),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
                continue
            if recovered:
                log.info("found mounted volumes again", extra=fields(volumes=recovered))
            return recovered

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
        try:
            # The SPCPS is only data: its path gets the same checks as kubelet's requests.
            target = check_target_path(str(body.get("targetPath", "")), self._kubelet_root)
        except TargetRefused as refused:
            log.warning(
                "not recovering a volume with a refused target path",
                extra=fields(status=status["metadata"].get("name"), error=str(refused)),
            )
            return None
        match = TARGET_PATH_PATTERN.search(str(target))
        pod = await self._kube.find(kube.POD, str(body.get("podName", "")), namespace)
        if (
            match is None
            or pod is None
            or pod["metadata"].get("deletionTimestamp")
            or pod["metadata"].get("uid") != match.group(1)
        ):
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
        # As kubelet builds it: the pod's own info over the user's attributes, never under.
        context = merge_pod_info(csi.get("volumeAttributes") or {}, pod_info(pod))
        secret_ref = _publish_secret_ref(pod, target)
        secrets = await self._read_publish_secret(secret_ref, namespace)
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
            secret_ref=secret_ref,
            versions=podstatus.recorded_versions(status),
            spc_fingerprint=spc_fingerprint(spc_object) if spc_object else "",
        )

    async def _read_publish_secret(self, name: str | None, namespace: str) -> dict[str, str] | None:
        """The nodePublishSecretRef's data, as kubelet would send it (None without a ref)."""
        if name is None:
            return None
        secret = await self._kube.find(kube.SECRET, name, namespace)
        if secret is None:
            raise PublishError(
                "FAILED_PRECONDITION",
                "NodePublishSecretRefNotFound",
                f'the volume\'s nodePublishSecretRef Secret "{name}" is not found in namespace '
                f'"{namespace}"; create it again with the access credentials',
            )
        return {
            key: base64.b64decode(value).decode("utf-8", "replace")
            for key, value in (secret.get("data") or {}).items()
        }

    async def _publish_secrets(self, volume: MountedVolume) -> dict[str, str] | None:
        """The credentials for a remount: the nodePublishSecretRef as it is now."""
        if volume.secret_ref is None:
            return volume.secrets
        return await self._read_publish_secret(volume.secret_ref, volume.namespace)

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

    async def _record_status(
        self,
        volume: MountedVolume,
        versions: Mapping[str, str] | None = None,
        *,
        verify: bool = False,
    ) -> None:
        """Write the SPCPS for `versions` (default: the volume's). With `verify`, compare with
        the object as it is now in the API, not as we last wrote it."""
        desired = podstatus.build_pod_status(
            pod_name=volume.pod_name,
            namespace=volume.namespace,
            pod_uid=volume.pod_uid,
            spc_name=volume.spc_name,
            node_id=self.node_id,
            target_path=str(volume.target_path),
            versions=volume.versions if versions is None else versions,
        )
        volume.pod_status = await podstatus.upsert_pod_status(
            self._kube, desired, known=volume.pod_status, reread=verify
        )

    async def _forget_status(self, request: PublishRequest) -> None:
        """A first mount failed after its SPCPS was written: nothing is mounted, so no SPCPS
        may say `mounted: true`."""
        name = podstatus.status_name(request.pod_name, request.namespace, request.spc_name)
        try:
            await self._kube.delete(kube.SECRET_PROVIDER_CLASS_POD_STATUS, name, request.namespace)
        except kube.KubeError as error:
            log.warning(
                "cannot remove the status of a failed mount",
                extra=fields(status=f"{request.namespace}/{name}", error=error.message),
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
            # Bounded, but up to ~100 ms for the largest allowed class: not on the event loop.
            parsed = await asyncio.to_thread(spc.validate_spc, spc_object)
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


def _api_failure(error: kube.KubeError) -> PublishError:
    return PublishError(
        "UNAVAILABLE",
        "KubernetesAPIError",
        f"reading or writing Kubernetes objects failed: {error.message}",
    )


def _pod_reference(request: PublishRequest) -> KubeObject:
    pod = {"name": request.pod_name, "namespace": request.namespace, "uid": request.pod_uid}
    return kube.involved_object(kube.POD, pod)


def _publish_secret_ref(pod: Mapping[str, Any], target: Path) -> str | None:
    """The nodePublishSecretRef name of the pod's CSI volume at `target`, if it has one."""
    match = TARGET_PATH_PATTERN.search(str(target))
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if match is not None and volume.get("name") == match.group(2):
            reference = (volume.get("csi") or {}).get("nodePublishSecretRef") or {}
            return str(reference["name"]) if reference.get("name") else None
    return None


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
    # The SPC is a namespace user's object too: its parameters never carry kubelet's keys.
    attributes = {str(k): str(v) for k, v in parameters.items() if str(k) not in KUBELET_OWNED}
    attributes.update(volume_context)
    return attributes
