"""The real `kubectl apply` against the API emulator (a `dew-csi sandbox apiserver` process) with
`dew-csi webhook` (a real process) registered through a ValidatingWebhookConfiguration, as on a
cluster: an invalid SecretProviderClass is refused with the provider's own sentence, a valid one
is created, and failurePolicy decides what happens when the webhook is down."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dew_csi.spc import SpcValidationError, validate_spc
from tests.conftest import CRD_DIR, EXAMPLES, ApiServerProcess
from tests.e2e.conftest import Kubectl
from tests.integration.test_webhook import Tls, make_certificate

pytestmark = [pytest.mark.kubectl, pytest.mark.e2e]

GROUP = "secrets-store.csi.x-k8s.io"
SPC_RESOURCE = f"secretproviderclass.{GROUP}"
HOOK = "validate.secretproviderclasses.dew-csi.io"
CONFIGURATION = "dew-csi-webhook"

BAD_SPC = """\
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: x
spec:
  provider: cce
  parameters:
    objects: |
      - objectName: "y"
        objectType: "kms"
        objectVersion: "latest"
"""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: the tests make the webhook's certificate with it")
    return make_certificate(tmp_path_factory.mktemp("tls"), "webhook")


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(CRD_DIR))


@dataclass
class WebhookProcess:
    process: subprocess.Popen[str]
    url: str

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_webhook(tls: Tls, kubeconfig: Path, log: Path) -> WebhookProcess:
    """`dew-csi webhook` as a process; returns once it printed its listening line."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dew_csi.cli",
                "webhook",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                str(tls.cert),
                "--tls-key",
                str(tls.key),
                "--kubeconfig",
                str(kubeconfig),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    prefix = "dew-csi webhook listening on "
    if not line.startswith(prefix):
        process.kill()
        process.wait()
        raise AssertionError(f"unexpected first line {line!r}; log:\n{log.read_text()}")
    return WebhookProcess(process, line.removeprefix(prefix))


def configuration(url: str, ca_bundle: str, failure_policy: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [
            {
                "name": HOOK,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": failure_policy,
                "timeoutSeconds": 5,
                "matchPolicy": "Equivalent",
                "rules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["v1", "v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["secretproviderclasses"],
                        "scope": "Namespaced",
                    }
                ],
                "clientConfig": {"url": f"{url}/validate", "caBundle": ca_bundle},
            }
        ],
    }


@dataclass
class Registered:
    webhook: WebhookProcess
    workdir: Path

    def write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.write_text(text)
        return path


_tests = itertools.count()


@pytest.fixture
def registered(
    kubectl: Kubectl,
    crds: None,
    emulator: ApiServerProcess,
    tls: Tls,
    tmp_path: Path,
) -> Iterator[Registered]:
    """A webhook process and its ValidatingWebhookConfiguration (failurePolicy Fail), removed
    again after the test."""
    assert emulator.kubeconfig is not None
    webhook = start_webhook(tls, emulator.kubeconfig, tmp_path / "webhook.log")
    try:
        config = tmp_path / "vwc.yaml"
        config.write_text(yaml.safe_dump(configuration(webhook.url, tls.ca_bundle, "Fail")))
        applied = kubectl.run("apply", "-f", str(config)).stdout
        assert applied == (
            f"validatingwebhookconfiguration.admissionregistration.k8s.io/{CONFIGURATION} created\n"
        )
        yield Registered(webhook, tmp_path)
    finally:
        kubectl.run("delete", "validatingwebhookconfiguration", CONFIGURATION, check=False)
        webhook.stop()


@pytest.fixture
def ns(kubectl: Kubectl, crds: None) -> str:
    name = f"webhook-{next(_tests)}"
    kubectl.run("create", "namespace", name)
    return name


def provider_message(text: str) -> str:
    with pytest.raises(SpcValidationError) as caught:
        validate_spc(yaml.safe_load(text))
    return str(caught.value)


def test_kubectl_apply_of_an_invalid_spc_prints_the_webhooks_message(
    kubectl: Kubectl, registered: Registered, ns: str
) -> None:
    bad = registered.write("bad.yaml", BAD_SPC)
    result = kubectl.run("apply", "-n", ns, "-f", str(bad), check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f'Error from server: error when creating "{bad}": admission webhook "{HOOK}" denied the '
        'request: SecretProviderClass "x": object "y": objectType "kms" is not supported; the '
        'only supported objectType is "csms"\n'
    )
    # The same sentence the provider gives at mount time.
    assert provider_message(BAD_SPC) in result.stderr
    missing = kubectl.run("get", "spc", "x", "-n", ns, check=False)
    assert missing.returncode == 1
    assert "NotFound" in missing.stderr
    # A server-side dry run is judged the same way.
    dry = kubectl.run("apply", "-n", ns, "--dry-run=server", "-f", str(bad), check=False)
    assert dry.returncode == 1
    assert f'admission webhook "{HOOK}" denied the request: SecretProviderClass "x"' in dry.stderr


def test_kubectl_apply_of_the_guides_spc_succeeds_and_a_bad_edit_is_refused(
    kubectl: Kubectl, registered: Registered, ns: str
) -> None:
    guide = EXAMPLES / "secretproviderclass.yaml"
    applied = kubectl.run("apply", "-n", ns, "-f", str(guide))
    assert applied.stdout == f"{SPC_RESOURCE}/spc-test created\n"
    edited = guide.read_text().replace('objectVersion: "v1"', 'objectVersion: "version-1"')
    assert edited != guide.read_text()
    bad_edit = registered.write("edit.yaml", edited)
    result = kubectl.run("apply", "-n", ns, "-f", str(bad_edit), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error from server: error when applying patch:")
    assert result.stderr.endswith(
        f'for: "{bad_edit}": error when patching "{bad_edit}": admission webhook "{HOOK}" denied '
        f"the request: {provider_message(edited)}\n"
    )
    stored = yaml.safe_load(kubectl.run("get", "spc", "spc-test", "-n", ns, "-o", "yaml").stdout)
    assert "version-1" not in stored["spec"]["parameters"]["objects"]
    # Relabelling is no spec change and passes.
    labelled = kubectl.run("label", "spc", "spc-test", "-n", ns, "team=a")
    assert labelled.stdout == f"{SPC_RESOURCE}/spc-test labeled\n"


def test_failure_policy_decides_when_the_webhook_is_down(
    kubectl: Kubectl, registered: Registered, ns: str
) -> None:
    assert registered.webhook.stop() == 0
    good = EXAMPLES / "secretproviderclass-realtime.yaml"
    refused = kubectl.run("apply", "-n", ns, "-f", str(good), check=False)
    assert refused.returncode == 1
    port = registered.webhook.url.rpartition(":")[2]
    assert refused.stderr == (
        f'Error from server (InternalError): error when creating "{good}": Internal error '
        f'occurred: failed calling webhook "{HOOK}": failed to call webhook: Post '
        f'"{registered.webhook.url}/validate?timeout=5s": dial tcp 127.0.0.1:{port}: connect: '
        "connection refused\n"
    )
    # Other kinds are not routed to the webhook at all.
    assert kubectl.run("create", "configmap", "c", "-n", ns).returncode == 0

    patched = kubectl.run(
        "patch",
        "validatingwebhookconfiguration",
        CONFIGURATION,
        "--type=json",
        "-p",
        '[{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]',
    )
    assert patched.returncode == 0
    applied = kubectl.run("apply", "-n", ns, "-f", str(good))
    assert applied.stdout == f"{SPC_RESOURCE}/spc-test created\n"
    # Failing open lets even an invalid class through; the provider refuses it at mount time.
    bad = registered.write("bad.yaml", BAD_SPC)
    assert kubectl.run("apply", "-n", ns, "-f", str(bad)).stdout == f"{SPC_RESOURCE}/x created\n"
