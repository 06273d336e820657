"""CSI Node servicer: validates requests and hands them to the VolumeManager.

Every target path is checked first (`check_target_path`): only `<kubelet-root>/pods/<uid>/volumes/
kubernetes.io~csi/<name>/mount`, with no symlink below the kubelet root, is published or
unpublished. Every failure answers a status code with a message; none is UNKNOWN.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.driver.identity import answer_unimplemented
from dew_csi.driver.metrics import DriverMetrics
from dew_csi.driver.mounter import MountFailed, TargetRefused, check_target_path
from dew_csi.driver.volumes import PublishError, PublishRequest, VolumeManager
from dew_csi.grpc_socket import status_details
from dew_csi.logs import fields

log = logging.getLogger(__name__)

Context = Any  # grpc.aio.ServicerContext of the method's request/response types


async def _invalid(context: Context, message: str) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def _as_publish_error(failure: TargetRefused | MountFailed | PublishError) -> PublishError:
    if isinstance(failure, TargetRefused):
        return PublishError(failure.code, "UnexpectedTargetPath", failure.message)
    if isinstance(failure, MountFailed):
        return PublishError("INTERNAL", "FailedToMount", f"mounting failed: {failure}")
    return failure


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(
        self, volumes: VolumeManager, metrics: DriverMetrics, node_id: str, *, kubelet_root: Path
    ) -> None:
        self._volumes = volumes
        self._metrics = metrics
        self._node_id = node_id
        self._kubelet_root = kubelet_root

    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: Context
    ) -> csi_pb2.NodePublishVolumeResponse:
        if not request.volume_id:
            await _invalid(context, "Volume ID missing in request")
        if not request.target_path:
            await _invalid(context, "Target path missing in request")
        if not request.HasField("volume_capability"):
            await _invalid(context, "Volume capability missing in request")
        if not request.volume_context:
            await _invalid(context, "Volume context missing in request")
        if not request.readonly:
            await _invalid(
                context,
                "Readonly is not true in request: set readOnly: true on the pod's CSI volume",
            )
        publish = PublishRequest(
            volume_id=request.volume_id,
            target_path=Path(request.target_path),
            volume_context=dict(request.volume_context),
            # A pod without nodePublishSecretRef sends no secrets: Go's nil map.
            secrets=dict(request.secrets) if request.secrets else None,
        )
        log.info(
            "NodePublishVolume",
            extra=fields(
                pod=f"{publish.namespace}/{publish.pod_name}",
                spc=publish.spc_name,
                target=str(publish.target_path),
            ),
        )
        try:
            check_target_path(request.target_path, self._kubelet_root)
            await self._volumes.publish(publish, timeout=context.time_remaining())
        except (TargetRefused, MountFailed, PublishError) as failure:
            error = _as_publish_error(failure)
            self._metrics.publish_failed("cce", error.reason)
            log.error(
                "NodePublishVolume failed",
                extra=fields(pod=f"{publish.namespace}/{publish.pod_name}", error=error.message),
            )
            await context.abort(getattr(grpc.StatusCode, error.code), status_details(error.message))
        self._metrics.published("cce")
        return csi_pb2.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: Context
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        if not request.volume_id:
            await _invalid(context, "Volume ID missing in request")
        if not request.target_path:
            await _invalid(context, "Target path missing in request")
        try:
            target = check_target_path(request.target_path, self._kubelet_root)
            await self._volumes.unpublish(target)
        except (TargetRefused, MountFailed, OSError) as failure:
            if isinstance(failure, TargetRefused):
                code, message = failure.code, failure.message
            else:
                code, message = "INTERNAL", f"unmounting {request.target_path} failed: {failure}"
            self._metrics.unpublish_failed()
            log.error(
                "NodeUnpublishVolume failed",
                extra=fields(target=request.target_path, error=message),
            )
            await context.abort(getattr(grpc.StatusCode, code), status_details(message))
        self._metrics.unpublished()
        return csi_pb2.NodeUnpublishVolumeResponse()

    async def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: Context
    ) -> csi_pb2.NodeStageVolumeResponse:
        if not request.volume_id:
            await _invalid(context, "Volume ID missing in request")
        if not request.staging_target_path:
            await _invalid(context, "Staging target path missing in request")
        if not request.HasField("volume_capability"):
            await _invalid(context, "Volume capability missing in request")
        return csi_pb2.NodeStageVolumeResponse()

    async def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: Context
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        if not request.volume_id:
            await _invalid(context, "Volume ID missing in request")
        if not request.staging_target_path:
            await _invalid(context, "Staging target path missing in request")
        return csi_pb2.NodeUnstageVolumeResponse()

    async def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: Context
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        rpc = csi_pb2.NodeServiceCapability.RPC(
            type=csi_pb2.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME
        )
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[csi_pb2.NodeServiceCapability(rpc=rpc)]
        )

    async def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: Context
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self._node_id)


# NodeGetVolumeStats and NodeExpandVolume: UNIMPLEMENTED with a message, as upstream, without
# the generated base class's NotImplementedError (which gRPC logs with a traceback).
answer_unimplemented(NodeServicer, "Node")
