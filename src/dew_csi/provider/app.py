"""`dew-csi provider`: wires the mount logic to its outside systems and serves it on cce.sock."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from dew_csi import PROVIDER_NAME, kube
from dew_csi._proto.provider.v1alpha1 import service_pb2_grpc
from dew_csi.csms import (
    Credentials,
    CredentialsProvider,
    CsmsClient,
    CsmsClientConfig,
    SecretVersion,
    credentials_from_node_publish_secrets,
    default_chain,
)
from dew_csi.durations import parse_duration
from dew_csi.grpc_socket import serve_on_socket
from dew_csi.logs import fields, setup_logging
from dew_csi.provider.cache import SecretCache
from dew_csi.provider.metrics import ProviderMetrics
from dew_csi.provider.mount import CsmsAccess, Mounter
from dew_csi.provider.objects import DEFAULT_MAX_BYTES as DEFAULT_OBJECTS_CACHE_BYTES
from dew_csi.provider.objects import ObjectsParser
from dew_csi.provider.server import ProviderServicer
from dew_csi.service import StartupError, os_reason, start_metrics, until_terminated

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR: Final = "/var/run/secrets-store-csi-providers"
DEFAULT_METADATA_URL: Final = "http://169.254.169.254"
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class ProviderConfig:
    socket_dir: Path
    csms: CsmsClientConfig
    kubeconfig: str | None = None
    latest_ttl: float = 5.0
    metrics_addr: str | None = None
    credentials_dir: str | None = None
    metadata_url: str | None = DEFAULT_METADATA_URL
    cache_max_entries: int = 1000
    cache_max_bytes: int = 64 * 1024 * 1024
    objects_cache_bytes: int = DEFAULT_OBJECTS_CACHE_BYTES

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f"{PROVIDER_NAME}.sock"


class CsmsAccessPool:
    """One CSMS client (one connection pool) for every volume: the provider's own credentials
    by default, or the volume's nodePublishSecretRef credentials passed per call."""

    def __init__(
        self,
        config: CsmsClientConfig,
        default_credentials: CredentialsProvider,
        metrics: ProviderMetrics,
    ) -> None:
        self._config = config
        self._default_credentials = default_credentials
        self._client = CsmsClient(
            default_credentials, config, on_attempt=metrics.observe_csms_attempt
        )

    async def access(self, secrets: Mapping[str, str] | None) -> CsmsAccess:
        if not secrets:
            credentials = await self._default_credentials.get()
            return CsmsAccess(self._client, credentials.identity, self._project(credentials))
        per_volume = credentials_from_node_publish_secrets(secrets)
        return CsmsAccess(self._client, per_volume.identity, self._project(per_volume), per_volume)

    def _project(self, credentials: Credentials) -> str:
        return credentials.project_id or self._config.project_id or ""

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._default_credentials.aclose()


class Provider:
    """The running provider: API watch, CSMS access, cache and the gRPC server."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.cache: SecretCache[SecretVersion] = SecretCache(
            size_of=lambda v: len(v.value),
            version_of=lambda v: v.version_id,
            max_entries=config.cache_max_entries,
            max_bytes=config.cache_max_bytes,
            latest_ttl=config.latest_ttl,
        )
        self.metrics = ProviderMetrics(self.cache.stats)
        self._kube = kube.Kube.from_options(config.kubeconfig)
        self.service_accounts = kube.WatchCache(self._kube, kube.SERVICE_ACCOUNT)
        self._pool = CsmsAccessPool(
            config.csms,
            default_chain(
                credentials_dir=config.credentials_dir,
                metadata_url=config.metadata_url,
                project_id=config.csms.project_id,
            ),
            self.metrics,
        )
        self.objects = ObjectsParser(max_bytes=config.objects_cache_bytes)
        self.mounter = Mounter(
            service_account=self._service_account,
            csms_access=self._pool.access,
            cache=self.cache,
            objects=self.objects,
            on_mount=self.metrics.observe_mount,
        )
        self._server: grpc.aio.Server | None = None

    async def _service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        cached = self.service_accounts.get(name, namespace)
        if cached is not None:
            return cached
        # Not in the cache yet (created a moment ago): ask the API server directly.
        return await self._kube.find(kube.SERVICE_ACCOUNT, name, namespace)

    async def start(self) -> None:
        await self.service_accounts.start()
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        service_pb2_grpc.add_CSIDriverProviderServicer_to_server(
            ProviderServicer(self.mounter), server
        )
        await serve_on_socket(server, self.config.socket_path)
        self._server = server
        log.info("Listening for connections", extra=fields(address=str(self.config.socket_path)))

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.service_accounts.stop()
        await self._pool.aclose()
        await self._kube.close()
        self.objects.close()


def config_from_args(args: argparse.Namespace) -> ProviderConfig:
    if args.csms_endpoint and args.region:
        raise ValueError("give either --csms-endpoint or --region, not both")
    csms = CsmsClientConfig(
        region=args.region,
        endpoint=args.csms_endpoint,
        project_id=args.project_id,
        verify_tls=not args.insecure_skip_tls_verify,
        ca_bundle=args.ca_file,
    )
    csms.resolved_endpoint()  # refuse a bad endpoint at start-up, not at the first mount
    if args.ca_file:
        try:
            ssl.create_default_context(cafile=args.ca_file)
        except (OSError, ssl.SSLError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise ValueError(
                f"--ca-file {args.ca_file}: cannot load the CA bundle: {reason}"
            ) from None
    metrics_addr = args.metrics_addr or None
    if metrics_addr is not None:
        _, sep, port = metrics_addr.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"--metrics-addr must be HOST:PORT or :PORT, not {metrics_addr!r}")
    return ProviderConfig(
        socket_dir=Path(args.socket_dir),
        csms=csms,
        kubeconfig=args.kubeconfig,
        latest_ttl=parse_duration(args.latest_ttl),
        metrics_addr=metrics_addr,
        credentials_dir=args.credentials_dir,
        metadata_url=None if args.metadata_url in ("", "none") else args.metadata_url,
    )


async def run(config: ProviderConfig) -> None:
    provider = Provider(config)
    try:
        try:
            await provider.start()
        except (OSError, ValueError) as error:
            raise StartupError(
                f"cannot serve on {config.socket_path}: {os_reason(error)}; check --socket-dir"
            ) from None
        if config.metrics_addr:
            start_metrics(config.metrics_addr, provider.metrics.registry)
        print(f"dew-provider listening on {config.socket_path}", flush=True)
        await until_terminated()
    finally:
        log.info("Shutting down")
        await provider.stop()


def run_from_args(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"dew-csi provider: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run(config))
    except StartupError as error:
        print(f"dew-csi provider: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
