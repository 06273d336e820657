"""csi-sanity (kubernetes-csi/csi-test, the CSI conformance checker) against the real
`dew-csi driver` process, with the real `dew-csi provider` on cce.sock and the Kubernetes API and
CSMS emulators over HTTP.

Upstream's configuration (sigs.k8s.io/secrets-store-csi-driver v1.6.0, `test/sanity/sanity_test.go`
and the `sanity-test` target of its Makefile) is reproduced with csi-sanity's command-line flags:

- `-ginkgo.skip=Controller|should.work|NodeStageVolume` (Makefile): the Controller service is a
  stub that answers UNIMPLEMENTED; "should work" and NodeStageVolume need CreateVolume.
- `config.IdempotentCount = 0` ("these tests depend on the Controller service"): the csi-sanity
  command has no flag for it (it keeps NewTestConfig's 10), so its one test, "should be
  idempotent", is skipped by name instead.
- `config.CreateTargetDir` makes the target's parent under a temporary directory with MkdirAll,
  `config.RemoveTargetPath = os.RemoveAll`: here --csi.createmountpathcmd and
  --csi.removemountpathcmd (two small scripts). As upstream, no path checker is given, so "should
  remove target path" (which needs CreateVolume too) skips itself.

The target's parent is a real pod's volume directory below the driver's kubelet root (the Pod,
its ServiceAccount and SecretProviderClass exist in the API emulator) and the staging directory
is where kubelet would put it. No test that upstream's settings run publishes a volume: the
NodePublishVolume tests send incomplete requests, which the driver must refuse with
INVALID_ARGUMENT before it looks at anything else.

The summary is asserted spec by spec from csi-sanity's JSON report: every test that runs passes,
and the skipped ones are exactly those upstream's settings skip (by name, or at run time for a
capability the driver, like upstream's, does not advertise).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from dew_csi import kube
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.csms.emulator import CsmsEmulatorThread
from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig
from tests.integration.test_driver import AK, PROJECT, SK, install_crds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-csi-sanity.sh"
SANITY_MODULE = REPO / "hack" / "csi-sanity" / "go.mod"

# Upstream's settings (see the module docstring).
UPSTREAM_SKIP = r"Controller|should.work|NodeStageVolume"
IDEMPOTENT_SKIP = r"Node Service should be idempotent"  # IdempotentCount = 0

# The tests that run and must pass: Identity, and the Node RPCs' argument checks.
EXPECTED_PASSED = {
    "Identity Service GetPluginCapabilities should return appropriate capabilities",
    "Identity Service Probe should return appropriate information",
    "Identity Service GetPluginInfo should return appropriate information",
    "Node Service NodeGetCapabilities should return appropriate capabilities",
    "Node Service NodeGetInfo should return appropriate values",
    "Node Service NodePublishVolume should fail when no volume id is provided",
    "Node Service NodePublishVolume should fail when no target path is provided",
    "Node Service NodePublishVolume should fail when no volume capability is provided",
    "Node Service NodeUnpublishVolume should fail when no volume id is provided",
    "Node Service NodeUnpublishVolume should fail when no target path is provided",
    "Node Service NodeUnstageVolume should fail when no volume id is provided",
    "Node Service NodeUnstageVolume should fail when no staging target path is provided",
}

# The tests that skip themselves at run time under upstream's settings, with csi-sanity's reason:
# capabilities that neither upstream's driver nor this one advertises, and the CreateTargetDir
# without CheckPath of upstream's config.
_NO_STATS = "NodeGetVolume not supported"
_NO_EXPAND = "NodeExpandVolume not supported"
_NO_HEALTH = "NodeGetVolumeHealth not supported"
EXPECTED_SKIPPED_AT_RUN_TIME = {
    "Node Service NodePublishVolume with single node multi writer capability should fail when "
    "volume with single node single writer access mode is already mounted at a different target "
    "path": "Service does not have single node multi writer capability",
    "Node Service NodeUnpublishVolume should remove target path": (
        "CreateTargetPathCmd was set, but CheckPathCmd was not."
    ),
    "Node Service NodeGetVolumeStats should fail when no volume id is provided": _NO_STATS,
    "Node Service NodeGetVolumeStats should fail when no volume path is provided": _NO_STATS,
    "Node Service NodeGetVolumeStats should fail when volume is not found": _NO_STATS,
    "Node Service NodeGetVolumeStats should fail when volume does not exist on the specified "
    "path": _NO_STATS,
    "Node Service NodeExpandVolume should fail when no volume id is provided": _NO_EXPAND,
    "Node Service NodeExpandVolume should fail when no volume path is provided": _NO_EXPAND,
    "Node Service NodeExpandVolume should fail when volume is not found": _NO_EXPAND,
    "Node Service NodeGetVolumeHealth should fail when no volume id is provided": _NO_HEALTH,
    "Node Service NodeGetVolumeHealth should return health for a valid volume": _NO_HEALTH,
    "Node Service NodeGetStorageHealth should return appropriate response": (
        "NodeGetStorageHealth not supported"
    ),
}

# Marked pending in csi-test itself (and named by upstream's skip anyway).
PENDING = (
    "Controller Service [Controller Server] ListVolumes pagination should detect volumes added "
    "between pages and accept tokens when the last volume from a page is deleted"
)

POD, SPC, SA, VOLUME = "sanity-pod", "spc-sanity", "sanity-sa", "secrets-store-inline"
NODE = "sanity-node"


def sanity_version() -> str:
    for line in SANITY_MODULE.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "github.com/kubernetes-csi/csi-test/v5":
            return words[1]
    raise AssertionError(f"no csi-test/v5 requirement in {SANITY_MODULE}")


@pytest.fixture(scope="module")
def csi_sanity() -> Path:
    """The csi-sanity binary: built by hack/build-csi-sanity.sh, or the one it cached."""
    version = sanity_version()
    cache = Path(os.environ.get("DEW_CSI_CACHE", Path.home() / ".cache" / "dew-csi"))
    cached = cache / f"csi-sanity-{version}" / "csi-sanity"
    if not os.access(cached, os.X_OK) and shutil.which("go") is None:
        pytest.skip(
            f"Go is not installed, so csi-sanity {version} cannot be built "
            f"(hack/build-csi-sanity.sh; nothing cached at {cached})"
        )
    # A cold Go module cache on two busy cores: minutes.
    done = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert done.returncode == 0, f"hack/build-csi-sanity.sh failed:\n{done.stderr}"
    binary = Path(done.stdout.strip().splitlines()[-1])
    shown = subprocess.run(
        [str(binary), "-version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert shown.stdout.strip() == f"Version = {version}"
    return binary


def dew_csi_command() -> list[str]:
    installed = Path(sys.executable).parent / "dew-csi"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "dew_csi.cli"]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=30)


@dataclass
class Node:
    kubelet_root: Path
    socket: Path
    mount_dir: Path
    staging_dir: Path
    driver: Process
    provider: Process


def start(name: str, args: list[str], log: Path, env: dict[str, str]) -> Process:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [*dew_csi_command(), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Process(name, popen, log)


def wait_until_serving(process: Process, socket: Path, timeout: float = 90.0) -> None:
    """Poll until `socket` answers Probe with ready=true, or fail with the process's output."""
    deadline = time.monotonic() + timeout
    last: str = "no socket yet"
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise AssertionError(
                f"{process.name} exited with {process.popen.returncode}:\n{process.output()}"
            )
        if socket.exists():
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                try:
                    probe = csi_pb2_grpc.IdentityStub(channel).Probe(
                        csi_pb2.ProbeRequest(), timeout=10
                    )
                    if probe.ready.value:
                        return
                    last = "not ready"
                except grpc.RpcError as error:
                    last = str(error)
        time.sleep(0.2)
    raise AssertionError(
        f"{process.name} not serving after {timeout}s ({last}):\n{process.output()}"
    )


async def create_objects(api_url: str) -> str:
    """The CRDs, a ServiceAccount allowed both secrets, an SPC and a Pod on this node using it;
    the Pod's uid."""
    client = kube.Kube.from_url(api_url)
    try:
        await install_crds(client)
        await client.create(
            kube.SERVICE_ACCOUNT,
            {"metadata": {"name": SA, "annotations": {"cce.io/dew-resource": '["secret_1"]'}}},
        )
        objects = '- objectName: "secret_1"\n  objectType: "csms"\n'
        await client.create(
            kube.SECRET_PROVIDER_CLASS,
            {
                "metadata": {"name": SPC, "namespace": "default"},
                "spec": {"provider": "cce", "parameters": {"objects": objects}},
            },
        )
        pod = await client.create(
            kube.POD,
            {
                "metadata": {"name": POD},
                "spec": {
                    "nodeName": NODE,
                    "serviceAccountName": SA,
                    "containers": [{"name": "nginx", "image": "nginx:alpine"}],
                    "volumes": [
                        {
                            "name": VOLUME,
                            "csi": {
                                "driver": "secrets-store.csi.k8s.io",
                                "readOnly": True,
                                "volumeAttributes": {"secretProviderClass": SPC},
                            },
                        }
                    ],
                },
            },
        )
        return str(pod["metadata"]["uid"])
    finally:
        await client.close()


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\nset -eu\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with ApiServerThread() as api, CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK) as csms:
        csms.emulator.set_secret_versions("secret_1", ["sanity-secret"])
        uid = asyncio.run(create_objects(api.url))
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, api.url)
        root = tmp_path / "kubelet"
        providers = tmp_path / "providers"
        for directory in (root / "pods", root / "plugins" / "csi-secrets-store", providers):
            directory.mkdir(parents=True)
        socket = root / "plugins" / "csi-secrets-store" / "csi.sock"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HUAWEICLOUD_SDK_")},
            "HUAWEICLOUD_SDK_AK": AK,
            "HUAWEICLOUD_SDK_SK": SK,
        }
        env.pop("KUBECONFIG", None)
        provider = start(
            "dew-csi provider",
            [
                "provider",
                "--socket-dir",
                str(providers),
                "--csms-endpoint",
                csms.url,
                "--project-id",
                PROJECT,
                "--kubeconfig",
                str(kubeconfig),
                "--metadata-url",
                "none",
            ],
            tmp_path / "provider.log",
            env,
        )
        driver = start(
            "dew-csi driver",
            [
                "driver",
                "--endpoint",
                f"unix://{socket}",
                "--node-id",
                NODE,
                "--kubelet-root",
                str(root),
                "--provider-dir",
                str(providers),
                "--mounter",
                "dir",
                "--kubeconfig",
                str(kubeconfig),
            ],
            tmp_path / "driver.log",
            env,
        )
        try:
            deadline = time.monotonic() + 90
            while not (providers / "cce.sock").exists():
                if provider.popen.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the provider did not start:\n{provider.output()}")
                time.sleep(0.2)
            wait_until_serving(driver, socket)
            mount_dir = root / "pods" / uid / "volumes" / "kubernetes.io~csi" / VOLUME
            staging = root / "plugins" / "kubernetes.io" / "csi" / "secrets-store.csi.k8s.io"
            staging = staging / "sanity" / "globalmount"
            staging.parent.mkdir(parents=True)
            yield Node(root, socket, mount_dir, staging, driver, provider)
        finally:
            driver.stop()
            provider.stop()


SERVICES = csi_pb2.DESCRIPTOR.services_by_name


def unimplemented(socket: Path) -> dict[str, str]:
    """The Controller and Node RPCs that answer an empty request with UNIMPLEMENTED: their
    messages by Service.Method."""
    found: dict[str, str] = {}
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        for service in ("Controller", "Node"):
            for method in SERVICES[service].methods:
                call = channel.unary_unary(
                    f"/csi.v1.{service}/{method.name}",
                    request_serializer=lambda message: message.SerializeToString(),
                    response_deserializer=getattr(csi_pb2, method.output_type.name).FromString,
                )
                try:
                    call(getattr(csi_pb2, method.input_type.name)(), timeout=30)
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                        found[f"{service}.{method.name}"] = error.details() or ""
    return found


@dataclass
class Spec:
    text: str
    state: str
    message: str


def specs_in(report: Path) -> list[Spec]:
    """The It nodes of a Ginkgo v2 JSON report: full text, state, failure or skip message."""
    specs: list[Spec] = []
    suites: list[dict[str, Any]] = json.loads(report.read_text())
    for suite in suites:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                state = spec.get("State")
                assert state == "passed", f"{spec.get('LeafNodeType')} {state}: {spec}"
                continue
            texts = [*(spec.get("ContainerHierarchyTexts") or []), spec["LeafNodeText"]]
            failure = spec.get("Failure") or {}
            specs.append(Spec(" ".join(texts), spec["State"], failure.get("Message", "")))
    return specs


def test_csi_sanity_with_upstream_settings(csi_sanity: Path, node: Node, tmp_path: Path) -> None:
    report = tmp_path / "sanity-report.json"
    make_parent = script(tmp_path / "mkdir-target.sh", 'mkdir -p "$1"\nprintf "%s\\n" "$1"\n')
    remove_parent = script(tmp_path / "rm-target.sh", 'rm -rf "$1"\n')
    done = subprocess.run(
        [
            str(csi_sanity),
            f"--csi.endpoint=unix://{node.socket}",
            f"--csi.mountdir={node.mount_dir}",
            f"--csi.stagingdir={node.staging_dir}",
            f"--csi.createmountpathcmd={make_parent}",
            f"--csi.removemountpathcmd={remove_parent}",
            "--csi.createpathcmdtimeout=60s",
            "--csi.removepathcmdtimeout=60s",
            f"--ginkgo.skip={UPSTREAM_SKIP}",
            f"--ginkgo.skip={IDEMPOTENT_SKIP}",
            f"--ginkgo.json-report={report}",
            "--ginkgo.no-color",
            "--ginkgo.timeout=10m",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert report.exists(), f"csi-sanity wrote no report (exit {done.returncode}):\n{output}"
    specs = specs_in(report)
    by_state: dict[str, list[Spec]] = {}
    for spec in specs:
        by_state.setdefault(spec.state, []).append(spec)
    counts = {state: len(found) for state, found in sorted(by_state.items())}
    print(f"csi-sanity {sanity_version()}: {len(specs)} specs, {counts}")

    failed = [
        f"{s.state} {s.text}: {s.message}"
        for s in specs
        # csi-test marks one Controller test pending (PIt): never run, whatever the filters.
        if s.state not in ("passed", "skipped") and (s.state, s.text) != ("pending", PENDING)
    ]
    assert not failed, "\n".join(failed) + "\n" + output
    assert done.returncode == 0, output
    assert {s.text for s in by_state.get("passed", [])} == EXPECTED_PASSED

    skipped = {s.text: s.message for s in by_state.get("skipped", [])}
    assert re.search(UPSTREAM_SKIP, PENDING)
    by_name = {t for t in skipped if re.search(UPSTREAM_SKIP, t) or re.search(IDEMPOTENT_SKIP, t)}
    # Skipped by name: every spec the names match, none run; the rest skipped themselves.
    assert all(not skipped[t] for t in by_name), {t: skipped[t] for t in by_name if skipped[t]}
    assert {t for t in (s.text for s in specs) if t not in by_name and t != PENDING} == (
        EXPECTED_PASSED | set(EXPECTED_SKIPPED_AT_RUN_TIME)
    )
    at_run_time = {t: m for t, m in skipped.items() if t not in by_name}
    assert set(at_run_time) == set(EXPECTED_SKIPPED_AT_RUN_TIME)
    for text, reason in EXPECTED_SKIPPED_AT_RUN_TIME.items():
        assert at_run_time[text].startswith(reason), (text, at_run_time[text])
    assert f"Ran {len(EXPECTED_PASSED)} of {len(specs)} Specs" in output, output

    # Upstream's skips leave the Controller stub to ControllerGetCapabilities: ask every other
    # Controller RPC, and the Node RPCs without a capability, here. UNIMPLEMENTED, quietly.
    answers = unimplemented(node.socket)
    assert set(answers) == {
        *(f"Controller.{m.name}" for m in SERVICES["Controller"].methods),
        "Node.NodeGetVolumeStats",
        "Node.NodeExpandVolume",
    } - {"Controller.ControllerGetCapabilities"}
    assert all("is not implemented by secrets-store.csi.k8s.io" in m for m in answers.values())
    for process in (node.driver, node.provider):
        assert process.popen.poll() is None, f"{process.name} exited:\n{process.output()}"
        assert "Traceback" not in process.output(), process.output()
