# ruff: noqa: F811  (the stack fixtures of test_driver.py are imported, then named as arguments)
"""Attacks on the driver's volume handling, as a hostile namespace user or a bad moment would
make them: spoofed pod-info attributes (before and after a driver restart), a transient API
failure in the middle of a rotation, a synced Secret or SPCPS edited or deleted, rotated
nodePublishSecretRef credentials, a failed first mount after its SPCPS was written, and a
control-plane outage while the driver starts.

Same stack as test_driver.py: the real driver and provider over gRPC on unix sockets, the CSMS
and Kubernetes API emulators over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from dew_csi import kube
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.csms.emulator import TemporaryCredentials
from dew_csi.driver.app import Driver
from dew_csi.sandbox.apiserver import write_kubeconfig
from tests.integration.test_driver import (
    AK,
    LATEST_JMES,
    PINNED_ALIAS,
    PROJECT,
    SECRET_1_V1,
    SECRET_1_V2,
    SK,
    SYNCED,
    Stack,
    api,  # noqa: F401  (fixtures)
    create_pod,
    csms,  # noqa: F401
    driver_config,
    events_for,
    eventually,
    pod_status,
    secret_data,
    spc_test,
    stack,  # noqa: F401
    visible,
)
from tests.tcp_proxy import CuttableProxy

SECRET_3 = "secret-three"
# Deadlines for what a rotation pass (every ROTATION seconds) brings: generous, so a busy
# machine never fails a test whose behaviour is right.
PATIENCE = 20.0
ADD_SECRET_3 = '- {objectName: "secret_3", objectVersion: "v1", objectType: "csms"}\n'


async def service_account(
    stack: Stack, name: str, allowed: str, namespace: str = "default"
) -> None:
    await stack.kube.create(
        kube.SERVICE_ACCOUNT,
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {"cce.io/dew-resource": allowed},
            }
        },
    )


async def restart_driver(stack: Stack) -> None:
    config = stack.driver.config
    await stack.driver.stop()
    stack.driver = Driver(config)
    await stack.driver.start()
    await stack.driver.wait_ready()


async def add_secret_3(stack: Stack) -> None:
    await stack.kube.patch(
        kube.SECRET_PROVIDER_CLASS,
        "spc-test",
        {"spec": {"parameters": {"objects": PINNED_ALIAS + ADD_SECRET_3}}},
    )


# --------------------------------------------------------------------------- item 1: spoofing


@pytest.mark.parametrize(
    ("spoofed_key", "spoofed_value"),
    [
        ("csi.storage.k8s.io/serviceAccount.name", "sa-high"),
        ("csi.storage.k8s.io/pod.namespace", "other"),
    ],
)
async def test_spoofed_pod_info_never_authorises_even_after_a_driver_restart(
    stack: Stack, spoofed_key: str, spoofed_value: str
) -> None:
    stack.csms.emulator.set_secret_versions("secret_3", [SECRET_3])
    await service_account(stack, "sa-low", '["secret_1"]')
    await service_account(stack, "sa-high", '["secret_1","secret_3"]')
    await stack.kube.create(kube.NAMESPACE, {"metadata": {"name": "other"}})
    await service_account(stack, "sa-low", '["secret_1","secret_3"]', namespace="other")
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(
        stack, "spoofer", account="sa-low", attributes={spoofed_key: spoofed_value}
    )
    await stack.node.NodePublishVolume(pod.request)
    assert visible(pod.target) == {"secret_test": SECRET_1_V1.encode()}

    await restart_driver(stack)
    assert [v.target_path for v in stack.driver.volumes.mounted()] == [pod.target]
    recovered = stack.driver.volumes.volume(pod.target)
    assert recovered is not None
    assert recovered.volume_context["csi.storage.k8s.io/serviceAccount.name"] == "sa-low"
    assert recovered.volume_context["csi.storage.k8s.io/pod.namespace"] == "default"

    # The SPC now asks for secret_3, which only the spoofed identity allows.
    await add_secret_3(stack)

    async def refused() -> bool:
        failures = await events_for(stack, pod, "MountRotationFailed")
        return any('"secret_3"' in e["message"] and "sa-low" in e["message"] for e in failures)

    await eventually(refused, timeout=PATIENCE)
    passes = stack.driver.reconciler.passes
    await eventually(lambda: stack.driver.reconciler.passes >= passes + 2, timeout=PATIENCE)
    assert "secret_3" not in visible(pod.target)
    objects = (await pod_status(stack, pod))["status"]["objects"]
    assert objects == [{"id": "secret_test", "version": "v1"}]

    # `dew-csi check pod` judges the pod the same way: its own ServiceAccount, in its namespace.
    env_file = stack.root / "csms.env"
    env_file.write_text(
        f"CSMS_ENDPOINT={stack.csms.url}\nHUAWEICLOUD_SDK_AK={AK}\nHUAWEICLOUD_SDK_SK={SK}\n"
        f"HUAWEICLOUD_SDK_PROJECT_ID={PROJECT}\n"
    )
    kubeconfig = stack.root / "kubeconfig"
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "dew_csi.cli",
            "check",
            "pod",
            "spoofer",
            "--env-file",
            str(env_file),
            "--kubeconfig",
            str(kubeconfig),
            "--plain",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("HUAWEICLOUD_SDK_")},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f'"{spoofed_key}" are ignored' in done.stdout
    assert any(
        '"secret_3"' in line and "sa-low" in line and line.strip().startswith("FAIL")
        for line in done.stdout.splitlines()
    ), done.stdout


async def test_a_context_without_kubelets_override_is_judged_by_the_pod_object(
    stack: Stack,
) -> None:
    """A CSIDriver installed without podInfoOnMount would pass the user's attributes through:
    the driver still takes namespace and ServiceAccount from the Pod itself."""
    stack.csms.emulator.set_secret_versions("secret_3", [SECRET_3])
    await service_account(stack, "sa-low", '["secret_1"]')
    await service_account(stack, "sa-high", '["secret_1","secret_3"]')
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS + ADD_SECRET_3))
    pod = await create_pod(stack, "spoofer", account="sa-low")
    pod.request.volume_context["csi.storage.k8s.io/serviceAccount.name"] = "sa-high"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(pod.request)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert '"secret_3"' in (caught.value.details() or "")
    assert "sa-low" in (caught.value.details() or "")
    assert not pod.target.exists() or not os.listdir(pod.target)


async def test_a_context_naming_another_pod_is_refused(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    victim = await create_pod(stack, "victim")
    attacker = await create_pod(stack, "attacker")
    attacker.request.volume_context["csi.storage.k8s.io/pod.name"] = "victim"
    attacker.request.volume_context["csi.storage.k8s.io/pod.uid"] = victim.uid
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(attacker.request)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not the pod that owns target path" in (caught.value.details() or "")
    with pytest.raises(kube.NotFound):
        await pod_status(stack, victim)


async def test_missing_pod_info_names_podinfoonmount(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    del pod.request.volume_context["csi.storage.k8s.io/pod.uid"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(pod.request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "podInfoOnMount: true" in (caught.value.details() or "")


async def test_spc_parameters_cannot_set_kubelets_keys(stack: Stack) -> None:
    stack.csms.emulator.set_secret_versions("secret_3", [SECRET_3])
    await service_account(stack, "sa-high", '["secret_1","secret_3"]')
    spc_object = spc_test(PINNED_ALIAS + ADD_SECRET_3)
    spc_object["spec"]["parameters"]["csi.storage.k8s.io/serviceAccount.name"] = "sa-high"
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_object)
    pod = await create_pod(stack)  # runs as nginx-spc-sa, which allows secret_1 and secret_2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(pod.request)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert '"secret_3"' in (caught.value.details() or "")


# --------------------------------------------------------------------------- item 6: stale state


@pytest.fixture
async def proxied_stack(stack: Stack) -> AsyncIterator[tuple[Stack, CuttableProxy]]:
    """The stack with the driver (only) talking to the API through a proxy a test can cut."""
    proxy = CuttableProxy("127.0.0.1", stack.api.port)
    await proxy.start()
    kubeconfig = stack.root / "driver-kubeconfig"
    write_kubeconfig(kubeconfig, proxy.url)
    config = driver_config(stack.root, kubeconfig)
    await stack.driver.stop()
    stack.driver = Driver(config)
    await stack.driver.start()
    await stack.driver.wait_ready()
    try:
        yield stack, proxy
    finally:
        await proxy.stop()


async def test_a_failed_status_write_is_retried_by_the_next_pass(
    proxied_stack: tuple[Stack, CuttableProxy],
) -> None:
    stack, proxy = proxied_stack
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES, SYNCED))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    await proxy.cut()
    stack.csms.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
    # The files rotate (provider and CSMS are reachable); the SPCPS and Secret writes fail.
    await eventually(
        lambda: visible(pod.target)["dbusername01"] == b"db-user-01-v2", timeout=PATIENCE
    )
    passes = stack.driver.reconciler.passes
    await eventually(lambda: stack.driver.reconciler.passes >= passes + 1, timeout=PATIENCE)
    assert {o["version"] for o in (await pod_status(stack, pod))["status"]["objects"]} == {"v1"}
    await proxy.restore()

    async def caught_up() -> bool:
        objects = (await pod_status(stack, pod))["status"]["objects"]
        data = await secret_data(stack, "my-secret-01")
        return {o["version"] for o in objects} == {"v2"} and data["db_username_01"] == (
            "db-user-01-v2"
        )

    await eventually(caught_up, timeout=PATIENCE)


async def test_each_pass_restores_deleted_or_edited_secrets_and_status(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES, SYNCED))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    calls = stack.csms_calls
    status = await pod_status(stack, pod)
    wanted = status["status"]

    # Someone edits the synced Secret, then deletes it; someone rewrites the SPCPS.
    secret = await stack.kube.get(kube.SECRET, "my-secret-01", "default")
    secret["data"]["db_username_01"] = base64.b64encode(b"forged").decode()
    await stack.kube.replace(kube.SECRET, secret)

    async def restored_data() -> bool:
        return (await secret_data(stack, "my-secret-01"))["db_username_01"] == "db-user-01"

    await eventually(restored_data, timeout=PATIENCE)
    await stack.kube.delete(kube.SECRET, "my-secret-01", "default")
    await eventually(restored_data, timeout=PATIENCE)

    status["status"] = {**wanted, "mounted": False, "objects": []}
    await stack.kube.replace(kube.SECRET_PROVIDER_CLASS_POD_STATUS, status)

    async def restored_status() -> bool:
        return (await pod_status(stack, pod))["status"] == wanted

    await eventually(restored_status, timeout=PATIENCE)
    await stack.kube.delete(
        kube.SECRET_PROVIDER_CLASS_POD_STATUS, f"{pod.name}-default-spc-test", "default"
    )
    await eventually(restored_status, timeout=PATIENCE)
    # Restoring needs no CSMS read beyond the rotation's own one `latest` read per pass.
    passes = stack.driver.reconciler.passes
    assert stack.csms_calls - calls <= passes + 1


# --------------------------------------------------------------------------- item 7: credentials


def credentials_secret(name: str, temporary: TemporaryCredentials) -> dict[str, Any]:
    values = {"ak": temporary.ak, "sk": temporary.sk, "security_token": temporary.security_token}
    return {
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


async def test_rotated_node_publish_secret_is_read_again_at_each_remount(stack: Stack) -> None:
    """The pod's nodePublishSecretRef holds temporary credentials. They are rotated (the old
    ones expire, the Secret gets new ones): rotation goes on without restarting the pod."""
    later = datetime.now(UTC) + timedelta(hours=1)
    first = TemporaryCredentials("AK-TEMP-1", "SK-TEMP-1", "TOKEN-1", expires_at=later)
    second = TemporaryCredentials("AK-TEMP-2", "SK-TEMP-2", "TOKEN-2", expires_at=later)
    stack.csms.emulator.add_temporary_credentials(first)
    stack.csms.emulator.add_temporary_credentials(second)
    await stack.kube.create(kube.SECRET, credentials_secret("dew-access", first))
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES))
    pod = await create_pod(stack, "with-creds", secret_ref="dew-access")
    for key, value in (("ak", first.ak), ("sk", first.sk), ("security_token", "TOKEN-1")):
        pod.request.secrets[key] = value
    await stack.node.NodePublishVolume(pod.request)
    assert visible(pod.target)["dbusername01"] == b"db-user-01"

    # Rotate: the old credentials expire, the Secret now holds the new ones.
    expired = TemporaryCredentials(
        first.ak, first.sk, first.security_token, expires_at=datetime.now(UTC) - timedelta(1)
    )
    stack.csms.emulator.add_temporary_credentials(expired)
    secret = await stack.kube.get(kube.SECRET, "dew-access", "default")
    secret["data"] = credentials_secret("dew-access", second)["data"]
    await stack.kube.replace(kube.SECRET, secret)
    stack.csms.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
    await eventually(
        lambda: visible(pod.target)["dbusername01"] == b"db-user-01-v2", timeout=PATIENCE
    )

    # A deleted credentials Secret fails the rotation with a message naming it; files stay.
    await stack.kube.delete(kube.SECRET, "dew-access", "default")

    async def named() -> bool:
        failures = await events_for(stack, pod, "MountRotationFailed")
        return any('"dew-access"' in e["message"] for e in failures)

    await eventually(named, timeout=PATIENCE)
    assert visible(pod.target)["dbusername01"] == b"db-user-01-v2"


# --------------------------------------------------------------------------- item 9: failed mount


async def test_a_first_mount_failing_after_its_status_leaves_no_status(stack: Stack) -> None:
    broken_sync = [
        {
            "secretName": "my-secret-01",
            "type": "Opaque",
            "data": [{"objectName": "not-mounted", "key": "k"}],
        }
    ]
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(LATEST_JMES, broken_sync))
    pod = await create_pod(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.node.NodePublishVolume(pod.request)
    assert "not-mounted" in (caught.value.details() or "")
    with pytest.raises(kube.NotFound):
        await pod_status(stack, pod)
    assert not pod.target.exists() or not os.listdir(pod.target)
    assert stack.driver.volumes.volume(pod.target) is None


# --------------------------------------------------------------------------- item 8: API outage


async def test_a_driver_starting_during_an_api_outage_serves_what_it_can(
    proxied_stack: tuple[Stack, CuttableProxy],
) -> None:
    stack, proxy = proxied_stack
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    leaving = await create_pod(stack, "leaving")
    staying = await create_pod(stack, "staying")
    new = await create_pod(stack, "new")
    for pod in (leaving, staying):
        await stack.node.NodePublishVolume(pod.request)
    config = stack.driver.config
    await stack.driver.stop()
    await proxy.cut()

    stack.driver = Driver(config)
    await asyncio.wait_for(stack.driver.start(), 10)  # does not wait for the API
    async with grpc.aio.insecure_channel(f"unix://{stack.driver.socket}") as channel:
        node = csi_pb2_grpc.NodeStub(channel)
        identity = csi_pb2_grpc.IdentityStub(channel)
        assert (await identity.Probe(csi_pb2.ProbeRequest(), timeout=5)).ready.value
        # Kubelet can unmount a deleted pod's volume, and republish a mounted one.
        await node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id="v", target_path=str(leaving.target)),
            timeout=5,
        )
        assert not leaving.target.exists()
        await node.NodePublishVolume(staying.request, timeout=5)
        assert visible(staying.target) == {"secret_test": SECRET_1_V1.encode()}
        # A new volume waits for the API up to its deadline, then is told why.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await node.NodePublishVolume(new.request, timeout=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "has not reached the Kubernetes API" in (caught.value.details() or "")

        await proxy.restore()
        await stack.driver.wait_ready(timeout=30)
        assert [v.target_path for v in stack.driver.volumes.mounted()] == [staying.target]
        await node.NodePublishVolume(new.request, timeout=10)
        assert visible(new.target) == {"secret_test": SECRET_1_V1.encode()}
