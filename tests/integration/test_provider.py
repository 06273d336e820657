"""dew-provider end to end: a real gRPC client on cce.sock, the CSMS emulator and the Kubernetes API
emulator over HTTP, and MountRequests shaped exactly as the upstream Go driver sends them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from dew_csi import kube, spc
from dew_csi._proto.provider.v1alpha1 import service_pb2, service_pb2_grpc
from dew_csi.csms import CsmsClientConfig, RetryPolicy
from dew_csi.csms.emulator import CsmsEmulatorThread, FaultRule
from dew_csi.logs import KlogFormatter
from dew_csi.provider.app import Provider, ProviderConfig
from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig
from tests.hostile_objects import alias_bomb, huge_objects

PROJECT, AK, SK = "project-1", "AK-PROVIDER-TEST", "SK-PROVIDER-TEST-SECRET"
SECRET_1_V1 = '{"key1":"db-user-01","key2":"db-user-02"}'
SECRET_1_V2 = '{"key1":"db-user-01-rotated","key2":"db-user-02-rotated"}'
SECRET_2_V1 = "plain-secret-two"
SA_ANNOTATION = '["secret_1","secret_2"]'
ALL_VALUES = (SECRET_1_V1, SECRET_1_V2, SECRET_2_V1, "db-user-01", "db-user-02", SK)


@dataclass
class Cluster:
    api: ApiServerThread
    csms: CsmsEmulatorThread
    kube: kube.Kube
    provider: Provider
    stub: service_pb2_grpc.CSIDriverProviderStub


@pytest.fixture
def csms() -> Iterator[CsmsEmulatorThread]:
    with CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK) as thread:
        thread.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
        thread.emulator.set_secret_versions("secret_2", [SECRET_2_V1])
        yield thread


@pytest.fixture
def api() -> Iterator[ApiServerThread]:
    with ApiServerThread() as thread:
        yield thread


def provider_config(tmp_path: Path, api: ApiServerThread, csms_url: str) -> ProviderConfig:
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, api.url)
    return ProviderConfig(
        socket_dir=tmp_path / "providers",
        csms=CsmsClientConfig(
            endpoint=csms_url,
            project_id=PROJECT,
            retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, deadline=2.0),
            connect_timeout=1.0,
            read_timeout=2.0,
        ),
        kubeconfig=str(kubeconfig),
        metadata_url=None,
    )


@pytest.fixture
async def cluster(
    tmp_path: Path,
    api: ApiServerThread,
    csms: CsmsEmulatorThread,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK)
    async with kube.Kube.from_url(api.url) as client:
        await client.create(kube.SERVICE_ACCOUNT, service_account(SA_ANNOTATION))
        provider = Provider(provider_config(tmp_path, api, csms.url))
        await provider.start()
        channel = grpc.aio.insecure_channel(f"unix://{provider.config.socket_path}")
        try:
            yield Cluster(
                api, csms, client, provider, service_pb2_grpc.CSIDriverProviderStub(channel)
            )
        finally:
            await channel.close()
            await provider.stop()


def service_account(annotation: str | None, name: str = "nginx-spc-sa") -> dict[str, Any]:
    annotations = {"cce.io/dew-resource": annotation} if annotation is not None else {}
    return {"metadata": {"name": name, "namespace": "default", "annotations": annotations}}


GUIDE_SPC_OBJECTS = """\
      - objectName: "secret_1"
        objectAlias: "secret_test"
        objectVersion: "v1"
        objectType: "csms"
"""

GUIDE_JMES_OBJECTS = """\
- objectName: "secret_1"
  objectType: "csms"
  objectVersion: "latest"
  jmesPath:
     - path: key1
       objectAlias: dbusername01
     - path: key2
       objectAlias: dbusername02
"""


def mount_request(
    objects: str,
    *,
    spc: str = "spc-test",
    secrets: str = "null",
    permission: str = "420",
    current: list[tuple[str, str]] | None = None,
    service_account: str = "nginx-spc-sa",
) -> service_pb2.MountRequest:
    """The request as the upstream driver builds it: SPC parameters, then every kubelet
    volume_context key copied over them, JSON-encoded."""
    pod_uid = str(uuid.uuid4())
    attributes = {
        "objects": objects,
        "secretProviderClass": spc,
        "csi.storage.k8s.io/pod.name": "nginx-spc-67c9d5b594-642np",
        "csi.storage.k8s.io/pod.namespace": "default",
        "csi.storage.k8s.io/pod.uid": pod_uid,
        "csi.storage.k8s.io/serviceAccount.name": service_account,
        "csi.storage.k8s.io/ephemeral": "true",
    }
    return service_pb2.MountRequest(
        attributes=json.dumps(attributes),
        secrets=secrets,
        target_path=f"/var/lib/kubelet/pods/{pod_uid}/volumes/kubernetes.io~csi/secrets-store-inline/mount",
        permission=permission,
        current_object_version=[
            service_pb2.ObjectVersion(id=i, version=v) for i, v in (current or [])
        ],
    )


def files_of(response: service_pb2.MountResponse) -> dict[str, tuple[int, bytes]]:
    return {f.path: (f.mode, f.contents) for f in response.files}


def versions_of(response: service_pb2.MountResponse) -> list[tuple[str, str]]:
    return [(v.id, v.version) for v in response.object_version]


async def refused(
    cluster: Cluster, request: service_pb2.MountRequest
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cluster.stub.Mount(request)
    return caught.value.code(), caught.value.details() or ""


# --------------------------------------------------------------------------- the guide


async def test_version(cluster: Cluster) -> None:
    response = await cluster.stub.Version(service_pb2.VersionRequest(version="v1alpha1"))
    assert (response.version, response.runtime_name) == ("v1alpha1", "dew-provider")
    assert response.runtime_version


async def test_guide_method_one_mounts_secret_test(cluster: Cluster) -> None:
    response = await cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS))
    assert files_of(response) == {"secret_test": (0o644, SECRET_1_V1.encode())}
    assert versions_of(response) == [("secret_test", "v1")]
    assert not response.HasField("error")


async def test_guide_method_two_extracts_jmes_paths_with_the_real_version(
    cluster: Cluster,
) -> None:
    response = await cluster.stub.Mount(
        mount_request(GUIDE_JMES_OBJECTS, spc="nginx-deployment-spc-k8s-secrets")
    )
    assert files_of(response) == {
        "secret_1": (0o644, SECRET_1_V2.encode()),
        "dbusername01": (0o644, b"db-user-01-rotated"),
        "dbusername02": (0o644, b"db-user-02-rotated"),
    }
    # latest resolves to the real version id; never "latest".
    assert versions_of(response) == [
        ("secret_1", "v2"),
        ("dbusername01", "v2"),
        ("dbusername02", "v2"),
    ]


@pytest.mark.parametrize("secrets", ["null", "{}", ""])
async def test_no_node_publish_secret_uses_the_provider_credentials(
    cluster: Cluster, secrets: str
) -> None:
    response = await cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS, secrets=secrets))
    assert list(files_of(response)) == ["secret_test"]


async def test_per_volume_credentials_from_node_publish_secret(cluster: Cluster) -> None:
    good = json.dumps({"ak": AK, "sk": SK, "project_id": PROJECT})
    response = await cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS, secrets=good))
    assert list(files_of(response)) == ["secret_test"]

    wrong = json.dumps({"ak": AK, "sk": "not-the-key"})
    code, message = await refused(cluster, mount_request(GUIDE_SPC_OBJECTS, secrets=wrong))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "not-the-key" not in message

    incomplete = json.dumps({"ak": AK})
    code, message = await refused(cluster, mount_request(GUIDE_SPC_OBJECTS, secrets=incomplete))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'sk'" in message


async def test_secret_binary_is_written_decoded(cluster: Cluster) -> None:
    binary = bytes(range(256)) + b"\x00\xff keystore"
    cluster.csms.emulator.set_secret_versions("secret_2", [binary])
    objects = "- {objectName: secret_2, objectType: csms, objectVersion: v1, objectAlias: ks.p12}"
    response = await cluster.stub.Mount(mount_request(objects))
    assert files_of(response) == {"ks.p12": (0o644, binary)}
    assert versions_of(response) == [("ks.p12", "v1")]


async def test_file_permission_overrides_the_request_permission(cluster: Cluster) -> None:
    objects = GUIDE_SPC_OBJECTS + '        filePermission: "0600"\n'
    response = await cluster.stub.Mount(mount_request(objects, permission="420"))
    assert files_of(response)["secret_test"][0] == 0o600
    plain = await cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS, permission="256"))
    assert files_of(plain)["secret_test"][0] == 0o400


async def test_current_object_version_filled_or_empty_gives_the_same_answer(
    cluster: Cluster,
) -> None:
    empty = await cluster.stub.Mount(mount_request(GUIDE_JMES_OBJECTS))
    filled = await cluster.stub.Mount(
        mount_request(GUIDE_JMES_OBJECTS, current=[("secret_1", "v1"), ("dbusername01", "v1")])
    )
    assert files_of(empty) == files_of(filled)
    assert versions_of(empty) == versions_of(filled)


async def test_pinned_versions_are_read_once_then_served_from_memory(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = cluster.csms.emulator
    emulator.reset_counters()
    caplog.set_level(logging.INFO)
    for _ in range(3):
        await cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS))
    assert emulator.calls("show_secret_version", "secret_1") == 1
    assert "object [secret_1]'s version [v1] doesn't change, read from local" in caplog.text
    assert '"Get secret successfully"' in caplog.text or "Get secret successfully" in caplog.text


async def test_a_hundred_concurrent_latest_mounts_make_one_csms_call(cluster: Cluster) -> None:
    emulator = cluster.csms.emulator
    emulator.reset_counters()
    emulator.set_fault(FaultRule(latency=0.2))  # keep the first read in flight while others arrive
    responses = await asyncio.gather(
        *(cluster.stub.Mount(mount_request(GUIDE_JMES_OBJECTS)) for _ in range(100))
    )
    emulator.clear_faults()
    assert {versions_of(r)[0] for r in responses} == {("secret_1", "v2")}
    assert emulator.calls("show_secret_version", "secret_1") == 1


# --------------------------------------------------------------------------- validation


INVALID_OBJECTS = {
    "object-type": ("- {objectName: secret_1, objectType: kms, objectVersion: v1}", "objectType"),
    "missing-type": ("- {objectName: secret_1, objectVersion: v1}", "objectType"),
    "missing-name": ("- {objectType: csms, objectVersion: v1}", "objectName"),
    "missing-version": ("- {objectName: secret_1, objectType: csms}", "objectVersion"),
    "bad-version": (
        "- {objectName: secret_1, objectType: csms, objectVersion: one}",
        "objectVersion",
    ),
    "unknown-key": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1, objectAliass: x}",
        "objectAliass",
    ),
    "duplicate-name": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1}\n"
        "- {objectName: secret_1, objectType: csms, objectVersion: v2, objectAlias: b}",
        "secret_1",
    ),
    "alias-equals-own-name": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1, objectAlias: secret_1}",
        "objectAlias",
    ),
    "alias-equals-other-name": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1, objectAlias: secret_2}\n"
        "- {objectName: secret_2, objectType: csms, objectVersion: v1}",
        "secret_2",
    ),
    "duplicate-alias": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1, objectAlias: same}\n"
        "- {objectName: secret_2, objectType: csms, objectVersion: v1, objectAlias: same}",
        "same",
    ),
    "slash-in-file-name": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1, objectAlias: a/b}",
        "a/b",
    ),
    "dot-dot-file-name": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1, objectAlias: ..x}",
        "..x",
    ),
    "dot-file-name": (
        "- {objectName: secret_1, objectType: csms, objectVersion: v1, objectAlias: .}",
        "objectAlias",
    ),
    "not-a-list": ("objectName: secret_1", "list"),
    "empty-list": ("[]", "objects"),
    "malformed-yaml": ("- objectName: [secret_1", "YAML"),
    "bad-file-permission": (
        '- {objectName: secret_1, objectType: csms, objectVersion: v1, filePermission: "0999"}',
        "filePermission",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_OBJECTS))
async def test_each_validation_rule_is_invalid_argument_and_mounts_nothing(
    cluster: Cluster, case: str
) -> None:
    objects, named = INVALID_OBJECTS[case]
    cluster.csms.emulator.reset_counters()
    code, message = await refused(cluster, mount_request(objects))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'SecretProviderClass "spc-test"' in message
    assert named in message
    assert cluster.csms.emulator.calls("show_secret_version") == 0  # nothing read, nothing mounted


async def test_missing_objects_and_pod_info_are_invalid_argument(cluster: Cluster) -> None:
    request = mount_request(GUIDE_SPC_OBJECTS)
    attributes = json.loads(request.attributes)
    del attributes["objects"]
    request.attributes = json.dumps(attributes)
    code, message = await refused(cluster, request)
    assert (code, "parameters.objects" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True)

    request = mount_request(GUIDE_SPC_OBJECTS)
    attributes = json.loads(request.attributes)
    del attributes["csi.storage.k8s.io/serviceAccount.name"]
    request.attributes = json.dumps(attributes)
    code, message = await refused(cluster, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "podInfoOnMount" in message

    bad_json = mount_request(GUIDE_SPC_OBJECTS)
    bad_json.attributes = "{not json"
    assert (await refused(cluster, bad_json))[0] == grpc.StatusCode.INVALID_ARGUMENT
    bad_mode = mount_request(GUIDE_SPC_OBJECTS, permission="rw")
    assert (await refused(cluster, bad_mode))[0] == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- authorisation


async def test_secret_not_in_the_whitelist_is_permission_denied(cluster: Cluster) -> None:
    await cluster.kube.patch(
        kube.SERVICE_ACCOUNT,
        "nginx-spc-sa",
        {"metadata": {"annotations": {"cce.io/dew-resource": '["secret_2"]'}}},
    )
    await asyncio.sleep(0.2)  # let the provider's watch cache see the change
    code, message = await refused(cluster, mount_request(GUIDE_SPC_OBJECTS))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert '"secret_1"' in message
    assert "default/nginx-spc-sa" in message
    assert "cce.io/dew-resource" in message


async def test_authorisation_runs_before_the_cache(cluster: Cluster) -> None:
    await cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS))  # now cached
    await cluster.kube.patch(
        kube.SERVICE_ACCOUNT,
        "nginx-spc-sa",
        {"metadata": {"annotations": {"cce.io/dew-resource": "[]"}}},
    )
    await asyncio.sleep(0.2)
    code, _ = await refused(cluster, mount_request(GUIDE_SPC_OBJECTS))
    assert code == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (None, "has no annotation cce.io/dew-resource"),
        ("secret_1,secret_2", "malformed annotation"),
        ('{"secret_1": true}', "malformed annotation"),
    ],
)
async def test_missing_or_malformed_whitelist(
    cluster: Cluster, annotation: str | None, expected: str
) -> None:
    await cluster.kube.create(kube.SERVICE_ACCOUNT, service_account(annotation, "other-sa"))
    code, message = await refused(
        cluster, mount_request(GUIDE_SPC_OBJECTS, service_account="other-sa")
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert expected in message
    assert "default/other-sa" in message


async def test_missing_service_account_is_permission_denied(cluster: Cluster) -> None:
    code, message = await refused(
        cluster, mount_request(GUIDE_SPC_OBJECTS, service_account="nobody")
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "default/nobody" in message


# --------------------------------------------------------------------------- jmesPath


async def test_jmes_path_literal_keys_with_any_characters_and_nested_expressions(
    cluster: Cluster,
) -> None:
    document = {
        "a+b": "plus",
        "with-dash": "dash",
        "{braces}": "braces",
        "(parens)": "parens",
        "dotted.key": "dotted",
        "has space": "space",
        "nested": {"inner": {"leaf": "deep"}, "list": [1, 2]},
    }
    cluster.csms.emulator.set_secret_versions("secret_2", [json.dumps(document)])
    entries = [
        ("a+b", "f1"),
        ("with-dash", "f2"),
        ("{braces}", "f3"),
        ("(parens)", "f4"),
        ("dotted.key", "f5"),
        ("has space", "f6"),
        ("nested.inner.leaf", "f7"),
        ("nested.list", "f8"),
        ("nested", "f9"),
    ]
    objects = "- objectName: secret_2\n  objectType: csms\n  objectVersion: latest\n  jmesPath:\n"
    objects += "".join(f"    - path: {json.dumps(p)}\n      objectAlias: {a}\n" for p, a in entries)
    files = files_of(await cluster.stub.Mount(mount_request(objects)))
    assert {name: contents for name, (_, contents) in files.items() if name != "secret_2"} == {
        "f1": b"plus",
        "f2": b"dash",
        "f3": b"braces",
        "f4": b"parens",
        "f5": b"dotted",
        "f6": b"space",
        "f7": b"deep",
        "f8": b"[1,2]",
        "f9": b'{"inner":{"leaf":"deep"},"list":[1,2]}',
    }


async def test_jmes_path_on_a_non_json_secret_or_a_missing_key(cluster: Cluster) -> None:
    objects = (
        "- objectName: secret_2\n  objectType: csms\n  objectVersion: v1\n"
        "  jmesPath:\n    - path: key1\n      objectAlias: k\n"
    )
    code, message = await refused(cluster, mount_request(objects))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a JSON object" in message
    assert SECRET_2_V1 not in message

    missing = GUIDE_JMES_OBJECTS.replace("path: key2", "path: key9")
    code, message = await refused(cluster, mount_request(missing))
    assert code == grpc.StatusCode.NOT_FOUND
    assert '"key9"' in message
    assert '"secret_1"' in message
    assert "db-user" not in message


# --------------------------------------------------------------------------- CSMS failures


async def test_missing_secret_and_missing_version_are_not_found(cluster: Cluster) -> None:
    await cluster.kube.patch(
        kube.SERVICE_ACCOUNT,
        "nginx-spc-sa",
        {"metadata": {"annotations": {"cce.io/dew-resource": '["secret_1","ghost"]'}}},
    )
    await asyncio.sleep(0.2)
    ghost = "- {objectName: ghost, objectType: csms, objectVersion: v1}"
    code, message = await refused(cluster, mount_request(ghost))
    assert (code, '"ghost"' in message) == (grpc.StatusCode.NOT_FOUND, True)
    v9 = "- {objectName: secret_1, objectType: csms, objectVersion: v9}"
    code, message = await refused(cluster, mount_request(v9))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "v9" in message


async def test_csms_outage_is_unavailable_and_429_then_success_recovers(
    cluster: Cluster,
) -> None:
    emulator = cluster.csms.emulator
    emulator.set_fault(FaultRule(outage=True))
    code, message = await refused(cluster, mount_request(GUIDE_JMES_OBJECTS))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "CSMS" in message
    emulator.clear_faults()

    emulator.reset_counters()
    emulator.set_fault(FaultRule(error_status=429, fail_next=1))
    response = await cluster.stub.Mount(mount_request(GUIDE_JMES_OBJECTS))
    assert versions_of(response)[0] == ("secret_1", "v2")
    assert emulator.calls("show_secret_version", "secret_1") == 2  # one 429, one success


# --------------------------------------------------------------------------- no leaks


async def test_secret_values_never_reach_logs_errors_or_metrics(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    details: list[str] = []
    await cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS))
    await cluster.stub.Mount(mount_request(GUIDE_JMES_OBJECTS))
    failing = [
        GUIDE_JMES_OBJECTS.replace("key2", "nope"),
        "- objectName: secret_2\n  objectType: csms\n  objectVersion: v1\n"
        "  jmesPath:\n    - path: x\n      objectAlias: y\n",
    ]
    for objects in failing:
        details.append((await refused(cluster, mount_request(objects)))[1])
    wrong_key = json.dumps({"ak": AK, "sk": "PER-VOLUME-SK-VALUE"})
    details.append((await refused(cluster, mount_request(GUIDE_SPC_OBJECTS, secrets=wrong_key)))[1])
    metrics = generate_latest(cluster.provider.metrics.registry).decode()
    for value in (*ALL_VALUES, "PER-VOLUME-SK-VALUE"):
        assert value not in caplog.text
        assert value not in metrics
        assert all(value not in detail for detail in details)
    assert "dew_provider_mount_total" in metrics
    assert "dew_provider_csms_requests_total{operation=" in metrics


# --------------------------------------------------------------------------- fuzzing


class ProviderThread:
    """The provider on its own loop, so a synchronous hypothesis test can call it over gRPC."""

    def __init__(self, config: ProviderConfig) -> None:
        self._config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.provider: Provider | None = None

    def __enter__(self) -> ProviderThread:
        self._thread.start()
        self.provider = Provider(self._config)
        asyncio.run_coroutine_threadsafe(self.provider.start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.provider is not None
        asyncio.run_coroutine_threadsafe(self.provider.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


YAML_SCALARS = st.one_of(
    st.sampled_from(["secret_1", "secret_2", "csms", "kms", "latest", "v1", "v2", "..", "a/b"]),
    st.text(max_size=12),
    st.integers(),
    st.booleans(),
    st.none(),
)
OBJECT_KEYS = st.sampled_from(
    ["objectName", "objectType", "objectVersion", "objectAlias", "jmesPath", "filePermission", "x"]
)
OBJECTS_YAML = st.one_of(
    st.text(max_size=80),
    st.lists(st.dictionaries(OBJECT_KEYS, YAML_SCALARS, max_size=6), max_size=4).map(json.dumps),
)


def test_fuzzed_objects_only_ever_give_validation_errors(
    tmp_path: Path,
    api: ApiServerThread,
    csms: CsmsEmulatorThread,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK)
    asyncio.run(_create_service_account(api.url))
    with ProviderThread(provider_config(tmp_path, api, csms.url)) as running:
        assert running.provider is not None
        socket = running.provider.config.socket_path
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = service_pb2_grpc.CSIDriverProviderStub(channel)
            allowed = {
                grpc.StatusCode.OK,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.NOT_FOUND,
            }

            @settings(
                max_examples=120,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking is slow here
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(objects=OBJECTS_YAML)
            @example(objects='[{"objectName": "\\ud800x", "x": 1}]')  # a lone surrogate
            def mount_anything(objects: str) -> None:
                try:
                    stub.Mount(mount_request(objects), timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()  # type: ignore[attr-defined]
                assert code in allowed, (objects, code)

            mount_anything()


async def _create_service_account(url: str) -> None:
    async with kube.Kube.from_url(url) as client:
        await client.create(kube.SERVICE_ACCOUNT, service_account(SA_ANNOTATION))


async def test_api_server_outage_is_unavailable_not_unknown(cluster: Cluster) -> None:
    # A ServiceAccount the provider's cache has not seen must be read from the API, which is down.
    cluster.api.stop()
    code, message = await refused(
        cluster, mount_request(GUIDE_SPC_OBJECTS, service_account="not-cached")
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert 'ServiceAccount "default/not-cached"' in message


# --------------------------------------------------------------------------- odd names


async def _whitelist(cluster: Cluster, *names: str) -> None:
    await cluster.kube.patch(
        kube.SERVICE_ACCOUNT,
        "nginx-spc-sa",
        {"metadata": {"annotations": {"cce.io/dew-resource": json.dumps(list(names))}}},
    )
    await asyncio.sleep(0.2)  # let the provider's watch cache see the change


@pytest.mark.parametrize(
    "name",
    ["secret_1\nI0101 00:00:00.000000 1 mount.py:1] forged", "secret_1\n", "a\x1b[2Kb", "a b"],
    ids=["forged-line", "trailing-newline", "escape-sequence", "space"],
)
async def test_an_object_name_outside_the_csms_rule_is_invalid_argument(
    cluster: Cluster, name: str
) -> None:
    # Even whitelisted, the name is refused before anything is read: CSMS could not hold it.
    await _whitelist(cluster, "secret_1", name)
    cluster.csms.emulator.reset_counters()
    objects = json.dumps([{"objectName": name, "objectType": "csms", "objectVersion": "v1"}])
    code, message = await refused(cluster, mount_request(objects))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith('SecretProviderClass "spc-test": object "')
    assert "objectName must be a CSMS secret name: 1 to 64 letters, digits, '.', '_' or '-'" in (
        message
    )
    assert "\n" not in message
    assert "\x1b" not in message
    assert cluster.csms.emulator.calls("show_secret_version") == 0


@pytest.mark.parametrize(
    "objects",
    [
        '[{"objectName": "\\udc80", "objectType": "csms", "objectVersion": "v1"}]',
        '- {objectName: "secret_\\ud800", objectType: csms, objectVersion: v1}',
    ],
    ids=["json-escape", "yaml-escape"],
)
async def test_a_lone_surrogate_name_is_invalid_argument_not_unknown(
    cluster: Cluster, objects: str
) -> None:
    await _whitelist(cluster, "secret_1", "\udc80", "secret_\ud800")
    code, message = await refused(cluster, mount_request(objects))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'SecretProviderClass "spc-test"' in message


KLOG_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


async def test_the_provider_logs_odd_names_escaped_one_line_each(cluster: Cluster) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KlogFormatter())
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    forged = 'I0101 00:00:00.000000       1 mount.py:1] "Mount succeeded"'
    try:
        request = mount_request(
            json.dumps(
                [{"objectName": f"a\n{forged}", "objectType": "csms", "objectVersion": "v1"}]
            )
        )
        attributes = json.loads(request.attributes)
        attributes["csi.storage.k8s.io/pod.name"] = f"web\r\n{forged}\x1b[1A"
        request.attributes = json.dumps(attributes)
        code, _ = await refused(cluster, request)
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    lines = stream.getvalue().splitlines()
    assert any("Servicing mount request" in line for line in lines)
    assert any("Mount failed" in line for line in lines)
    for line in lines:
        assert KLOG_LINE.match(line), line
        assert not line.startswith("I0101"), line
        assert "\x1b" not in line
        assert "\r" not in line


# --------------------------------------------------------------------------- hostile objects


class _NoYamlLoading:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("parameters.objects was loaded")


@pytest.mark.parametrize(
    ("objects", "named"),
    [(huge_objects(), "larger than the limit of 256 KiB"), (alias_bomb(), "aliases")],
    ids=["one-mebibyte", "alias-bomb"],
)
async def test_a_hostile_objects_text_is_refused_without_loading_it(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, objects: str, named: str
) -> None:
    monkeypatch.setattr(spc.yaml, "load", _NoYamlLoading)
    if len(objects) > 256 * 1024:  # spc.MAX_OBJECTS_BYTES
        monkeypatch.setattr(spc, "_SafeLoader", _NoYamlLoading)  # not even scanned
    parses = cluster.provider.objects.parses
    for _ in range(3):  # kubelet retries
        code, message = await asyncio.wait_for(refused(cluster, mount_request(objects)), 10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message.startswith('SecretProviderClass "spc-test": parameters.objects ')
        assert named in message
    # The bomb was scanned once; its verdict is remembered for the retries.
    assert cluster.provider.objects.parses - parses <= 1


async def test_invalid_objects_are_parsed_once_for_every_retry(cluster: Cluster) -> None:
    objects = INVALID_OBJECTS["duplicate-name"][0]
    parser = cluster.provider.objects
    parses, hits = parser.parses, parser.hits
    messages = {(await refused(cluster, mount_request(objects)))[1] for _ in range(5)}
    assert len(messages) == 1
    assert (parser.parses - parses, parser.hits - hits) == (1, 4)
    # Another class with the same text is a different key: its message names it.
    _, other = await refused(cluster, mount_request(objects, spc="other-spc"))
    assert other.startswith('SecretProviderClass "other-spc"')


async def test_an_unrelated_mount_stays_fast_while_hostile_classes_are_mounted(
    cluster: Cluster,
) -> None:
    hostile = [huge_objects(), alias_bomb()]
    # Within the bounds but as heavy as they allow: parsed in the worker thread, once each.
    hostile += [
        "".join(
            f"- {{objectName: s{i}_{n}, objectType: csms, objectVersion: v1}}\n"
            for i in range(500)  # spc.MAX_OBJECTS
        )
        for n in range(3)
    ]
    stop = asyncio.Event()
    outcomes: list[grpc.StatusCode] = []

    async def attacker(objects: str) -> None:
        while not stop.is_set():
            try:
                await cluster.stub.Mount(mount_request(objects), timeout=30)
                outcomes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as error:
                outcomes.append(error.code())

    attackers = [asyncio.create_task(attacker(o)) for _ in range(2) for o in hostile]
    try:
        await asyncio.sleep(0.2)
        for _ in range(10):
            response = await asyncio.wait_for(
                cluster.stub.Mount(mount_request(GUIDE_SPC_OBJECTS)), timeout=5
            )
            assert list(files_of(response)) == ["secret_test"]
    finally:
        stop.set()
        await asyncio.gather(*attackers)
    assert grpc.StatusCode.INVALID_ARGUMENT in outcomes
    assert set(outcomes) <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}
