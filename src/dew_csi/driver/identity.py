"""CSI Identity and Controller servicers (the Controller serves capabilities only, as upstream)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import wrappers_pb2

from dew_csi import DRIVER_NAME, __version__
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc

Context = object  # grpc.aio.ServicerContext, unused by these answers


def _unimplemented(service: str, method: str) -> Callable[[Any, Any, Any], Awaitable[None]]:
    async def rpc(self: Any, request: Any, context: Any) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"{service}.{method} is not implemented by {DRIVER_NAME}, a node plugin for inline "
            "ephemeral volumes",
        )

    rpc.__name__ = rpc.__qualname__ = method
    return rpc


def answer_unimplemented(servicer: type, service: str) -> None:
    """Give `servicer` an RPC answering UNIMPLEMENTED for each method of `csi.v1.<service>` it
    does not define itself.

    The generated base classes raise NotImplementedError from a synchronous method; gRPC answers
    UNIMPLEMENTED then too, but logs the exception with a traceback for every such call (a CO
    probing the Controller service would fill the driver's log). `context.abort` is the quiet way.
    """
    for method in csi_pb2.DESCRIPTOR.services_by_name[service].methods:
        if method.name not in vars(servicer):
            setattr(servicer, method.name, _unimplemented(service, method.name))


class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(self, driver_name: str = DRIVER_NAME, version: str = __version__) -> None:
        self._name = driver_name
        self._version = version

    async def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: Context
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self._name, vendor_version=self._version)

    async def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: Context
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        service = csi_pb2.PluginCapability.Service(
            type=csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE
        )
        return csi_pb2.GetPluginCapabilitiesResponse(
            capabilities=[csi_pb2.PluginCapability(service=service)]
        )

    async def Probe(self, request: csi_pb2.ProbeRequest, context: Context) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))


class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    """Every other Controller RPC answers UNIMPLEMENTED (`answer_unimplemented` below)."""

    async def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: Context
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        rpc = csi_pb2.ControllerServiceCapability.RPC(
            type=csi_pb2.ControllerServiceCapability.RPC.UNKNOWN
        )
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[csi_pb2.ControllerServiceCapability(rpc=rpc)]
        )


answer_unimplemented(ControllerServicer, "Controller")
