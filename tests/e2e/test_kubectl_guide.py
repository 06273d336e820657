"""The add-on guide's kubectl commands, run with the real kubectl against the API emulator
(a `dew-csi sandbox apiserver` process), on the guide's YAML files as shipped in examples/."""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import CRD_DIR, EXAMPLES, ApiServerProcess
from tests.e2e.conftest import Kubectl

pytestmark = [pytest.mark.kubectl, pytest.mark.e2e]

GROUP = "secrets-store.csi.x-k8s.io"
SPC_RESOURCE = f"secretproviderclass.{GROUP}"


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> str:
    """`kubectl apply -f deploy/crds/`, once per module; its output."""
    return kubectl.run("apply", "-f", str(CRD_DIR)).stdout


_namespaces = iter(range(1000))


@pytest.fixture
def ns(kubectl: Kubectl, crds: str) -> str:
    """A fresh namespace per test, so tests share one emulator without sharing objects."""
    name = f"guide-{next(_namespaces)}"
    assert kubectl.run("create", "namespace", name).stdout == f"namespace/{name} created\n"
    return name


def example(name: str) -> str:
    return str(EXAMPLES / name)


def table(output: str) -> tuple[list[str], dict[str, list[str]]]:
    """kubectl's table output: (header words, {name: the row's cells after the name})."""
    lines = [line for line in output.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return header, rows


AGE = re.compile(r"^\d+s$")


def test_kubectl_talks_to_a_1_31_server(kubectl: Kubectl) -> None:
    versions = json.loads(kubectl.run("version", "-o", "json").stdout)
    assert versions["serverVersion"]["minor"] == "31"
    # The dispatcher runs the kubectl matching the server, which sends JSON, not protobuf.
    assert versions["clientVersion"]["minor"] == "31"


def test_apply_the_crds(kubectl: Kubectl, crds: str) -> None:
    assert crds == (
        f"customresourcedefinition.apiextensions.k8s.io/secretproviderclasses.{GROUP} created\n"
        f"customresourcedefinition.apiextensions.k8s.io/secretproviderclasspodstatuses.{GROUP} "
        "created\n"
    )
    again = kubectl.run("apply", "-f", str(CRD_DIR)).stdout
    assert again.count(" unchanged\n") == 2
    header, rows = table(kubectl.run("get", "crd").stdout)
    assert header == ["NAME", "CREATED AT"]
    assert set(rows) == {
        f"secretproviderclasses.{GROUP}",
        f"secretproviderclasspodstatuses.{GROUP}",
    }
    resources = kubectl.run("api-resources", f"--api-group={GROUP}").stdout
    assert re.search(r"^secretproviderclasses\s+spc\s+", resources, re.M)
    assert re.search(r"^secretproviderclasspodstatuses\s+spcps\s+", resources, re.M)


def test_guide_method_one_mount_into_a_pod(kubectl: Kubectl, ns: str) -> None:
    applied = kubectl.run("apply", "-n", ns, "-f", example("serviceaccount.yaml")).stdout
    assert applied == "serviceaccount/nginx-spc-sa created\n"
    header, rows = table(kubectl.run("get", "sa", "-n", ns).stdout)
    assert header == ["NAME", "SECRETS", "AGE"]
    assert set(rows) == {"default", "nginx-spc-sa"}
    assert AGE.match(rows["nginx-spc-sa"][1])

    applied = kubectl.run("apply", "-n", ns, "-f", example("secretproviderclass.yaml")).stdout
    assert applied == f"{SPC_RESOURCE}/spc-test created\n"
    header, rows = table(kubectl.run("get", "spc", "-n", ns).stdout)
    assert header == ["NAME", "AGE"]
    assert list(rows) == ["spc-test"]
    assert AGE.match(rows["spc-test"][0])

    applied = kubectl.run("apply", "-n", ns, "-f", example("deployment.yaml")).stdout
    assert applied == "deployment.apps/nginx-spc created\n"
    header, rows = table(kubectl.run("get", "deploy", "-n", ns).stdout)
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows["nginx-spc"][:3] == ["0/1", "0", "0"]


def test_guide_method_two_sync_to_a_kubernetes_secret(kubectl: Kubectl, ns: str) -> None:
    files = (
        "serviceaccount.yaml",
        "secretproviderclass-k8s-secrets.yaml",
        "deployment-k8s-secrets.yaml",
    )
    outputs = [kubectl.run("apply", "-n", ns, "-f", example(f)).stdout for f in files]
    assert outputs == [
        "serviceaccount/nginx-spc-sa created\n",
        f"{SPC_RESOURCE}/nginx-deployment-spc-k8s-secrets created\n",
        "deployment.apps/nginx-deployment-k8s-secrets created\n",
    ]
    # What the driver and the CCE cluster would have created (the typed generators of
    # kubectl 1.31 send JSON, which the emulator takes).
    kubectl.run(
        "create",
        "secret",
        "generic",
        "my-secret-01",
        "-n",
        ns,
        "--from-literal=db_username_01=admin",
        "--from-literal=db_username_02=root",
    )
    kubectl.run(
        "create",
        "secret",
        "docker-registry",
        "default-secret",
        "-n",
        ns,
        "--docker-server=swr.example.com",
        "--docker-username=u",
        "--docker-password=p",
    )
    header, rows = table(kubectl.run("get", "secrets", "-n", ns).stdout)
    assert header == ["NAME", "TYPE", "DATA", "AGE"]
    assert rows["default-secret"][:2] == ["kubernetes.io/dockerconfigjson", "1"]
    assert rows["my-secret-01"][:2] == ["Opaque", "2"]


def test_get_spc_as_yaml_keeps_the_objects_string(kubectl: Kubectl, ns: str) -> None:
    path = example("secretproviderclass-k8s-secrets.yaml")
    kubectl.run("apply", "-n", ns, "-f", path)
    shown = yaml.safe_load(
        kubectl.run("get", "spc", "nginx-deployment-spc-k8s-secrets", "-n", ns, "-o", "yaml").stdout
    )
    source = yaml.safe_load(Path(path).read_text())
    assert shown["spec"]["parameters"]["objects"] == source["spec"]["parameters"]["objects"]
    assert shown["spec"]["secretObjects"] == source["spec"]["secretObjects"]
    assert shown["metadata"]["generation"] == 1


def generation_and_objects(kubectl: Kubectl, ns: str) -> tuple[int, str]:
    obj = json.loads(kubectl.run("get", "spc", "spc-test", "-n", ns, "-o", "json").stdout)
    return obj["metadata"]["generation"], obj["spec"]["parameters"]["objects"]


def file_objects(name: str) -> str:
    return str(yaml.safe_load((EXAMPLES / name).read_text())["spec"]["parameters"]["objects"])


def test_apply_updates_the_spc_as_the_guide_does(kubectl: Kubectl, ns: str) -> None:
    kubectl.run("apply", "-n", ns, "-f", example("secretproviderclass.yaml"))
    assert generation_and_objects(kubectl, ns) == (1, file_objects("secretproviderclass.yaml"))
    realtime = example("secretproviderclass-realtime.yaml")
    assert kubectl.run("apply", "-n", ns, "-f", realtime).stdout == (
        f"{SPC_RESOURCE}/spc-test configured\n"
    )
    assert generation_and_objects(kubectl, ns) == (
        2,
        file_objects("secretproviderclass-realtime.yaml"),
    )
    assert kubectl.run("apply", "-n", ns, "-f", realtime).stdout == (
        f"{SPC_RESOURCE}/spc-test unchanged\n"
    )
    assert generation_and_objects(kubectl, ns)[0] == 2
    rotation = example("secretproviderclass-rotation.yaml")
    assert kubectl.run("apply", "-n", ns, "-f", rotation).stdout == (
        f"{SPC_RESOURCE}/spc-test configured\n"
    )
    assert generation_and_objects(kubectl, ns) == (
        3,
        file_objects("secretproviderclass-rotation.yaml"),
    )


def test_delete_the_spc(kubectl: Kubectl, ns: str) -> None:
    path = example("secretproviderclass.yaml")
    kubectl.run("apply", "-n", ns, "-f", path)
    deleted = kubectl.run("delete", "-n", ns, "-f", path).stdout
    assert deleted == f'{SPC_RESOURCE} "spc-test" deleted\n'
    missing = kubectl.run("get", "spc", "spc-test", "-n", ns, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'Error from server (NotFound): secretproviderclasses.{GROUP} "spc-test" not found'
    )
    assert kubectl.run("get", "spc", "-n", ns).stderr.strip() == (
        f"No resources found in {ns} namespace."
    )


def test_server_side_apply(kubectl: Kubectl, ns: str) -> None:
    created = kubectl.run(
        "apply", "--server-side", "-n", ns, "-f", example("secretproviderclass.yaml")
    ).stdout
    assert created == f"{SPC_RESOURCE}/spc-test serverside-applied\n"
    obj = json.loads(kubectl.run("get", "spc", "spc-test", "-n", ns, "-o", "json").stdout)
    assert "annotations" not in obj["metadata"]  # no client-side last-applied annotation
    updated = kubectl.run(
        "apply", "--server-side", "-n", ns, "-f", example("secretproviderclass-realtime.yaml")
    ).stdout
    assert updated == f"{SPC_RESOURCE}/spc-test serverside-applied\n"
    assert generation_and_objects(kubectl, ns) == (
        2,
        file_objects("secretproviderclass-realtime.yaml"),
    )


def test_get_spcps_shows_the_mount_columns(
    kubectl: Kubectl, ns: str, emulator: ApiServerProcess
) -> None:
    name = "nginx-spc-67c9d5b594-642np-default-spc-test"
    status = {
        "podName": "nginx-spc-67c9d5b594-642np",
        "secretProviderClassName": "spc-test",
        "mounted": True,
        "targetPath": "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/inline/mount",
        "objects": [{"id": "secret_test", "version": "v1"}],
    }
    body = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "SecretProviderClassPodStatus",
        "metadata": {"name": name},
        "status": status,
    }
    url = f"{emulator.url}/apis/{GROUP}/v1/namespaces/{ns}/secretproviderclasspodstatuses"
    assert httpx.post(url, json=body).status_code == 201
    header, rows = table(kubectl.run("get", "spcps", "-n", ns).stdout)
    assert header == ["NAME", "POD", "SPC", "MOUNTED", "AGE"]
    assert rows[name][:3] == ["nginx-spc-67c9d5b594-642np", "spc-test", "true"]
    assert AGE.match(rows[name][3])
    shown = yaml.safe_load(kubectl.run("get", "spcps", name, "-n", ns, "-o", "yaml").stdout)
    assert shown["status"] == status


def test_get_pod_shows_ready_and_status(
    kubectl: Kubectl, ns: str, emulator: ApiServerProcess
) -> None:
    base = f"{emulator.url}/api/v1/namespaces/{ns}/pods"
    pod = {
        "metadata": {"name": "nginx-spc-67c9d5b594-642np"},
        "spec": {
            "containers": [{"name": "nginx-spc", "image": "nginx:alpine"}],
            "nodeName": "node-1",
        },
    }
    assert httpx.post(base, json=pod).status_code == 201
    running = {
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "nginx-spc", "ready": True, "restartCount": 0, "state": {"running": {}}}
            ],
        }
    }
    patched = httpx.patch(
        f"{base}/nginx-spc-67c9d5b594-642np/status",
        json=running,
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200
    header, rows = table(kubectl.run("get", "pod", "-n", ns).stdout)
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows["nginx-spc-67c9d5b594-642np"][:3] == ["1/1", "Running", "0"]


def test_describe_the_service_account(kubectl: Kubectl, ns: str) -> None:
    kubectl.run("apply", "-n", ns, "-f", example("serviceaccount.yaml"))
    described = kubectl.run("describe", "sa", "nginx-spc-sa", "-n", ns).stdout
    fields = dict(re.findall(r"^([A-Za-z ]+):\s+(.*)$", described, re.M))
    assert fields["Name"] == "nginx-spc-sa"
    assert fields["Namespace"] == ns
    assert fields["Annotations"] == 'cce.io/dew-resource: ["secret_1","secret_2"]'
    assert fields["Events"] == "<none>"


class Lines:
    """A subprocess's stdout lines, read in a thread so the test can wait with a deadline."""

    def __init__(self, stream: Any) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float = 10.0) -> str:
        line = self._queue.get(timeout=timeout)
        assert line is not None, "kubectl ended its output early"
        return line


@pytest.fixture
def watching(kubectl: Kubectl) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def test_get_spc_watch_reports_changes(kubectl: Kubectl, ns: str, watching: list[Any]) -> None:
    kubectl.run("apply", "-n", ns, "-f", example("secretproviderclass.yaml"))
    events = kubectl.popen("get", "spc", "-n", ns, "-w", "--output-watch-events", "-o", "json")
    plain = kubectl.popen("get", "spc", "-n", ns, "-w")
    watching += [events, plain]
    event_lines, plain_lines = Lines(events.stdout), Lines(plain.stdout)
    first = json.loads(event_lines.next())
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "spc-test")
    assert plain_lines.next().split() == ["NAME", "AGE"]
    assert plain_lines.next().split()[0] == "spc-test"

    kubectl.run("apply", "-n", ns, "-f", example("secretproviderclass-realtime.yaml"))
    modified = json.loads(event_lines.next())
    assert modified["type"] == "MODIFIED"
    assert modified["object"]["spec"]["parameters"]["objects"] == file_objects(
        "secretproviderclass-realtime.yaml"
    )
    kubectl.run("delete", "-n", ns, "spc", "spc-test")
    deleted = json.loads(event_lines.next())
    assert (deleted["type"], deleted["object"]["metadata"]["name"]) == ("DELETED", "spc-test")
    # The table watch printed a row for each change too.
    assert plain_lines.next().split()[0] == "spc-test"
    assert plain_lines.next().split()[0] == "spc-test"


def test_bad_spc_files_get_clear_errors(kubectl: Kubectl, ns: str, tmp_path: Path) -> None:
    source = (EXAMPLES / "secretproviderclass.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(source.replace("  provider: cce", "  provider: [cce"))
    result = kubectl.run("apply", "-n", ns, "-f", str(broken), check=False)
    assert result.returncode == 1
    assert "error converting YAML to JSON" in result.stderr or "yaml:" in result.stderr

    mistyped = tmp_path / "mistyped.yaml"
    mistyped.write_text(source.replace("provider: cce ", "provider: 42 "))
    result = kubectl.run("apply", "-n", ns, "-f", str(mistyped), check=False)
    assert result.returncode == 1
    assert (
        'The SecretProviderClass "spc-test" is invalid: spec.provider: Invalid value: '
        '"integer": spec.provider in body must be of type string: "integer"'
    ) in result.stderr

    misspelt = tmp_path / "misspelt.yaml"
    misspelt.write_text(source.replace("provider:", "providr:"))
    result = kubectl.run("apply", "-n", ns, "-f", str(misspelt), check=False)
    assert result.returncode == 1
    assert (
        "Error from server (BadRequest): error when creating "
        f'"{misspelt}": SecretProviderClass in version "v1" cannot be handled as a '
        'SecretProviderClass: strict decoding error: unknown field "spec.providr"'
    ) in result.stderr
    assert kubectl.run("get", "spc", "-n", ns).stderr.strip() == (
        f"No resources found in {ns} namespace."
    )
