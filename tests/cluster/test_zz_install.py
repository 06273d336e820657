"""Upgrade and uninstall on the real cluster (`make cluster`). Last in file order: both roll or
remove the add-on, and each leaves it installed again from hack/overlays/local."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.cluster.conftest import KUBELET_ROOT, OVERLAY, REPO, STATE, Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

UPGRADE_TAG = "local2"


def _value() -> str:
    return f"value-{uuid.uuid4().hex[:12]}"


def _images(cluster: Cluster) -> dict[str, set[str]]:
    """Each dew-csi workload's running container images (by its app.kubernetes.io/name)."""
    out: dict[str, set[str]] = {}
    pods = cluster.json(
        "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/part-of=dew-csi"
    )["items"]
    for p in pods:
        if p["metadata"].get("deletionTimestamp"):
            continue
        name = p["metadata"]["labels"]["app.kubernetes.io/name"]
        out.setdefault(name, set()).update(c["image"] for c in p["spec"]["containers"])
    return out


def _upgrade_overlay(tag: str) -> Path:
    """A temporary overlay on hack/overlays/local with dew-csi's image at TAG (in .cluster/)."""
    d = STATE / f"overlay-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(OVERLAY, d)}\n"
        "images:\n"
        "  - name: 127.0.0.1:15000/dew-csi\n"
        f"    newTag: {tag}\n"
    )
    return d


def _csi_mounts(cluster: Cluster) -> list[str]:
    """Every CSI volume mount under the kubelet's pods directory, as the node sees them."""
    out = cluster.in_node("findmnt", "-rn", "-o", "TARGET,FSTYPE").stdout
    return [
        line
        for line in out.splitlines()
        if line.startswith(f"{KUBELET_ROOT}/pods/") and "kubernetes.io~csi" in line
    ]


def test_upgrade_keeps_mounts_and_rotation(cluster: Cluster, namespace: str) -> None:
    """A new image tag rolled out over running workloads: their volumes stay, and the new driver
    finds them again (SPCPS) and keeps rotating them."""
    ns = namespace
    first = _value()
    cluster.csms_put("secret_1", first, settle=True)
    cluster.apply_examples(ns, "serviceaccount.yaml", "secretproviderclass-rotation.yaml")
    cluster.apply_examples(ns, "deployment.yaml")
    pod = cluster.running_pod(ns, "nginx")
    assert cluster.read(ns, pod, "/mnt/secrets-store/secret_1") == first

    push = subprocess.run(
        ["bash", str(REPO / "hack" / "build-images.sh"), "push-upgrade", UPGRADE_TAG],
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert push.returncode == 0, push.stderr
    new_image = f"127.0.0.1:15000/dew-csi:{UPGRADE_TAG}"
    try:
        cluster.install(_upgrade_overlay(UPGRADE_TAG))
        images = cluster.wait(
            "every dew-csi pod on the new image",
            lambda: (
                (imgs := _images(cluster))
                and all(
                    new_image in imgs.get(n, set())
                    for n in ("csi-secrets-store", "dew-provider", "dew-csi-webhook")
                )
                and imgs
            ),
            timeout=300,
        )
        assert images
        # The workload pod was not touched; its volume is still there with the same file.
        assert cluster.read(ns, pod, "/mnt/secrets-store/secret_1") == first
        # The new driver rotates the volume it did not mount itself.
        second = _value()
        cluster.csms_put("secret_1", second)
        cluster.wait(
            "rotation by the upgraded driver",
            lambda: cluster.read(ns, pod, "/mnt/secrets-store/secret_1") == second,
            timeout=200,
            every=2,
        )
        # A new pod mounts with the new driver too.
        cluster.kubectl("-n", ns, "delete", "pod", pod, "--wait=false")
        pod2 = cluster.wait(
            "a replacement pod",
            lambda: (p := cluster.running_pod(ns, "nginx")) != pod and p,
            timeout=240,
        )
        assert cluster.read(ns, pod2, "/mnt/secrets-store/secret_1") == second
    finally:
        cluster.install()
    assert "127.0.0.1:15000/dew-csi:local" in _images(cluster)["csi-secrets-store"]


def test_uninstall_leaves_no_mount(cluster: Cluster, namespace: str) -> None:
    """Workloads gone, then `kubectl delete -k`: no CSI volume mount, no socket registration and
    no dew-csi pod is left on the node."""
    ns = namespace
    cluster.csms_put("secret_1", _value())
    cluster.apply_examples(ns, "serviceaccount.yaml", "secretproviderclass-rotation.yaml")
    cluster.apply_examples(ns, "deployment.yaml")
    cluster.running_pod(ns, "nginx")
    assert _csi_mounts(cluster), "the workload's volume is not mounted"

    cluster.kubectl("delete", "namespace", ns, "--wait=true", timeout=300)
    cluster.wait("the workload's volume unmounted", lambda: not _csi_mounts(cluster), timeout=120)
    try:
        cluster.kubectl("delete", "-k", str(OVERLAY), "--wait=true", timeout=300)
        cluster.wait(
            "no dew-csi pod",
            lambda: (
                not cluster.json(
                    "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/part-of=dew-csi"
                )["items"]
            ),
            timeout=180,
        )
        assert not _csi_mounts(cluster)
        findmnt = cluster.in_node("findmnt", "-rn", "-o", "TARGET,SOURCE,FSTYPE").stdout
        left = [line for line in findmnt.splitlines() if "secrets-store" in line]
        assert not left, left
        node = cluster.json("get", "node")["items"][0]
        drivers = node["metadata"].get("annotations", {}).get("csi.volume.kubernetes.io/nodeid", "")
        assert "secrets-store.csi.k8s.io" not in drivers, drivers
        csinode = cluster.json("get", "csinode")["items"][0]
        assert not [
            d
            for d in csinode["spec"].get("drivers") or []
            if d["name"] == "secrets-store.csi.k8s.io"
        ], csinode["spec"]
    finally:
        cluster.install()
