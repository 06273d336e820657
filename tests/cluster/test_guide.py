"""The guide, verbatim from examples/, on the real cluster (`make cluster`)."""

from __future__ import annotations

import json

import pytest

from tests.cluster.conftest import EXAMPLES, KUBELET_ROOT, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def _apply(cluster: Cluster, ns: str, *files: str) -> None:
    for f in files:
        cluster.kubectl("-n", ns, "apply", "-f", str(EXAMPLES / f))


def _running_pod(cluster: Cluster, ns: str, app: str) -> str:
    def pod() -> str | None:
        items = cluster.json("-n", ns, "get", "pods", "-l", f"app={app}")["items"]
        for p in items:
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp"):
                return str(p["metadata"]["name"])
        return None

    return str(cluster.wait(f"a Running pod of {app} in {ns}", pod))


def test_kube_system_pods_ready_and_logs(cluster: Cluster) -> None:
    out = cluster.kubectl(
        "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/part-of=dew-csi"
    ).stdout
    rows = {line.split()[0].rsplit("-", 1)[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["csi-secrets-store"][1:3] == ["3/3", "Running"], out
    assert rows["dew-provider"][1:3] == ["1/1", "Running"], out
    driver = cluster.json(
        "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=csi-secrets-store"
    )["items"][0]["metadata"]["name"]
    logs = cluster.kubectl("-n", "kube-system", "logs", driver, "-c", "secrets-store").stdout
    assert KUBELET_ROOT in logs or "csi.sock" in logs, logs[-2000:]


def test_method1_mount_files(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.csms_put("secret_1", "guide-value-1")
    _apply(cluster, ns, "serviceaccount.yaml", "secretproviderclass.yaml", "deployment.yaml")
    pod = _running_pod(cluster, ns, "nginx")

    ls = cluster.kubectl("-n", ns, "exec", pod, "--", "ls", "/mnt/secrets-store/").stdout
    assert ls.split() == ["secret_test"]
    value = cluster.kubectl("-n", ns, "exec", pod, "--", "cat", "/mnt/secrets-store/secret_test")
    assert value.stdout == cluster_secret_v1(cluster)

    spcps = cluster.json("-n", ns, "get", "spcps")["items"]
    assert len(spcps) == 1
    status = spcps[0]["status"]
    assert status["mounted"] is True
    assert status["podName"] == pod
    assert status["targetPath"].startswith(f"{KUBELET_ROOT}/pods/")
    assert status["targetPath"].endswith("/volumes/kubernetes.io~csi/secrets-store-inline/mount")
    # The volume is a tmpfs in the node's kubelet root (seen from the node's mount namespace).
    mounts = cluster.in_node("findmnt", "-n", "-o", "FSTYPE", status["targetPath"])
    assert mounts.stdout.split() == ["tmpfs"], mounts


def cluster_secret_v1(cluster: Cluster) -> str:
    """secret_1's v1 value as CSMS holds it (the guide pins objectVersion v1)."""
    import subprocess

    from tests.cluster.conftest import REPO

    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/dew-csi"),
            "csms",
            "--env-file",
            str(cluster.csms_env),
            "get",
            "secret_1",
            "--version",
            "v1",
        ],
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return proc.stdout.rstrip("\n")


def test_method2_sync_to_secret_env(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.csms_put("secret_1", json.dumps({"key1": "user-01", "key2": "user-02"}))
    _apply(
        cluster,
        ns,
        "serviceaccount.yaml",
        "secretproviderclass-k8s-secrets.yaml",
        "deployment-k8s-secrets.yaml",
    )
    deploy = cluster.json("-n", ns, "get", "deployments")["items"][0]
    app = deploy["spec"]["selector"]["matchLabels"]["app"]
    pod = _running_pod(cluster, ns, app)

    secrets = cluster.kubectl("-n", ns, "get", "secrets").stdout
    row = next(line.split() for line in secrets.splitlines() if line.startswith("my-secret-01"))
    assert row[1:3] == ["Opaque", "2"], secrets
    env = cluster.kubectl("-n", ns, "exec", pod, "--", "env").stdout
    assert "DB_USERNAME_01=user-01" in env.split()
    assert "DB_USERNAME_02=user-02" in env.split()


def test_refused_secret_shows_failedmount(cluster: Cluster, namespace: str) -> None:
    """A secret the ServiceAccount may not use: kubelet's own FailedMount carries our message."""
    ns = namespace
    cluster.csms_put("secret_3", "not-allowed")
    # The guide's order (ServiceAccount, SPC, Deployment): a pod started before its SPC exists
    # first gets a FailedMount saying the SPC is not found.
    _apply(cluster, ns, "serviceaccount.yaml")
    spc = (EXAMPLES / "secretproviderclass.yaml").read_text().replace('"secret_1"', '"secret_3"')
    cluster.kubectl("-n", ns, "apply", "-f", "-", input=spc)
    _apply(cluster, ns, "deployment.yaml")

    def failed_mount() -> str | None:
        events = cluster.json("-n", ns, "get", "events", "--field-selector", "reason=FailedMount")
        for e in events["items"]:
            source = e.get("source", {}).get("component") or e.get("reportingComponent")
            if source == "kubelet":
                return str(e["message"])
        return None

    message = cluster.wait("kubelet's FailedMount event", failed_mount)
    assert "secret_3" in message, message
    assert "nginx-spc-sa" in message, message
    assert "cce.io/dew-resource" in message, message


def test_webhook_refuses_bad_spc_through_its_service(cluster: Cluster, namespace: str) -> None:
    bad = (
        (EXAMPLES / "secretproviderclass.yaml")
        .read_text()
        .replace('objectType: "csms"', 'objectType: "kms"')
    )
    proc = cluster.kubectl("-n", namespace, "apply", "-f", "-", input=bad, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "denied the request" in proc.stderr, proc.stderr
    assert "objectType" in proc.stderr, proc.stderr


def test_delete_pod_unmounts_and_gc(cluster: Cluster, namespace: str) -> None:
    ns = namespace
    cluster.csms_put("secret_1", json.dumps({"key1": "a", "key2": "b"}))
    _apply(
        cluster,
        ns,
        "serviceaccount.yaml",
        "secretproviderclass-k8s-secrets.yaml",
        "deployment-k8s-secrets.yaml",
    )
    deploy = cluster.json("-n", ns, "get", "deployments")["items"][0]
    app = deploy["spec"]["selector"]["matchLabels"]["app"]
    _running_pod(cluster, ns, app)
    target = cluster.json("-n", ns, "get", "spcps")["items"][0]["status"]["targetPath"]

    cluster.kubectl("-n", ns, "delete", "deployment", deploy["metadata"]["name"], "--wait=true")
    cluster.wait(
        "the tmpfs to be unmounted",
        lambda: cluster.in_node("findmnt", "-n", target).stdout.strip() == "",
    )
    cluster.wait("GC of the SPCPS", lambda: not cluster.json("-n", ns, "get", "spcps")["items"])
    cluster.wait(
        "GC of the synced Secret",
        lambda: (
            cluster.kubectl("-n", ns, "get", "secret", "my-secret-01", check=False).returncode != 0
        ),
    )
