"""CSI Node servicer: validates requests and hands them to the VolumeManager."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.driver.metrics import DriverMetrics
from dew_csi.driver.volumes import PublishError, PublishRequest, VolumeManager
from dew_csi.grpc_socket import status_details
from dew_csi.logs import fields

log = logging.getLogger(__name__)

Context = Any  # grpc.aio.ServicerContext of the method's request/response types


async def _invalid(context: Context, message: str) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(self, volumes: VolumeManager, metrics: DriverMetrics, node_id: str) -> None:
        self._volumes = volumes
        self._metrics = metrics
        self._node_id = node_id

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
            await self._volumes.publish(publish)
        except PublishError as error:
            self._metrics.publish_failed("cce", error.reason)
            log.error(
                "NodePublishVolume failed",
                extra=fields(pod=f"{publish.namespace}/{publish.pod_name}", error=error.message),
            )
            await self._volumes.record_publish_failure(publish, error.message)
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
            await self._volumes.unpublish(Path(request.target_path))
        except OSError as error:
            self._metrics.unpublish_failed()
            await context.abort(grpc.StatusCode.INTERNAL, f"unmounting failed: {error}")
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
