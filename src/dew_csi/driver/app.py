"""`dew-csi driver`: the csi-secrets-store node plugin, wired to its outside systems."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from dew_csi import DRIVER_NAME, __version__, kube
from dew_csi._proto.csi.v1 import csi_pb2_grpc
from dew_csi.driver.identity import ControllerServicer, IdentityServicer
from dew_csi.driver.metrics import DriverMetrics
from dew_csi.driver.mounter import DirMounter, Mounter, TmpfsMounter
from dew_csi.driver.node import NodeServicer
from dew_csi.driver.provider_client import DEFAULT_PROVIDER_DIRS, ProviderClients
from dew_csi.driver.rotation import RotationReconciler, parse_rotation_interval
from dew_csi.driver.spc_watch import SpcChangeWatcher
from dew_csi.driver.volumes import VolumeManager
from dew_csi.grpc_socket import serve_on_socket, socket_path
from dew_csi.logs import fields, setup_logging
from dew_csi.service import serve_metrics, until_terminated

log = logging.getLogger(__name__)

MOUNTERS: Final = ("tmpfs", "dir")


@dataclass(frozen=True)
class DriverConfig:
    endpoint: str
    node_id: str
    provider_dirs: tuple[Path, ...]
    rotation_interval: float
    mounter: str = "tmpfs"
    kubeconfig: str | None = None
    metrics_addr: str | None = None
    provider_timeout: float = 60.0


def make_mounter(name: str) -> Mounter:
    if name == "tmpfs":
        return TmpfsMounter()
    if name == "dir":
        return DirMounter()
    raise ValueError(f"--mounter must be one of {', '.join(MOUNTERS)}, not {name!r}")


class Driver:
    """The running driver: CSI server, volumes, rotation and SPC watch."""

    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.metrics = DriverMetrics()
        self._kube = kube.Kube.from_options(config.kubeconfig)
        self._providers = ProviderClients(config.provider_dirs)
        # One SPC watch serves both change detection and every remount's read of its SPC.
        spc_cache = kube.WatchCache(self._kube, kube.SECRET_PROVIDER_CLASS)
        self.volumes = VolumeManager(
            client=self._kube,
            node_id=config.node_id,
            providers=self._providers,
            mounter=make_mounter(config.mounter),
            metrics=self.metrics,
            spc_cache=spc_cache,
            provider_timeout=config.provider_timeout,
        )
        self.reconciler = RotationReconciler(self.volumes, config.rotation_interval)
        self.spc_watcher = SpcChangeWatcher(spc_cache, self.volumes)
        self._server: grpc.aio.Server | None = None
        self._rotation_task: asyncio.Task[None] | None = None

    @property
    def socket(self) -> Path:
        return socket_path(self.config.endpoint)

    async def start(self) -> None:
        log.info(
            "Initializing Secrets Store CSI Driver",
            extra=fields(driver=DRIVER_NAME, version=__version__, buildTime=""),
        )
        recovered = await self.volumes.recover()
        if recovered:
            log.info("found mounted volumes again", extra=fields(volumes=recovered))
        await self.spc_watcher.start()
        self._rotation_task = asyncio.create_task(self.reconciler.run(), name="rotation")
        server = grpc.aio.server()
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityServicer(), server)
        # The generated stubs mark every RPC abstract; the RPCs we do not implement answer
        # UNIMPLEMENTED through the generated base class, as upstream's do.
        controller = ControllerServicer()  # type: ignore[abstract]
        node = NodeServicer(self.volumes, self.metrics, self.config.node_id)  # type: ignore[abstract]
        csi_pb2_grpc.add_ControllerServicer_to_server(controller, server)
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)
        await serve_on_socket(server, self.socket)
        self._server = server
        log.info("Listening for connections", extra=fields(address=str(self.socket)))

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._rotation_task is not None:
            self._rotation_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotation_task
        await self.spc_watcher.stop()
        await self._providers.close()
        await self._kube.close()


def config_from_args(args: argparse.Namespace) -> DriverConfig:
    if not args.node_id:
        raise ValueError(
            "--node-id is required (the Kubernetes node name, e.g. from spec.nodeName)"
        )
    provider_dirs = (
        tuple(Path(d) for d in args.provider_dir) if args.provider_dir else DEFAULT_PROVIDER_DIRS
    )
    socket_path(args.endpoint)  # refuse a malformed endpoint at start-up
    return DriverConfig(
        endpoint=args.endpoint,
        node_id=args.node_id,
        provider_dirs=provider_dirs,
        rotation_interval=parse_rotation_interval(
            args.rotation_poll_interval, sandbox=args.sandbox
        ),
        mounter=args.mounter,
        kubeconfig=args.kubeconfig,
        metrics_addr=args.metrics_addr or None,
    )


async def run(config: DriverConfig) -> None:
    driver = Driver(config)
    await driver.start()
    if config.metrics_addr:
        serve_metrics(config.metrics_addr, driver.metrics.registry)
    print(f"dew-csi driver listening on {driver.socket}", flush=True)
    try:
        await until_terminated()
    finally:
        await driver.stop()


def run_from_args(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    try:
        config = config_from_args(args)
        make_mounter(config.mounter)
    except ValueError as error:
        print(f"dew-csi driver: {error}", file=sys.stderr, flush=True)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(config))
    return 0
