"""`dew-csi demo`: the guide's walkthrough, step by step, against a fresh local API emulator.

This stage covers what exists so far: the CRDs, the guide's ServiceAccount and SecretProviderClass
objects, applied with the real kubectl (or through the API when kubectl is absent, saying so), and
the outputs the guide shows. It exits non-zero when a step's result differs from the guide.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from dew_csi import kube
from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class DemoFailed(Exception):
    """A step's result differs from the guide."""


@dataclass(frozen=True)
class Step:
    title: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    """Regular expressions every one of which must match somewhere in the output."""


def project_file(relative: str) -> Path:
    path = PACKAGE_ROOT / relative
    if not path.exists():
        raise DemoFailed(f"{relative} not found: run the demo from a checkout of dew-csi")
    return path


def guide_steps() -> list[Step]:
    examples = "examples"
    return [
        Step(
            "Install the add-on's CRDs",
            ("apply", "-f", "deploy/crds/"),
            (
                r"customresourcedefinition\.apiextensions\.k8s\.io/secretproviderclasses\."
                r"secrets-store\.csi\.x-k8s\.io created",
                r"secretproviderclasspodstatuses\.secrets-store\.csi\.x-k8s\.io created",
            ),
        ),
        Step(
            "1. Create the ServiceAccount",
            ("apply", "-f", f"{examples}/serviceaccount.yaml"),
            (r"serviceaccount/nginx-spc-sa created",),
        ),
        Step(
            "   Check it",
            ("get", "sa"),
            (r"NAME\s+SECRETS\s+AGE", r"\ndefault\s", r"\nnginx-spc-sa\s"),
        ),
        Step(
            "2. Create the SecretProviderClass (method 1: volume)",
            ("apply", "-f", f"{examples}/secretproviderclass.yaml"),
            (r"secretproviderclass\.secrets-store\.csi\.x-k8s\.io/spc-test created",),
        ),
        Step("   Check it", ("get", "spc"), (r"NAME\s+AGE", r"\nspc-test\s")),
        Step(
            "2. Create the SecretProviderClass (method 2: Kubernetes Secret)",
            ("apply", "-f", f"{examples}/secretproviderclass-k8s-secrets.yaml"),
            (
                r"secretproviderclass\.secrets-store\.csi\.x-k8s\.io/"
                r"nginx-deployment-spc-k8s-secrets created",
            ),
        ),
        Step(
            "   Check it",
            ("get", "spc"),
            (r"\nnginx-deployment-spc-k8s-secrets\s", r"\nspc-test\s"),
        ),
        Step(
            "3. Create the workloads",
            (
                "apply",
                "-f",
                f"{examples}/deployment.yaml",
                "-f",
                f"{examples}/deployment-k8s-secrets.yaml",
            ),
            (
                r"deployment\.apps/nginx-spc created",
                r"deployment\.apps/nginx-deployment-k8s-secrets created",
            ),
        ),
        Step(
            "Scheduled rotation: switch secret_1 to latest",
            ("apply", "-f", f"{examples}/secretproviderclass-rotation.yaml"),
            (r"secretproviderclass\.secrets-store\.csi\.x-k8s\.io/spc-test configured",),
        ),
        Step(
            "Real-time SPC change: add secret_2",
            ("apply", "-f", f"{examples}/secretproviderclass-realtime.yaml"),
            (r"secretproviderclass\.secrets-store\.csi\.x-k8s\.io/spc-test configured",),
        ),
        Step(
            "   The SPC now lists both secrets",
            ("get", "spc", "spc-test", "-o", "yaml"),
            (r'objectName: "secret_1"', r'objectName: "secret_2"', r"generation: 3"),
        ),
    ]


def run_kubectl(kubectl: str, kubeconfig: Path, cache_dir: Path, args: tuple[str, ...]) -> str:
    command = [kubectl, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir), *args]
    result = subprocess.run(
        command, cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise DemoFailed(f"kubectl {' '.join(args)} exited {result.returncode}:\n{output}")
    return output


async def apply_through_api(url: str, files: list[Path]) -> str:
    """The kubectl-less path: create or replace each document through kube.py."""
    resources = {
        (r.api_version, r.kind): r
        for r in (
            kube.SERVICE_ACCOUNT,
            kube.SECRET_PROVIDER_CLASS,
            kube.DEPLOYMENT,
            kube.CUSTOM_RESOURCE_DEFINITION,
        )
    }
    lines = []
    async with kube.Kube.from_url(url) as client:
        for path in files:
            for document in yaml.safe_load_all(path.read_text()):
                resource = resources[(document["apiVersion"], document["kind"])]
                name = document["metadata"]["name"]
                existing = await client.find(resource, name, "default")
                if existing is None:
                    await client.create(resource, document)
                    verb = "created"
                else:
                    document["metadata"]["resourceVersion"] = existing["metadata"][
                        "resourceVersion"
                    ]
                    await client.replace(resource, document)
                    verb = "configured"
                group = f".{resource.group}" if resource.group else ""
                lines.append(f"{resource.kind.lower()}{group}/{name} {verb}")
    return "\n".join(lines) + "\n"


def run_demo(kubectl: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="dew-csi-demo-") as tmp, ApiServerThread() as server:
        kubeconfig = Path(tmp) / "kubeconfig"
        write_kubeconfig(kubeconfig, server.url)
        print(f"API emulator listening on {server.url} (kubeconfig: {kubeconfig})\n")
        if kubectl is None:
            print(
                "kubectl not found: applying the guide's files through the API instead; "
                "`get` steps are skipped.\n"
            )
        for step in guide_steps():
            command = "kubectl " + " ".join(step.args)
            print(f"== {step.title}\n$ {command}")
            started = time.perf_counter()
            if kubectl is not None:
                output = run_kubectl(kubectl, kubeconfig, Path(tmp) / "cache", step.args)
            elif step.args[0] == "apply":
                files = [project_file(a) for a in step.args[1:] if a != "-f"]
                paths = [
                    p for f in files for p in (sorted(f.glob("*.yaml")) if f.is_dir() else [f])
                ]
                output = asyncio.run(apply_through_api(server.url, paths))
            else:
                print("(skipped without kubectl)\n")
                continue
            print(output.rstrip())
            missing = [pattern for pattern in step.expect if not re.search(pattern, output)]
            if missing:
                raise DemoFailed(
                    f"step {step.title.strip()!r}: output differs from the guide; "
                    f"expected to match {missing}"
                )
            print(f"   ok ({time.perf_counter() - started:.2f}s)\n")


def run_from_args(args: argparse.Namespace) -> int:
    kubectl = None if args.no_kubectl else shutil.which("kubectl")
    try:
        run_demo(kubectl)
    except DemoFailed as failure:
        print(f"\nDEMO FAILED: {failure}", file=sys.stderr)
        return 1
    print("Demo finished: every step matched the guide.")
    return 0
