"""The csi-secrets-store driver end to end: kubelet-shaped CSI calls on the driver's real socket,
the real provider on cce.sock, the CSMS and Kubernetes API emulators over HTTP.

The mounter is `dir` by default; with DEW_CSI_TEST_MOUNTER=tmpfs (tests/privileged runs this
module that way inside `unshare -m` as root) the same flows run on real tmpfs mounts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from dew_csi import kube
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.csms import CsmsClientConfig, RetryPolicy
from dew_csi.csms.emulator import CsmsEmulatorThread, FaultRule
from dew_csi.driver.app import Driver, DriverConfig
from dew_csi.driver.atomic_writer import read_current
from dew_csi.driver.mounter import is_mount_point
from dew_csi.provider.app import Provider, ProviderConfig
from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig

MOUNTER = os.environ.get("DEW_CSI_TEST_MOUNTER", "dir")
PROJECT, AK, SK = "project-d", "AK-DRIVER-TEST", "SK-DRIVER-TEST-SECRET"
SECRET_1_V1 = '{"key1":"db-user-01","key2":"db-user-02"}'
SECRET_1_V2 = '{"key1":"db-user-01-v2","key2":"db-user-02-v2"}'
SECRET_2_V1 = "secret-two-v1"
SECRET_2_V2 = "secret-two-v2"
ROTATION = 0.4  # seconds: the sandbox form of rotation_poll_interval


def spc_test(objects: str, secret_objects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"provider": "cce", "parameters": {"objects": objects}}
    if secret_objects is not None:
        spec["secretObjects"] = secret_objects
    return {"metadata": {"name": "spc-test", "namespace": "default"}, "spec": spec}


PINNED_ALIAS = """\
- objectName: "secret_1"
  objectAlias: "secret_test"
  objectVersion: "v1"
  objectType: "csms"
"""

LATEST_JMES = """\
- objectName: "secret_1"
  objectType: "csms"
  objectVersion: "latest"
  jmesPath:
    - path: key1
      objectAlias: dbusername01
    - path: key2
      objectAlias: dbusername02
"""

SYNCED = [
    {
        "secretName": "my-secret-01",
        "type": "Opaque",
        "data": [
            {"objectName": "dbusername01", "key": "db_username_01"},
            {"objectName": "dbusername02", "key": "db_username_02"},
        ],
    }
]


@dataclass
class Stack:
    root: Path
    api: ApiServerThread
    csms: CsmsEmulatorThread
    kube: kube.Kube
    provider: Provider
    driver: Driver
    node: csi_pb2_grpc.NodeStub
    identity: csi_pb2_grpc.IdentityStub
    controller: csi_pb2_grpc.ControllerStub
    channel: grpc.aio.Channel

    @property
    def csms_calls(self) -> int:
        return self.csms.emulator.calls("show_secret_version")


@pytest.fixture
def csms() -> Iterator[CsmsEmulatorThread]:
    with CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK) as thread:
        thread.emulator.set_secret_versions("secret_1", [SECRET_1_V1])
        thread.emulator.set_secret_versions("secret_2", [SECRET_2_V1, SECRET_2_V2])
        yield thread


@pytest.fixture
def api() -> Iterator[ApiServerThread]:
    with ApiServerThread() as thread:
        yield thread


def provider_config(root: Path, csms_url: str, kubeconfig: Path) -> ProviderConfig:
    return ProviderConfig(
        socket_dir=root / "providers",
        csms=CsmsClientConfig(
            endpoint=csms_url,
            project_id=PROJECT,
            retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02, deadline=1.0),
            connect_timeout=1.0,
            read_timeout=2.0,
        ),
        kubeconfig=str(kubeconfig),
        metadata_url=None,
        latest_ttl=0.0,  # every rotation reads latest afresh
    )


def driver_config(root: Path, kubeconfig: Path) -> DriverConfig:
    return DriverConfig(
        endpoint=f"unix://{root}/plugins/csi.sock",
        node_id="node-1",
        provider_dirs=(root / "providers",),
        rotation_interval=ROTATION,
        mounter=MOUNTER,
        kubeconfig=str(kubeconfig),
        provider_timeout=5.0,
        kubelet_root=root,  # kubelet's target paths are <root>/pods/<uid>/volumes/...
    )


@pytest.fixture
async def stack(
    tmp_path: Path,
    api: ApiServerThread,
    csms: CsmsEmulatorThread,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK)
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, api.url)
    client = kube.Kube.from_url(api.url)
    await install_crds(client)
    await client.create(
        kube.SERVICE_ACCOUNT,
        {
            "metadata": {
                "name": "nginx-spc-sa",
                "annotations": {"cce.io/dew-resource": '["secret_1","secret_2"]'},
            }
        },
    )
    provider = Provider(provider_config(tmp_path, csms.url, kubeconfig))
    await provider.start()
    driver = Driver(driver_config(tmp_path, kubeconfig))
    await driver.start()
    await driver.wait_ready()
    channel = grpc.aio.insecure_channel(f"unix://{driver.socket}")
    running = Stack(
        tmp_path,
        api,
        csms,
        client,
        provider,
        driver,
        csi_pb2_grpc.NodeStub(channel),
        csi_pb2_grpc.IdentityStub(channel),
        csi_pb2_grpc.ControllerStub(channel),
        channel,
    )
    try:
        yield running
    finally:
        # Tests may restart the driver or provider: stop whichever instances run now.
        await channel.close()
        await running.driver.stop()
        await running.provider.stop()
        await client.close()


async def install_crds(client: kube.Kube) -> None:
    import yaml

    for path in sorted((Path(__file__).parents[2] / "deploy" / "crds").glob("*.yaml")):
        await client.create(kube.CUSTOM_RESOURCE_DEFINITION, yaml.safe_load(path.read_text()))


@dataclass
class PodVolume:
    name: str
    uid: str
    target: Path
    request: csi_pb2.NodePublishVolumeRequest


async def create_pod(
    stack: Stack,
    name: str = "nginx-spc-1",
    spc: str = "spc-test",
    *,
    account: str = "nginx-spc-sa",
    attributes: dict[str, str] | None = None,
    secret_ref: str | None = None,
) -> PodVolume:
    """A pod running as `account` whose CSI volume has `attributes` besides its
    secretProviderClass; the publish request is what kubelet sends for it (its pod info over
    the user's attributes)."""
    user_attributes = {"secretProviderClass": spc, **(attributes or {})}
    csi: dict[str, Any] = {
        "driver": "secrets-store.csi.k8s.io",
        "readOnly": True,
        "volumeAttributes": user_attributes,
    }
    if secret_ref:
        csi["nodePublishSecretRef"] = {"name": secret_ref}
    pod = await stack.kube.create(
        kube.POD,
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": "node-1",
                "serviceAccountName": account,
                "containers": [{"name": "nginx", "image": "nginx:alpine"}],
                "volumes": [{"name": "secrets-store-inline", "csi": csi}],
            },
        },
    )
    uid = pod["metadata"]["uid"]
    target = stack.root / "pods" / uid / "volumes" / "kubernetes.io~csi" / "secrets-store-inline"
    target = target / "mount"
    target.parent.mkdir(parents=True)
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id=f"csi-{uuid.uuid4().hex}",
        target_path=str(target),
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            ),
        ),
        readonly=True,
        volume_context={
            **user_attributes,
            "csi.storage.k8s.io/pod.name": name,
            "csi.storage.k8s.io/pod.namespace": "default",
            "csi.storage.k8s.io/pod.uid": uid,
            "csi.storage.k8s.io/serviceAccount.name": account,
            "csi.storage.k8s.io/ephemeral": "true",
        },
    )
    return PodVolume(name, uid, target, request)


def visible(target: Path) -> dict[str, bytes]:
    return {path: f.contents for path, f in read_current(target).items()}


async def pod_status(stack: Stack, pod: PodVolume, spc: str = "spc-test") -> dict[str, Any]:
    return await stack.kube.get(
        kube.SECRET_PROVIDER_CLASS_POD_STATUS, f"{pod.name}-default-{spc}", "default"
    )


async def secret_data(stack: Stack, name: str) -> dict[str, str]:
    secret = await stack.kube.get(kube.SECRET, name, "default")
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


async def events_for(stack: Stack, pod: PodVolume, reason: str) -> list[dict[str, Any]]:
    events, _ = await stack.kube.list_objects(
        kube.EVENT, "default", fields={"involvedObject.name": pod.name}
    )
    return [e for e in events if e["reason"] == reason]


async def eventually(check: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except (AssertionError, KeyError, FileNotFoundError, kube.NotFound):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- CSI basics


async def test_identity_and_controller(stack: Stack) -> None:
    info = await stack.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "secrets-store.csi.k8s.io"
    assert info.vendor_version
    assert (await stack.identity.Probe(csi_pb2.ProbeRequest())).ready.value is True
    capabilities = await stack.identity.GetPluginCapabilities(
        csi_pb2.GetPluginCapabilitiesRequest()
    )
    assert capabilities.capabilities[0].service.type == (
        csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.controller.CreateVolume(csi_pb2.CreateVolumeRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    node_info = await stack.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert node_info.node_id == "node-1"


def _without(request: csi_pb2.NodePublishVolumeRequest, field: str) -> Any:
    copy = csi_pb2.NodePublishVolumeRequest()
    copy.CopyFrom(request)
    copy.ClearField(field)
    return copy


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("volume_id", "Volume ID missing"),
        ("target_path", "Target path missing"),
        ("volume_capability", "Volume capability missing"),
        ("volume_context", "Volume context missing"),
        ("readonly", "Readonly is not true"),
    ],
)
async def test_sanity_missing_fields_are_invalid_argument(
    stack: Stack, field: str, message: str
) -> None:
    pod = await create_pod(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(_without(pod.request, field))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_sanity_unpublish_validates_and_is_idempotent(stack: Stack, tmp_path: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="v"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    never_mounted = tmp_path / "pods" / "never" / "volumes" / "kubernetes.io~csi" / "v" / "mount"
    unknown = csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path=str(never_mounted))
    await stack.node.NodeUnpublishVolume(unknown)
    await stack.node.NodeUnpublishVolume(unknown)


# --------------------------------------------------------------------------- the guide's flows


async def test_publish_mounts_records_status_and_is_a_quick_no_op_when_repeated(
    stack: Stack,
) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    assert visible(pod.target) == {"secret_test": SECRET_1_V1.encode()}
    entries = os.listdir(pod.target)
    assert [e for e in entries if not e.startswith("..")] == ["secret_test"]  # what `ls` shows
    assert "..data" in entries
    assert (pod.target / "secret_test").stat().st_mode & 0o777 == 0o644
    if MOUNTER == "tmpfs":
        assert is_mount_point(pod.target)

    status = await pod_status(stack, pod)
    assert status["status"] == {
        "podName": pod.name,
        "secretProviderClassName": "spc-test",
        "mounted": True,
        "targetPath": str(pod.target),
        "objects": [{"id": "secret_test", "version": "v1"}],
    }
    assert status["metadata"]["labels"] == {"internal.secrets-store.csi.k8s.io/node-name": "node-1"}
    assert status["metadata"]["ownerReferences"][0]["uid"] == pod.uid

    calls = stack.csms_calls
    await stack.node.NodePublishVolume(pod.request)  # kubelet republishes: nothing to do
    assert stack.csms_calls == calls

    await stack.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path=str(pod.target))
    )
    assert not pod.target.exists()
    if MOUNTER == "tmpfs":
        assert not is_mount_point(pod.target)


async def test_secret_objects_are_synced_and_owned_by_the_pod_status(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES, SYNCED))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    assert visible(pod.target) == {
        "secret_1": SECRET_1_V1.encode(),
        "dbusername01": b"db-user-01",
        "dbusername02": b"db-user-02",
    }
    secret = await stack.kube.get(kube.SECRET, "my-secret-01", "default")
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["secrets-store.csi.k8s.io/managed"] == "true"
    assert await secret_data(stack, "my-secret-01") == {
        "db_username_01": "db-user-01",
        "db_username_02": "db-user-02",
    }
    status = await pod_status(stack, pod)
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [status["metadata"]["uid"]]
    # The versions recorded are the real CSMS version ids, one per file.
    assert status["status"]["objects"] == [
        {"id": "dbusername01", "version": "v1"},
        {"id": "dbusername02", "version": "v1"},
        {"id": "secret_1", "version": "v1"},
    ]

    # A second pod shares the Secret; it goes only when the last pod goes.
    other = await create_pod(stack, "nginx-spc-2")
    await stack.node.NodePublishVolume(other.request)
    secret = await stack.kube.get(kube.SECRET, "my-secret-01", "default")
    assert len(secret["metadata"]["ownerReferences"]) == 2
    await stack.kube.delete(kube.POD, pod.name, grace_period=0)

    async def first_status_gone() -> bool:
        name = f"{pod.name}-default-spc-test"
        return await stack.kube.find(kube.SECRET_PROVIDER_CLASS_POD_STATUS, name) is None

    await eventually(first_status_gone)
    secret = await stack.kube.get(kube.SECRET, "my-secret-01", "default")  # still owned
    assert [o["name"] for o in secret["metadata"]["ownerReferences"]] == [
        f"{other.name}-default-spc-test"
    ]
    await stack.kube.delete(kube.POD, other.name, grace_period=0)

    async def secret_gone() -> bool:
        return await stack.kube.find(kube.SECRET, "my-secret-01") is None

    await eventually(secret_gone)


async def test_unlisted_secret_fails_the_mount_with_an_event_naming_it(stack: Stack) -> None:
    objects = PINNED_ALIAS + '- {objectName: secret_9, objectType: csms, objectVersion: "v1"}\n'
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(objects))
    pod = await create_pod(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(pod.request)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert '"secret_9"' in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.node.NodePublishVolume(pod.request)  # kubelet retries: same problem
    events = await events_for(stack, pod, "FailedToMountSecrets")
    assert len(events) == 1  # one event per distinct problem, not one per retry
    assert events[0]["type"] == "Warning"
    assert '"secret_9"' in events[0]["message"]
    # All or nothing: no files, no mount left behind, no status recorded.
    assert not pod.target.exists() or not os.listdir(pod.target)
    with pytest.raises(kube.NotFound):
        await pod_status(stack, pod)


async def test_missing_spc_is_not_found(stack: Stack) -> None:
    pod = await create_pod(stack, spc="does-not-exist")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(pod.request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert 'SecretProviderClass "does-not-exist" not found' in (caught.value.details() or "")


# --------------------------------------------------------------------------- rotation


async def test_rotation_brings_a_new_latest_version_within_one_interval(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES, SYNCED))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    stack.csms.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])

    await eventually(
        lambda: visible(pod.target)["dbusername01"] == b"db-user-01-v2", timeout=ROTATION * 10
    )
    status = await eventually(lambda: _versions_are(stack, pod, "v2"), timeout=ROTATION * 10)
    assert status

    async def secret_rotated() -> bool:
        return (await secret_data(stack, "my-secret-01"))["db_username_01"] == "db-user-01-v2"

    await eventually(secret_rotated, timeout=ROTATION * 10)
    # The Events follow the writes they report, and may lag behind them under load: wait.
    await eventually(lambda: events_for(stack, pod, "MountRotationComplete"), timeout=ROTATION * 6)
    await eventually(lambda: events_for(stack, pod, "SecretRotationComplete"), timeout=ROTATION * 6)


async def _versions_are(stack: Stack, pod: PodVolume, version: str) -> bool:
    objects = (await pod_status(stack, pod))["status"]["objects"]
    return {o["version"] for o in objects} == {version}


async def test_rotation_never_reads_pinned_objects_again(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    calls = stack.csms_calls
    passes = stack.driver.reconciler.passes
    await eventually(lambda: stack.driver.reconciler.passes >= passes + 3, timeout=ROTATION * 6)
    assert stack.csms_calls == calls
    assert visible(pod.target) == {"secret_test": SECRET_1_V1.encode()}


async def test_csms_outage_during_rotation_keeps_the_files_and_recovers(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    before = visible(pod.target)
    stack.csms.emulator.set_fault(FaultRule(outage=True))
    await eventually(lambda: events_for(stack, pod, "MountRotationFailed"), timeout=ROTATION * 8)
    assert visible(pod.target) == before  # the pod keeps its last good values
    failed = (await events_for(stack, pod, "MountRotationFailed"))[0]
    assert failed["type"] == "Warning"
    assert "CSMS" in failed["message"]

    stack.csms.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
    stack.csms.emulator.clear_faults()
    await eventually(
        lambda: visible(pod.target)["dbusername02"] == b"db-user-02-v2", timeout=ROTATION * 6
    )


async def test_provider_killed_and_restarted(stack: Stack, tmp_path: Path) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    await stack.provider.stop()
    await eventually(lambda: events_for(stack, pod, "MountRotationFailed"), timeout=ROTATION * 8)
    assert visible(pod.target)["dbusername01"] == b"db-user-01"

    stack.csms.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
    stack.provider = Provider(stack.provider.config)
    await stack.provider.start()
    await eventually(
        lambda: visible(pod.target)["dbusername01"] == b"db-user-01-v2", timeout=ROTATION * 8
    )


async def test_driver_restart_finds_its_mounts_again(stack: Stack, tmp_path: Path) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    config = stack.driver.config
    await stack.driver.stop()
    restarted = Driver(config)
    await restarted.start()
    await restarted.wait_ready()
    stack.driver = restarted
    assert [v.target_path for v in restarted.volumes.mounted()] == [pod.target]
    stack.csms.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
    await eventually(
        lambda: visible(pod.target)["dbusername01"] == b"db-user-01-v2", timeout=ROTATION * 6
    )


# --------------------------------------------------------------------------- SPC changes


async def spc_change(stack: Stack, objects: str, secret_objects: Any = None) -> float:
    """Apply an SPC change and return the loop time it was written at."""
    spec: dict[str, Any] = {"parameters": {"objects": objects}}
    if secret_objects is not None:
        spec["secretObjects"] = secret_objects
    await stack.kube.patch(kube.SECRET_PROVIDER_CLASS, "spc-test", {"spec": spec})
    return asyncio.get_running_loop().time()


async def within_a_second(since: float, check: Any) -> None:
    await eventually(check, timeout=1.0, interval=0.01)
    assert asyncio.get_running_loop().time() - since < 1.0


@pytest.fixture
async def slow_rotation_stack(stack: Stack) -> Stack:
    # Real-time changes must not depend on the rotation interval: make it long.
    stack.driver.reconciler.interval = 3600
    return stack


async def test_spc_changes_reach_files_and_secrets_within_a_second(
    slow_rotation_stack: Stack,
) -> None:
    stack = slow_rotation_stack
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    await asyncio.sleep(0.1)  # the SPC watch has seen the SPC as mounted

    # 1. add secret_2 (the guide's example)
    added = PINNED_ALIAS + '- {objectName: "secret_2", objectVersion: "v1", objectType: "csms"}\n'
    since = await spc_change(stack, added)
    await within_a_second(since, lambda: visible(pod.target).get("secret_2") == b"secret-two-v1")

    # 2. v1 -> v2
    since = await spc_change(
        stack, added.replace('"secret_2", objectVersion: "v1"', '"secret_2", objectVersion: "v2"')
    )
    await within_a_second(since, lambda: visible(pod.target).get("secret_2") == b"secret-two-v2")

    async def recorded_v2() -> bool:
        status = await pod_status(stack, pod)
        return {"id": "secret_2", "version": "v2"} in status["status"]["objects"]

    await within_a_second(since, recorded_v2)

    # 3. remove an object
    since = await spc_change(
        stack, '- {objectName: "secret_2", objectVersion: "v2", objectType: "csms"}\n'
    )
    await within_a_second(since, lambda: set(visible(pod.target)) == {"secret_2"})
    assert not (pod.target / "secret_test").exists()

    # 4. change secretObjects
    since = await spc_change(
        stack,
        LATEST_JMES,
        [
            {
                "secretName": "renamed",
                "type": "Opaque",
                "data": [{"objectName": "dbusername01", "key": "u"}],
            }
        ],
    )

    async def synced() -> bool:
        return (await secret_data(stack, "renamed")) == {"u": "db-user-01"}

    await within_a_second(since, synced)


async def test_refresh_annotation_triggers_a_remount(slow_rotation_stack: Stack) -> None:
    stack = slow_rotation_stack
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    stack.csms.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
    await asyncio.sleep(0.2)
    assert visible(pod.target)["dbusername01"] == b"db-user-01"  # no rotation pass yet
    await stack.kube.patch(
        kube.SECRET_PROVIDER_CLASS,
        "spc-test",
        {"metadata": {"annotations": {"dew-csi.io/refresh": "now-1"}}},
    )
    await eventually(lambda: visible(pod.target)["dbusername01"] == b"db-user-01-v2", timeout=1.0)


# --------------------------------------------------------------------------- atomicity


async def test_a_reader_never_sees_a_mix_of_old_and_new_files(stack: Stack) -> None:
    """1,000 rotations of a secret whose three files all carry the generation number."""
    stack.driver.reconciler.interval = 3600
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    stop = threading.Event()
    mixes: list[dict[str, bytes]] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                files = visible(pod.target)
            except FileNotFoundError:
                continue  # an old generation vanished between resolving ..data and reading
            whole = json.loads(files["secret_1"])
            extracted = (files["dbusername01"].decode(), files["dbusername02"].decode())
            if (whole["key1"], whole["key2"]) != extracted:  # files from different versions
                mixes.append(files)
            reads += 1
            time.sleep(0.0002)  # yield the GIL so the driver keeps its pace

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for generation in range(1, 1001):
            value = json.dumps({"key1": f"a{generation}", "key2": f"b{generation}"})
            stack.csms.emulator.set_secret_versions("secret_1", [value])
            outcome = await stack.driver.volumes.remount(pod.target, trigger="test")
            assert outcome is not None
            # A rotation pass may have remounted first; either way this generation is visible.
            assert visible(pod.target)["dbusername01"] == f"a{generation}".encode()
    finally:
        stop.set()
        thread.join(5)
    assert not mixes
    assert reads > 0
    assert visible(pod.target)["dbusername01"] == b"a1000"
