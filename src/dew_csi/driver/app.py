"""`dew-csi driver`: the csi-secrets-store node plugin, wired to its outside systems."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from dew_csi import DRIVER_NAME, __version__, kube
from dew_csi._proto.csi.v1 import csi_pb2_grpc
from dew_csi.driver.identity import ControllerServicer, IdentityServicer
from dew_csi.driver.metrics import DriverMetrics
from dew_csi.driver.mounter import DEFAULT_KUBELET_ROOT, DirMounter, Mounter, TmpfsMounter
from dew_csi.driver.node import NodeServicer
from dew_csi.driver.provider_client import (
    DEFAULT_PROVIDER_DIRS,
    MAX_RECEIVE_BYTES,
    ProviderClients,
)
from dew_csi.driver.rotation import RotationReconciler, parse_rotation_interval
from dew_csi.driver.spc_watch import SpcChangeWatcher
from dew_csi.driver.volumes import VolumeManager
from dew_csi.grpc_socket import serve_on_socket, socket_path
from dew_csi.logs import fields, setup_logging
from dew_csi.service import StartupError, os_reason, start_metrics, until_terminated

log = logging.getLogger(__name__)

MOUNTERS: Final = ("tmpfs", "dir")
# The CSI socket below the kubelet root, as upstream's DaemonSet places it.
PLUGIN_SOCKET: Final = "plugins/csi-secrets-store/csi.sock"


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
    kubelet_root: Path = DEFAULT_KUBELET_ROOT
    """Target paths must lie at <kubelet_root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount."""
    max_call_recv_msg_size: int = MAX_RECEIVE_BYTES
    """The largest provider response accepted, in bytes (upstream's --max-call-recv-msg-size)."""


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
        self._providers = ProviderClients(config.provider_dirs, config.max_call_recv_msg_size)
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
            kubelet_root=config.kubelet_root,
        )
        self.reconciler = RotationReconciler(self.volumes, config.rotation_interval)
        self.spc_watcher = SpcChangeWatcher(spc_cache, self.volumes)
        self._server: grpc.aio.Server | None = None
        self._startup_task: asyncio.Task[None] | None = None

    @property
    def socket(self) -> Path:
        return socket_path(self.config.endpoint)

    async def start(self) -> None:
        log.info(
            "Initializing Secrets Store CSI Driver",
            extra=fields(driver=DRIVER_NAME, version=__version__, buildTime=""),
        )
        # Serve first: during a control-plane outage kubelet must still be able to unmount, and
        # to republish what is mounted. Recovery, the SPC cache and rotation follow when the
        # API answers.
        self._startup_task = asyncio.create_task(self._start_background(), name="startup")
        server = grpc.aio.server()
        csi_pb2_grpc.add_IdentityServicer_to_server(IdentityServicer(), server)
        # The generated stubs mark every RPC abstract; the RPCs we do not implement answer
        # UNIMPLEMENTED (identity.answer_unimplemented), as upstream's do.
        controller = ControllerServicer()  # type: ignore[abstract]
        node = NodeServicer(  # type: ignore[abstract]
            self.volumes, self.metrics, self.config.node_id, kubelet_root=self.config.kubelet_root
        )
        csi_pb2_grpc.add_ControllerServicer_to_server(controller, server)
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)
        await serve_on_socket(server, self.socket)
        self._server = server
        log.info("Listening for connections", extra=fields(address=str(self.socket)))

    async def _start_background(self) -> None:
        await self.volumes.recover_in_background()
        await self.spc_watcher.start()
        self.volumes.ready.set()
        log.info("ready for new volumes", extra=fields(volumes=len(self.volumes.mounted())))
        await self.reconciler.run()

    async def wait_ready(self, timeout: float | None = 30.0) -> None:
        """Until new volumes are served (or the start-up task failed)."""
        ready = asyncio.ensure_future(self.volumes.ready.wait())
        assert self._startup_task is not None, "start() first"
        done, _ = await asyncio.wait(
            {ready, self._startup_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            if self._startup_task in done:
                self._startup_task.result()
            raise TimeoutError(f"the driver is not ready after {timeout}s")

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._startup_task is not None:
            self._startup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._startup_task
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
    kubelet_root = _kubelet_root(args.kubelet_root)
    endpoint = args.endpoint or f"unix://{kubelet_root / PLUGIN_SOCKET}"
    socket_path(endpoint)  # refuse a malformed endpoint at start-up
    metrics_addr = _metrics_addr(args.metrics_addr)
    if args.max_call_recv_msg_size <= 0:
        raise ValueError(
            f"--max-call-recv-msg-size must be a positive number of bytes, "
            f"not {args.max_call_recv_msg_size}"
        )
    return DriverConfig(
        endpoint=endpoint,
        node_id=args.node_id,
        provider_dirs=provider_dirs,
        rotation_interval=parse_rotation_interval(
            args.rotation_poll_interval, sandbox=args.sandbox
        ),
        mounter=args.mounter,
        kubeconfig=args.kubeconfig,
        metrics_addr=metrics_addr,
        kubelet_root=kubelet_root,
        max_call_recv_msg_size=args.max_call_recv_msg_size,
    )


def _metrics_addr(text: str | None) -> str | None:
    if not text:
        return None
    _, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-addr must be HOST:PORT or :PORT, not {text!r}")
    return text


def _kubelet_root(text: str) -> Path:
    if "\0" in text or not text.startswith("/"):
        raise ValueError(f"--kubelet-root must be an absolute path, not {text!r}")
    return Path("/" + os.path.normpath(text).lstrip("/"))


def check_kubelet_root(config: DriverConfig) -> None:
    """ValueError unless the kubelet root is a directory here: with a wrong root, or the
    kubelet's directories not mounted into the container, the driver would mount into its own
    filesystem and report success while the pod sees an empty volume."""
    if not config.kubelet_root.is_dir():
        raise ValueError(
            f"kubelet root {config.kubelet_root} does not exist in the driver's filesystem: "
            "set --kubelet-root to the kubelet's --root-dir (deploy/config.env kubelet_root_dir; "
            "CCE /mnt/paas/kubernetes/kubelet, elsewhere usually /var/lib/kubelet) and mount "
            "its pods directory into the driver container at the same path"
        )


async def run(config: DriverConfig) -> None:
    driver = Driver(config)
    try:
        try:
            await driver.start()
        except (OSError, ValueError) as error:
            raise StartupError(
                f"cannot serve CSI on {driver.socket}: {os_reason(error)}; check --endpoint (the "
                f"kubelet's plugin directory must be mounted into the container)"
            ) from None
        if config.metrics_addr:
            start_metrics(config.metrics_addr, driver.metrics.registry)
        print(f"dew-csi driver listening on {driver.socket}", flush=True)
        await until_terminated()
    finally:
        await driver.stop()


def run_from_args(args: argparse.Namespace) -> int:
    setup_logging(args.log_format)
    try:
        config = config_from_args(args)
        make_mounter(config.mounter)
        check_kubelet_root(config)
    except ValueError as error:
        print(f"dew-csi driver: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run(config))
    except StartupError as error:
        print(f"dew-csi driver: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
