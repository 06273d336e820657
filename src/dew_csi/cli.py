"""The `dew-csi` command: argument parsing and dispatch.

Each subcommand's implementation is imported only when that subcommand runs, so `dew-csi --help`
stays fast and one component's dependencies are not loaded by another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

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
    _add_sandbox_cluster(sandbox_sub)


def _add_sandbox_cluster(
    sandbox_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """`sandbox up|down|cat|env|logs|kubelet|controllers`."""
    directory_help = (
        "the sandbox directory (default $DEW_CSI_SANDBOX_DIR, else "
        "$XDG_STATE_HOME/dew-csi/sandbox, else ~/.local/state/dew-csi/sandbox)"
    )

    def add_dir(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dir", help=directory_help)

    up = sandbox_sub.add_parser(
        "up",
        help="start the local cluster with the add-on in DIR",
        description="Start the API emulator, the CSMS emulator, dew-provider, the driver, the "
        "kubelet simulator and the workload controllers as processes logging to DIR/logs; write "
        "DIR/kubeconfig and DIR/csms.env; return when all answer.",
    )
    add_dir(up)
    up.add_argument(
        "--rotation-poll-interval",
        default="2m",
        help="the driver's rotation interval; sandbox values such as 5s are accepted (default 2m)",
    )
    up.add_argument(
        "--mounter",
        choices=["tmpfs", "dir"],
        help="tmpfs in a private mount namespace (default when root with unshare), or plain "
        "directories (the default otherwise)",
    )
    up.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for readiness (default 30)"
    )
    _bind(up, "dew_csi.sandbox.cluster:up_from_args")

    down = sandbox_sub.add_parser(
        "down",
        help="stop the sandbox in DIR (state is kept for the next `up`)",
        description="Stop every sandbox process (SIGTERM, then SIGKILL after --timeout) and "
        "unmount anything left under DIR. Safe to run twice.",
    )
    add_dir(down)
    down.add_argument(
        "--timeout", type=float, default=10.0, help="seconds before SIGKILL (default 10)"
    )
    down.add_argument(
        "--purge", action="store_true", help="also remove DIR (state, credentials, logs)"
    )
    _bind(down, "dew_csi.sandbox.cluster:down_from_args")

    cat = sandbox_sub.add_parser(
        "cat",
        help="print what a pod's container sees at PATH",
        description="Print the file a pod's container sees at PATH in one of its CSI volumes; a "
        "directory prints its names one per line, as ls does.",
    )
    cat.add_argument("pod")
    cat.add_argument("path")
    cat.add_argument("-n", "--namespace", default="default")
    cat.add_argument("-c", "--container", help="container name (default: the first)")
    add_dir(cat)
    _bind(cat, "dew_csi.sandbox.cluster:cat_from_args")

    env = sandbox_sub.add_parser(
        "env",
        help="print a pod container's environment as the kubelet resolved it",
        description="Print NAME=value lines: the container's env and envFrom, with secretKeyRef "
        "and configMapKeyRef resolved when the kubelet started it.",
    )
    env.add_argument("pod")
    env.add_argument("-n", "--namespace", default="default")
    env.add_argument("-c", "--container", help="container name (default: the first)")
    add_dir(env)
    _bind(env, "dew_csi.sandbox.cluster:env_from_args")

    logs = sandbox_sub.add_parser(
        "logs",
        help="print a sandbox component's log",
        description="Print the log of one sandbox component (also after `down`); without "
        "COMPONENT, list the components' log files.",
    )
    logs.add_argument(
        "component",
        nargs="?",
        help="apiserver, csms, provider, driver, kubelet, controllers or webhook",
    )
    add_dir(logs)
    _bind(logs, "dew_csi.sandbox.cluster:logs_from_args")

    kubelet = sandbox_sub.add_parser(
        "kubelet",
        help="run the kubelet simulator alone",
        description="Register a node, bind unscheduled pods to it, publish their inline CSI "
        "volumes through the driver's CSI socket, resolve their environment, report them "
        "Running, and unpublish on deletion.",
    )
    kubelet.add_argument("--kubeconfig", help="kubeconfig of the API server")
    kubelet.add_argument("--node-name", default="sandbox-node")
    kubelet.add_argument(
        "--csi-endpoint",
        required=True,
        help="the CSI driver's socket, unix:///path/to/csi.sock",
    )
    kubelet.add_argument(
        "--root", required=True, help="kubelet root directory (pods go in ROOT/pods)"
    )
    kubelet.add_argument("--backoff-initial", default="500ms", help="first retry delay")
    kubelet.add_argument("--backoff-max", default="8s", help="longest retry delay")
    kubelet.add_argument("--log-format", choices=["text", "json"], default="text")
    _bind(kubelet, "dew_csi.sandbox.kubelet:run_from_args")

    controllers = sandbox_sub.add_parser(
        "controllers",
        help="run the Deployment and ReplicaSet controllers",
        description="Keep Deployments, their ReplicaSets and pods, and their status current.",
    )
    controllers.add_argument("--kubeconfig", help="kubeconfig of the API server")
    controllers.add_argument("--resync", default="30s", help="full resync period (default 30s)")
    controllers.add_argument("--log-format", choices=["text", "json"], default="text")
    _bind(controllers, "dew_csi.sandbox.controllers:run_from_args")


def _add_csms_connection_options(parser: argparse.ArgumentParser) -> None:
    """Where CSMS is and how to reach it: the same options for `csms` and `check`."""
    parser.add_argument(
        "--env-file", help="KEY=value file with CSMS_ENDPOINT and HUAWEICLOUD_SDK_* (csms.env)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--endpoint", help="CSMS endpoint URL (else $CSMS_ENDPOINT)")
    where.add_argument("--region", help="Huawei Cloud region, e.g. cn-north-4")
    parser.add_argument("--project-id", help="project id (else $HUAWEICLOUD_SDK_PROJECT_ID)")
    parser.add_argument("--ca-file", help="CA bundle to verify the CSMS endpoint with")
    parser.add_argument("--insecure-skip-tls-verify", action="store_true", help="testing only")


def _add_csms(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`csms put|get|list`; connection options go before or after the subcommand."""

    def connection_options(*, repeated: bool) -> argparse.ArgumentParser:
        # On the subcommands the options have no defaults, so they never undo a value given
        # before the subcommand (argparse copies a subparser's defaults over the group's).
        options = argparse.ArgumentParser(
            add_help=False, argument_default=argparse.SUPPRESS if repeated else None
        )
        _add_csms_connection_options(options)
        return options

    connection = connection_options(repeated=False)
    repeated = connection_options(repeated=True)

    csms = subparsers.add_parser(
        "csms",
        parents=[connection],
        help="put, get and list secrets in CSMS (or the sandbox's emulator)",
        description="Manage secrets in a CSMS endpoint. Credentials come from the env file or "
        "the HUAWEICLOUD_SDK_AK/SK environment variables.",
    )
    csms_sub = csms.add_subparsers(dest="csms_command", required=True)

    put = csms_sub.add_parser(
        "put",
        parents=[repeated],
        help="store a new version (creating the secret if needed); prints its id",
    )
    put.add_argument("name")
    put.add_argument("value", nargs="?", help="the value, or - to read stdin")
    put.add_argument("--file", help="read the value from FILE")
    put.add_argument(
        "--binary", action="store_true", help="store as secret_binary even when it is UTF-8"
    )
    _bind(put, "dew_csi.csms.cli:put_from_args")

    get = csms_sub.add_parser("get", parents=[repeated], help="print a secret's value")
    get.add_argument("name")
    get.add_argument("--version", default="latest", help="v1, v2, ... or latest (default)")
    _bind(get, "dew_csi.csms.cli:get_from_args")

    listing = csms_sub.add_parser(
        "list", parents=[repeated], help="list secret names, or a secret's versions"
    )
    listing.add_argument("--versions", metavar="NAME", help="list NAME's versions and stages")
    _bind(listing, "dew_csi.csms.cli:list_from_args")


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
        help="how long a `latest` read answers other mounts of the same secret, concurrent or "
        "later (a pod mounted within it may get a version up to this old); 0s reads CSMS for "
        "every mount (default 5s)",
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
        help="CSI socket (default unix://<kubelet root>/plugins/csi-secrets-store/csi.sock)",
    )
    driver.add_argument("--node-id", help="this node's name (required)")
    driver.add_argument(
        "--kubelet-root",
        default="/mnt/paas/kubernetes/kubelet",
        help="the kubelet's root directory, as the kubelet (and so the driver) sees it: target "
        "paths must be <root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount; the driver "
        "refuses to start when it does not exist (default /mnt/paas/kubernetes/kubelet, CCE's; "
        "/var/lib/kubelet on most other clusters)",
    )
    driver.add_argument(
        "--max-call-recv-msg-size",
        type=int,
        default=4 * 1024 * 1024,
        metavar="BYTES",
        help="the largest response accepted from a provider, in bytes (default 4194304, as "
        "upstream)",
    )
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
    demo.add_argument(
        "--dir",
        help="run the sandbox in DIR, which must be new or empty (default: a temporary directory)",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the sandbox running at the end (and say how to use and stop it)",
    )
    demo.add_argument(
        "--rotation-poll-interval",
        default="3s",
        help="the driver's rotation interval; sandbox values such as 3s are accepted (default 3s)",
    )
    demo.add_argument(
        "--examples",
        metavar="DIR",
        help="the guide's YAML files (default: the checkout's examples/)",
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a pod or a mount to reach what the guide shows (default 30)",
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


def _add_check(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`check pod|spc`; the options go before or after the subcommand."""

    def options(*, repeated: bool) -> argparse.ArgumentParser:
        # As for `csms`: no defaults on the subcommands, so they never undo an earlier value.
        common = argparse.ArgumentParser(
            add_help=False, argument_default=argparse.SUPPRESS if repeated else None
        )
        common.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig's)")
        common.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, ~/.kube)")
        _add_csms_connection_options(common)
        common.add_argument(
            "--credentials-dir",
            help="directory with files ak, sk[, security_token, project_id], as the provider's",
        )
        common.add_argument(
            "--metadata-url",
            help="ECS metadata service for agency credentials (default http://169.254.169.254); "
            "'none' disables it",
        )
        common.add_argument("--plain", action="store_true", help="OK/FAIL/SKIP instead of marks")
        common.add_argument(
            "-v", "--verbose", action="store_true", help="log CSMS retries to stderr"
        )
        return common

    check = subparsers.add_parser(
        "check",
        parents=[options(repeated=False)],
        help="explain whether a pod's secrets would mount, and why not",
        description="Check, without mounting anything, what a mount would need: the volume, the "
        "SecretProviderClass, the ServiceAccount whitelist, the credentials and every secret, "
        "version and jmesPath in CSMS. One line per check; exit 0 when all pass, 1 when any "
        "fails, 2 for usage errors. Secret values are never printed.",
    )
    check_sub = check.add_subparsers(dest="check_command", required=True)
    repeated = options(repeated=True)

    pod = check_sub.add_parser(
        "pod",
        parents=[repeated],
        help="check every secrets-store CSI volume of a pod",
        description="Check each inline CSI volume of driver secrets-store.csi.k8s.io of the pod.",
    )
    pod.add_argument("name", help="the pod's name")
    _bind(pod, "dew_csi.check:pod_from_args")

    spc = check_sub.add_parser(
        "spc",
        parents=[repeated],
        help="check a SecretProviderClass against CSMS",
        description="Check a SecretProviderClass: validity, credentials, every secret, version "
        "and jmesPath in CSMS, secretObjects; with --service-account also the whitelist.",
    )
    spc.add_argument("name", help="the SecretProviderClass's name")
    spc.add_argument(
        "--service-account", help="also check this ServiceAccount's cce.io/dew-resource whitelist"
    )
    _bind(spc, "dew_csi.check:spc_from_args")


def _add_webhook(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhook = subparsers.add_parser(
        "webhook",
        help="run the admission webhook that validates SecretProviderClass objects",
        description="Answer AdmissionReview (admission.k8s.io/v1) requests on POST /validate over "
        "HTTPS: refuse SecretProviderClass objects of provider cce that dew-provider would refuse "
        "(same rules, same message), and creates beyond --max-spcs objects in the cluster. "
        "GET /healthz answers ok.",
    )
    webhook.add_argument(
        "--listen",
        default="0.0.0.0:8443",
        help="HOST:PORT to serve HTTPS on; port 0 picks a free port and prints it "
        "(default 0.0.0.0:8443)",
    )
    webhook.add_argument("--tls-cert", required=True, help="PEM certificate (chain) to serve")
    webhook.add_argument("--tls-key", required=True, help="PEM private key of --tls-cert")
    webhook.add_argument(
        "--kubeconfig", help="kubeconfig file; in a pod the in-cluster config is used"
    )
    webhook.add_argument(
        "--max-spcs",
        type=int,
        default=500,
        help="refuse creating a SecretProviderClass when the cluster has this many already "
        "(default 500, the add-on's limit); 0 turns the limit off and needs no API access",
    )
    webhook.add_argument("--log-format", choices=["text", "json"], default="text")
    _bind(webhook, "dew_csi.webhook:run_from_args")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dew-csi",
        description="Secrets Store CSI driver and Huawei Cloud CSMS provider (CCE Secrets Manager "
        "for DEW).",
    )
    parser.add_argument("--version", action="version", version=f"dew-csi {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_csms_emulator(subparsers)
    _add_csms(subparsers)
    _add_sandbox(subparsers)
    _add_provider(subparsers)
    _add_driver(subparsers)
    _add_demo(subparsers)
    _add_check(subparsers)
    _add_webhook(subparsers)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """`parser.parse_args`, and the (sub)parser of the chosen command; but an unknown argument
    is reported before a missing subcommand, by the subcommand's own parser. (argparse checks
    required subcommands first, so `dew-csi --bogus` would only say that a command is
    required, and `dew-csi driver --bogus` would show the top-level usage.)"""
    levels: list[argparse._SubParsersAction[Any]] = []
    pending = [parser]
    while pending:
        action = _subcommands(pending.pop())
        if action is not None:
            levels.append(action)
            pending.extend(action.choices.values())
    required = {id(action): action.required for action in levels}
    for action in levels:
        action.required = False
    try:
        args, unknown = parser.parse_known_args(argv)
    finally:
        for action in levels:
            action.required = required[id(action)]
    chosen = parser
    while (action := _subcommands(chosen)) is not None:
        name = getattr(args, action.dest, None)
        if name is None:
            if unknown:
                chosen.error(f"unrecognized arguments: {' '.join(unknown)}")
            chosen.error(f"a command is required, one of: {', '.join(action.choices)}")
        chosen = action.choices[name]
    if unknown:
        chosen.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args, chosen


def main(argv: Sequence[str] | None = None) -> int:
    args, command = parse(build_parser(), argv)
    module_name, _, function_name = cast(str, args._target).partition(":")
    runner = cast(Runner, getattr(importlib.import_module(module_name), function_name))
    try:
        return runner(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        # A missing or broken kubeconfig is the user's to fix: one line, as for any other
        # configuration mistake, whichever command met it. (kube is imported here only, so
        # commands that never talk to Kubernetes do not load lightkube.)
        from dew_csi.kube import KubeConfigError

        if not isinstance(error, KubeConfigError):
            raise
        print(f"{command.prog}: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
