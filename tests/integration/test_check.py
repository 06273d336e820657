"""`dew-csi check pod|spc` against the Kubernetes API emulator and the CSMS emulator over HTTP.

The guide's objects pass (both methods), through the CLI in-process and through the real
`dew-csi` executable in a subprocess; then one test per reason a mount would fail, each asserting
the failing line's message and the exit status. Every run asserts that no secret value, secret
key or token reaches stdout or stderr, and one test runs every check path for that alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dew_csi import cli, kube, spc
from dew_csi.csms.emulator import CsmsEmulatorThread, TemporaryCredentials
from dew_csi.csms.metadata_emulator import MetadataEmulatorThread
from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig
from tests.conftest import CRD_DIR, EXAMPLES

PROJECT, AK, SK = "project-check", "AK-CHECK-TEST", "SK-CHECK-TEST-5ecret-9f3b"
TEMP_AK, TEMP_SK, TEMP_TOKEN = "AK-CHECK-TEMP", "SK-CHECK-TEMP-77a1c0", "TOKEN-CHECK-TEMP-c3d4e5f6"
WRONG_SK = "SK-CHECK-WRONG-0b1c2d"
SECRET_1_V1 = '{"key1":"db-user-01-value-v1","key2":"db-user-02-value-v1"}'
SECRET_1_V2 = '{"key1":"db-user-01-value-v2","key2":"db-user-02-value-v2"}'
SECRET_2_V1 = "plain-secret-two-value"
SECRET_BIN_V1 = b"\x00\x01binary-secret-value\xff"
SENSITIVE = (
    SECRET_1_V1,
    SECRET_1_V2,
    "db-user-01-value",
    "db-user-02-value",
    SECRET_2_V1,
    "binary-secret-value",
    SK,
    TEMP_SK,
    TEMP_TOKEN,
    WRONG_SK,
)
NAMESPACE = "default"
ALLOWED = ["secret_1", "secret_2", "secret_bin", "secret_missing"]
CHECK_SA = "check-sa"
ENV_SOURCE = "the environment variables HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK"


def _encoded_forms(value: str) -> tuple[str, ...]:
    raw = value.encode()
    return (value, base64.b64encode(raw).decode(), json.dumps(value)[1:-1])


def assert_nothing_sensitive(*texts: str) -> None:
    for text in texts:
        for value in SENSITIVE:
            for form in _encoded_forms(value):
                assert form not in text, f"{value!r} leaked into the output"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def csms() -> Iterator[CsmsEmulatorThread]:
    with CsmsEmulatorThread(
        project_id=PROJECT,
        ak=AK,
        sk=SK,
        temporary_credentials=[TemporaryCredentials(TEMP_AK, TEMP_SK, TEMP_TOKEN)],
    ) as thread:
        thread.emulator.set_secret_versions("secret_1", [SECRET_1_V1, SECRET_1_V2])
        thread.emulator.set_secret_versions("secret_2", [SECRET_2_V1])
        thread.emulator.set_secret_versions("secret_bin", [SECRET_BIN_V1])
        yield thread


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def example_objects(name: str) -> str:
    """The `parameters.objects` YAML of one of the guide's SecretProviderClass files."""
    objects: str = example(name)["spec"]["parameters"]["objects"]
    return objects


def service_account(name: str, annotation: str | None) -> dict[str, Any]:
    annotations = {"cce.io/dew-resource": annotation} if annotation is not None else {}
    return {"metadata": {"name": name, "annotations": annotations}}


def spc_object(
    name: str,
    objects: str,
    *,
    provider: str = "cce",
    secret_objects: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"provider": provider, "parameters": {"objects": objects}}
    if secret_objects is not None:
        spec["secretObjects"] = secret_objects
    return {"metadata": {"name": name}, "spec": spec}


def pod_object(
    name: str,
    spc_name: str | None,
    *,
    account: str = CHECK_SA,
    read_only: bool | None = True,
    node_publish_secret: str | None = None,
) -> dict[str, Any]:
    csi: dict[str, Any] = {"driver": "secrets-store.csi.k8s.io"}
    if read_only is not None:
        csi["readOnly"] = read_only
    if spc_name is not None:
        csi["volumeAttributes"] = {"secretProviderClass": spc_name}
    if node_publish_secret is not None:
        csi["nodePublishSecretRef"] = {"name": node_publish_secret}
    return {
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": account,
            "containers": [{"name": "app", "image": "nginx:alpine"}],
            "volumes": [{"name": "secrets-store-inline", "csi": csi}],
        },
    }


def pod_from_deployment(file: str, name: str) -> dict[str, Any]:
    """A pod as the guide's Deployment would create it: its template, named."""
    template = example(file)["spec"]["template"]
    return {"metadata": {"name": name, **template["metadata"]}, "spec": template["spec"]}


def opaque_secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


@dataclass
class Env:
    api: ApiServerThread
    csms: CsmsEmulatorThread
    kubeconfig: Path
    capsys: pytest.CaptureFixture[str]

    def create(self, resource: kube.Resource, *objects: dict[str, Any]) -> None:
        async def create_all() -> None:
            async with kube.Kube.from_url(self.api.url) as client:
                for obj in objects:
                    body = {**obj, "metadata": {"namespace": NAMESPACE, **obj["metadata"]}}
                    await client.create(resource, body)

        asyncio.run(create_all())

    def delete(self, resource: kube.Resource, name: str) -> None:
        async def delete_one() -> None:
            async with kube.Kube.from_url(self.api.url) as client:
                await client.delete(resource, name, NAMESPACE)

        asyncio.run(delete_one())

    def check(
        self,
        *args: str,
        endpoint: str | None = None,
        location: bool = True,
        metadata_url: str = "none",
    ) -> Result:
        """`dew-csi check ARGS` in-process; stdout and stderr must hold nothing sensitive.
        Without `location`, no CSMS endpoint is given."""
        self.capsys.readouterr()
        where = ["--endpoint", endpoint or self.csms.url] if location else []
        argv = [
            "check",
            *args,
            "--kubeconfig",
            str(self.kubeconfig),
            *where,
            "--metadata-url",
            metadata_url,
        ]
        code = cli.main(argv)
        captured = self.capsys.readouterr()
        assert_nothing_sensitive(captured.out, captured.err)
        return Result(code, captured.out, captured.err)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def failed(self) -> list[str]:
        return [line.strip()[2:] for line in self.lines if line.startswith("  ✘ ")]

    def passed(self) -> list[str]:
        return [line.strip()[2:] for line in self.lines if line.startswith("  ✔ ")]

    def not_checked(self) -> list[str]:
        return [line.strip()[2:] for line in self.lines if line.startswith("  - ")]

    @property
    def summary(self) -> str:
        return self.lines[-1]


@pytest.fixture
def env(
    tmp_path: Path,
    csms: CsmsEmulatorThread,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Env]:
    for name in (
        "CSMS_ENDPOINT",
        "HUAWEICLOUD_SDK_REGION",
        "HUAWEICLOUD_SDK_SECURITY_TOKEN",
        "KUBECONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", AK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_PROJECT_ID", PROJECT)
    with ApiServerThread() as api:
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, api.url)
        running = Env(api, csms, kubeconfig, capsys)
        running.create(
            kube.CUSTOM_RESOURCE_DEFINITION,
            *(yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))),
        )
        running.create(
            kube.SERVICE_ACCOUNT,
            example("serviceaccount.yaml"),
            service_account(CHECK_SA, json.dumps(ALLOWED)),
        )
        running.create(
            kube.SECRET_PROVIDER_CLASS,
            example("secretproviderclass.yaml"),
            example("secretproviderclass-k8s-secrets.yaml"),
        )
        yield running


def single(env: Env, objects: str, **spc_options: Any) -> Result:
    """Check a pod whose one volume uses an SPC holding `objects`."""
    env.create(kube.SECRET_PROVIDER_CLASS, spc_object("spc-case", objects, **spc_options))
    env.create(kube.POD, pod_object("case", "spc-case"))
    return env.check("pod", "case")


def objects_yaml(name: str, version: str = "latest", **extra: Any) -> str:
    entry: dict[str, Any] = {"objectName": name, "objectType": "csms", "objectVersion": version}
    entry.update(extra)
    return yaml.safe_dump([entry], sort_keys=False)


# --------------------------------------------------------------------------- the guide passes


def test_guide_method_one_volume_pod_passes(env: Env) -> None:
    env.create(kube.POD, pod_from_deployment("deployment.yaml", "nginx-spc-67c9d5b594-642np"))

    result = env.check("pod", "nginx-spc-67c9d5b594-642np")

    assert result.code == 0, result.out
    assert result.failed() == []
    assert result.not_checked() == []
    assert result.lines[0] == "Pod default/nginx-spc-67c9d5b594-642np"
    assert result.passed() == [
        'pod default/nginx-spc-67c9d5b594-642np exists; it runs as ServiceAccount "nginx-spc-sa"',
        '1 CSI volume of driver secrets-store.csi.k8s.io: "secrets-store-inline"',
        "the volume is readOnly: true",
        "SecretProviderClass default/spc-test exists",
        'its provider is "cce"',
        'SecretProviderClass "spc-test" is valid: 1 object ("secret_1"), 1 file ("secret_test")',
        'ServiceAccount "default/nginx-spc-sa" allows secret "secret_1" (cce.io/dew-resource)',
        "credentials: the volume has no nodePublishSecretRef, so dew-provider uses its own; this "
        f"check uses those from {ENV_SOURCE} (AK {AK}, project {PROJECT})",
        'secret "secret_1" version v1 exists in CSMS (file "secret_test")',
    ]
    assert result.summary == (
        "✔ all 9 checks passed: the secrets of pod default/nginx-spc-67c9d5b594-642np would mount"
    )
    assert result.err == ""


def test_guide_method_two_k8s_secrets_pod_passes(env: Env) -> None:
    env.create(kube.POD, pod_from_deployment("deployment-k8s-secrets.yaml", "nginx-k8s-1"))

    result = env.check("pod", "nginx-k8s-1")

    assert result.code == 0, result.out
    assert result.failed() == []
    passed = result.passed()
    assert (
        'SecretProviderClass "nginx-deployment-spc-k8s-secrets" is valid: 1 object ("secret_1"), '
        '3 files ("secret_1", "dbusername01", "dbusername02")'
    ) in passed
    assert (
        'secretObjects "my-secret-01" (Opaque) takes its keys from files the SecretProviderClass '
        'mounts: "db_username_01" from file "dbusername01", "db_username_02" from file '
        '"dbusername02"'
    ) in passed
    # `latest` is shown as the version it resolves to.
    assert 'secret "secret_1" exists in CSMS; latest is version v2 (file "secret_1")' in passed
    assert 'jmesPath "key1" matches a value in secret "secret_1" v2 (file "dbusername01")' in passed
    assert 'jmesPath "key2" matches a value in secret "secret_1" v2 (file "dbusername02")' in passed
    assert result.summary.startswith("✔ all 12 checks passed")


def test_guide_spcs_pass_check_spc_with_and_without_the_service_account(env: Env) -> None:
    with_account = env.check("spc", "spc-test", "--service-account", "nginx-spc-sa")
    assert with_account.code == 0, with_account.out
    assert with_account.lines[0] == "SecretProviderClass default/spc-test"
    assert (
        'ServiceAccount "default/nginx-spc-sa" allows secret "secret_1" (cce.io/dew-resource)'
        in with_account.passed()
    )
    assert f"credentials from {ENV_SOURCE} (AK {AK}, project {PROJECT})" in with_account.passed()
    assert with_account.summary == (
        "✔ all 6 checks passed: SecretProviderClass default/spc-test is ready to mount"
    )

    without = env.check("spc", "nginx-deployment-spc-k8s-secrets")
    assert without.code == 0, without.out
    assert without.not_checked() == [
        "not checked: the ServiceAccount whitelist: pass --service-account NAME to check it"
    ]
    assert without.summary.startswith("✔ all 8 checks passed, 1 not checked")


def test_plain_output_and_options_before_the_subcommand(env: Env) -> None:
    env.capsys.readouterr()
    code = cli.main(
        [
            "check",
            "--plain",
            "-n",
            "default",
            "--kubeconfig",
            str(env.kubeconfig),
            "--endpoint",
            env.csms.url,
            "spc",
            "nginx-deployment-spc-k8s-secrets",
        ]
    )
    out = env.capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "  OK   SecretProviderClass default/nginx-deployment-spc-k8s-secrets exists"
    assert "  SKIP the ServiceAccount whitelist: pass --service-account NAME to check it" in lines
    assert lines[-1].startswith("OK   all 8 checks passed, 1 not checked")
    assert "✔" not in out
    assert "✘" not in out


# --------------------------------------------------------------------------- the real CLI


def dew_csi_command() -> list[str]:
    installed = Path(sys.executable).parent / "dew-csi"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "dew_csi.cli"]


def test_guide_happy_path_through_the_dew_csi_executable(env: Env, tmp_path: Path) -> None:
    env.create(kube.POD, pod_from_deployment("deployment.yaml", "nginx-spc-1"))
    env.create(kube.POD, pod_from_deployment("deployment-k8s-secrets.yaml", "nginx-k8s-1"))
    env_file = tmp_path / "csms.env"
    env_file.write_text(
        f"CSMS_ENDPOINT={env.csms.url}\nHUAWEICLOUD_SDK_AK={AK}\nHUAWEICLOUD_SDK_SK={SK}\n"
        f"HUAWEICLOUD_SDK_PROJECT_ID={PROJECT}\n"
    )
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HUAWEICLOUD_SDK_") and k not in ("CSMS_ENDPOINT", "KUBECONFIG")
    }
    for pod, checks in (("nginx-spc-1", 9), ("nginx-k8s-1", 12)):
        done = subprocess.run(
            [
                *dew_csi_command(),
                "check",
                "pod",
                pod,
                "-n",
                "default",
                "--kubeconfig",
                str(env.kubeconfig),
                "--env-file",
                str(env_file),
                "--metadata-url",
                "none",
            ],
            capture_output=True,
            text=True,
            env={**clean, "KUBECONFIG": str(env.kubeconfig), "PYTHONIOENCODING": "utf-8"},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stderr == ""
        assert done.stdout.splitlines()[-1] == (
            f"✔ all {checks} checks passed: the secrets of pod default/{pod} would mount"
        )
        assert_nothing_sensitive(done.stdout, done.stderr)

    failing = subprocess.run(
        [*dew_csi_command(), "check", "pod", "absent", "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        env={**clean, "KUBECONFIG": str(env.kubeconfig), "PYTHONIOENCODING": "utf-8"},
        timeout=60,
        check=False,
    )
    assert failing.returncode == 1
    assert '  ✘ pod "absent" not found in namespace "default"' in failing.stdout.splitlines()


# --------------------------------------------------------------------------- pod and volume


def test_pod_not_found_is_a_failed_check(env: Env) -> None:
    result = env.check("pod", "absent")
    assert result.code == 1
    assert result.failed() == ['pod "absent" not found in namespace "default"']
    assert result.summary == (
        "✘ 1 of 1 check failed: the secrets of pod default/absent would not mount"
    )
    elsewhere = env.check("pod", "nginx-spc-1", "-n", "other")
    assert elsewhere.code == 1
    assert elsewhere.failed() == ['pod "nginx-spc-1" not found in namespace "other"']


def test_kubernetes_api_unreachable(env: Env, tmp_path: Path) -> None:
    write_kubeconfig(env.kubeconfig, closed_port_url())
    result = env.check("pod", "nginx-spc-1")
    assert result.code == 1
    [line] = result.failed()
    assert line.startswith(
        "cannot read Pod default/nginx-spc-1 from the Kubernetes API: Kubernetes API unreachable"
    )


def test_pod_without_a_secrets_store_volume(env: Env) -> None:
    env.create(
        kube.POD,
        {
            "metadata": {"name": "plain"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]},
        },
    )
    result = env.check("pod", "plain")
    assert result.code == 1
    assert result.failed() == [
        "the pod has no inline CSI volume of driver secrets-store.csi.k8s.io, so no secret would "
        "be mounted: add a csi volume with driver secrets-store.csi.k8s.io, readOnly: true and "
        "volumeAttributes.secretProviderClass"
    ]


def test_read_only_missing(env: Env) -> None:
    env.create(kube.POD, pod_object("writable", "spc-test", read_only=None))
    result = env.check("pod", "writable")
    assert result.code == 1
    assert result.failed() == [
        'the volume is not readOnly: true; the driver refuses it ("Readonly is not true in '
        "request\"): set readOnly: true on the pod's CSI volume"
    ]
    # The other checks still ran and passed.
    assert 'secret "secret_1" version v1 exists in CSMS (file "secret_test")' in result.passed()
    assert result.summary.startswith("✘ 1 of 9 checks failed")


def test_volume_without_secret_provider_class_attribute(env: Env) -> None:
    env.create(kube.POD, pod_object("unnamed", None))
    result = env.check("pod", "unnamed")
    assert result.code == 1
    assert result.failed() == [
        "the volume has no secretProviderClass attribute: set "
        "volumeAttributes.secretProviderClass on the pod's CSI volume"
    ]


def test_missing_spc(env: Env) -> None:
    env.create(kube.POD, pod_object("orphan", "spc-absent"))
    result = env.check("pod", "orphan")
    assert result.code == 1
    assert result.failed() == [
        'SecretProviderClass "spc-absent" not found in namespace "default"; create it in the '
        "pod's namespace"
    ]
    assert result.not_checked() == [
        "not checked: the rest of this volume: it needs its SecretProviderClass"
    ]
    assert result.summary == (
        "✘ 1 of 4 checks failed, 1 not checked: the secrets of pod default/orphan would not mount"
    )

    spc_result = env.check("spc", "spc-absent")
    assert spc_result.code == 1
    assert spc_result.failed() == [
        'SecretProviderClass "spc-absent" not found in namespace "default"'
    ]


def test_invalid_spc_gives_the_providers_message(env: Env) -> None:
    objects = objects_yaml("secret_1", objectType="kms")
    with pytest.raises(spc.SpcValidationError) as provider_error:
        spc.parse_objects("spc-case", objects)  # what dew-provider runs on every mount

    result = single(env, objects)

    assert result.code == 1
    assert result.failed() == [str(provider_error.value)]
    assert result.failed() == [
        'SecretProviderClass "spc-case": object "secret_1": objectType "kms" is not supported; '
        'the only supported objectType is "csms"'
    ]
    assert result.not_checked() == [
        "not checked: ServiceAccount, credentials and CSMS checks of this volume: they need a "
        "valid SecretProviderClass"
    ]


def test_other_provider(env: Env) -> None:
    result = single(env, objects_yaml("secret_1"), provider="aws")
    assert result.code == 1
    assert result.failed() == [
        'SecretProviderClass "spc-case": spec.provider is "aws", but this provider only serves '
        'provider "cce"'
    ]
    assert 'its provider is "cce"' not in result.passed()


# --------------------------------------------------------------------------- whitelist


def test_service_account_missing(env: Env) -> None:
    # Admission refuses a pod whose ServiceAccount is missing: delete it afterwards.
    env.create(kube.SERVICE_ACCOUNT, service_account("ghost", '["secret_1"]'))
    env.create(kube.POD, pod_object("no-sa", "spc-test", account="ghost"))
    env.delete(kube.SERVICE_ACCOUNT, "ghost")
    result = env.check("pod", "no-sa")
    assert result.code == 1
    assert result.failed() == [
        'ServiceAccount "default/ghost" does not exist; the pod\'s ServiceAccount must exist and '
        "list the secrets it may mount in the annotation cce.io/dew-resource"
    ]
    # Independent checks still ran: CSMS was read.
    assert 'secret "secret_1" version v1 exists in CSMS (file "secret_test")' in result.passed()


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        pytest.param(
            None,
            'ServiceAccount "default/sa-case" has no annotation cce.io/dew-resource; add the '
            "names of the CSMS secrets its pods may mount, for example cce.io/dew-resource: "
            """'["secret_1","secret_2"]'""",
            id="missing",
        ),
        pytest.param(
            "secret_1,secret_2",
            'ServiceAccount "default/sa-case" has a malformed annotation cce.io/dew-resource: '
            "it must be a JSON array of secret names, for example cce.io/dew-resource: "
            """'["secret_1","secret_2"]'""",
            id="malformed",
        ),
        pytest.param(
            '["secret_2"]',
            'secret "secret_1" is not allowed for ServiceAccount "default/sa-case": add it to the '
            'annotation cce.io/dew-resource (it lists ["secret_2"])',
            id="not-listing-the-secret",
        ),
    ],
)
def test_whitelist_annotation(env: Env, annotation: str | None, message: str) -> None:
    env.create(kube.SERVICE_ACCOUNT, service_account("sa-case", annotation))
    env.create(kube.POD, pod_object("wl", "spc-test", account="sa-case"))

    result = env.check("pod", "wl")

    assert result.code == 1
    assert result.failed() == [message]
    spc_result = env.check("spc", "spc-test", "--service-account", "sa-case")
    assert spc_result.code == 1
    assert spc_result.failed() == [message]


def test_whitelist_is_checked_per_secret(env: Env) -> None:
    env.create(kube.SERVICE_ACCOUNT, service_account("sa-one", '["secret_2"]'))
    objects = example_objects("secretproviderclass-realtime.yaml")
    env.create(kube.SECRET_PROVIDER_CLASS, spc_object("spc-two", objects))

    result = env.check("spc", "spc-two", "--service-account", "sa-one")

    assert result.code == 1
    assert result.failed() == [
        'secret "secret_1" is not allowed for ServiceAccount "default/sa-one": add it to the '
        'annotation cce.io/dew-resource (it lists ["secret_2"])'
    ]
    assert (
        'ServiceAccount "default/sa-one" allows secret "secret_2" (cce.io/dew-resource)'
        in result.passed()
    )


# --------------------------------------------------------------------------- CSMS


def test_secret_missing_in_csms(env: Env) -> None:
    result = single(env, objects_yaml("secret_missing", "v1"))
    assert result.code == 1
    [line] = result.failed()
    assert line.startswith(
        "secret \"secret_missing\" does not exist in CSMS: CSMS secret 'secret_missing' does not "
        "exist"
    )
    assert "check the secret name, the region and the project" in line


def test_version_missing(env: Env) -> None:
    result = single(env, objects_yaml("secret_2", "v9"))
    assert result.code == 1
    [line] = result.failed()
    assert line.startswith(
        "secret \"secret_2\" version v9 does not exist in CSMS: CSMS secret 'secret_2' has no "
        "version 'v9'"
    )


def test_binary_secret_passes(env: Env) -> None:
    result = single(env, objects_yaml("secret_bin", "v1"))
    assert result.code == 0, result.out
    assert 'secret "secret_bin" version v1 exists in CSMS (file "secret_bin")' in result.passed()


def test_jmes_path_key_missing_lists_the_key_names_only(env: Env) -> None:
    objects = objects_yaml(
        "secret_1",
        jmesPath=[
            {"path": "key1", "objectAlias": "user"},
            {"path": "key3", "objectAlias": "password"},
        ],
    )
    result = single(env, objects)
    assert result.code == 1
    assert result.failed() == [
        'jmesPath "key3" matches nothing in secret "secret_1" version v2: it is neither a '
        "top-level key of the secret's JSON nor a JMESPath expression that finds a value; the "
        'secret\'s top-level keys are "key1", "key2"'
    ]
    assert 'jmesPath "key1" matches a value in secret "secret_1" v2 (file "user")' in (
        result.passed()
    )


def test_non_json_secret_with_jmes_path(env: Env) -> None:
    objects = objects_yaml(
        "secret_2",
        "v1",
        jmesPath=[
            {"path": "key1", "objectAlias": "one"},
            {"path": "key2", "objectAlias": "two"},
        ],
    )
    result = single(env, objects)
    assert result.code == 1
    assert result.failed() == [
        'secret "secret_2" version v1 is not a JSON object, so its jmesPath entries cannot be '
        'extracted; store the secret as JSON (for example {"key1": "..."}) or remove jmesPath'
    ]


def test_secret_objects_naming_an_unmounted_file(env: Env) -> None:
    synced = [
        {
            "secretName": "my-secret-01",
            "type": "Opaque",
            "data": [{"objectName": "dbusername03", "key": "db_username_03"}],
        }
    ]
    objects = objects_yaml("secret_1", jmesPath=[{"path": "key1", "objectAlias": "dbusername01"}])
    result = single(env, objects, secret_objects=synced)
    assert result.code == 1
    assert result.failed() == [
        'SecretProviderClass "spc-case": secretObjects entry "my-secret-01": data entry #1 '
        'objectName "dbusername03" is not a file this SecretProviderClass mounts; it must be an '
        "objectAlias, a jmesPath objectAlias or an objectName without alias (mounted files: "
        '"dbusername01", "secret_1")'
    ]
    # The objects themselves are fine and were checked against CSMS.
    assert 'jmesPath "key1" matches a value in secret "secret_1" v2 (file "dbusername01")' in (
        result.passed()
    )


def test_wrong_secret_key_is_an_authentication_failure(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", WRONG_SK)
    env.create(kube.POD, pod_from_deployment("deployment-k8s-secrets.yaml", "bad-sk"))

    result = env.check("pod", "bad-sk")

    assert result.code == 1
    [line] = result.failed()
    assert line.startswith(
        "CSMS refused the credentials: CSMS show_secret_version of secret 'secret_1' version "
        f"'latest': CSMS refused the credentials from {ENV_SOURCE} (AK {AK}, project {PROJECT}; "
        "HTTP 401 APIG.0301"
    )
    assert "Check the AK/SK pair" in line
    assert result.not_checked() == [
        'not checked: jmesPath of secret "secret_1": the secret cannot be read'
    ]


def test_wrong_secret_key_stops_the_other_csms_reads(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", WRONG_SK)
    objects = example_objects("secretproviderclass-realtime.yaml")
    env.create(kube.SECRET_PROVIDER_CLASS, spc_object("spc-two", objects))

    result = env.check("spc", "spc-two")

    assert result.code == 1
    assert len(result.failed()) == 1
    assert result.failed()[0].startswith("CSMS refused the credentials:")
    assert result.not_checked()[-1] == (
        'not checked: CSMS checks of secret "secret_2": CSMS cannot be read with these '
        "credentials (see above)"
    )
    assert env.csms.emulator.calls("show_secret_version", "secret_2") == 0


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_csms_unreachable(env: Env) -> None:
    env.create(kube.POD, pod_from_deployment("deployment.yaml", "offline"))
    url = closed_port_url()

    result = env.check("pod", "offline", endpoint=url)

    assert result.code == 1
    [line] = result.failed()
    assert line.startswith(
        'CSMS is unavailable reading secret "secret_1" version v1: CSMS show_secret_version of '
        f"secret 'secret_1' version 'v1': cannot reach CSMS at {url} (ConnectError); check the "
        "endpoint or region"
    )
    assert line.endswith("(gave up after 2 attempts)")


# --------------------------------------------------------------------------- credentials


def test_node_publish_secret_credentials_are_used(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command's own credentials are wrong: passing proves the volume's are used.
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", WRONG_SK)
    env.create(
        kube.SECRET,
        opaque_secret("csms-creds", {"ak": TEMP_AK, "sk": TEMP_SK, "security_token": TEMP_TOKEN}),
    )
    env.create(kube.POD, pod_object("per-volume", "spc-test", node_publish_secret="csms-creds"))

    result = env.check("pod", "per-volume")

    assert result.code == 0, result.out
    assert (
        'credentials: nodePublishSecretRef Secret "default/csms-creds" holds ak and sk '
        f"(AK {TEMP_AK}, temporary, project {PROJECT})"
    ) in result.passed()


def test_node_publish_secret_missing(env: Env) -> None:
    env.create(kube.POD, pod_object("no-creds", "spc-test", node_publish_secret="absent"))
    result = env.check("pod", "no-creds")
    assert result.code == 1
    assert result.failed() == [
        'nodePublishSecretRef Secret "default/absent" does not exist; kubelet cannot publish the '
        "volume without it: create it with keys ak and sk (and optionally security_token, "
        "project_id)"
    ]
    assert result.not_checked() == [
        "not checked: CSMS checks of this volume: no usable credentials"
    ]


def test_node_publish_secret_without_sk_names_keys_never_values(env: Env) -> None:
    env.create(
        kube.SECRET, opaque_secret("half-creds", {"ak": TEMP_AK, "security_token": TEMP_TOKEN})
    )
    env.create(kube.POD, pod_object("half", "spc-test", node_publish_secret="half-creds"))
    result = env.check("pod", "half")
    assert result.code == 1
    assert result.failed() == [
        'nodePublishSecretRef Secret "default/half-creds": CSMS credentials: the '
        "nodePublishSecretRef Secret is missing key 'sk' (or it is empty); it must contain 'ak' "
        "and 'sk', and may contain 'security_token' and 'project_id'; keys present: ak, "
        "security_token"
    ]


def test_no_credentials_anywhere(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUAWEICLOUD_SDK_AK")
    monkeypatch.delenv("HUAWEICLOUD_SDK_SK")
    result = env.check("spc", "spc-test")
    assert result.code == 1
    assert result.failed() == [
        "CSMS credentials: no CSMS credentials found: the environment: neither "
        "HUAWEICLOUD_SDK_AK nor HUAWEICLOUD_SDK_SK is set; set HUAWEICLOUD_SDK_AK and "
        "HUAWEICLOUD_SDK_SK (or --env-file), or pass --credentials-dir or --metadata-url"
    ]
    assert result.not_checked()[-1] == "not checked: CSMS checks: no usable credentials"


def test_no_project_id(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUAWEICLOUD_SDK_PROJECT_ID")
    result = env.check("spc", "spc-test")
    assert result.code == 1
    assert result.failed() == [
        f"the credentials from {ENV_SOURCE} (AK {AK}) carry no project id: pass --project-id, set "
        "HUAWEICLOUD_SDK_PROJECT_ID, or add project_id next to the AK/SK"
    ]


# --------------------------------------------------------------------------- no CSMS location

SKIPPED_SECRET_1 = (
    'not checked: credentials and CSMS checks of secret "secret_1" (secret and version exist): '
    "no CSMS location was given; pass --region REGION or --endpoint URL (or --env-file FILE "
    "with CSMS_ENDPOINT) to check them"
)


def test_without_a_csms_location_the_kubernetes_checks_run(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No location and no credentials either: neither is needed for the Kubernetes checks.
    for name in ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_PROJECT_ID"):
        monkeypatch.delenv(name)
    env.create(kube.POD, pod_from_deployment("deployment.yaml", "k8s-only"))

    result = env.check("pod", "k8s-only", location=False)

    assert result.code == 0, result.out + result.err
    assert result.err == ""
    assert result.passed() == [
        'pod default/k8s-only exists; it runs as ServiceAccount "nginx-spc-sa"',
        '1 CSI volume of driver secrets-store.csi.k8s.io: "secrets-store-inline"',
        "the volume is readOnly: true",
        "SecretProviderClass default/spc-test exists",
        'its provider is "cce"',
        'SecretProviderClass "spc-test" is valid: 1 object ("secret_1"), 1 file ("secret_test")',
        'ServiceAccount "default/nginx-spc-sa" allows secret "secret_1" (cce.io/dew-resource)',
    ]
    assert result.not_checked() == [SKIPPED_SECRET_1]
    assert result.summary == (
        "✔ all 7 checks passed, 1 not checked: Kubernetes is ready to mount the secrets of pod "
        "default/k8s-only; CSMS was not checked"
    )
    assert env.csms.emulator.calls("show_secret_version", "secret_1") == 0


def test_without_a_csms_location_a_kubernetes_failure_still_fails(env: Env) -> None:
    env.create(kube.SERVICE_ACCOUNT, service_account("nobody-sa", "[]"))
    env.create(kube.POD, pod_object("not-allowed", "spc-test", account="nobody-sa"))

    result = env.check("pod", "not-allowed", location=False)

    assert result.code == 1
    assert result.failed() == [
        'secret "secret_1" is not allowed for ServiceAccount "default/nobody-sa": add it to the '
        "annotation cce.io/dew-resource (it lists [])"
    ]
    assert result.not_checked() == [SKIPPED_SECRET_1]
    assert result.summary == (
        "✘ 1 of 7 checks failed, 1 not checked: the secrets of pod default/not-allowed would "
        "not mount"
    )


def test_without_a_csms_location_check_spc_names_the_jmes_path_checks(env: Env) -> None:
    result = env.check(
        "spc",
        "nginx-deployment-spc-k8s-secrets",
        "--service-account",
        "nginx-spc-sa",
        location=False,
    )

    assert result.code == 0, result.out
    assert 'secretObjects "my-secret-01" (Opaque) takes its keys from files' in " ".join(
        result.passed()
    )
    assert result.not_checked() == [
        'not checked: credentials and CSMS checks of secret "secret_1" (secret and version '
        "exist, jmesPath matches): no CSMS location was given; pass --region REGION or "
        "--endpoint URL (or --env-file FILE with CSMS_ENDPOINT) to check them"
    ]
    assert result.summary == (
        "✔ all 5 checks passed, 1 not checked: SecretProviderClass "
        "default/nginx-deployment-spc-k8s-secrets is ready as far as Kubernetes goes; CSMS was "
        "not checked"
    )


def test_without_a_csms_location_the_node_publish_secret_is_still_read(env: Env) -> None:
    env.create(kube.SECRET, opaque_secret("csms-creds", {"ak": TEMP_AK, "sk": TEMP_SK}))
    env.create(kube.POD, pod_object("own-creds", "spc-test", node_publish_secret="csms-creds"))
    env.create(kube.POD, pod_object("lost-creds", "spc-test", node_publish_secret="absent"))

    present = env.check("pod", "own-creds", location=False)
    assert present.code == 0, present.out
    assert (
        f'credentials: nodePublishSecretRef Secret "default/csms-creds" holds ak and sk '
        f"(AK {TEMP_AK})"
    ) in present.passed()
    assert present.not_checked() == [
        'not checked: CSMS checks of secret "secret_1" (secret and version exist): no CSMS '
        "location was given; pass --region REGION or --endpoint URL (or --env-file FILE with "
        "CSMS_ENDPOINT) to check them"
    ]

    absent = env.check("pod", "lost-creds", location=False)
    assert absent.code == 1
    assert absent.failed()[0].startswith(
        'nodePublishSecretRef Secret "default/absent" does not exist'
    )
    assert absent.not_checked() == [
        "not checked: CSMS checks of this volume: no usable credentials"
    ]


def test_without_a_csms_location_through_the_executable(env: Env) -> None:
    env.create(kube.POD, pod_from_deployment("deployment.yaml", "k8s-only-cli"))
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HUAWEICLOUD_SDK_") and k not in ("CSMS_ENDPOINT", "KUBECONFIG")
    }
    done = subprocess.run(
        [*dew_csi_command(), "check", "pod", "k8s-only-cli", "--kubeconfig", str(env.kubeconfig)],
        capture_output=True,
        text=True,
        env={**clean, "PYTHONIOENCODING": "utf-8"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert "  - not checked: credentials and CSMS checks of secret" in done.stdout
    assert done.stdout.splitlines()[-1].endswith("; CSMS was not checked")


# --------------------------------------------------------------------------- credential source


def test_credentials_from_the_env_file_are_named_so(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The environment holds a wrong key: passing proves the file's pair was used.
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", WRONG_SK)
    env_file = tmp_path / "csms.env"
    env_file.write_text(f"HUAWEICLOUD_SDK_AK={AK}\nHUAWEICLOUD_SDK_SK={SK}\n")

    result = env.check("spc", "spc-test", "--env-file", str(env_file))

    assert result.code == 0, result.out
    assert f"credentials from --env-file {env_file} (AK {AK}, project {PROJECT})" in (
        result.passed()
    )


def test_credentials_mixed_from_env_file_and_environment_name_each(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HUAWEICLOUD_SDK_SK")
    env_file = tmp_path / "sk.env"
    env_file.write_text(f"HUAWEICLOUD_SDK_SK={SK}\n")

    result = env.check("spc", "spc-test", "--env-file", str(env_file))

    assert result.code == 0, result.out
    assert (
        f"credentials from HUAWEICLOUD_SDK_AK from the environment, HUAWEICLOUD_SDK_SK from "
        f"--env-file {env_file} (AK {AK}, project {PROJECT})"
    ) in result.passed()


def test_half_a_pair_names_where_each_half_was_looked_for(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HUAWEICLOUD_SDK_SK")
    env_file = tmp_path / "empty.env"
    env_file.write_text("# nothing\n")

    result = env.check("spc", "spc-test", "--env-file", str(env_file))

    assert result.code == 1
    assert result.failed() == [
        "CSMS credentials: HUAWEICLOUD_SDK_AK is set (in the environment) but "
        f"HUAWEICLOUD_SDK_SK is missing or empty in the environment and --env-file {env_file}: "
        "set both; set HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK (or --env-file), or pass "
        "--credentials-dir or --metadata-url"
    ]


def test_credentials_from_the_credentials_dir_are_named_so(
    env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HUAWEICLOUD_SDK_AK")
    monkeypatch.delenv("HUAWEICLOUD_SDK_SK")
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "ak").write_text(AK)
    (directory / "sk").write_text(SK)

    result = env.check("spc", "spc-test", "--credentials-dir", str(directory))

    assert result.code == 0, result.out
    assert f"credentials from --credentials-dir {directory} (AK {AK}, project {PROJECT})" in (
        result.passed()
    )


def test_credentials_from_the_metadata_service_are_named_so(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUAWEICLOUD_SDK_AK")
    monkeypatch.delenv("HUAWEICLOUD_SDK_SK")
    with MetadataEmulatorThread(
        project_id=PROJECT, on_issue=env.csms.emulator.add_temporary_credentials
    ) as metadata:
        result = env.check("spc", "spc-test", metadata_url=metadata.emulator.url)
        issued = metadata.emulator.issued[-1]

    assert result.code == 0, result.out
    assert (
        f"credentials from the node's agency via the ECS metadata service at "
        f"{metadata.emulator.url} (AK {issued.ak}, temporary, project {PROJECT})"
    ) in result.passed()


# --------------------------------------------------------------------------- usage, output


def test_usage_errors_exit_2(env: Env, tmp_path: Path) -> None:
    env.capsys.readouterr()
    missing = tmp_path / "no-such-kubeconfig"
    code = cli.main(["check", "pod", "x", "--kubeconfig", str(missing), "--endpoint", "http://h"])
    assert code == 2
    assert env.capsys.readouterr().err == (
        f"dew-csi check: the kubeconfig {missing} (--kubeconfig) does not exist; pass "
        "--kubeconfig FILE or set KUBECONFIG to a valid kubeconfig\n"
    )

    broken = tmp_path / "broken-kubeconfig"
    broken.write_text('apiVersion: v1\nusers:\n- name: x\n  user: {token: "TOKEN-IN-KUBECONFIG\n')
    code = cli.main(["check", "pod", "x", "--kubeconfig", str(broken), "--endpoint", "http://h"])
    assert code == 2
    err = env.capsys.readouterr().err
    assert f"dew-csi check: the kubeconfig {broken} (--kubeconfig) is not valid YAML" in err
    assert "TOKEN-IN-KUBECONFIG" not in err

    with pytest.raises(SystemExit) as both:
        cli.main(["check", "pod", "x", "--endpoint", "http://h", "--region", "cn-north-4"])
    assert both.value.code == 2
    with pytest.raises(SystemExit) as no_name:
        cli.main(["check", "pod"])
    assert no_name.value.code == 2


def test_names_cannot_drive_the_terminal(env: Env) -> None:
    result = single(env, objects_yaml("evil\x1b[2J\x07", "v1"))
    assert result.code == 1
    assert "\x1b" not in result.out
    assert "\x07" not in result.out
    assert "evil\\u001b[2J\\u0007" in result.out


def test_a_pod_with_two_volumes_checks_each(env: Env) -> None:
    pod = pod_from_deployment("deployment.yaml", "two-volumes")
    second = {
        "name": "second",
        "csi": {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": "spc-absent"},
        },
    }
    pod["spec"]["volumes"].append(second)
    env.create(kube.POD, pod)

    result = env.check("pod", "two-volumes")

    assert result.code == 1
    assert 'Volume "secrets-store-inline"' in result.lines
    assert 'Volume "second"' in result.lines
    assert (
        '2 CSI volumes of driver secrets-store.csi.k8s.io: "secrets-store-inline", "second"'
        in result.passed()
    )
    assert result.failed() == [
        'SecretProviderClass "spc-absent" not found in namespace "default"; create it in the '
        "pod's namespace"
    ]


# --------------------------------------------------------------------------- nothing leaks


def test_no_check_path_prints_a_value_key_or_token(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Seed known values, walk every check path, look for every value in every output
    (and in every log record, which --verbose sends to stderr)."""
    caplog.set_level(logging.DEBUG)
    jmes = [{"path": "key1", "objectAlias": "a1"}, {"path": "nope", "objectAlias": "a2"}]
    cases: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
        "jmes-ok-and-missing": (
            spc_object("s-jmes", objects_yaml("secret_1", jmesPath=jmes)),
            pod_object("p-jmes", "s-jmes"),
        ),
        "non-json": (
            spc_object("s-nonjson", objects_yaml("secret_2", "v1", jmesPath=jmes)),
            pod_object("p-nonjson", "s-nonjson"),
        ),
        "binary-jmes": (
            spc_object("s-bin", objects_yaml("secret_bin", "v1", jmesPath=jmes)),
            pod_object("p-bin", "s-bin"),
        ),
        "version-missing": (
            spc_object("s-v9", objects_yaml("secret_1", "v9")),
            pod_object("p-v9", "s-v9"),
        ),
        "secret-missing": (
            spc_object("s-gone", objects_yaml("secret_missing")),
            pod_object("p-gone", "s-gone"),
        ),
        "invalid": (
            spc_object("s-bad", objects_yaml("secret_1", objectType="kms")),
            pod_object("p-bad", "s-bad", read_only=False),
        ),
        "per-volume-token": (
            spc_object("s-tok", objects_yaml("secret_1")),
            pod_object("p-tok", "s-tok", node_publish_secret="tok"),
        ),
        "per-volume-wrong": (
            spc_object("s-wrong", objects_yaml("secret_1")),
            pod_object("p-wrong", "s-wrong", node_publish_secret="wrong"),
        ),
        "per-volume-half": (
            spc_object("s-half", objects_yaml("secret_1")),
            pod_object("p-half", "s-half", node_publish_secret="half"),
        ),
        "not-whitelisted": (
            spc_object("s-wl", objects_yaml("secret_1")),
            pod_object("p-wl", "s-wl", account="nginx-spc-sa-none"),
        ),
    }
    env.create(kube.SERVICE_ACCOUNT, service_account("nginx-spc-sa-none", "[]"))
    env.create(
        kube.SECRET,
        opaque_secret("tok", {"ak": TEMP_AK, "sk": TEMP_SK, "security_token": TEMP_TOKEN}),
        opaque_secret("wrong", {"ak": AK, "sk": WRONG_SK, "project_id": PROJECT}),
        opaque_secret("half", {"sk": TEMP_SK, "security_token": TEMP_TOKEN}),
    )
    env.create(kube.SECRET_PROVIDER_CLASS, *(s for s, _ in cases.values()))
    env.create(kube.POD, *(p for _, p in cases.values()))

    outputs: list[Result] = [env.check("pod", pod["metadata"]["name"]) for _, pod in cases.values()]
    outputs += [env.check("spc", s["metadata"]["name"]) for s, _ in cases.values()]
    outputs.append(env.check("pod", "p-jmes", "--verbose"))
    outputs.append(env.check("pod", "p-jmes", endpoint=closed_port_url()))
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", WRONG_SK)
    monkeypatch.setenv("HUAWEICLOUD_SDK_SECURITY_TOKEN", TEMP_TOKEN)
    outputs.append(env.check("pod", "p-jmes", "--verbose"))

    everything = "\n".join([*(r.out + r.err for r in outputs), caplog.text])
    assert_nothing_sensitive(everything)
    assert f"using CSMS credentials from {ENV_SOURCE}" in caplog.text  # the logs were looked at
    # Every kind of outcome was really exercised.
    for expected in (
        "matches a value",
        "matches nothing",
        "is not a JSON object",
        "has no version 'v9'",
        "does not exist in CSMS",
        'objectType "kms" is not supported',
        "the volume is not readOnly: true",
        f"(AK {TEMP_AK}, temporary, project {PROJECT})",
        "CSMS refused the credentials",
        "is missing key 'ak'",
        "is not allowed for ServiceAccount",
        "cannot reach CSMS",
        "the secret's top-level keys are",
    ):
        assert expected in everything, expected
