"""The `v1alpha1.CSIDriverProvider` gRPC servicer: translation between gRPC and mount.py only."""

from __future__ import annotations

import logging
from typing import Final

import grpc

from dew_csi import __version__
from dew_csi._proto.provider.v1alpha1 import service_pb2, service_pb2_grpc
from dew_csi.grpc_socket import status_details
from dew_csi.provider.mount import Mounter, MountError, Status, parse_request

log = logging.getLogger(__name__)

API_VERSION: Final = "v1alpha1"
RUNTIME_NAME: Final = "dew-provider"

_GRPC_CODES: Final = {
    Status.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Status.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Status.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


class ProviderServicer(service_pb2_grpc.CSIDriverProviderServicer):
    def __init__(self, mounter: Mounter) -> None:
        self._mounter = mounter

    async def Version(
        self,
        request: service_pb2.VersionRequest,
        context: grpc.aio.ServicerContext[service_pb2.VersionRequest, service_pb2.VersionResponse],
    ) -> service_pb2.VersionResponse:
        return service_pb2.VersionResponse(
            version=API_VERSION, runtime_name=RUNTIME_NAME, runtime_version=__version__
        )

    async def Mount(
        self,
        request: service_pb2.MountRequest,
        context: grpc.aio.ServicerContext[service_pb2.MountRequest, service_pb2.MountResponse],
    ) -> service_pb2.MountResponse:
        try:
            parsed = parse_request(
                request.attributes,
                request.secrets,
                request.permission,
                request.target_path,
                [(v.id, v.version) for v in request.current_object_version],
            )
            result = await self._mounter.mount(parsed)
        except MountError as error:
            details = status_details(error.message)
            log.error("Mount failed: %s", details)
            await context.abort(_GRPC_CODES[error.status], details)
        return service_pb2.MountResponse(
            object_version=[
                service_pb2.ObjectVersion(id=file_id, version=version)
                for file_id, version in result.versions
            ],
            files=[
                service_pb2.File(path=f.path, mode=f.mode, contents=f.contents)
                for f in result.files
            ],
        )
