"""deploy/'s ServiceAccounts and RBAC, enforced by a real API server (Node,RBAC authorization).

Runs after test_guide.py (file order): by then the driver has mounted, written SPCPS, synced
Secrets and recorded Events under its own ServiceAccount, so a missing rule would have shown.
"""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

SA = {
    "csi-secrets-store": "system:serviceaccount:kube-system:csi-secrets-store",
    "dew-provider": "system:serviceaccount:kube-system:dew-provider",
    "dew-csi-webhook": "system:serviceaccount:kube-system:dew-csi-webhook",
}


def _can(cluster: Cluster, who: str, verb: str, resource: str, ns: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={SA[who]}"]
    args += ["-n", ns] if ns else ["--all-namespaces"]
    out = cluster.kubectl(*args, check=False).stdout.strip()
    return out == "yes"


def test_workloads_run_under_deploys_service_accounts(cluster: Cluster) -> None:
    pods = cluster.json(
        "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/part-of=dew-csi"
    )["items"]
    by_name = {p["metadata"]["labels"]["app.kubernetes.io/name"]: p for p in pods}
    for name in SA:
        assert name in by_name, sorted(by_name)
        assert by_name[name]["spec"]["serviceAccountName"] == name


@pytest.mark.parametrize(
    ("who", "verb", "resource", "allowed"),
    [
        (
            "csi-secrets-store",
            "create",
            "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
            True,
        ),
        ("csi-secrets-store", "watch", "secretproviderclasses.secrets-store.csi.x-k8s.io", True),
        ("csi-secrets-store", "create", "secrets", True),
        ("csi-secrets-store", "patch", "events", True),
        ("csi-secrets-store", "list", "secrets", False),
        ("csi-secrets-store", "delete", "secrets", False),
        ("csi-secrets-store", "list", "pods", False),
        ("dew-provider", "watch", "serviceaccounts", True),
        ("dew-provider", "get", "secrets", False),
        ("dew-provider", "create", "serviceaccounts/token", False),
        ("dew-csi-webhook", "list", "secretproviderclasses.secrets-store.csi.x-k8s.io", True),
        ("dew-csi-webhook", "get", "secrets", False),
    ],
)
def test_rbac_grants_exactly_what_is_documented(
    cluster: Cluster, who: str, verb: str, resource: str, allowed: bool
) -> None:
    assert _can(cluster, who, verb, resource) is allowed


def test_no_forbidden_in_logs(cluster: Cluster) -> None:
    """Nothing the add-on did on this cluster so far was refused by RBAC."""
    pods = cluster.json(
        "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/part-of=dew-csi"
    )["items"]
    assert pods
    for p in pods:
        for c in p["spec"]["containers"]:
            logs = cluster.kubectl(
                "-n", "kube-system", "logs", p["metadata"]["name"], "-c", c["name"]
            ).stdout
            # An Event into a namespace being deleted is refused too, by the NamespaceLifecycle
            # admission plugin ("... because it is being terminated"): not RBAC.
            bad = [
                line
                for line in logs.splitlines()
                if "forbidden" in line.lower() and "because it is being terminated" not in line
            ]
            assert not bad, f"{p['metadata']['name']}/{c['name']}:\n" + "\n".join(bad[:10])
