"""The add-on guide's walkthrough, end to end, in one sandbox for the whole module.

`Sandbox.up` starts every component as a real process (tmpfs mounts in a private mount namespace
when root, as the sandbox does by default), CSMS is seeded with `dew-csi csms put`, the guide's
YAML files from examples/ are applied with the real kubectl, and what the guide shows is checked
with kubectl, `dew-csi sandbox cat` and `dew-csi sandbox env`:

1. method 1 (volume): the pod runs, `/mnt/secrets-store/` holds `secret_test`, the SPCPS says so;
2. method 2 (Kubernetes Secret): `my-secret-01` is synced and feeds the container's environment;
3. the ServiceAccount whitelist refuses a secret it does not list, with kubelet's FailedMount;
4. scheduled rotation of `latest` objects (and not of pinned ones), within a few intervals;
5. a change of the SecretProviderClass reaches the pod at once;
6. deleting the Deployments removes pods, SPCPS objects and, last, the synced Secret.

The tests run in file order and build on each other's state, as the guide's steps do; each stage
is a module fixture, so any single test can also run alone.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
import yaml

from dew_csi.sandbox.cluster import Sandbox
from tests.conftest import EXAMPLES
from tests.e2e.conftest import Kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

T = TypeVar("T")

ROTATION_POLL_INTERVAL: Final = "2s"
INTERVAL: Final = 2.0
REALTIME_LIMIT: Final = 2.0
"""Seconds from `kubectl apply` of a changed SPC to the new file in the pod (kubectl included)."""
SPC_TEST_VOLUME: Final = "secrets-store-inline"

# Distinctive values, so that a leak into a log or an event is found by a plain search.
SECRET_1_V1: Final = {"key1": "db-user-01-k7q2", "key2": "db-user-02-k7q2"}
SECRET_1_V2: Final = {"key1": "db-user-01-v2-m3x8", "key2": "db-user-02-v2-m3x8"}
SECRET_1_V3: Final = {"key1": "db-user-01-v3-p9w4", "key2": "db-user-02-v3-p9w4"}
SECRET_2_V1: Final = "secret-two-v1-h5t6"
SECRET_3_V1: Final = "secret-three-v1-z2r1"

DENIED_OBJECTS: Final = """\
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: spc-not-allowed
spec:
  provider: cce
  parameters:
    objects: |
      - objectName: "secret_3"
        objectVersion: "v1"
        objectType: "csms"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-not-allowed
spec:
  replicas: 1
  selector:
    matchLabels:
      app: nginx-not-allowed
  template:
    metadata:
      labels:
        app: nginx-not-allowed
    spec:
      serviceAccountName: nginx-spc-sa
      volumes:
        - name: secrets-store-inline
          csi:
            driver: secrets-store.csi.k8s.io
            readOnly: true
            volumeAttributes:
              secretProviderClass: spc-not-allowed
      containers:
        - name: nginx
          image: nginx:alpine
          volumeMounts:
            - name: secrets-store-inline
              mountPath: /mnt/secrets-store
              readOnly: true
"""


def compact(value: dict[str, str]) -> str:
    return json.dumps(value, separators=(",", ":"))


def example(name: str) -> str:
    return str(EXAMPLES / name)


def table(output: str) -> dict[str, dict[str, str]]:
    """kubectl's table output as {name: {column: cell}}."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return {}
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells, strict=False))
    return rows


@dataclass
class Walkthrough:
    """One running sandbox, the real kubectl pointed at it, and readable failures."""

    sandbox: Sandbox
    kubectl_tool: Kubectl

    @property
    def directory(self) -> Path:
        return self.sandbox.directory

    # -- commands

    def kubectl(self, *args: str) -> str:
        result = self.kubectl_tool.run(*args, check=False)
        if result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
                + self.logs()
            )
        return result.stdout

    def kubectl_result(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.kubectl_tool.run(*args, check=False)

    def dew_csi(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "dew_csi.cli", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("HUAWEICLOUD_SDK_")},
        )
        if result.returncode != 0:
            raise AssertionError(
                f"dew-csi {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}" + self.logs()
            )
        return result.stdout

    def csms(self, *args: str) -> str:
        return self.dew_csi("csms", "--env-file", str(self.sandbox.csms_env), *args)

    def put(self, name: str, value: str) -> str:
        """Add a version of a CSMS secret; its version id."""
        return self.csms("put", name, value).strip()

    def current_version(self, name: str) -> str:
        for line in self.csms("list", "--versions", name).splitlines():
            version, _, stages = line.partition("\t")
            if "SYSCURRENT" in stages.split(","):
                return version
        raise AssertionError(f"CSMS has no SYSCURRENT version of {name}")

    def cat(self, pod: str, path: str) -> str:
        return self.dew_csi("sandbox", "cat", "--dir", str(self.directory), pod, path)

    # -- cluster state

    def pods(self, label: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.kubectl("get", "pod", "-l", label, "-o", "json")
        )["items"]
        return items

    def running_pod(self, label: str, timeout: float = 20.0) -> dict[str, Any]:
        """The one pod with this label, once it is Running with every container ready."""

        def probe() -> dict[str, Any] | None:
            pods = self.pods(label)
            if len(pods) != 1:
                return None
            status = pods[0].get("status") or {}
            ready = [c.get("ready") for c in status.get("containerStatuses") or []]
            return pods[0] if status.get("phase") == "Running" and ready and all(ready) else None

        return self.wait_for(probe, timeout=timeout, what=f"one Running pod with {label}")

    def events(self, pod: str, reason: str | None = None) -> list[dict[str, Any]]:
        listing = self.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={pod}", "-o", "json"
        )
        items: list[dict[str, Any]] = json.loads(listing)["items"]
        return [e for e in items if reason is None or e.get("reason") == reason]

    def occurrences(self, pod: str, reason: str) -> int:
        """How many times an event happened (aggregated events carry a count)."""
        return sum(int(e.get("count") or 1) for e in self.events(pod, reason))

    def more_events(self, pod: str, reason: str, *, than: int, timeout: float) -> int:
        """Wait until `reason` has happened more than `than` times on the pod; how often."""

        def probe() -> int | None:
            count = self.occurrences(pod, reason)
            return count if count > than else None

        return self.wait_for(
            probe, timeout=timeout, what=f"more than {than} {reason} events on {pod}", pod=pod
        )

    def spcps(self, name: str) -> dict[str, Any] | None:
        result = self.kubectl_result("get", "spcps", name, "-o", "json")
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise AssertionError(f"kubectl get spcps {name}: {result.stderr}" + self.logs())
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def spcps_objects(self, name: str) -> list[dict[str, str]] | None:
        status = self.spcps(name)
        return None if status is None else (status.get("status") or {}).get("objects")

    def secret_value(self, name: str, key: str) -> str | None:
        result = self.kubectl_result("get", "secret", name, "-o", f"jsonpath={{.data.{key}}}")
        if result.returncode != 0:
            return None
        return base64.b64decode(result.stdout).decode()

    def mounts(self) -> dict[str, str]:
        """{mount point: fs type} under the sandbox directory, in the driver's mount namespace
        (empty when the sandbox uses plain directories)."""
        info = self.sandbox.running()
        if info.mount_namespace_pid is None:
            return {}
        prefix = str(self.directory.resolve())
        found = {}
        with open(f"/proc/{info.mount_namespace_pid}/mountinfo") as handle:
            for line in handle:
                fields, _, rest = line.partition(" - ")
                point = fields.split(" ")[4]
                if point == prefix or point.startswith(prefix + "/"):
                    found[point] = rest.split(" ")[0]
        return found

    # -- waiting, and saying why

    def wait_for(
        self,
        probe: Callable[[], T | None],
        *,
        timeout: float,
        what: str,
        pod: str | None = None,
        interval: float = 0.05,
    ) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not so after {timeout}s" + self.explain(pod))
            time.sleep(interval)

    def explain(self, pod: str | None = None) -> str:
        parts = ["", "--- kubectl get pod", self.kubectl_result("get", "pod").stdout]
        selector = ["--field-selector", f"involvedObject.name={pod}"] if pod else []
        events = self.kubectl_result("get", "events", *selector)
        parts += [f"--- kubectl get events {' '.join(selector)}", events.stdout + events.stderr]
        spcps = self.kubectl_result("get", "spcps", "-o", "yaml")
        parts += ["--- kubectl get spcps -o yaml", spcps.stdout + spcps.stderr]
        return "\n".join(parts) + self.logs()

    def logs(self, lines: int = 15) -> str:
        parts = [""]
        for path in sorted(self.sandbox.logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts += [f"--- last {len(tail)} lines of {path}", *tail]
        return "\n".join(parts)


@pytest.fixture(scope="module")
def walk(kubectl_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walkthrough]:
    """One sandbox for the module (rotation every 2s, default mounter), CSMS seeded."""
    root = tmp_path_factory.mktemp("walkthrough")
    sandbox = Sandbox(root / "sandbox").up(rotation_poll_interval=ROTATION_POLL_INTERVAL)
    try:
        (root / "kubectl").mkdir()
        walkthrough = Walkthrough(
            sandbox, Kubectl(kubectl_binary, sandbox.kubeconfig, root / "kubectl")
        )
        assert walkthrough.put("secret_1", compact(SECRET_1_V1)) == "v1"
        assert walkthrough.put("secret_2", SECRET_2_V1) == "v1"
        assert walkthrough.put("secret_3", SECRET_3_V1) == "v1"
        yield walkthrough
    finally:
        sandbox.down()


@dataclass(frozen=True)
class Stage:
    pod: str
    uid: str
    applied: str
    """What `kubectl apply` printed."""


def _stage(walk: Walkthrough, label: str, *files: str) -> Stage:
    applied = walk.kubectl("apply", *(arg for f in files for arg in ("-f", f)))
    pod = walk.running_pod(label)
    return Stage(pod["metadata"]["name"], pod["metadata"]["uid"], applied)


@pytest.fixture(scope="module")
def method_1(walk: Walkthrough) -> Stage:
    """The guide's method 1: ServiceAccount, SPC spc-test, Deployment nginx-spc."""
    return _stage(
        walk,
        "app=nginx",
        example("serviceaccount.yaml"),
        example("secretproviderclass.yaml"),
        example("deployment.yaml"),
    )


@pytest.fixture(scope="module")
def method_2(walk: Walkthrough) -> Stage:
    """The guide's method 2: the SPC with secretObjects and its Deployment."""
    return _stage(
        walk,
        "app=nginx-k8s-secrets",
        example("serviceaccount.yaml"),
        example("secretproviderclass-k8s-secrets.yaml"),
        example("deployment-k8s-secrets.yaml"),
    )


@pytest.fixture(scope="module")
def denied(walk: Walkthrough, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An SPC naming secret_3 (in CSMS, not in the ServiceAccount's annotation), and a
    Deployment using it; the pod's name."""
    walk.kubectl("apply", "-f", example("serviceaccount.yaml"))
    path = tmp_path_factory.mktemp("denied") / "denied.yaml"
    path.write_text(DENIED_OBJECTS)
    walk.kubectl("apply", "-f", str(path))
    pods = walk.wait_for(
        lambda: walk.pods("app=nginx-not-allowed"), timeout=10, what="the denied pod exists"
    )
    return str(pods[0]["metadata"]["name"])


def spcps_name(stage: Stage, spc: str) -> str:
    return f"{stage.pod}-default-{spc}"


# --------------------------------------------------------------------------- 1. method 1


def test_method_1_pod_runs_with_secret_test_mounted(walk: Walkthrough, method_1: Stage) -> None:
    assert method_1.applied.splitlines() == [
        "serviceaccount/nginx-spc-sa created",
        "secretproviderclass.secrets-store.csi.x-k8s.io/spc-test created",
        "deployment.apps/nginx-spc created",
    ]
    assert "spc-test" in table(walk.kubectl("get", "spc"))
    assert "nginx-spc-sa" in table(walk.kubectl("get", "sa"))
    pods = walk.kubectl("get", "pod")
    row = table(pods).get(method_1.pod)
    assert row is not None, pods
    assert (row["READY"], row["STATUS"], row["RESTARTS"]) == ("1/1", "Running", "0"), pods

    assert walk.cat(method_1.pod, "/mnt/secrets-store/") == "secret_test\n"
    assert walk.cat(method_1.pod, "/mnt/secrets-store/secret_test") == compact(SECRET_1_V1)

    if walk.sandbox.running().mount_namespace_pid is not None:
        target = (
            walk.directory
            / "pods"
            / method_1.uid
            / "volumes/kubernetes.io~csi"
            / SPC_TEST_VOLUME
            / "mount"
        )
        assert walk.mounts().get(str(target.resolve())) == "tmpfs", walk.mounts()


def test_method_1_spcps_shows_the_mounted_version(walk: Walkthrough, method_1: Stage) -> None:
    name = spcps_name(method_1, "spc-test")
    listing = walk.kubectl("get", "spcps")
    assert name in table(listing), listing

    text = walk.kubectl("get", "spcps", name, "-o", "yaml")
    assert "mounted: true" in text
    document = yaml.safe_load(text)
    status = document["status"]
    assert status["mounted"] is True
    assert status["objects"] == [{"id": "secret_test", "version": "v1"}], text
    assert status["podName"] == method_1.pod
    assert status["secretProviderClassName"] == "spc-test"
    assert status["targetPath"].endswith(
        f"/pods/{method_1.uid}/volumes/kubernetes.io~csi/secrets-store-inline/mount"
    ), text
    owners = document["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [
        ("Pod", method_1.pod, method_1.uid)
    ], text


# --------------------------------------------------------------------------- 2. method 2


def test_method_2_syncs_my_secret_01_into_the_environment(
    walk: Walkthrough, method_2: Stage
) -> None:
    # The guide applies serviceaccount.yaml again for method 2: unchanged after method 1
    # (created when this test runs alone).
    service_account, *rest = method_2.applied.splitlines()
    assert re.fullmatch(r"serviceaccount/nginx-spc-sa (unchanged|created)", service_account)
    assert rest == [
        "secretproviderclass.secrets-store.csi.x-k8s.io/nginx-deployment-spc-k8s-secrets created",
        "deployment.apps/nginx-deployment-k8s-secrets created",
    ]
    pods = walk.kubectl("get", "pod")
    row = table(pods).get(method_2.pod)
    assert row is not None, pods
    assert (row["READY"], row["STATUS"]) == ("1/1", "Running"), pods

    secrets = walk.kubectl("get", "secrets")
    rows = table(secrets)
    assert "my-secret-01" in rows, secrets
    assert (rows["my-secret-01"]["TYPE"], rows["my-secret-01"]["DATA"]) == ("Opaque", "2"), secrets
    assert rows["default-secret"]["TYPE"] == "kubernetes.io/dockerconfigjson", secrets
    assert walk.secret_value("my-secret-01", "db_username_01") == SECRET_1_V1["key1"]
    assert walk.secret_value("my-secret-01", "db_username_02") == SECRET_1_V1["key2"]

    environment = walk.dew_csi("sandbox", "env", "--dir", str(walk.directory), method_2.pod)
    lines = environment.splitlines()
    assert f"DB_USERNAME_01={SECRET_1_V1['key1']}" in lines, environment
    assert f"DB_USERNAME_02={SECRET_1_V1['key2']}" in lines, environment

    # The jmesPath files, and the whole secret under its own name, are in the volume too.
    assert walk.cat(method_2.pod, "/mnt/secrets/") == "dbusername01\ndbusername02\nsecret_1\n"
    assert walk.cat(method_2.pod, "/mnt/secrets/dbusername02") == SECRET_1_V1["key2"]
    objects = walk.spcps_objects(spcps_name(method_2, "nginx-deployment-spc-k8s-secrets"))
    assert objects == [
        {"id": "dbusername01", "version": "v1"},
        {"id": "dbusername02", "version": "v1"},
        {"id": "secret_1", "version": "v1"},
    ]


# --------------------------------------------------------------------------- 3. whitelist


def test_a_secret_outside_the_annotation_keeps_the_pod_from_running(
    walk: Walkthrough, denied: str
) -> None:
    # Two kubelet attempts at least: the pod does not merely start late, it stays blocked.
    walk.wait_for(
        lambda: walk.occurrences(denied, "FailedMount") >= 2,
        timeout=10,
        what="kubelet recorded FailedMount twice",
        pod=denied,
    )
    failed = walk.events(denied, "FailedMount")
    context = walk.explain(denied)
    assert failed, context
    for event in failed:
        message = event["message"]
        assert event["type"] == "Warning"
        assert message.startswith(
            'MountVolume.SetUp failed for volume "secrets-store-inline" : rpc error: code = '
        ), message
        assert re.search(r"rpc error: code = \w+ desc = ", message), message
        for needle in ('"secret_3"', "nginx-spc-sa", "cce.io/dew-resource"):
            assert needle in message, f"{needle} not in {message!r}"

    described = walk.kubectl("describe", "pod", denied)
    assert re.search(r"Warning\s+FailedMount\s+.*secret_3.*cce\.io/dew-resource", described), (
        described
    )

    pods = walk.kubectl("get", "pod")
    row = table(pods).get(denied)
    assert row is not None, pods
    assert (row["READY"], row["STATUS"]) == ("0/1", "ContainerCreating"), pods
    phase = walk.pods("app=nginx-not-allowed")[0]["status"]["phase"]
    assert phase == "Pending", pods
    assert walk.spcps(f"{denied}-default-spc-not-allowed") is None
    all_events = walk.kubectl("get", "events", "-o", "json")
    assert SECRET_3_V1 not in all_events


# --------------------------------------------------------------------------- 4. rotation


def test_a_new_version_rotates_latest_objects_and_not_pinned_ones(
    walk: Walkthrough, method_1: Stage, method_2: Stage
) -> None:
    """secret_1 gets a new version while spc-test pins v1 and method 2's SPC asks for latest."""
    driver_log = walk.sandbox.log_file("driver")
    offset = driver_log.stat().st_size
    rotated_before = walk.occurrences(method_2.pod, "SecretRotationComplete")
    version = walk.put("secret_1", compact(SECRET_1_V2))
    put_at = time.monotonic()

    walk.wait_for(
        lambda: walk.secret_value("my-secret-01", "db_username_01") == SECRET_1_V2["key1"],
        timeout=3 * INTERVAL,
        what=f"my-secret-01 rotated to secret_1 {version}",
        pod=method_2.pod,
    )
    latency = time.monotonic() - put_at
    assert walk.secret_value("my-secret-01", "db_username_02") == SECRET_1_V2["key2"]
    method_2_status = spcps_name(method_2, "nginx-deployment-spc-k8s-secrets")
    walk.wait_for(
        lambda: (
            walk.spcps_objects(method_2_status)
            == [
                {"id": "dbusername01", "version": version},
                {"id": "dbusername02", "version": version},
                {"id": "secret_1", "version": version},
            ]
        ),
        timeout=INTERVAL,
        what=f"{method_2_status} records {version} (secret synced after {latency:.2f}s)",
        pod=method_2.pod,
    )
    walk.more_events(method_2.pod, "SecretRotationComplete", than=rotated_before, timeout=INTERVAL)

    # Two rotation passes end after the put, so one ran wholly after it: the pin still holds.
    def passes() -> int:
        with driver_log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        return len(re.findall(r'"rotation pass finished" volumes=([2-9]|\d\d)', text))

    walk.wait_for(lambda: passes() >= 2, timeout=4 * INTERVAL, what="two rotation passes")
    assert walk.cat(method_1.pod, "/mnt/secrets-store/secret_test") == compact(SECRET_1_V1)
    assert walk.spcps_objects(spcps_name(method_1, "spc-test")) == [
        {"id": "secret_test", "version": "v1"}
    ]


def test_rotation_spc_then_a_new_version_reaches_the_pod_within_an_interval(
    walk: Walkthrough, method_1: Stage
) -> None:
    name = spcps_name(method_1, "spc-test")
    completed_before = walk.occurrences(method_1.pod, "MountRotationComplete")
    applied = walk.kubectl("apply", "-f", example("secretproviderclass-rotation.yaml"))
    assert applied == "secretproviderclass.secrets-store.csi.x-k8s.io/spc-test configured\n"
    # The alias is gone from the SPC: the file is now named secret_1, at the current version.
    current = walk.current_version("secret_1")
    directory = walk.sandbox.container_path(method_1.pod, "/mnt/secrets-store")
    walk.wait_for(
        lambda: (
            sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
            == ["secret_1"]
        ),
        timeout=REALTIME_LIMIT,
        what="secret_1 replaced secret_test in the mount",
        pod=method_1.pod,
    )
    expected = walk.csms("get", "secret_1")
    assert walk.cat(method_1.pod, "/mnt/secrets-store/secret_1") == expected
    walk.wait_for(
        lambda: walk.spcps_objects(name) == [{"id": "secret_1", "version": current}],
        timeout=INTERVAL,
        what=f"{name} records secret_1 {current}",
        pod=method_1.pod,
    )

    # The SPC change's own MountRotationComplete comes after the SPCPS update: count from it.
    completed_before = walk.more_events(
        method_1.pod, "MountRotationComplete", than=completed_before, timeout=INTERVAL
    )
    version = walk.put("secret_1", compact(SECRET_1_V3))
    put_at = time.monotonic()
    file = directory / "secret_1"
    walk.wait_for(
        lambda: file.read_text() == compact(SECRET_1_V3),
        timeout=3 * INTERVAL,
        what=f"secret_1 {version} in the pod within 3 rotation intervals ({INTERVAL}s each)",
        pod=method_1.pod,
        interval=0.02,
    )
    latency = time.monotonic() - put_at
    assert version != current
    assert re.fullmatch(r"v\d+", version)
    walk.wait_for(
        lambda: walk.spcps_objects(name) == [{"id": "secret_1", "version": version}],
        timeout=INTERVAL,
        what=f"{name} records {version} (file rotated after {latency:.2f}s)",
        pod=method_1.pod,
    )
    text = walk.kubectl("get", "spcps", name, "-o", "yaml")
    assert f"version: {version}" in text
    assert "latest" not in text
    walk.more_events(method_1.pod, "MountRotationComplete", than=completed_before, timeout=INTERVAL)


# --------------------------------------------------------------------------- 5. SPC change


def test_adding_secret_2_to_the_spc_mounts_it_at_once(walk: Walkthrough, method_1: Stage) -> None:
    file = walk.sandbox.container_path(method_1.pod, "/mnt/secrets-store/secret_2")
    assert not file.exists()
    name = spcps_name(method_1, "spc-test")

    started = time.monotonic()
    applied = walk.kubectl("apply", "-f", example("secretproviderclass-realtime.yaml"))
    walk.wait_for(
        file.exists, timeout=10, what="secret_2 in the pod", pod=method_1.pod, interval=0.01
    )
    latency = time.monotonic() - started
    assert applied == "secretproviderclass.secrets-store.csi.x-k8s.io/spc-test configured\n"
    assert latency < REALTIME_LIMIT, (
        f"secret_2 appeared {latency:.2f}s after `kubectl apply` started (limit "
        f"{REALTIME_LIMIT}s, rotation interval {INTERVAL}s)" + walk.explain(method_1.pod)
    )

    assert walk.cat(method_1.pod, "/mnt/secrets-store/") == "secret_1\nsecret_2\n"
    assert walk.cat(method_1.pod, "/mnt/secrets-store/secret_2") == SECRET_2_V1
    current = walk.current_version("secret_1")
    walk.wait_for(
        lambda: (
            walk.spcps_objects(name)
            == [{"id": "secret_1", "version": current}, {"id": "secret_2", "version": "v1"}]
        ),
        timeout=INTERVAL,
        what=f"{name} lists secret_2 v1 (file appeared after {latency:.2f}s)",
        pod=method_1.pod,
    )


# --------------------------------------------------------------------------- 6. deletion


def test_deleting_the_deployments_removes_pods_spcps_and_the_synced_secret(
    walk: Walkthrough, method_1: Stage, method_2: Stage, denied: str
) -> None:
    deleted = walk.kubectl("delete", "-f", example("deployment.yaml"))
    assert deleted == 'deployment.apps "nginx-spc" deleted\n'
    walk.wait_for(lambda: not walk.pods("app=nginx"), timeout=10, what="nginx-spc's pod is gone")
    walk.wait_for(
        lambda: walk.spcps(spcps_name(method_1, "spc-test")) is None,
        timeout=5,
        what="the SPCPS of nginx-spc's pod is collected",
    )
    assert not (walk.directory / "pods" / method_1.uid).exists()
    assert not [p for p in walk.mounts() if method_1.uid in p], walk.mounts()
    # Method 2's pod still uses my-secret-01.
    assert walk.secret_value("my-secret-01", "db_username_01") is not None

    deleted = walk.kubectl("delete", "-f", example("deployment-k8s-secrets.yaml"))
    assert deleted == 'deployment.apps "nginx-deployment-k8s-secrets" deleted\n'
    walk.wait_for(
        lambda: not walk.pods("app=nginx-k8s-secrets"), timeout=10, what="method 2's pod is gone"
    )
    walk.wait_for(
        lambda: walk.spcps(spcps_name(method_2, "nginx-deployment-spc-k8s-secrets")) is None,
        timeout=5,
        what="the SPCPS of method 2's pod is collected",
    )
    walk.wait_for(
        lambda: "NotFound" in walk.kubectl_result("get", "secret", "my-secret-01").stderr,
        timeout=5,
        what="my-secret-01 is collected after its last pod",
    )
    secrets = walk.kubectl("get", "secrets")
    assert set(table(secrets)) == {"default-secret"}, secrets

    walk.kubectl("delete", "deployment", "nginx-not-allowed")
    walk.wait_for(
        lambda: not walk.pods("app=nginx-not-allowed"), timeout=10, what="the denied pod is gone"
    )
    nothing = walk.kubectl_result("get", "spcps")
    assert (nothing.stdout, nothing.stderr) == ("", "No resources found in default namespace.\n")
    assert walk.mounts() == {}
    assert list((walk.directory / "pods").iterdir()) == []


def test_no_secret_value_in_any_log_or_event(
    walk: Walkthrough, method_1: Stage, method_2: Stage
) -> None:
    values = [
        *SECRET_1_V1.values(),
        *SECRET_1_V2.values(),
        *SECRET_1_V3.values(),
        SECRET_2_V1,
        SECRET_3_V1,
    ]
    # Nor the CSMS secret key the provider signs with.
    credentials = walk.sandbox.csms_env.read_text()
    secret_key = re.search(r"^HUAWEICLOUD_SDK_SK=(\S+)$", credentials, re.MULTILINE)
    assert secret_key is not None
    values.append(secret_key.group(1).strip("'"))
    events = walk.kubectl("get", "events", "-o", "json")
    logs = {p.name: p.read_text(errors="replace") for p in walk.sandbox.logs.glob("*.log")}
    assert sorted(logs) == [
        "apiserver.log",
        "controllers.log",
        "csms.log",
        "driver.log",
        "kubelet.log",
        # What the sandbox writes for the csi-secrets-store pod's sidecars (containers.py).
        "liveness-probe.log",
        "node-driver-registrar.log",
        "provider.log",
        "webhook.log",
    ]
    leaks = [
        (where, v)
        for where, text in [("events", events), *logs.items()]
        for v in values
        if v in text
    ]
    assert leaks == []


BAD_SPC = """\
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: spc-bad
spec:
  provider: cce
  parameters:
    objects: |
      - objectName: "secret_1"
        objectVersion: "v1"
        objectType: "kms"
"""


def test_a_bad_spc_is_refused_at_kubectl_apply(
    walk: Walkthrough, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The sandbox registers the admission webhook, so the mistake shows at apply time."""
    path = tmp_path_factory.mktemp("bad") / "bad.yaml"
    path.write_text(BAD_SPC)
    result = walk.kubectl_result("apply", "-f", str(path))
    assert result.returncode != 0, result.stdout
    denied = 'admission webhook "validate.secretproviderclasses.dew-csi.io" denied the request'
    assert denied in result.stderr
    assert 'objectType "kms" is not supported' in result.stderr
    missing = walk.kubectl_result("get", "spc", "spc-bad")
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr or "not found" in missing.stderr
