"""Rotation and SecretProviderClass changes on the real cluster (`make cluster`).

hack/overlays/local sets rotation_poll_interval=1m, the shortest the add-on allows, so a
scheduled rotation is seen within a couple of minutes. The driver's own log line says which
trigger remounted the volume (as `dew-csi demo` checks it in the sandbox).
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from tests.cluster.conftest import EXAMPLES, LATEST_TTL, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

INTERVAL = 60.0  # hack/overlays/local's rotation_poll_interval


def _driver_log(cluster: Cluster, since: str) -> str:
    pods = cluster.json(
        "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=csi-secrets-store"
    )["items"]
    return "".join(
        cluster.kubectl(
            "-n",
            "kube-system",
            "logs",
            p["metadata"]["name"],
            "-c",
            "secrets-store",
            f"--since-time={since}",
        ).stdout
        for p in pods
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))


def _value() -> str:
    return f"value-{uuid.uuid4().hex[:12]}"


def test_scheduled_rotation_of_latest(cluster: Cluster, namespace: str) -> None:
    """secretproviderclass-rotation.yaml: a new CSMS version of secret_1 reaches the running pod
    within the interval (+ the provider's short `latest` cache), by the rotation pass."""
    ns = namespace
    first = _value()
    cluster.csms_put("secret_1", first, settle=True)
    cluster.apply_examples(ns, "serviceaccount.yaml", "secretproviderclass-rotation.yaml")
    cluster.apply_examples(ns, "deployment.yaml")
    pod = cluster.running_pod(ns, "nginx")
    assert cluster.read(ns, pod, "/mnt/secrets-store/secret_1") == first

    since = _now()
    second = _value()
    version = cluster.csms_put("secret_1", second)
    t0 = time.monotonic()
    cluster.wait(
        "the new secret_1 version in the pod",
        lambda: cluster.read(ns, pod, "/mnt/secrets-store/secret_1") == second,
        timeout=3 * INTERVAL,
        every=2,
    )
    took = time.monotonic() - t0
    assert took < 2 * INTERVAL + 30, f"rotation took {took:.0f}s with a {INTERVAL:.0f}s interval"

    pattern = rf'"remounted" pod="{ns}/{re.escape(pod)}" spc="spc-test" trigger="rotation"'
    line = cluster.wait(
        "the driver's rotation log line",
        lambda: re.search(pattern, _driver_log(cluster, since)),
        timeout=30,
        every=2,
    )
    assert line, pattern
    status = cluster.json("-n", ns, "get", "spcps")["items"][0]["status"]
    versions = {o["id"]: o["version"] for o in status.get("objects", [])}
    assert any(v == version for v in versions.values()), (version, status)


def test_spc_change_in_real_time(cluster: Cluster, namespace: str) -> None:
    """secretproviderclass-realtime.yaml adds secret_2: the SPC watch remounts at once, well
    within the rotation interval, and the pod sees secret_2 without a restart."""
    ns = namespace
    cluster.csms_put("secret_1", _value())
    # secret_2 v1 (the example pins v1): whatever its first version holds.
    cluster.csms_put("secret_2", _value())
    cluster.apply_examples(ns, "serviceaccount.yaml", "secretproviderclass-rotation.yaml")
    cluster.apply_examples(ns, "deployment.yaml")
    pod = cluster.running_pod(ns, "nginx")
    before = cluster.kubectl("-n", ns, "exec", pod, "--", "ls", "/mnt/secrets-store/").stdout
    assert before.split() == ["secret_1"], before

    since = _now()
    cluster.apply_examples(ns, "secretproviderclass-realtime.yaml")
    t0 = time.monotonic()
    cluster.wait(
        "secret_2 in the pod",
        lambda: (
            "secret_2"
            in cluster.kubectl(
                "-n", ns, "exec", pod, "--", "ls", "/mnt/secrets-store/"
            ).stdout.split()
        ),
        timeout=3 * INTERVAL,
        every=1,
    )
    took = time.monotonic() - t0
    pattern = (
        rf'"SecretProviderClass changed; remounting" spc="{ns}/spc-test" pod="{re.escape(pod)}"'
    )
    assert re.search(pattern, _driver_log(cluster, since)), (
        f"secret_2 appeared after {took:.1f}s but the driver's log does not show the SPC change "
        f"detected ({pattern})"
    )
    assert took < INTERVAL, (
        f"secret_2 took {took:.1f}s: not in real time ({INTERVAL:.0f}s interval)"
    )
    # The pod was not restarted: same pod, no container restarts.
    p = cluster.json("-n", ns, "get", "pod", pod)
    assert all(c["restartCount"] == 0 for c in p["status"]["containerStatuses"]), p["status"]


def test_refresh_annotation_remounts(cluster: Cluster, namespace: str) -> None:
    """README: a new value of dew-csi.io/refresh on the SPC remounts its volumes on demand.

    A secret no other test mounts at `latest` (the ServiceAccount allows it): another volume's
    read of the same `latest` within the provider's sharing time would hand the remount the old
    version."""
    ns = namespace
    name = "secret_refresh"
    cluster.csms_put(name, _value())
    sa = (EXAMPLES / "serviceaccount.yaml").read_text().replace('\\"secret_2\\"', f'\\"{name}\\"')
    assert name in sa, sa
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=sa)
    spc = (EXAMPLES / "secretproviderclass-rotation.yaml").read_text().replace("secret_1", name)
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=spc)
    cluster.apply_examples(ns, "deployment.yaml")
    pod = cluster.running_pod(ns, "nginx")
    time.sleep(LATEST_TTL + 1)  # the mount's own `latest` read is no longer shared
    fresh = _value()
    cluster.csms_put(name, fresh)
    t0 = time.monotonic()
    cluster.kubectl(
        "-n", ns, "annotate", "spc", "spc-test", f"dew-csi.io/refresh={time.time()}", "--overwrite"
    )
    cluster.wait(
        "the refreshed secret in the pod",
        lambda: cluster.read(ns, pod, f"/mnt/secrets-store/{name}") == fresh,
        timeout=3 * INTERVAL,
        every=1,
    )
    took = time.monotonic() - t0
    assert took < INTERVAL / 2, f"the refresh took {took:.1f}s: as slow as a rotation pass"
