"""The driver's side of the provider API (`v1alpha1.CSIDriverProvider`) over a unix socket."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from dew_csi._proto.provider.v1alpha1 import service_pb2, service_pb2_grpc

PROVIDER_NAME_PATTERN: Final = re.compile(r"^[a-zA-Z0-9_-]{0,30}$")
DEFAULT_PROVIDER_DIRS: Final = (
    Path("/etc/kubernetes/secrets-store-csi-providers"),
    Path("/var/run/secrets-store-csi-providers"),
)
MAX_RECEIVE_BYTES: Final = 4 * 1024 * 1024


class ProviderError(Exception):
    """A provider could not be reached or refused the mount; `code` is the gRPC status name
    (or the provider's own error code), used as the metrics error_type."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ProviderFile:
    path: str
    mode: int
    contents: bytes = field(repr=False)


@dataclass(frozen=True)
class ProviderResult:
    files: tuple[ProviderFile, ...]
    versions: dict[str, str]
    """Object id -> version, as the SPCPS records it."""


class ProviderClients:
    """One gRPC channel per provider, found as `<dir>/<provider>.sock` in the configured dirs."""

    def __init__(self, provider_dirs: Sequence[Path], max_receive_bytes: int = MAX_RECEIVE_BYTES):
        self._dirs = tuple(provider_dirs)
        self._max_receive = max_receive_bytes
        self._channels: dict[str, tuple[Path, grpc.aio.Channel]] = {}

    def socket_for(self, provider: str) -> Path:
        if not provider or not PROVIDER_NAME_PATTERN.match(provider):
            raise ProviderError("InvalidProvider", f'invalid provider name "{provider[:40]}"')
        for directory in self._dirs:
            candidate = directory / f"{provider}.sock"
            if candidate.exists():
                return candidate
        searched = ", ".join(str(d) for d in self._dirs)
        raise ProviderError(
            "FailedToLookupProviderGRPCClient",
            f'provider "{provider}" not found: no {provider}.sock in {searched}; '
            f"is the {provider} provider DaemonSet running on this node?",
        )

    def _stub(self, provider: str) -> service_pb2_grpc.CSIDriverProviderAsyncStub:
        path = self.socket_for(provider)
        cached = self._channels.get(provider)
        if cached is None or cached[0] != path:
            channel = grpc.aio.insecure_channel(
                f"unix://{path}",
                options=[
                    ("grpc.max_receive_message_length", self._max_receive),
                    ("grpc.default_authority", "localhost"),
                ],
            )
            self._channels[provider] = (path, channel)
            cached = (path, channel)
        return service_pb2_grpc.CSIDriverProviderStub(cached[1])

    async def mount(
        self,
        provider: str,
        *,
        attributes: Mapping[str, str],
        secrets: Mapping[str, str] | None,
        target_path: str,
        permission: int,
        current_versions: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> ProviderResult:
        request = service_pb2.MountRequest(
            attributes=json.dumps(dict(attributes)),
            # As the Go driver sends it: a missing nodePublishSecretRef is a nil map, "null".
            secrets=json.dumps(dict(secrets)) if secrets is not None else "null",
            target_path=target_path,
            permission=json.dumps(permission),
            current_object_version=[
                service_pb2.ObjectVersion(id=i, version=v)
                for i, v in sorted((current_versions or {}).items())
            ],
        )
        try:
            response = await self._stub(provider).Mount(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (
                error.details() or ""
            ):
                raise ProviderError(
                    "RESOURCE_EXHAUSTED",
                    f"the provider's answer is larger than {self._max_receive} bytes; "
                    f"raise --max-call-recv-msg-size or mount fewer/smaller secrets",
                ) from None
            raise ProviderError(code.name, error.details() or code.name) from None
        if response.error.code:
            raise ProviderError(
                response.error.code,
                f"mount request failed with provider error code {response.error.code}",
            )
        if not response.object_version:
            raise ProviderError("GRPCProviderError", "missing object versions")
        return ProviderResult(
            files=tuple(ProviderFile(f.path, f.mode, f.contents) for f in response.files),
            versions={v.id: v.version for v in response.object_version},
        )

    async def close(self) -> None:
        for _, channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
