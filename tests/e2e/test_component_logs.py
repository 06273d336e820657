"""The guide's "Viewing Component Logs", verbatim, with the real kubectl against `sandbox up`:
`kubectl get pod -n kube-system` lists csi-secrets-store-xxxxx (3/3) and dew-provider-xxxxx
(1/1) Running, and `kubectl logs` prints the logs of the sandbox's real driver and provider
processes (with --tail, --since, --timestamps and -f); the API server's and kubelet's refusals
read as on a real cluster; an application pod's log is empty; `sandbox down` removes the pods.

One sandbox for the module; the tests run in file order (the last ones stop a process and the
sandbox), and each earlier one can also run alone."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dew_csi.sandbox import containers
from dew_csi.sandbox.cluster import Sandbox
from tests.e2e.conftest import Kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")
STUCK_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: stuck
spec:
  containers:
    - name: nginx
      image: nginx
      volumeMounts:
        - name: secrets-store-inline
          mountPath: /mnt/secrets-store
  volumes:
    - name: secrets-store-inline
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes:
          secretProviderClass: no-such-class
"""
WEB_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
    - name: nginx
      image: nginx
"""


@dataclass
class Cluster:
    sandbox: Sandbox
    kubectl: Kubectl
    workdir: Path
    started: float

    def pods(self) -> dict[str, str]:
        """The add-on's pod names by DaemonSet, from `kubectl get pod -n kube-system`."""
        listing = self.kubectl.run("get", "pod", "-n", "kube-system", "-o", "name").stdout
        names = [line.removeprefix("pod/") for line in listing.split()]
        return {
            owner: next(n for n in names if n.startswith(f"{owner}-"))
            for owner in ("csi-secrets-store", "dew-provider")
        }

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached in {timeout}s")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(kubectl_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("component-logs")
    sandbox = Sandbox(root / "sandbox").up(mounter="dir", rotation_poll_interval="5s")
    try:
        (root / "kubectl").mkdir()
        kubectl = Kubectl(kubectl_binary, sandbox.kubeconfig, root / "kubectl")
        yield Cluster(sandbox, kubectl, root, time.monotonic())
    finally:
        sandbox.down()


def test_kubectl_get_pod_lists_the_add_on_running(cluster: Cluster) -> None:
    listing = cluster.kubectl.run("get", "pod", "-n", "kube-system").stdout.splitlines()
    assert listing[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    rows = [line.split() for line in listing[1:]]
    assert len(rows) == 2, listing
    driver, provider = sorted(rows)
    assert re.fullmatch(r"csi-secrets-store-[a-z0-9]{5}", driver[0]), driver
    assert driver[1:4] == ["3/3", "Running", "0"]
    assert re.fullmatch(r"dew-provider-[a-z0-9]{5}", provider[0]), provider
    assert provider[1:4] == ["1/1", "Running", "0"]

    sets = cluster.kubectl.run("get", "daemonset", "-n", "kube-system").stdout.splitlines()
    assert [line.split()[:6] for line in sets[1:]] == [
        ["csi-secrets-store", "1", "1", "1", "1", "1"],
        ["dew-provider", "1", "1", "1", "1", "1"],
    ]
    names = cluster.pods()
    described = cluster.kubectl.run(
        "describe", "pod", names["csi-secrets-store"], "-n", "kube-system"
    ).stdout
    assert re.search(r"Controlled By:\s+DaemonSet/csi-secrets-store", described)
    # The start time is the real process's.
    pod = json.loads(
        cluster.kubectl.run(
            "get", "pod", names["dew-provider"], "-n", "kube-system", "-o", "json"
        ).stdout
    )
    record = cluster.sandbox.running().components["provider"]
    started = containers.rfc3339(containers.started_at(record.start_time))
    assert pod["status"]["startTime"] == started
    state = pod["status"]["containerStatuses"][0]["state"]
    assert state == {"running": {"startedAt": started}}


def test_kubectl_logs_of_the_provider(cluster: Cluster) -> None:
    provider = cluster.pods()["dew-provider"]
    result = cluster.kubectl.run("logs", provider, "-n", "kube-system")
    assert '] "Listening for connections" address=' in result.stdout
    assert "=== dew-csi sandbox" not in result.stdout  # the process's output only
    assert result.stdout.startswith("I")
    assert result.stderr == ""


def test_kubectl_logs_of_the_secrets_store_container(cluster: Cluster) -> None:
    driver = cluster.pods()["csi-secrets-store"]
    output = cluster.kubectl.run("logs", driver, "-c", "secrets-store", "-n", "kube-system").stdout
    assert '"Initializing Secrets Store CSI Driver" driver="secrets-store.csi.k8s.io"' in output
    assert '"Listening for connections" address=' in output
    assert '"starting rotation reconciler" rotationPollInterval="5s"' in output
    # Exactly the driver's own log file, from this run's start.
    assert output in (cluster.sandbox.logs / "driver.log").read_text()


def test_tail_since_and_timestamps(cluster: Cluster) -> None:
    driver = cluster.pods()["csi-secrets-store"]
    logs = ("logs", driver, "-c", "secrets-store", "-n", "kube-system")
    # The driver keeps logging (a rotation pass every few seconds): read the part first and the
    # whole after it, so the whole holds every line the part showed.
    last = cluster.kubectl.run(*logs, "--tail=1").stdout.splitlines()
    whole = cluster.kubectl.run(*logs).stdout.splitlines()
    assert len(last) == 1
    assert last[0] in whole

    stamped = cluster.kubectl.run(*logs, "--timestamps").stdout.splitlines()
    assert all(TIMESTAMPED.match(line) for line in stamped), stamped
    initializing = next(line for line in stamped if "Initializing Secrets Store" in line)
    # A klog line's time is its own: 2026-12-07T21:42:27.945559000Z I1207 21:42:27.945559 ...
    when, day, clock = initializing.split(" ")[:3]
    assert when[5:7] + when[8:10] == day[1:]
    assert when[11:26] == clock

    # --since: the start-up lines are older than the last two seconds.
    time.sleep(max(0.0, cluster.started + 3 - time.monotonic()))
    recent = cluster.kubectl.run(*logs, "--since=2s").stdout
    everything = cluster.kubectl.run(*logs, "--since=1h").stdout
    assert "Initializing Secrets Store CSI Driver" in everything
    assert "Initializing Secrets Store CSI Driver" not in recent
    assert set(recent.splitlines()) <= set(everything.splitlines())
    limited = cluster.kubectl.run(*logs, "--limit-bytes=12").stdout
    assert limited == everything[:12]


def test_follow_streams_until_kubectl_is_stopped(cluster: Cluster) -> None:
    driver = cluster.pods()["csi-secrets-store"]
    follower = cluster.kubectl.popen(
        "logs", "-f", driver, "-c", "secrets-store", "-n", "kube-system", "--tail=1"
    )
    watchdog = threading.Timer(30, follower.kill)  # a stream that never sends must not hang
    watchdog.start()
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert first.startswith("I"), first
        # The driver logs each rotation pass (every 5s here): new lines arrive on the stream.
        second = follower.stdout.readline()
        assert re.match(r"[IWE]\d{4} ", second), second
        assert follower.poll() is None  # still following
    finally:
        watchdog.cancel()
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)


def test_the_sidecars_say_what_the_sandbox_does_instead(cluster: Cluster) -> None:
    driver = cluster.pods()["csi-secrets-store"]
    registrar = cluster.kubectl.run(
        "logs", driver, "-c", "node-driver-registrar", "-n", "kube-system"
    ).stdout
    assert "No node-driver-registrar runs in the dew-csi sandbox" in registrar
    assert 'csiDriverName="secrets-store.csi.k8s.io"' in registrar
    probe = cluster.kubectl.run("logs", driver, "-c", "liveness-probe", "-n", "kube-system")
    assert "No livenessprobe runs in the dew-csi sandbox" in probe.stdout
    # Without -c, kubectl itself picks the first container (deploy/ sets no default-container).
    defaulted = cluster.kubectl.run("logs", driver, "-n", "kube-system")
    assert defaulted.stdout == registrar
    assert 'Defaulted container "node-driver-registrar"' in defaulted.stderr


def test_refusals_read_as_on_a_real_cluster(cluster: Cluster) -> None:
    driver = cluster.pods()["csi-secrets-store"]
    url = f"/api/v1/namespaces/kube-system/pods/{driver}/log"
    no_name = cluster.kubectl.run("get", "--raw", url, check=False)
    assert no_name.returncode == 1
    assert no_name.stderr.strip() == (
        f"Error from server (BadRequest): a container name must be specified for pod {driver}, "
        "choose one of: [node-driver-registrar secrets-store liveness-probe]"
    )
    unknown = cluster.kubectl.run("get", "--raw", f"{url}?container=nope", check=False)
    assert unknown.stderr.strip() == (
        f"Error from server (BadRequest): container nope is not valid for pod {driver}"
    )
    previous = cluster.kubectl.run(
        "logs", driver, "-c", "secrets-store", "-n", "kube-system", "--previous", check=False
    )
    assert previous.stderr.strip() == (
        'Error from server (BadRequest): previous terminated container "secrets-store" in pod '
        f'"{driver}" not found'
    )


def test_application_pods(cluster: Cluster) -> None:
    web, stuck = cluster.workdir / "web.yaml", cluster.workdir / "stuck.yaml"
    web.write_text(WEB_POD)
    stuck.write_text(STUCK_POD)
    cluster.kubectl.run("apply", "-f", str(web), "-f", str(stuck))

    def phase(name: str) -> str:
        return cluster.kubectl.run(
            "get", "pod", name, "-o", "jsonpath={.status.phase}", check=False
        ).stdout

    cluster.wait_for(lambda: phase("web") == "Running", "pod web Running")
    # A running container that printed nothing: no output and no error, as on a cluster.
    logs = cluster.kubectl.run("logs", "web")
    assert (logs.stdout, logs.stderr) == ("", "")
    assert cluster.kubectl.run("logs", "web", "--timestamps", "--tail=5").stdout == ""

    def creating() -> bool:
        listing = cluster.kubectl.run("get", "pod", "stuck", check=False).stdout
        return "ContainerCreating" in listing

    cluster.wait_for(creating, "pod stuck ContainerCreating")
    waiting = cluster.kubectl.run("logs", "stuck", check=False)
    assert waiting.returncode == 1
    assert waiting.stderr.strip() == (
        'Error from server (BadRequest): container "nginx" in pod "stuck" is waiting to start: '
        "ContainerCreating"
    )


def test_a_component_that_dies_shows_in_its_pod(cluster: Cluster) -> None:
    provider = cluster.pods()["dew-provider"]
    record = cluster.sandbox.running().components["provider"]
    os.kill(record.pid, signal.SIGKILL)

    def row() -> list[str]:
        listing = cluster.kubectl.run("get", "pod", provider, "-n", "kube-system").stdout
        return listing.splitlines()[-1].split()

    cluster.wait_for(lambda: row()[2] == "ContainerStatusUnknown", "provider pod terminated")
    assert row()[1:4] == ["0/1", "ContainerStatusUnknown", "0"]
    # Its log stays readable, as a terminated container's does.
    logs = cluster.kubectl.run("logs", provider, "-n", "kube-system").stdout
    assert '"Listening for connections"' in logs


def test_sandbox_down_removes_the_pods(cluster: Cluster) -> None:
    names = cluster.pods()
    cluster.sandbox.down()
    assert not (cluster.sandbox.directory / containers.REGISTRY_FILE).exists()
    # What the API emulator persisted when it stopped: no pod, no DaemonSet of the add-on.
    state = json.loads((cluster.sandbox.directory / "apiserver.json").read_text())
    left = {
        (entry["resource"], entry["object"]["metadata"]["name"])
        for entry in state["objects"]
        if entry["resource"] in ("pods", "daemonsets")
    }
    assert not left & {("pods", name) for name in names.values()}
    assert not left & {("daemonsets", owner) for owner in names}
