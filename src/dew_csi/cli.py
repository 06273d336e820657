"""The `dew-csi` command: argument parsing and dispatch.

Each subcommand's implementation is imported only when that subcommand runs, so `dew-csi --help`
stays fast and one component's dependencies are not loaded by another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

from dew_csi import __version__

Runner = Callable[[argparse.Namespace], int]


def _bind(parser: argparse.ArgumentParser, target: str) -> None:
    """Record which `module:function` runs this subcommand."""
    parser.set_defaults(_target=target)


def _add_sandbox(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sandbox = subparsers.add_parser("sandbox", help="the local cluster: API emulator and friends")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)

    apiserver = sandbox_sub.add_parser(
        "apiserver",
        help="run the Kubernetes API emulator",
        description="Serve the Kubernetes REST and watch API, for the sandbox and tests.",
    )
    apiserver.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="HOST:PORT to listen on; port 0 picks a free port and prints it (default 127.0.0.1:0)",
    )
    apiserver.add_argument("--state", help="file to persist state to, restored on restart")
    apiserver.add_argument("--token", help="require this bearer token on every request")
    apiserver.add_argument("--kubeconfig-out", help="write a kubeconfig for this server to FILE")
    _bind(apiserver, "dew_csi.sandbox.apiserver:run_from_args")


def _add_provider(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    provider = subparsers.add_parser(
        "provider",
        help="run dew-provider, the Secrets Store provider for CSMS",
        description="Serve the Secrets Store provider API (v1alpha1) on DIR/cce.sock: check the "
        "pod's ServiceAccount whitelist, read secrets from CSMS and return them as files.",
    )
    provider.add_argument(
        "--socket-dir",
        default="/var/run/secrets-store-csi-providers",
        help="directory for cce.sock (default /var/run/secrets-store-csi-providers)",
    )
    where = provider.add_mutually_exclusive_group()
    where.add_argument("--region", help="CSMS region, e.g. cn-north-4 (https://kms.REGION...)")
    where.add_argument("--csms-endpoint", help="CSMS endpoint URL (overrides --region)")
    provider.add_argument("--project-id", help="project id when the credentials carry none")
    provider.add_argument(
        "--kubeconfig", help="kubeconfig file; in a pod the in-cluster config is used"
    )
    provider.add_argument(
        "--latest-ttl",
        default="5s",
        help="how long a `latest` read is shared by concurrent mounts (default 5s)",
    )
    provider.add_argument("--metrics-addr", help="serve Prometheus metrics on HOST:PORT")
    provider.add_argument("--log-format", choices=["text", "json"], default="text")
    provider.add_argument(
        "--credentials-dir",
        help="directory with files ak, sk[, security_token, project_id] (a mounted Secret)",
    )
    provider.add_argument(
        "--metadata-url",
        default="http://169.254.169.254",
        help="ECS metadata service for agency credentials; 'none' disables it",
    )
    provider.add_argument("--ca-file", help="CA bundle to verify the CSMS endpoint with")
    provider.add_argument(
        "--insecure-skip-tls-verify",
        action="store_true",
        help="do not verify the CSMS endpoint's certificate (testing only)",
    )
    _bind(provider, "dew_csi.provider.app:run_from_args")


def _add_driver(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    driver = subparsers.add_parser(
        "driver",
        help="run csi-secrets-store, the Secrets Store CSI node plugin",
        description="Serve CSI Identity, Node and Controller on the kubelet plugin socket: mount "
        "a tmpfs per pod volume, fill it from the provider, record SecretProviderClassPodStatus, "
        "sync secretObjects, rotate, and remount when a SecretProviderClass changes.",
    )
    driver.add_argument(
        "--endpoint",
        default="unix:///var/lib/kubelet/plugins/csi-secrets-store/csi.sock",
        help="CSI socket (default unix:///var/lib/kubelet/plugins/csi-secrets-store/csi.sock)",
    )
    driver.add_argument("--node-id", help="this node's name (required)")
    driver.add_argument(
        "--provider-dir",
        action="append",
        help="where provider sockets are (<dir>/<provider>.sock); repeatable; default "
        "/etc/kubernetes/secrets-store-csi-providers then /var/run/secrets-store-csi-providers",
    )
    driver.add_argument(
        "--rotation-poll-interval",
        default="2m",
        help="rotation_poll_interval: whole minutes with unit m, 1m to 1440m (default 2m)",
    )
    driver.add_argument(
        "--mounter",
        choices=["tmpfs", "dir"],
        default="tmpfs",
        help="tmpfs (needs root) or dir (plain directories, for non-root local runs)",
    )
    driver.add_argument(
        "--kubeconfig", help="kubeconfig file; in a pod the in-cluster config is used"
    )
    driver.add_argument("--metrics-addr", help="serve Prometheus metrics on HOST:PORT")
    driver.add_argument("--log-format", choices=["text", "json"], default="text")
    driver.add_argument(
        "--sandbox",
        action="store_true",
        help="local sandbox mode: also accept sub-minute rotation intervals such as 5s",
    )
    _bind(driver, "dew_csi.driver.app:run_from_args")


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the guide's walkthrough on a fresh local sandbox",
        description="Run the add-on guide's walkthrough step by step on a fresh local sandbox, "
        "printing each command and its output; exit non-zero when a result differs from the guide.",
    )
    demo.add_argument(
        "--no-kubectl",
        action="store_true",
        help="apply the guide's files through the API even when kubectl is installed",
    )
    _bind(demo, "dew_csi.demo:run_from_args")


def _add_csms_emulator(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    emulator = subparsers.add_parser(
        "csms-emulator",
        help="run the local CSMS (DEW secrets) API emulator",
        description="Serve the Huawei Cloud CSMS v1 API locally, checking SDK-HMAC-SHA256 "
        "signatures, for the sandbox and tests. Runs until SIGTERM or SIGINT.",
    )
    emulator.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="HOST:PORT to listen on; port 0 picks a free port and prints it (default 127.0.0.1:0)",
    )
    emulator.add_argument("--project-id", required=True, help="the project id requests must use")
    emulator.add_argument("--ak", required=True, help="the access key requests are signed with")
    emulator.add_argument("--sk", required=True, help="the secret key requests are signed with")
    emulator.add_argument("--state", help="file to persist secrets to, restored on restart")
    emulator.add_argument(
        "--secrets",
        help="YAML file of secret name -> list of versions (a string, or a mapping with "
        "secret_string or secret_binary in base64), loaded at start",
    )
    _bind(emulator, "dew_csi.csms.emulator:run_from_args")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dew-csi",
        description="Secrets Store CSI driver and Huawei Cloud CSMS provider (CCE Secrets Manager "
        "for DEW).",
    )
    parser.add_argument("--version", action="version", version=f"dew-csi {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_csms_emulator(subparsers)
    _add_sandbox(subparsers)
    _add_provider(subparsers)
    _add_driver(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module_name, _, function_name = cast(str, args._target).partition(":")
    runner = cast(Runner, getattr(importlib.import_module(module_name), function_name))
    try:
        return runner(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
