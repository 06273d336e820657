"""The sandbox's kubelet: one node that runs pods only as far as the add-on can see.

What it does, as the real kubelet (and scheduler) would for a single node:

* registers its Node (Ready) and binds every unscheduled pod to it (a merge patch of
  `spec.nodeName`, which is what the scheduler's binding amounts to), honouring `nodeSelector`;
* for every inline CSI volume of a pod on the node, calls the driver's real CSI socket with the
  `NodePublishVolumeRequest` kubelet sends (volume id `csi-<sha256(podUID+volumeName)>`, target
  `<root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`, a mount capability with access
  mode SINGLE_NODE_WRITER, `readonly` from the volume, `volumeAttributes` plus the pod-info keys
  when the CSIDriver asks for them, `secrets` from `nodePublishSecretRef`);
* retries a failed mount with exponential backoff, recording kubelet's `FailedMount` Warning
  (`MountVolume.SetUp failed for volume "v" : rpc error: code = C desc = ...`) and keeping the pod
  `ContainerCreating`;
* resolves each container's environment (`env`, `envFrom`, secret and config map keys, the
  downward API), waiting with `CreateContainerConfigError` while a Secret or key is missing, then
  marks the pod Running and writes the resolved environment to
  `<root>/pods/<uid>/containers/<name>/env.json` (mode 0600: it holds secret values) for
  `dew-csi sandbox env`;
* on deletion, unpublishes every volume (retrying), removes the pod directory and finalises the
  pod (DELETE with grace period 0); pods removed outright, and pod directories left from an
  earlier run, are unpublished too.

No container runs: the simulator stops at what the add-on can observe. It never logs secret
values, nodePublishSecretRef contents or environment values.

The add-on's own pods are the exception (`containers.py`): pods the sandbox lists in its
container registry (`<root>/containers.json`) stand for its real driver and provider processes.
For them the simulator mounts nothing and resolves nothing: it reports the process, Running
since the process started while it lives and, once it is gone, its container terminated (reason
`ContainerStatusUnknown`, exit code 137: the simulator is not the process's parent and cannot
learn its exit status; nothing restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import grpc

from dew_csi import kube, volume_context
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.driver.mounter import read_mountinfo
from dew_csi.durations import parse_duration
from dew_csi.grpc_socket import socket_path
from dew_csi.logs import fields, setup_logging
from dew_csi.sandbox import containers

log = logging.getLogger(__name__)

KubeObject = kube.KubeObject

CSI_DRIVER: Final = kube.Resource(
    "storage.k8s.io", "v1", "CSIDriver", "csidrivers", namespaced=False
)
DEFAULT_NODE_NAME: Final = "sandbox-node"
# The version the API emulator reports, so `kubectl get nodes` agrees with `kubectl version`.
KUBELET_VERSION: Final = "v1.31.9"
CSI_PLUGIN_DIR: Final = "kubernetes.io~csi"
VOLUME_DATA_FILE: Final = "vol_data.json"
ENV_FILE: Final = "env.json"
NODE_IP: Final = "10.0.0.1"
POD_NETWORK: Final = ipaddress.ip_network("10.0.0.0/24")
# kubelet gives a CSI NodePublishVolume call two minutes (csiTimeout).
PUBLISH_TIMEOUT_SECONDS: Final = 120.0
PLUGIN_INFO_TIMEOUT_SECONDS: Final = 5.0
DEFAULT_SCHEDULER: Final = "default-scheduler"
# How often the process behind one of the add-on's pods is looked at.
SYSTEM_POD_CHECK_SECONDS: Final = 1.0


# Go's names for gRPC codes, as `rpc error: code = ...` prints them.
_GO_CODE_NAMES: Final = {grpc.StatusCode.CANCELLED: "Canceled", grpc.StatusCode.OK: "OK"}
_ENV_NAME: Final = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_FIELD_LABEL: Final = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


# --------------------------------------------------------------------------- kubelet's names


def volume_handle(pod_uid: str, volume_name: str) -> str:
    """The volume id kubelet gives an inline (ephemeral) CSI volume."""
    return "csi-" + hashlib.sha256(f"{pod_uid}{volume_name}".encode()).hexdigest()


def pod_dir(root: Path, pod_uid: str) -> Path:
    return root / "pods" / pod_uid


def volume_dir(root: Path, pod_uid: str, volume_name: str) -> Path:
    return pod_dir(root, pod_uid) / "volumes" / CSI_PLUGIN_DIR / volume_name


def target_path(root: Path, pod_uid: str, volume_name: str) -> Path:
    """Where kubelet asks the driver to publish a CSI volume of a pod."""
    return volume_dir(root, pod_uid, volume_name) / "mount"


def env_file(root: Path, pod_uid: str, container: str) -> Path:
    return pod_dir(root, pod_uid) / "containers" / container / ENV_FILE


def go_code_name(code: grpc.StatusCode) -> str:
    """`INVALID_ARGUMENT` -> `InvalidArgument`, as Go's codes.Code prints."""
    if code in _GO_CODE_NAMES:
        return _GO_CODE_NAMES[code]
    return "".join(part.capitalize() for part in code.name.split("_"))


def failed_mount_message(volume: str, detail: str) -> str:
    return f'MountVolume.SetUp failed for volume "{volume}" : {detail}'


def rpc_error_text(code: grpc.StatusCode, details: str) -> str:
    return f"rpc error: code = {go_code_name(code)} desc = {details}"


def csi_volumes(pod: Mapping[str, Any]) -> list[KubeObject]:
    """The pod's inline CSI volumes, in spec order."""
    return [v for v in (pod.get("spec") or {}).get("volumes") or [] if v.get("csi")]


def read_environment(root: Path, pod_uid: str, container: str) -> list[tuple[str, str]]:
    """The environment the simulator resolved for a started container (for `sandbox env`)."""
    document = json.loads(env_file(root, pod_uid, container).read_text())
    return [(str(name), str(value)) for name, value in document["env"]]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` readable by the owner only, atomically (temp file, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --------------------------------------------------------------------------- errors


class MountError(Exception):
    """A volume could not be set up; the message is kubelet's FailedMount text."""


class ContainerConfigError(Exception):
    """A container's environment cannot be built yet (CreateContainerConfigError)."""


# --------------------------------------------------------------------------- environment


_BINARY_SUFFIXES: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL_SUFFIXES: Final = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
}


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity (`250m`, `128Mi`, `1.5`, `2G`) as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text).strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.groups()
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"not a quantity: {text!r}") from None
    if suffix in _BINARY_SUFFIXES:
        return value * _BINARY_SUFFIXES[suffix]
    if suffix in _DECIMAL_SUFFIXES:
        return value * _DECIMAL_SUFFIXES[suffix]
    raise ValueError(f"unknown quantity suffix in {text!r}")


def expand_references(text: str, defined: Mapping[str, str]) -> str:
    """kubelet's `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`, and
    anything else is left as written."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "$" and index + 1 < len(text):
            following = text[index + 1]
            if following == "$":
                out.append("$")
                index += 2
                continue
            if following == "(":
                end = text.find(")", index + 2)
                if end != -1:
                    name = text[index + 2 : end]
                    if name in defined:
                        out.append(defined[name])
                    else:
                        out.append(text[index : end + 1])
                    index = end + 1
                    continue
        out.append(char)
        index += 1
    return "".join(out)


def _decode(value: str) -> str:
    return base64.b64decode(value).decode("utf-8", "replace")


class _ObjectReader:
    """Reads Secrets and ConfigMaps of one namespace for one resolution pass, each once."""

    def __init__(self, client: kube.Kube, namespace: str) -> None:
        self._client = client
        self._namespace = namespace
        self._seen: dict[tuple[str, str], KubeObject | None] = {}

    async def get(self, resource: kube.Resource, name: str) -> KubeObject | None:
        key = (resource.plural, name)
        if key not in self._seen:
            try:
                self._seen[key] = await self._client.find(resource, name, self._namespace)
            except kube.KubeError as error:
                raise ContainerConfigError(
                    f"failed to read {resource.kind} {self._namespace}/{name}: {error.message}"
                ) from None
        return self._seen[key]

    async def data(self, resource: kube.Resource, name: str, optional: bool) -> dict[str, str]:
        """The object's data (Secret values decoded); {} for a missing optional object."""
        obj = await self.get(resource, name)
        if obj is None:
            if optional:
                return {}
            raise ContainerConfigError(f'{resource.kind.lower()} "{name}" not found')
        if resource == kube.SECRET:
            return {k: _decode(v) for k, v in (obj.get("data") or {}).items()}
        values = dict(obj.get("data") or {})
        values.update({k: _decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return {str(k): str(v) for k, v in values.items()}

    async def key(self, resource: kube.Resource, reference: Mapping[str, Any]) -> str | None:
        """One key of a Secret or ConfigMap; None when it is missing and optional."""
        name = str(reference.get("name") or "")
        key = str(reference.get("key") or "")
        optional = bool(reference.get("optional"))
        values = await self.data(resource, name, optional)
        if key in values:
            return values[key]
        if optional:
            return None
        raise ContainerConfigError(
            f"couldn't find key {key} in {resource.kind} {self._namespace}/{name}"
        )


def _field_value(pod: Mapping[str, Any], path: str) -> str:
    """The downward API's `fieldRef.fieldPath` values."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    match = _FIELD_LABEL.fullmatch(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ContainerConfigError(f"unsupported fieldPath: {path}")


def _resource_value(
    container: Mapping[str, Any], reference: Mapping[str, Any], capacity: Mapping[str, str]
) -> str:
    """The downward API's `resourceFieldRef`: a limit (the node's capacity when unset) or a
    request (0 when unset), divided by the divisor and rounded up, as kubelet does."""
    resource = str(reference.get("resource") or "")
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    if kind not in ("limits", "requests") or not name:
        raise ContainerConfigError(f"unsupported resource: {resource}")
    declared = (resources.get(kind) or {}).get(name)
    if declared is None and kind == "requests":
        declared = (resources.get("limits") or {}).get(name)
    if declared is None:
        declared = capacity.get(name, "0") if kind == "limits" else "0"
    try:
        amount = parse_quantity(str(declared))
        divisor = parse_quantity(str(reference.get("divisor") or "1"))
    except ValueError as error:
        raise ContainerConfigError(str(error)) from None
    if divisor <= 0:
        raise ContainerConfigError(f"invalid divisor for {resource}")
    return str(math.ceil(amount / divisor))


async def resolve_environment(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    objects: _ObjectReader,
    capacity: Mapping[str, str],
) -> list[tuple[str, str]]:
    """A container's environment as kubelet builds it: `envFrom` sources in order, then `env`
    (later names override earlier ones); `$(VAR)` in plain values refers to earlier names."""
    resolved: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        if source.get("secretRef"):
            reference, resource = source["secretRef"], kube.SECRET
        elif source.get("configMapRef"):
            reference, resource = source["configMapRef"], kube.CONFIG_MAP
        else:
            continue
        values = await objects.data(
            resource, str(reference.get("name") or ""), bool(reference.get("optional"))
        )
        for key, text in values.items():
            if _ENV_NAME.fullmatch(prefix + key):  # invalid names are skipped, as kubelet does
                resolved[prefix + key] = text
    for entry in container.get("env") or []:
        name = str(entry.get("name") or "")
        source = entry.get("valueFrom")
        if not source:
            resolved[name] = expand_references(str(entry.get("value") or ""), resolved)
            continue
        value: str | None
        if source.get("secretKeyRef"):
            value = await objects.key(kube.SECRET, source["secretKeyRef"])
        elif source.get("configMapKeyRef"):
            value = await objects.key(kube.CONFIG_MAP, source["configMapKeyRef"])
        elif source.get("fieldRef"):
            value = _field_value(pod, str(source["fieldRef"].get("fieldPath") or ""))
        elif source.get("resourceFieldRef"):
            value = _resource_value(container, source["resourceFieldRef"], capacity)
        else:
            raise ContainerConfigError(f"env {name}: valueFrom names no source")
        if value is not None:
            resolved[name] = value
    return list(resolved.items())


# --------------------------------------------------------------------------- status


def _condition(
    kind: str,
    status: bool,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
    reason: str | None = None,
    message: str | None = None,
) -> KubeObject:
    """A pod condition; its lastTransitionTime only moves when its status does."""
    text = "True" if status else "False"
    old = previous.get(kind) or {}
    condition: KubeObject = {
        "type": kind,
        "status": text,
        "lastProbeTime": None,
        "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == text else now,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _container_id(pod_uid: str, name: str) -> str:
    return "sandbox://" + hashlib.sha256(f"{pod_uid}/{name}".encode()).hexdigest()


def _container_names(pod: Mapping[str, Any], key: str = "containers") -> list[str]:
    return [str(c.get("name")) for c in (pod.get("spec") or {}).get(key) or []]


# --------------------------------------------------------------------------- the simulator


@dataclass(frozen=True)
class KubeletConfig:
    node_name: str
    csi_endpoint: str
    root: Path
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    publish_timeout: float = PUBLISH_TIMEOUT_SECONDS
    node_ip: str = NODE_IP


@dataclass(eq=False)
class _PodWorker:
    """One pod's life on this node. `published` maps volume names to their target paths."""

    uid: str
    namespace: str
    name: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    published: dict[str, Path] = field(default_factory=dict)
    running: bool = False
    attempts: int = 0
    task: asyncio.Task[None] | None = None


class _PodIps:
    """Pod addresses from 10.0.0.0/24 (10.0.0.1 is the node)."""

    def __init__(self, node_ip: str) -> None:
        self._taken: dict[str, str] = {}
        self._node_ip = node_ip

    def claim(self, uid: str, ip: str) -> None:
        self._taken[uid] = ip

    def address(self, uid: str) -> str:
        if uid not in self._taken:
            used = set(self._taken.values()) | {self._node_ip}
            free = next((str(h) for h in POD_NETWORK.hosts() if str(h) not in used), None)
            if free is None:
                raise ContainerConfigError("the sandbox node has no pod IP address left")
            self._taken[uid] = free
        return self._taken[uid]

    def release(self, uid: str) -> None:
        self._taken.pop(uid, None)


class KubeletSimulator:
    """Use as `async with KubeletSimulator(client, config): ...` or start()/stop()."""

    def __init__(self, client: kube.Kube, config: KubeletConfig) -> None:
        self._kube = client
        self.config = config
        self.root = config.root.absolute()
        self._pods = kube.WatchCache(client, kube.POD)
        self._workers: dict[str, _PodWorker] = {}
        # Pods this kubelet finished with: their last events must not start a new worker.
        self._finished: set[str] = set()
        self._ips = _PodIps(config.node_ip)
        self._channel: grpc.aio.Channel | None = None
        self._node: csi_pb2_grpc.NodeAsyncStub | None = None
        self._identity: csi_pb2_grpc.IdentityAsyncStub | None = None
        self._driver_name: str | None = None
        self._capacity = _node_capacity()
        self._stopping = False
        self._containers = containers.RegistryFile(self.root / containers.REGISTRY_FILE)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._channel = grpc.aio.insecure_channel(f"unix://{socket_path(self.config.csi_endpoint)}")
        self._node = csi_pb2_grpc.NodeStub(self._channel)
        self._identity = csi_pb2_grpc.IdentityStub(self._channel)
        await self._register_node()
        self._pods.add_handler(self._on_pod_event)
        # The first list's ADDED events start a worker for every pod already here.
        await self._pods.start()
        self._clean_orphaned_pod_dirs()

    async def stop(self) -> None:
        """Stop watching and working; volumes stay published, as when a kubelet restarts."""
        self._stopping = True
        await self._pods.stop()
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def __aenter__(self) -> KubeletSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ node

    async def _register_node(self) -> None:
        name = self.config.node_name
        node: KubeObject = {
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": _arch(),
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": _arch(),
                },
            },
            "spec": {},
        }
        with contextlib.suppress(kube.AlreadyExists):
            await self._kube.create(kube.NODE, node)
        await self._kube.replace_status(
            kube.NODE, {"metadata": {"name": name}, "status": self._node_status()}
        )
        log.info("node registered", extra=fields(node=name))

    def _node_status(self) -> KubeObject:
        now = _now()
        ready_condition = {
            "type": "Ready",
            "status": "True",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
        }
        pressure = [
            {
                "type": kind,
                "status": "False",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            }
            for kind, reason, message in (
                ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory"),
                ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            )
        ]
        return {
            "capacity": dict(self._capacity),
            "allocatable": dict(self._capacity),
            "conditions": [*pressure, ready_condition],
            "addresses": [
                {"type": "InternalIP", "address": self.config.node_ip},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "dew-csi sandbox",
                "containerRuntimeVersion": "sandbox://0.1.0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }

    # ------------------------------------------------------------------ pods

    async def _on_pod_event(self, event: kube.CacheEvent) -> None:
        pod = event.obj
        uid = str(pod["metadata"].get("uid") or "")
        worker = self._workers.get(uid)
        if worker is not None:
            worker.wake.set()
            return
        if event.type == kube.EventType.DELETED:
            self._finished.discard(uid)
            return
        if self._stopping or uid in self._finished:
            return
        if self._wants(pod):
            self._start_worker(pod)

    def _wants(self, pod: Mapping[str, Any]) -> bool:
        """Pods on this node, and unscheduled pods the default scheduler should place here."""
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if node:
            return bool(node == self.config.node_name)
        return bool(spec.get("schedulerName", DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER)

    def _start_worker(self, pod: Mapping[str, Any]) -> _PodWorker:
        meta = pod.get("metadata") or {}
        worker = _PodWorker(str(meta.get("uid")), str(meta.get("namespace")), str(meta.get("name")))
        status = pod.get("status") or {}
        if status.get("podIP") and (pod.get("spec") or {}).get("nodeName"):
            self._ips.claim(worker.uid, str(status["podIP"]))  # keep a running pod's address
        if status.get("phase") == "Running":
            # Started before this kubelet (re)started: containers keep running as they are.
            worker.running = all(
                env_file(self.root, worker.uid, name).exists() for name in _container_names(pod)
            )
        self._workers[worker.uid] = worker
        worker.task = asyncio.create_task(self._run(worker), name=f"pod-{worker.name}")
        return worker

    def _clean_orphaned_pod_dirs(self) -> None:
        """Pod directories of pods the API no longer has on this node (gone while we were
        down): unpublish their volumes and remove them."""
        pods_root = self.root / "pods"
        if not pods_root.is_dir():
            return
        for entry in sorted(pods_root.iterdir()):
            if entry.is_dir() and entry.name not in self._workers:
                worker = _PodWorker(entry.name, "", "")
                self._workers[worker.uid] = worker
                worker.task = asyncio.create_task(self._run(worker), name=f"orphan-{entry.name}")

    def _current(self, worker: _PodWorker) -> KubeObject | None:
        if not worker.name:
            return None
        pod = self._pods.get(worker.name, worker.namespace)
        if pod is None or pod["metadata"].get("uid") != worker.uid:
            return None
        return pod

    async def _run(self, worker: _PodWorker) -> None:
        try:
            while True:
                worker.wake.clear()
                pod = self._current(worker)
                if pod is None or pod["metadata"].get("deletionTimestamp"):
                    await self._tear_down(worker, pod)
                    return
                node = (pod.get("spec") or {}).get("nodeName")
                if node and node != self.config.node_name:
                    return
                try:
                    delay = await (self._sync(worker, pod) if node else self._schedule(pod))
                except kube.KubeError as error:
                    log.warning(
                        "pod sync failed", extra=fields(pod=_pod_key(pod), error=error.message)
                    )
                    delay = self._next_delay(worker)
                except (OSError, grpc.aio.AioRpcError, ValueError):
                    log.exception("pod sync failed", extra=fields(pod=_pod_key(pod)))
                    delay = self._next_delay(worker)
                if delay is None:
                    await worker.wake.wait()
                else:
                    await self._back_off(worker, delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "pod worker failed", extra=fields(pod=f"{worker.namespace}/{worker.name}")
            )
        finally:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
                self._finished.add(worker.uid)

    def _next_delay(self, worker: _PodWorker) -> float:
        growth = 2.0 ** min(worker.attempts, 30)  # bounded: a long outage must not overflow
        delay = min(self.config.backoff_max, self.config.backoff_initial * growth)
        worker.attempts += 1
        return delay

    async def _back_off(self, worker: _PodWorker, delay: float) -> None:
        """Sleep `delay`, but return at once when the pod is deleted or gone (other changes,
        our own status writes included, do not cut a backoff short)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (remaining := deadline - loop.time()) > 0:
            worker.wake.clear()
            pod = self._current(worker)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.wake.wait(), remaining)

    # ------------------------------------------------------------------ scheduling

    async def _schedule(self, pod: KubeObject) -> float | None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        selector = spec.get("nodeSelector") or {}
        labels = {
            "kubernetes.io/hostname": self.config.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
        }
        if any(labels.get(k) != v for k, v in selector.items()):
            status: KubeObject = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": _now(),
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node "
                        "affinity/selector.",
                    }
                ],
            }
            if _without_times((pod.get("status") or {}).get("conditions")) != _without_times(
                status["conditions"]
            ):
                await self._write_status(pod, status)
            return None
        await self._kube.patch(
            kube.POD, meta["name"], {"spec": {"nodeName": self.config.node_name}}, meta["namespace"]
        )
        await self._event(
            pod,
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.config.node_name}",
            component=DEFAULT_SCHEDULER,
        )
        log.info("pod bound", extra=fields(pod=_pod_key(pod), node=self.config.node_name))
        return None

    # ------------------------------------------------------------------ running a pod

    async def _sync(self, worker: _PodWorker, pod: KubeObject) -> float | None:
        """Mount, resolve, start; the delay before the next attempt, or None when settled."""
        meta = pod["metadata"]
        system = self._containers.current().find(str(meta["namespace"]), str(meta["name"]))
        if system is not None:
            return await self._sync_system_pod(worker, pod, system)
        for volume in csi_volumes(pod):
            name = str(volume["name"])
            if name in worker.published:
                continue
            try:
                worker.published[name] = await self._publish(pod, volume)
            except MountError as error:
                log.warning(
                    "MountVolume.SetUp failed", extra=fields(pod=_pod_key(pod), volume=name)
                )
                await self._event(pod, "FailedMount", str(error), warning=True)
                if not worker.running:
                    await self._write_status(
                        pod, self._waiting_status(pod, "ContainerCreating", None, mounted=False)
                    )
                return self._next_delay(worker)
        if worker.running:
            worker.attempts = 0
            return None
        try:
            environments = await self._resolve(pod)
        except ContainerConfigError as error:
            await self._event(pod, "Failed", f"Error: {error}", warning=True)
            await self._write_status(
                pod,
                self._waiting_status(pod, "CreateContainerConfigError", str(error), mounted=True),
            )
            return self._next_delay(worker)
        for container, environment in environments.items():
            document = {"container": container, "env": [list(pair) for pair in environment]}
            _write_private(
                env_file(self.root, worker.uid, container), json.dumps(document).encode()
            )
        was_running = (pod.get("status") or {}).get("phase") == "Running"
        if not was_running:
            # Created and Started come before the pod reports ready, as with a real kubelet.
            await self._container_events(pod)
        await self._write_status(pod, self._running_status(pod))
        if not was_running:
            log.info("pod running", extra=fields(pod=_pod_key(pod)))
        worker.running = True
        worker.attempts = 0
        return None

    async def _sync_system_pod(
        self, worker: _PodWorker, pod: KubeObject, system: containers.SystemPod
    ) -> float | None:
        """One of the add-on's pods: report its process (see the module docstring)."""
        alive = system.alive()
        was_ready = _is_ready(pod)
        status = self._system_status(pod, system, alive)
        await self._write_status(pod, status)
        if was_ready != _is_ready({"status": status}):
            log.log(
                logging.INFO if alive else logging.WARNING,
                "add-on pod running" if alive else "add-on process is gone",
                extra=fields(pod=_pod_key(pod), pid=system.pid, component=system.component),
            )
        worker.running = True
        # While the process lives, look again in a second; once gone, it stays gone.
        return SYSTEM_POD_CHECK_SECONDS if alive else None

    def _system_status(
        self, pod: KubeObject, system: containers.SystemPod, alive: bool
    ) -> KubeObject:
        now = _now()
        uid = str(pod["metadata"]["uid"])
        status = pod.get("status") or {}
        previous = {c.get("type"): c for c in status.get("conditions") or []}
        old = {s.get("name"): s for s in status.get("containerStatuses") or []}
        statuses: list[KubeObject] = []
        unready: list[str] = []
        for container in (pod.get("spec") or {}).get("containers") or []:
            name, image = str(container["name"]), str(container.get("image") or "")
            entry: KubeObject = {
                "name": name,
                "image": image,
                "imageID": f"sandbox://{image}",
                "containerID": _container_id(uid, name),
                "restartCount": 0,
                "lastState": {},
            }
            source = system.containers.get(name)
            if source is not None and source.process and not alive:
                earlier = ((old.get(name) or {}).get("state") or {}).get("terminated") or {}
                entry.update(
                    ready=False,
                    started=False,
                    state={
                        "terminated": {
                            "exitCode": containers.UNKNOWN_EXIT_CODE,
                            "reason": containers.UNKNOWN_EXIT_REASON,
                            "message": f"the sandbox's {system.component} process (pid "
                            f"{system.pid}) has exited; the kubelet simulator is not its parent "
                            "and cannot learn its exit status, and does not restart it",
                            "startedAt": system.started_at,
                            "finishedAt": earlier.get("finishedAt") or now,
                            "containerID": entry["containerID"],
                        }
                    },
                )
                unready.append(name)
            else:
                entry.update(
                    ready=True, started=True, state={"running": {"startedAt": system.started_at}}
                )
            statuses.append(entry)
        message = f"containers with unready status: [{' '.join(unready)}]"
        ready = not unready
        reason = None if ready else "ContainersNotReady"
        ip = self._ips.address(uid)
        return {
            "phase": "Running",
            "conditions": [
                _condition("PodReadyToStartContainers", True, previous, now),
                _condition("Initialized", True, previous, now),
                _condition("Ready", ready, previous, now, reason, None if ready else message),
                _condition(
                    "ContainersReady", ready, previous, now, reason, None if ready else message
                ),
                _condition("PodScheduled", True, previous, now),
            ],
            "hostIP": self.config.node_ip,
            "hostIPs": [{"ip": self.config.node_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": system.started_at,
            "containerStatuses": statuses,
        }

    async def _resolve(self, pod: KubeObject) -> dict[str, list[tuple[str, str]]]:
        uid = str(pod["metadata"]["uid"])
        # The downward API needs the addresses the running status will carry.
        resolving = dict(pod)
        resolving["status"] = {
            **(pod.get("status") or {}),
            "podIP": self._ips.address(uid),
            "podIPs": [{"ip": self._ips.address(uid)}],
            "hostIP": self.config.node_ip,
            "hostIPs": [{"ip": self.config.node_ip}],
        }
        objects = _ObjectReader(self._kube, str(pod["metadata"]["namespace"]))
        spec = pod.get("spec") or {}
        environments: dict[str, list[tuple[str, str]]] = {}
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            environments[str(container["name"])] = await resolve_environment(
                resolving, container, objects, self._capacity
            )
        return environments

    async def _container_events(self, pod: KubeObject) -> None:
        spec = pod.get("spec") or {}
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            name, image = container["name"], container.get("image", "")
            await self._event(
                pod, "Pulled", f'Container image "{image}" already present on machine'
            )
            await self._event(pod, "Created", f"Created container {name}")
            await self._event(pod, "Started", f"Started container {name}")

    # ------------------------------------------------------------------ volumes

    async def _publish(self, pod: KubeObject, volume: Mapping[str, Any]) -> Path:
        meta = pod["metadata"]
        uid, namespace, volume_name = str(meta["uid"]), str(meta["namespace"]), volume["name"]
        csi = volume["csi"]
        driver = str(csi.get("driver") or "")
        target = target_path(self.root, uid, volume_name)
        if driver != await self._registered_driver():
            raise MountError(
                failed_mount_message(
                    volume_name,
                    "kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name "
                    f"{driver} not found in the list of registered CSI drivers",
                )
            )
        pod_info = await self._pod_info_on_mount(driver, volume_name)
        context = {str(k): str(v) for k, v in (csi.get("volumeAttributes") or {}).items()}
        if pod_info:
            # As kubelet's mergeMap: the pod's own info wins over any user attribute.
            context.update(volume_context.pod_info(pod))
        secrets = await self._node_publish_secrets(csi, namespace, volume_name)
        # kubelet creates the volume's directory and its vol_data.json; the driver creates the
        # target itself.
        parent = target.parent
        created_parent = not parent.exists()
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        volume_data = {
            "driverName": driver,
            "volumeHandle": volume_handle(uid, volume_name),
            "specVolID": volume_name,
            "volumeLifecycleMode": "Ephemeral",
            "podUID": uid,
        }
        (parent / VOLUME_DATA_FILE).write_text(json.dumps(volume_data))
        request = csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_handle(uid, volume_name),
            target_path=str(target),
            volume_capability=csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(fs_type=str(csi.get("fsType") or "")),
                access_mode=csi_pb2.VolumeCapability.AccessMode(
                    mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                ),
            ),
            readonly=bool(csi.get("readOnly")),
            secrets=secrets,
            volume_context=context,
        )
        assert self._node is not None, "start() first"
        try:
            await self._node.NodePublishVolume(request, timeout=self.config.publish_timeout)
        except grpc.aio.AioRpcError as error:
            if created_parent and not target.exists():
                # As kubelet's removeMountDir: a volume that never mounted leaves nothing.
                (parent / VOLUME_DATA_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    parent.rmdir()
            raise MountError(
                failed_mount_message(
                    volume_name, rpc_error_text(error.code(), error.details() or "")
                )
            ) from None
        log.info("MountVolume.SetUp succeeded", extra=fields(pod=_pod_key(pod), volume=volume_name))
        return target

    async def _registered_driver(self) -> str | None:
        """The CSI driver's name, asked once from its socket (as plugin registration does)."""
        if self._driver_name is None:
            assert self._identity is not None, "start() first"
            try:
                info = await self._identity.GetPluginInfo(
                    csi_pb2.GetPluginInfoRequest(), timeout=PLUGIN_INFO_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError:
                return None
            self._driver_name = info.name
        return self._driver_name

    async def _pod_info_on_mount(self, driver: str, volume_name: str) -> bool:
        """The CSIDriver object's podInfoOnMount; with no object, the add-on's own CSIDriver
        (podInfoOnMount: true, Ephemeral) is assumed."""
        try:
            driver_object = await self._kube.find(CSI_DRIVER, driver)
        except kube.KubeError as error:
            raise MountError(
                failed_mount_message(volume_name, f"kubernetes.io/csi: {error.message}")
            ) from None
        if driver_object is None:
            return True
        spec = driver_object.get("spec") or {}
        modes = spec.get("volumeLifecycleModes") or ["Persistent"]
        if "Ephemeral" not in modes:
            raise MountError(
                failed_mount_message(
                    volume_name,
                    "kubernetes.io/csi: mounter.SetupAt failed to check volume lifecycle mode: "
                    f'volume mode "Ephemeral" not supported by driver {driver} (only supports '
                    f"{json.dumps(modes)})",
                )
            )
        return bool(spec.get("podInfoOnMount"))

    async def _node_publish_secrets(
        self, csi: Mapping[str, Any], namespace: str, volume_name: str
    ) -> dict[str, str]:
        reference = csi.get("nodePublishSecretRef") or {}
        name = reference.get("name")
        if not name:
            return {}
        try:
            secret = await self._kube.get(kube.SECRET, str(name), namespace)
        except kube.KubeError as error:
            raise MountError(
                failed_mount_message(
                    volume_name,
                    f"fetching NodePublishSecretRef {namespace}/{name} failed: kubernetes.io/csi: "
                    f"failed to find the secret {name} in the namespace {namespace} with error: "
                    f"{error.message}",
                )
            ) from None
        return {str(k): _decode(v) for k, v in (secret.get("data") or {}).items()}

    async def _unpublish(self, uid: str, volume_name: str) -> None:
        directory = volume_dir(self.root, uid, volume_name)
        handle = volume_handle(uid, volume_name)
        with contextlib.suppress(OSError, ValueError, KeyError):
            handle = json.loads((directory / VOLUME_DATA_FILE).read_text())["volumeHandle"]
        assert self._node is not None, "start() first"
        await self._node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(
                volume_id=handle, target_path=str(directory / "mount")
            ),
            timeout=self.config.publish_timeout,
        )
        (directory / VOLUME_DATA_FILE).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()

    # ------------------------------------------------------------------ deletion

    async def _tear_down(self, worker: _PodWorker, pod: KubeObject | None) -> None:
        """Stop the containers, unpublish every volume (retrying), remove the pod directory,
        and finalise a gracefully deleted pod."""
        directory = pod_dir(self.root, worker.uid)
        shutil.rmtree(directory / "containers", ignore_errors=True)
        volumes = set(worker.published)
        csi_root = directory / "volumes" / CSI_PLUGIN_DIR
        if csi_root.is_dir():
            volumes.update(entry.name for entry in csi_root.iterdir() if entry.is_dir())
        for volume_name in sorted(volumes):
            while True:
                try:
                    await self._unpublish(worker.uid, volume_name)
                    break
                except grpc.aio.AioRpcError as error:
                    delay = self._next_delay(worker)
                    log.warning(
                        "UnmountVolume.TearDown failed",
                        extra=fields(
                            pod=f"{worker.namespace}/{worker.name}",
                            volume=volume_name,
                            error=rpc_error_text(error.code(), error.details() or ""),
                            retry_in=round(delay, 2),
                        ),
                    )
                    await asyncio.sleep(delay)
            worker.published.pop(volume_name, None)
            log.info(
                "UnmountVolume.TearDown succeeded",
                extra=fields(pod=f"{worker.namespace}/{worker.name}", volume=volume_name),
            )
        await self._remove_pod_dir(directory)
        self._ips.release(worker.uid)
        while pod is not None:
            # Still the same pod (the cache said so a moment ago): finalise its deletion.
            try:
                await self._kube.delete(kube.POD, worker.name, worker.namespace, grace_period=0)
            except kube.KubeError as error:
                log.warning(
                    "cannot finalise the pod's deletion",
                    extra=fields(pod=f"{worker.namespace}/{worker.name}", error=error.message),
                )
                await asyncio.sleep(self._next_delay(worker))
                pod = self._current(worker)
                continue
            log.info("pod deleted", extra=fields(pod=f"{worker.namespace}/{worker.name}"))
            break

    async def _remove_pod_dir(self, directory: Path) -> None:
        """Remove the pod's directory, never while something is mounted below it (kubelet
        refuses too: removing files through a live mount would delete a volume's contents)."""
        while True:
            prefix = str(directory) + "/"
            try:
                mounted = [
                    m.mount_point for m in read_mountinfo() if m.mount_point.startswith(prefix)
                ]
            except (OSError, ValueError):
                mounted = []
            if not mounted:
                break
            log.warning("pod directory still has mounts", extra=fields(mounts=mounted))
            await asyncio.sleep(self.config.backoff_max)
        shutil.rmtree(directory, ignore_errors=True)

    # ------------------------------------------------------------------ API writes

    def _waiting_status(
        self, pod: KubeObject, reason: str, message: str | None, *, mounted: bool
    ) -> KubeObject:
        now = _now()
        status = pod.get("status") or {}
        previous = {c.get("type"): c for c in status.get("conditions") or []}
        names = _container_names(pod)
        unready = f"containers with unready status: [{' '.join(names)}]"
        waiting: KubeObject = {"reason": reason}
        if message:
            waiting["message"] = message
        init_names = _container_names(pod, "initContainers")
        return {
            "phase": "Pending",
            "conditions": [
                _condition("PodReadyToStartContainers", mounted, previous, now),
                _condition(
                    "Initialized",
                    not init_names,
                    previous,
                    now,
                    None if not init_names else "ContainersNotInitialized",
                    None
                    if not init_names
                    else f"containers with incomplete status: [{' '.join(init_names)}]",
                ),
                _condition("Ready", False, previous, now, "ContainersNotReady", unready),
                _condition("ContainersReady", False, previous, now, "ContainersNotReady", unready),
                _condition("PodScheduled", True, previous, now),
            ],
            "hostIP": self.config.node_ip,
            "hostIPs": [{"ip": self.config.node_ip}],
            "startTime": status.get("startTime") or now,
            **(
                {"initContainerStatuses": self._statuses(pod, "initContainers", waiting)}
                if init_names
                else {}
            ),
            "containerStatuses": self._statuses(pod, "containers", waiting),
        }

    def _running_status(self, pod: KubeObject) -> KubeObject:
        now = _now()
        uid = str(pod["metadata"]["uid"])
        status = pod.get("status") or {}
        previous = {c.get("type"): c for c in status.get("conditions") or []}
        ip = self._ips.address(uid)
        running: KubeObject = {
            "phase": "Running",
            "conditions": [
                _condition(kind, True, previous, now)
                for kind in (
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                )
            ],
            "hostIP": self.config.node_ip,
            "hostIPs": [{"ip": self.config.node_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": status.get("startTime") or now,
            "containerStatuses": self._statuses(pod, "containers", None),
        }
        if _container_names(pod, "initContainers"):
            running["initContainerStatuses"] = self._statuses(pod, "initContainers", None)
        return running

    def _statuses(self, pod: KubeObject, key: str, waiting: KubeObject | None) -> list[KubeObject]:
        """Container statuses: waiting with `waiting`'s reason, or started (init containers
        completed) keeping the start time an earlier status recorded."""
        uid = str(pod["metadata"]["uid"])
        status_key = "initContainerStatuses" if key == "initContainers" else "containerStatuses"
        old = {s.get("name"): s for s in (pod.get("status") or {}).get(status_key) or []}
        now = _now()
        statuses: list[KubeObject] = []
        for container in (pod.get("spec") or {}).get(key) or []:
            name, image = str(container["name"]), str(container.get("image") or "")
            entry: KubeObject = {
                "name": name,
                "image": image,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 0,
                "lastState": {},
            }
            if waiting is not None:
                entry["state"] = {"waiting": dict(waiting)}
                statuses.append(entry)
                continue
            earlier = (old.get(name) or {}).get("state") or {}
            started_at = (earlier.get("running") or earlier.get("terminated") or {}).get(
                "startedAt"
            ) or now
            entry.update(
                imageID=f"sandbox://{image}",
                containerID=_container_id(uid, name),
            )
            if key == "initContainers":
                finished = (earlier.get("terminated") or {}).get("finishedAt") or now
                entry["state"] = {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": started_at,
                        "finishedAt": finished,
                        "containerID": entry["containerID"],
                    }
                }
            else:
                entry.update(ready=True, started=True, state={"running": {"startedAt": started_at}})
            statuses.append(entry)
        return statuses

    async def _write_status(self, pod: KubeObject, status: KubeObject) -> None:
        current = pod.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return  # nothing new: spare the API (and the watchers) a write
        meta = pod["metadata"]
        await self._kube.replace_status(
            kube.POD,
            {"metadata": {"name": meta["name"], "namespace": meta["namespace"]}, "status": status},
        )

    async def _event(
        self,
        pod: KubeObject,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        component: str = "kubelet",
    ) -> None:
        """Record an Event; kube's recorder aggregates a repeat of the same one into its count,
        as kubelet's does (`kubectl describe` shows "x3 over 10s")."""
        meta = pod["metadata"]
        try:
            await self._kube.record_event(
                kube.involved_object(kube.POD, meta),
                reason=reason,
                message=message,
                warning=warning,
                component=component,
                host=self.config.node_name if component == "kubelet" else None,
            )
        except kube.KubeError as error:
            log.warning(
                "could not record an event", extra=fields(reason=reason, error=error.message)
            )


# --------------------------------------------------------------------------- helpers


def _is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _without_times(conditions: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in c.items() if k not in ("lastTransitionTime", "lastProbeTime")}
        for c in conditions or []
    ]


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine or "amd64")


def _node_capacity() -> dict[str, str]:
    memory_kib = 8 * 1024 * 1024
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib}Ki",
        "pods": "110",
        "ephemeral-storage": "20Gi",
    }


# --------------------------------------------------------------------------- command


async def _serve(config: KubeletConfig, kubeconfig: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with kube.Kube.from_options(kubeconfig) as client:
        simulator = KubeletSimulator(client, config)
        await simulator.start()
        print(f"dew-csi kubelet ready: node {config.node_name}, root {simulator.root}", flush=True)
        try:
            await stop.wait()
        finally:
            await simulator.stop()


def run_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox kubelet`: run the simulator until SIGTERM or SIGINT."""
    setup_logging(args.log_format)
    try:
        socket_path(args.csi_endpoint)
        config = KubeletConfig(
            node_name=args.node_name,
            csi_endpoint=args.csi_endpoint,
            root=Path(args.root),
            backoff_initial=parse_duration(args.backoff_initial),
            backoff_max=parse_duration(args.backoff_max),
        )
    except ValueError as error:
        print(f"dew-csi sandbox kubelet: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(_serve(config, args.kubeconfig))
    except kube.KubeError as error:
        print(
            f"dew-csi sandbox kubelet: cannot start: {error.message}", file=sys.stderr, flush=True
        )
        return 1
    return 0
