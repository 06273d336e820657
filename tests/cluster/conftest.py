"""The real-cluster tier: the guide and the add-on's promises against the single-node Kubernetes
that `make cluster` builds here (hack/), with the real kubectl.

Collected only by `make test-cluster` (DEW_CSI_TEST_CLUSTER=1), never by `make test`. Skipped,
with the reason shown, only where the cluster cannot exist: no root, or no Go. A missing or
unreachable cluster is a failure that says to run `make cluster`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
STATE = Path(os.environ.get("DEW_CSI_CLUSTER_DIR", REPO / ".cluster"))
KUBELET_ROOT = "/mnt/paas/kubernetes/kubelet"
OVERLAY = REPO / "hack" / "overlays" / "local"
# The provider shares one CSMS read of a `latest` object this long (dew-csi provider --latest-ttl).
LATEST_TTL = 5.0

if os.environ.get("DEW_CSI_TEST_CLUSTER") != "1":
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "the real cluster needs root (namespaces, mounts, containerd): run as root"
    elif shutil.which("go") is None:
        reason = "the real cluster is built from source and needs Go, which is not installed"
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.cluster)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class Cluster:
    """kubectl and CSMS against the running `make cluster`."""

    kubeconfig: Path
    csms_env: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run(
            ["kubectl", *args],
            env=env,
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def csms_put(self, name: str, value: str, *, settle: bool = False) -> str:
        """Stores a new version of secret NAME in the CSMS emulator; returns its version id.

        settle: then waits out the provider's `latest` sharing (--latest-ttl, 5s): a mount within
        5s of another mount's read of NAME at `latest` gets that read, not this new version."""
        proc = subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "dew-csi"),
                "csms",
                "--env-file",
                str(self.csms_env),
                "put",
                name,
                "-",
            ],
            input=value,
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        if settle:
            time.sleep(LATEST_TTL + 1)
        return proc.stdout.strip()

    def in_node(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """Runs CMD in the node's mount and network namespaces (where kubelet's mounts are)."""
        return subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{os.environ.get('DEW_CSI_NETNS', 'dew-csi')}",
                f"--mount={STATE / 'mntns'}",
                "--",
                *cmd,
            ],
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def apply_examples(self, ns: str, *files: str) -> None:
        """kubectl apply -f examples/FILE, as the guide's steps do."""
        for f in files:
            self.kubectl("-n", ns, "apply", "-f", str(EXAMPLES / f))

    def running_pod(self, ns: str, app: str, timeout: float = 180) -> str:
        """The name of a Running, not terminating pod with label app=APP."""

        def pod() -> str | None:
            for p in self.json("-n", ns, "get", "pods", "-l", f"app={app}")["items"]:
                if p["status"].get("phase") == "Running" and not p["metadata"].get(
                    "deletionTimestamp"
                ):
                    return str(p["metadata"]["name"])
            return None

        return str(self.wait(f"a Running pod of {app} in {ns}", pod, timeout=timeout))

    def read(self, ns: str, pod: str, path: str) -> str:
        """PATH's content as the workload container sees it (kubectl exec cat)."""
        return self.kubectl("-n", ns, "exec", pod, "--", "cat", path).stdout

    def rollout(self) -> None:
        """Waits for deploy/'s three workloads to be rolled out."""
        for kind in ("daemonset/csi-secrets-store", "daemonset/dew-provider"):
            self.kubectl(
                "-n", "kube-system", "rollout", "status", kind, "--timeout=300s", timeout=320
            )
        self.kubectl(
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/dew-csi-webhook",
            "--timeout=300s",
            timeout=320,
        )

    def install(self, overlay: Path = OVERLAY) -> None:
        """kubectl apply -k OVERLAY, the webhook's CA as hack/cluster-up.sh sets it, rolled out."""
        self.kubectl("apply", "-k", str(overlay), timeout=300)
        ca = base64.b64encode((STATE / "pki" / "webhook" / "ca.crt").read_bytes()).decode()
        patch = [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": ca}]
        self.kubectl(
            "patch",
            "validatingwebhookconfiguration",
            "dew-csi-webhook",
            "--type=json",
            "-p",
            json.dumps(patch),
        )
        self.rollout()

    def wait(
        self, what: str, predicate: Callable[[], Any], timeout: float = 180, every: float = 1
    ) -> Any:
        end = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < end:
            try:
                last = predicate()
            except AssertionError as exc:  # kubectl failed: keep waiting, remember why
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    kubeconfig = STATE / "kubeconfig"
    if not kubeconfig.exists():
        pytest.fail(f"no cluster: {kubeconfig} is missing; run `make cluster` first")
    c = Cluster(kubeconfig=kubeconfig, csms_env=STATE / "csms.env")
    ready = c.kubectl("get", "--raw", "/readyz", check=False)
    if ready.returncode != 0:
        pytest.fail(f"the cluster does not answer ({ready.stderr.strip()}); run `make cluster`")
    return c


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, with the guide's default-secret pull secret in it."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "-n",
        name,
        "create",
        "secret",
        "docker-registry",
        "default-secret",
        "--docker-server=docker.io",
        "--docker-username=local",
        "--docker-password=local",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
