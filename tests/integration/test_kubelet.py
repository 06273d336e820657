"""The kubelet simulator against the real API emulator (over HTTP) and a real gRPC CSI server on a
unix socket (a recording test driver that fails on demand): binding, the exact
NodePublishVolumeRequest kubelet sends, FailedMount events and backoff, CreateContainerConfigError
until the Secret exists, unpublish and finalisation on delete, and recovery after a restart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from dew_csi import DRIVER_NAME, kube
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.sandbox import containers
from dew_csi.sandbox.apiserver import ApiServerThread
from dew_csi.sandbox.kubelet import (
    CSI_DRIVER,
    KubeletConfig,
    KubeletSimulator,
    expand_references,
    go_code_name,
    parse_quantity,
    read_environment,
)

NODE = "test-node"
VOLUME = "secrets-store-inline"
POD_INFO_KEYS = {
    "csi.storage.k8s.io/pod.name",
    "csi.storage.k8s.io/pod.namespace",
    "csi.storage.k8s.io/pod.uid",
    "csi.storage.k8s.io/serviceAccount.name",
    "csi.storage.k8s.io/ephemeral",
}


# --------------------------------------------------------------------------- a CSI test driver


@dataclass
class Call:
    at: float
    request: Any


@dataclass
class RecordingDriver:
    """Identity + Node on a real socket. Publish creates the target (as a driver does), and
    fails with the queued (code, message) pairs first."""

    publishes: list[Call] = field(default_factory=list)
    unpublishes: list[Call] = field(default_factory=list)
    publish_failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    unpublish_failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)

    def publishes_for(self, uid: str) -> list[csi_pb2.NodePublishVolumeRequest]:
        return [
            c.request
            for c in self.publishes
            if c.request.volume_context.get("csi.storage.k8s.io/pod.uid") == uid
            or f"/pods/{uid}/" in c.request.target_path
        ]


class _Identity(csi_pb2_grpc.IdentityServicer):
    async def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER_NAME, vendor_version="test")


class _Node(csi_pb2_grpc.NodeServicer):
    def __init__(self, record: RecordingDriver) -> None:
        self.record = record

    async def NodePublishVolume(self, request: Any, context: Any) -> Any:
        self.record.publishes.append(Call(time.monotonic(), request))
        if self.record.publish_failures:
            code, message = self.record.publish_failures.pop(0)
            await context.abort(code, message)
        _fill_target(request.target_path)
        return csi_pb2.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(self, request: Any, context: Any) -> Any:
        self.record.unpublishes.append(Call(time.monotonic(), request))
        if self.record.unpublish_failures:
            code, message = self.record.unpublish_failures.pop(0)
            await context.abort(code, message)
        _empty_target(request.target_path)
        return csi_pb2.NodeUnpublishVolumeResponse()


def _fill_target(path: str) -> None:
    target = Path(path)
    assert target.parent.is_dir(), "kubelet creates the target's parent"
    target.mkdir(exist_ok=True)  # the driver creates the target itself
    (target / "secret_test").write_text("value")


def _empty_target(path: str) -> None:
    target = Path(path)
    if target.exists():
        (target / "secret_test").unlink(missing_ok=True)
        target.rmdir()


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[tuple[RecordingDriver, str]]:
    record = RecordingDriver()
    server = grpc.aio.server()
    # The generated bases answer UNIMPLEMENTED for the RPCs a test driver does not need.
    csi_pb2_grpc.add_IdentityServicer_to_server(_Identity(), server)  # type: ignore[abstract]
    csi_pb2_grpc.add_NodeServicer_to_server(_Node(record), server)  # type: ignore[abstract]
    socket = tmp_path / "plugins" / "csi.sock"
    socket.parent.mkdir()
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    yield record, f"unix://{socket}"
    await server.stop(0)


# --------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    api: ApiServerThread
    client: kube.Kube
    driver: RecordingDriver
    endpoint: str
    root: Path
    kubelet: KubeletSimulator

    async def restart(self) -> None:
        await self.kubelet.stop()
        self.kubelet = KubeletSimulator(self.client, self.kubelet.config)
        await self.kubelet.start()


def kubelet_config(root: Path, endpoint: str) -> KubeletConfig:
    return KubeletConfig(
        node_name=NODE,
        csi_endpoint=endpoint,
        root=root,
        backoff_initial=0.05,
        backoff_max=0.4,
        publish_timeout=5.0,
    )


@pytest.fixture
async def node(
    apiserver: ApiServerThread, driver: tuple[RecordingDriver, str], tmp_path: Path
) -> AsyncIterator[Node]:
    record, endpoint = driver
    async with kube.Kube.from_url(apiserver.url) as client:
        root = tmp_path / "kubelet"
        kubelet = KubeletSimulator(client, kubelet_config(root, endpoint))
        await kubelet.start()
        cluster = Node(apiserver, client, record, endpoint, root, kubelet)
        try:
            yield cluster
        finally:
            await cluster.kubelet.stop()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s (last: {value!r})")
        await asyncio.sleep(0.02)


def csi_pod(
    name: str,
    *,
    spc: str = "spc-test",
    read_only: bool = True,
    driver: str = DRIVER_NAME,
    secret_ref: str | None = None,
    env: list[dict[str, Any]] | None = None,
    service_account: str | None = None,
    node_selector: dict[str, str] | None = None,
) -> dict[str, Any]:
    csi: dict[str, Any] = {
        "driver": driver,
        "readOnly": read_only,
        "volumeAttributes": {"secretProviderClass": spc},
    }
    if secret_ref:
        csi["nodePublishSecretRef"] = {"name": secret_ref}
    container: dict[str, Any] = {
        "name": "app",
        "image": "nginx:alpine",
        "volumeMounts": [{"name": VOLUME, "mountPath": "/mnt/secrets-store", "readOnly": True}],
    }
    if env:
        container["env"] = env
    spec: dict[str, Any] = {"containers": [container], "volumes": [{"name": VOLUME, "csi": csi}]}
    if service_account:
        spec["serviceAccountName"] = service_account
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec}


async def create(node: Node, pod: dict[str, Any]) -> dict[str, Any]:
    return await node.client.create(kube.POD, pod)


async def pod_status(node: Node, name: str) -> dict[str, Any]:
    pod = await node.client.find(kube.POD, name, "default")
    return (pod or {}).get("status") or {}


async def wait_running(node: Node, name: str, timeout: float = 10.0) -> dict[str, Any]:
    async def running() -> dict[str, Any] | None:
        pod = await node.client.find(kube.POD, name, "default")
        return pod if pod and (pod.get("status") or {}).get("phase") == "Running" else None

    result: dict[str, Any] = await eventually(running, timeout, f"pod {name} Running")
    return result


async def events_for(node: Node, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    items, _ = await node.client.list_objects(
        kube.EVENT, "default", fields={"involvedObject.name": name}
    )
    return [e for e in items if reason is None or e.get("reason") == reason]


async def waiting_state(node: Node, name: str) -> dict[str, Any]:
    statuses = (await pod_status(node, name)).get("containerStatuses") or [{}]
    state: dict[str, Any] = (statuses[0].get("state") or {}).get("waiting") or {}
    return state


# --------------------------------------------------------------------------- tests


async def test_registers_a_ready_node(node: Node) -> None:
    registered = await node.client.get(kube.NODE, NODE)
    ready = [c for c in registered["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    assert ready[0]["reason"] == "KubeletReady"
    assert registered["metadata"]["labels"]["kubernetes.io/hostname"] == NODE
    assert registered["status"]["nodeInfo"]["kubeletVersion"] == "v1.31.9"


async def test_binds_the_pod_and_sends_kubelets_exact_publish_request(node: Node) -> None:
    created = await create(node, csi_pod("web", service_account=None))
    uid = created["metadata"]["uid"]
    pod = await wait_running(node, "web")
    assert pod["spec"]["nodeName"] == NODE

    [request] = node.driver.publishes_for(uid)
    handle = "csi-" + hashlib.sha256(f"{uid}{VOLUME}".encode()).hexdigest()
    target = (
        node.root.absolute() / "pods" / uid / "volumes" / "kubernetes.io~csi" / VOLUME / "mount"
    )
    assert request.volume_id == handle
    assert request.target_path == str(target)
    assert request.readonly is True
    assert request.HasField("volume_capability")
    assert request.volume_capability.WhichOneof("access_type") == "mount"
    assert request.volume_capability.mount.fs_type == ""
    assert list(request.volume_capability.mount.mount_flags) == []
    assert (
        request.volume_capability.access_mode.mode
        == csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    )
    assert dict(request.volume_context) == {
        "secretProviderClass": "spc-test",
        "csi.storage.k8s.io/pod.name": "web",
        "csi.storage.k8s.io/pod.namespace": "default",
        "csi.storage.k8s.io/pod.uid": uid,
        "csi.storage.k8s.io/serviceAccount.name": "default",
        "csi.storage.k8s.io/ephemeral": "true",
    }
    assert dict(request.secrets) == {}
    assert request.staging_target_path == ""
    assert dict(request.publish_context) == {}
    volume_data = json.loads((target.parent / "vol_data.json").read_text())
    assert volume_data["volumeHandle"] == handle
    assert volume_data["driverName"] == DRIVER_NAME

    status = pod["status"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    [container] = status["containerStatuses"]
    assert container["ready"] is True
    assert container["started"] is True
    assert container["restartCount"] == 0
    assert "startedAt" in container["state"]["running"]
    assert status["podIP"].startswith("10.0.0.")
    assert status["hostIP"] == "10.0.0.1"
    assert status["startTime"]
    scheduled = await events_for(node, "web", "Scheduled")
    assert scheduled[0]["message"] == f"Successfully assigned default/web to {NODE}"
    assert scheduled[0]["source"]["component"] == "default-scheduler"
    started = await events_for(node, "web", "Started")
    assert started[0]["message"] == "Started container app"


async def test_each_pod_gets_its_own_address(node: Node) -> None:
    await create(node, csi_pod("a"))
    await create(node, csi_pod("b"))
    first, second = await wait_running(node, "a"), await wait_running(node, "b")
    assert first["status"]["podIP"] != second["status"]["podIP"]


async def test_node_publish_secret_ref_and_read_write_volume(node: Node) -> None:
    await node.client.create(
        kube.SECRET,
        {
            "metadata": {"name": "csms-creds", "namespace": "default"},
            "data": {
                "ak": base64.b64encode(b"AK123").decode(),
                "sk": base64.b64encode(b"sk-value").decode(),
            },
        },
    )
    created = await create(node, csi_pod("creds", secret_ref="csms-creds", read_only=False))
    await wait_running(node, "creds")
    [request] = node.driver.publishes_for(created["metadata"]["uid"])
    assert dict(request.secrets) == {"ak": "AK123", "sk": "sk-value"}
    assert request.readonly is False


async def test_a_missing_node_publish_secret_is_a_failed_mount(node: Node) -> None:
    await create(node, csi_pod("nocreds", secret_ref="absent"))

    async def failed() -> list[dict[str, Any]]:
        return await events_for(node, "nocreds", "FailedMount")

    [event] = await eventually(failed, what="FailedMount")
    assert event["message"].startswith(
        f'MountVolume.SetUp failed for volume "{VOLUME}" : fetching NodePublishSecretRef '
        "default/absent failed"
    )
    assert node.driver.publishes == []  # kubelet never calls the driver without its secrets


async def test_failed_mount_is_reported_as_kubelet_does_and_retried_with_backoff(
    node: Node,
) -> None:
    message = 'SecretProviderClass "spc-test" not found in namespace "default"'
    node.driver.publish_failures = [(grpc.StatusCode.NOT_FOUND, message)] * 4
    await create(node, csi_pod("flaky"))

    pod = await wait_running(node, "flaky")
    calls = [
        c
        for c in node.driver.publishes
        if "/pods/" + pod["metadata"]["uid"] in c.request.target_path
    ]
    assert len(calls) == 5
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    # Exponential: 0.05, 0.1, 0.2, 0.4 (capped at 0.4) seconds, never sooner.
    for gap, expected in zip(gaps, (0.05, 0.1, 0.2, 0.4), strict=True):
        assert gap >= expected * 0.9, gaps
    assert gaps[0] < 0.3, gaps  # and the first retry comes quickly: the delay grows

    [event] = await events_for(node, "flaky", "FailedMount")
    assert event["type"] == "Warning"
    assert event["source"] == {"component": "kubelet", "host": NODE}
    assert event["message"] == (
        f'MountVolume.SetUp failed for volume "{VOLUME}" : '
        f"rpc error: code = NotFound desc = {message}"
    )
    assert event["count"] == 4  # the same event, aggregated, as kubelet's recorder does


async def test_a_failing_mount_keeps_the_pod_container_creating(node: Node) -> None:
    node.driver.publish_failures = [(grpc.StatusCode.PERMISSION_DENIED, "not allowed")] * 1000
    await create(node, csi_pod("stuck"))

    async def creating() -> dict[str, Any]:
        return await waiting_state(node, "stuck")

    assert await eventually(creating) == {"reason": "ContainerCreating"}
    status = await pod_status(node, "stuck")
    assert status["phase"] == "Pending"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["PodScheduled"]["status"] == "True"
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "ContainersNotReady"
    assert conditions["PodReadyToStartContainers"]["status"] == "False"
    [event] = await events_for(node, "stuck", "FailedMount")
    assert "rpc error: code = PermissionDenied desc = not allowed" in event["message"]


async def test_a_volume_of_an_unregistered_driver_fails_to_mount(node: Node) -> None:
    await create(node, csi_pod("other", driver="other.csi.example.com"))

    async def failed() -> list[dict[str, Any]]:
        return await events_for(node, "other", "FailedMount")

    [event] = await eventually(failed)
    assert event["message"] == (
        f'MountVolume.SetUp failed for volume "{VOLUME}" : kubernetes.io/csi: mounter.SetUpAt '
        "failed to get CSI client: driver name other.csi.example.com not found in the list of "
        "registered CSI drivers"
    )
    assert node.driver.publishes == []


async def test_pod_info_follows_the_csidriver_object(node: Node) -> None:
    await node.client.create(
        CSI_DRIVER,
        {
            "metadata": {"name": DRIVER_NAME},
            "spec": {"podInfoOnMount": False, "volumeLifecycleModes": ["Ephemeral"]},
        },
    )
    created = await create(node, csi_pod("noinfo"))
    await wait_running(node, "noinfo")
    [request] = node.driver.publishes_for(created["metadata"]["uid"])
    assert dict(request.volume_context) == {"secretProviderClass": "spc-test"}


async def test_environment_waits_for_the_secret_and_its_key(node: Node) -> None:
    await node.client.create(
        kube.CONFIG_MAP,
        {"metadata": {"name": "settings", "namespace": "default"}, "data": {"mode": "fast"}},
    )
    env: list[dict[str, Any]] = [
        {
            "name": "DB_USERNAME_01",
            "valueFrom": {"secretKeyRef": {"name": "my-secret-01", "key": "db_username_01"}},
        },
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {
            "name": "MISSING_OK",
            "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": True}},
        },
        {"name": "GREETING", "value": "user=$(DB_USERNAME_01) literal=$$(MODE)"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    created = await create(node, csi_pod("envy", env=env))
    uid = created["metadata"]["uid"]

    async def waiting_with(message: str) -> bool:
        state = await waiting_state(node, "envy")
        return state == {"reason": "CreateContainerConfigError", "message": message}

    await eventually(lambda: waiting_with('secret "my-secret-01" not found'))
    failed = await events_for(node, "envy", "Failed")
    assert failed[0]["message"] == 'Error: secret "my-secret-01" not found'
    assert failed[0]["type"] == "Warning"
    assert node.driver.publishes_for(uid), "volumes are mounted before the environment is built"

    secret = await node.client.create(
        kube.SECRET,
        {
            "metadata": {"name": "my-secret-01", "namespace": "default"},
            "data": {"db_username_02": base64.b64encode(b"db-user-02").decode()},
        },
    )
    await eventually(
        lambda: waiting_with("couldn't find key db_username_01 in Secret default/my-secret-01")
    )
    secret["data"]["db_username_01"] = base64.b64encode(b"db-user-01").decode()
    await node.client.replace(kube.SECRET, secret)

    await wait_running(node, "envy")
    assert read_environment(node.root.absolute(), uid, "app") == [
        ("DB_USERNAME_01", "db-user-01"),
        ("MODE", "fast"),
        ("GREETING", "user=db-user-01 literal=$(MODE)"),
        ("POD", "envy"),
    ]
    env_file = node.root / "pods" / uid / "containers" / "app" / "env.json"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


async def test_graceful_delete_unpublishes_then_finalises(node: Node) -> None:
    created = await create(node, csi_pod("doomed"))
    uid = created["metadata"]["uid"]
    await wait_running(node, "doomed")
    [published] = node.driver.publishes_for(uid)
    assert (node.root / "pods" / uid).is_dir()

    await node.client.delete(kube.POD, "doomed", "default")  # graceful: 30s by default

    async def gone() -> bool:
        return await node.client.find(kube.POD, "doomed", "default") is None

    await eventually(gone, what="pod finalised")
    [unpublished] = [c.request for c in node.driver.unpublishes if uid in c.request.target_path]
    assert unpublished.volume_id == published.volume_id
    assert unpublished.target_path == published.target_path
    assert not (node.root / "pods" / uid).exists()


async def test_unpublish_is_retried_and_the_pod_stays_terminating_until_it_succeeds(
    node: Node,
) -> None:
    created = await create(node, csi_pod("sticky"))
    uid = created["metadata"]["uid"]
    await wait_running(node, "sticky")
    node.driver.unpublish_failures = [(grpc.StatusCode.INTERNAL, "device busy")] * 3

    await node.client.delete(kube.POD, "sticky", "default")

    async def unpublish_calls() -> int:
        return len([c for c in node.driver.unpublishes if uid in c.request.target_path])

    await eventually(lambda: _at_least(unpublish_calls, 2))
    still = await node.client.find(kube.POD, "sticky", "default")
    assert still is not None
    assert still["metadata"].get("deletionTimestamp")

    async def gone() -> bool:
        return await node.client.find(kube.POD, "sticky", "default") is None

    await eventually(gone)
    assert await unpublish_calls() == 4
    assert not (node.root / "pods" / uid).exists()


async def _at_least(count: Callable[[], Awaitable[int]], wanted: int) -> bool:
    return await count() >= wanted


async def test_a_pod_removed_outright_is_unpublished(node: Node) -> None:
    created = await create(node, csi_pod("forced"))
    uid = created["metadata"]["uid"]
    await wait_running(node, "forced")

    await node.client.delete(kube.POD, "forced", "default", grace_period=0)

    async def unpublished() -> bool:
        return any(uid in c.request.target_path for c in node.driver.unpublishes)

    await eventually(unpublished)
    pod_dir = node.root / "pods" / uid
    await eventually(lambda: _async(not pod_dir.exists()))


async def _async(value: bool) -> bool:
    return value


async def test_a_pod_that_does_not_fit_the_node_stays_unscheduled(node: Node) -> None:
    await create(node, csi_pod("picky", node_selector={"disk": "ssd"}))

    async def unschedulable() -> dict[str, Any] | None:
        status = await pod_status(node, "picky")
        conditions = [c for c in status.get("conditions") or [] if c["type"] == "PodScheduled"]
        return conditions[0] if conditions else None

    condition = await eventually(unschedulable)
    assert condition["status"] == "False"
    assert condition["reason"] == "Unschedulable"
    pod = await node.client.get(kube.POD, "picky", "default")
    assert not pod["spec"].get("nodeName")
    assert node.driver.publishes == []


async def test_restart_keeps_running_pods_and_cleans_up_what_vanished_meanwhile(
    node: Node,
) -> None:
    created = await create(node, csi_pod("survivor"))
    uid = created["metadata"]["uid"]
    await wait_running(node, "survivor")
    started_before = len(await events_for(node, "survivor", "Started"))
    # A pod directory left by a pod the API no longer knows (removed while we were down).
    orphan_volume = node.root / "pods" / "orphan-uid" / "volumes" / "kubernetes.io~csi" / VOLUME
    (orphan_volume / "mount").mkdir(parents=True)

    await node.restart()

    async def orphan_cleaned() -> bool:
        return not (node.root / "pods" / "orphan-uid").exists()

    await eventually(orphan_cleaned, what="orphan directory removed")
    assert any("orphan-uid" in c.request.target_path for c in node.driver.unpublishes)
    survivor = await node.client.get(kube.POD, "survivor", "default")
    assert survivor["status"]["phase"] == "Running"
    assert len(await events_for(node, "survivor", "Started")) == started_before
    # The volume is published again (an idempotent call for a healthy mount), never unpublished.
    await eventually(lambda: _publish_count(node, uid, 2))
    assert not any(uid in c.request.target_path for c in node.driver.unpublishes)


async def _publish_count(node: Node, uid: str, wanted: int) -> bool:
    return len(node.driver.publishes_for(uid)) >= wanted


async def test_an_add_on_pod_is_reported_from_its_process(node: Node) -> None:
    """A pod in the sandbox's container registry stands for a real process: Running since the
    process started while it lives (nothing mounted, no environment resolved), its container
    terminated once the process is gone, the other containers still running."""
    process = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        ticks = containers.process_start_ticks(process.pid)
        assert ticks is not None
        started = containers.rfc3339(containers.started_at(ticks))
        log = str(node.root / "driver.log")
        entry = containers.SystemPod(
            "kube-system",
            "csi-secrets-store-b2c4d",
            "driver",
            process.pid,
            ticks,
            started,
            {
                "registrar": containers.ContainerLog(log),
                "secrets-store": containers.ContainerLog(log, process=True),
            },
        )
        (node.root / containers.REGISTRY_FILE).write_text(containers.Registry((entry,)).to_json())
        pod = csi_pod("csi-secrets-store-b2c4d")  # a CSI volume it must not publish
        pod["metadata"]["namespace"] = "kube-system"
        pod["spec"]["nodeName"] = NODE
        pod["spec"]["containers"] = [
            {"name": "registrar", "image": "registrar"},
            {"name": "secrets-store", "image": "dew-csi", "env": [{"name": "A", "value": "1"}]},
        ]
        created = await node.client.create(kube.POD, pod)

        async def reported() -> dict[str, Any] | None:
            found = await node.client.get(kube.POD, "csi-secrets-store-b2c4d", "kube-system")
            status: dict[str, Any] = found.get("status") or {}
            return status if status.get("phase") == "Running" else None

        status = await eventually(reported, what="the add-on pod Running")
        assert status["startTime"] == started
        assert [s["state"] for s in status["containerStatuses"]] == [
            {"running": {"startedAt": started}}
        ] * 2
        assert all(s["ready"] for s in status["containerStatuses"])
        assert node.driver.publishes_for(created["metadata"]["uid"]) == []
        assert not (node.root / "pods" / created["metadata"]["uid"]).exists()

        process.kill()
        await process.wait()

        async def terminated() -> dict[str, Any] | None:
            found = await node.client.get(kube.POD, "csi-secrets-store-b2c4d", "kube-system")
            statuses = {s["name"]: s for s in (found.get("status") or {})["containerStatuses"]}
            state: dict[str, Any] = statuses["secrets-store"]["state"]
            return found if "terminated" in state else None

        found = await eventually(terminated, what="the container terminated")
        statuses = {s["name"]: s for s in found["status"]["containerStatuses"]}
        ended = statuses["secrets-store"]["state"]["terminated"]
        assert ended["reason"] == "ContainerStatusUnknown"
        assert ended["exitCode"] == 137
        assert ended["startedAt"] == started
        assert f"pid {process.pid}" in ended["message"]
        assert statuses["secrets-store"]["restartCount"] == 0
        assert statuses["registrar"]["state"] == {"running": {"startedAt": started}}
        assert found["status"]["phase"] == "Running"
        ready = next(c for c in found["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"
        assert ready["message"] == "containers with unready status: [secrets-store]"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --------------------------------------------------------------------------- pure parts


def test_go_code_names() -> None:
    assert go_code_name(grpc.StatusCode.INVALID_ARGUMENT) == "InvalidArgument"
    assert go_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert go_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert go_code_name(grpc.StatusCode.UNKNOWN) == "Unknown"


def test_variable_references_expand_as_kubelet_does() -> None:
    defined = {"A": "1", "B": "two"}
    assert expand_references("$(A)-$(B)", defined) == "1-two"
    assert expand_references("$$(A)", defined) == "$(A)"
    assert expand_references("$(UNDEFINED) $(A", defined) == "$(UNDEFINED) $(A"
    assert expand_references("cost: $5", defined) == "cost: $5"


def test_quantities() -> None:
    assert parse_quantity("250m") * 1000 == 250
    assert parse_quantity("128Mi") == 128 * 2**20
    assert parse_quantity("2G") == 2 * 10**9
    with pytest.raises(ValueError, match="suffix"):
        parse_quantity("3Xi")
