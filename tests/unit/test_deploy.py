"""deploy/ and the Dockerfile: the kustomize tree renders, every object is valid for Kubernetes
1.28 to 1.32, and the manifests agree with the programs they run (flags parsed by the real CLI,
shared paths, RBAC derived from the code, the guide's resource sizes).

`kubectl kustomize deploy/` runs once per module; without kubectl those tests skip and say why.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

import dew_csi
from dew_csi import kube
from dew_csi.cli import build_parser
from dew_csi.driver import app as driver_app
from dew_csi.driver.mounter import check_target_path
from dew_csi.driver.provider_client import DEFAULT_PROVIDER_DIRS
from dew_csi.driver.rotation import parse_rotation_interval
from dew_csi.grpc_socket import socket_path
from dew_csi.provider import app as provider_app

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SRC = REPO / "src" / "dew_csi"
KUBECTL = shutil.which("kubectl")
K8S_VERSIONS = ("1.28", "1.29", "1.30", "1.31", "1.32")

NAMESPACE = "kube-system"
PART_OF = ("app.kubernetes.io/part-of", "dew-csi")
CLUSTER_SCOPED = {
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "ValidatingWebhookConfiguration",
}
# The guide's Table 1: the size of one pod of each DaemonSet.
GUIDE_POD_CPU = Fraction(1, 4)  # 0.25 vCPU
GUIDE_POD_MEMORY = 512 * 1024**2  # 0.5 GiB
NODE_NAME = "node-a"  # what the downward API would give NODE_NAME
CCE_KUBELET_ROOT = "/mnt/paas/kubernetes/kubelet"  # the guide's SPCPS targetPath shows it
VAR_LIB_KUBELET_COMPONENT = "components/kubelet-root-var-lib-kubelet"

needs_kubectl = pytest.mark.kubectl


# --------------------------------------------------------------------------- rendering


def render(directory: Path) -> list[dict[str, Any]]:
    """Every object `kubectl kustomize <directory>` renders."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: deploy/ is rendered with `kubectl kustomize`")
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    """Every object `kubectl kustomize deploy/` renders, once per module."""
    return render(DEPLOY)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == name]
    assert len(matches) == 1, f"{workload['metadata']['name']} has no container {name}"
    return matches[0]


def pod_containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict]]:
    for obj in objects:
        if obj["kind"] in ("DaemonSet", "Deployment"):
            spec = obj["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                yield obj, c


def volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    assert name in volumes, f"{workload['metadata']['name']} has no volume {name}"
    return volumes[name]


def mount(c: dict[str, Any], volume_name: str) -> dict[str, Any]:
    matches = [m for m in c.get("volumeMounts", []) if m["name"] == volume_name]
    assert len(matches) == 1, f"container {c['name']} does not mount {volume_name}"
    return matches[0]


def host_path(workload: dict[str, Any], c: dict[str, Any], path: str) -> PurePosixPath:
    """The host file a container path is, through the container's hostPath volume mounts."""
    target = PurePosixPath(path)
    for m in c.get("volumeMounts", []):
        mount_path = PurePosixPath(m["mountPath"])
        if target == mount_path or mount_path in target.parents:
            source = volume(workload, m["name"]).get("hostPath")
            assert source is not None, f"{path} is on volume {m['name']}, not a hostPath"
            return PurePosixPath(source["path"]) / target.relative_to(mount_path)
    raise AssertionError(f"{path} is on no volume of container {c['name']}")


def flags(args: list[str]) -> dict[str, list[str]]:
    """`--name=value` arguments by name (repeatable ones keep every value)."""
    result: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg.partition("=")
            result.setdefault(name, []).append(value)
    return result


def flag(args: list[str], name: str) -> str:
    values = flags(args).get(name, [])
    assert len(values) == 1, f"expected one {name}=... in {args}"
    return values[0]


def env_of(objects: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would resolve it on node NODE_NAME."""
    env: dict[str, str] = {}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "spec.nodeName", source
            env[item["name"]] = NODE_NAME
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            config_map = find(objects, "ConfigMap", ref["name"])
            assert not ref.get("optional"), f"{item['name']}: a setting must not be optional"
            assert ref["key"] in config_map["data"], f"ConfigMap has no key {ref['key']}"
            env[item["name"]] = config_map["data"][ref["key"]]
        else:
            raise AssertionError(f"unexpected env source {source}")
    return env


_VAR = re.compile(r"\$\((\w+)\)")


def expanded_args(objects: list[dict[str, Any]], c: dict[str, Any]) -> list[str]:
    """The container's args with $(VAR) replaced as the kubelet does. An undefined variable
    would reach the program literally, so it fails here."""
    env = env_of(objects, c)

    def substitute(match: re.Match[str]) -> str:
        assert match.group(1) in env, f"{c['name']}: $({match.group(1)}) is not in its env"
        return env[match.group(1)]

    return [_VAR.sub(substitute, arg) for arg in c.get("args", [])]


def subcommands() -> set[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse with the real `dew-csi` parser; an argparse error fails the test with its message."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"dew-csi {shlex.join(argv)} does not parse (exit {error.code})")


def driver_ds(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "DaemonSet", "csi-secrets-store")


def provider_ds(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "DaemonSet", "dew-provider")


def webhook_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "dew-csi-webhook")


# --------------------------------------------------------------------------- schema validity


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_for_kubernetes(objects: list[dict[str, Any]], version: str) -> None:
    """Strict schema validation (unknown fields are errors). Only objects of a custom kind
    (say a SecretProviderClass) would be skipped, kubernetes_validate having no schema for
    them; today deploy/ renders none, so all of them are validated, the CRDs included."""
    custom_groups = {o["spec"]["group"] for o in objects if o["kind"] == "CustomResourceDefinition"}
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except SchemaNotFoundError:
            group = obj["apiVersion"].rpartition("/")[0]
            assert group in custom_groups, f"no schema for built-in kind {obj['kind']}"
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: {error.message}")
    assert not errors, "\n".join(errors)


@needs_kubectl
def test_strict_validation_refuses_an_unknown_field(objects: list[dict[str, Any]]) -> None:
    """Proves the check above has teeth: a misspelt field is an error in strict mode."""
    broken = copy.deepcopy(driver_ds(objects))
    broken["spec"]["template"]["spec"]["containers"][0]["mountPropagaton"] = "Bidirectional"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------- inventory


@needs_kubectl
def test_the_tree_installs_the_addon_into_kube_system(objects: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("CustomResourceDefinition", "secretproviderclasses.secrets-store.csi.x-k8s.io"),
        ("CustomResourceDefinition", "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io"),
        ("CSIDriver", dew_csi.DRIVER_NAME),
        ("DaemonSet", "csi-secrets-store"),
        ("DaemonSet", "dew-provider"),
        ("Deployment", "dew-csi-webhook"),
        ("Service", "dew-csi-webhook"),
        ("ValidatingWebhookConfiguration", "dew-csi-webhook"),
    } <= kinds
    for obj in objects:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], what
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, what


@needs_kubectl
def test_everything_is_labelled_part_of_dew_csi(objects: list[dict[str, Any]]) -> None:
    """Also: every object but the CRDs has a component label, which deploy/README.md's
    "uninstall but keep the CRDs" selector relies on."""
    key, value = PART_OF
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        what = f"{obj['kind']} {obj['metadata']['name']}"
        assert labels.get(key) == value, what
        has_component = "app.kubernetes.io/component" in labels
        assert has_component == (obj["kind"] != "CustomResourceDefinition"), what
        if obj["kind"] in ("DaemonSet", "Deployment"):
            assert obj["spec"]["template"]["metadata"]["labels"].get(key) == value, what
            assert key not in obj["spec"]["selector"]["matchLabels"], what


@needs_kubectl
def test_one_image_for_all_components_and_pinned_sidecars(objects: list[dict[str, Any]]) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    # The package's version is dew_csi.__version__ (hatch reads it; tests/unit/test_packaging.py).
    assert "version" in pyproject["project"]["dynamic"]
    ours = {c["image"] for _, c in pod_containers(objects) if c.get("command") == ["dew-csi"]}
    assert ours == {f"dew-csi:{dew_csi.__version__}"}
    for _, c in pod_containers(objects):
        assert c.get("imagePullPolicy") == "IfNotPresent", c["name"]
        if c.get("command") != ["dew-csi"]:
            assert re.fullmatch(r"registry\.k8s\.io/sig-storage/[a-z-]+:v\d+\.\d+\.\d+", c["image"])


# --------------------------------------------------------------------------- the programs' flags


@needs_kubectl
def test_driver_args_parse_and_configure_the_driver(objects: list[dict[str, Any]]) -> None:
    c = container(driver_ds(objects), "secrets-store")
    assert c["command"] == ["dew-csi"]
    argv = expanded_args(objects, c)
    args = parse_cli(argv)
    assert args.command == "driver"
    config = driver_app.config_from_args(args)  # the checks the driver makes at start-up
    assert config.node_id == NODE_NAME
    assert config.rotation_interval == 120.0
    assert config.mounter == "tmpfs"
    assert config.metrics_addr == ":8095"
    assert config.kubeconfig is None  # in-cluster configuration
    assert config.kubelet_root == Path(CCE_KUBELET_ROOT)
    assert config.max_call_recv_msg_size == 4 * 1024 * 1024  # upstream's default


@needs_kubectl
def test_provider_args_parse_and_configure_the_provider(objects: list[dict[str, Any]]) -> None:
    ds = provider_ds(objects)
    c = container(ds, "dew-provider")
    assert c["command"] == ["dew-csi"]
    args = parse_cli(expanded_args(objects, c))
    assert args.command == "provider"
    config = provider_app.config_from_args(args)
    assert config.csms.resolved_endpoint().startswith("https://")
    assert config.metrics_addr == ":8098"
    assert config.metadata_url == provider_app.DEFAULT_METADATA_URL  # agency credentials: on
    # The optional access-key Secret is mounted read-only where --credentials-dir points.
    credentials = volume(ds, "credentials")["secret"]
    assert credentials["secretName"] == "dew-csi-credentials"
    assert credentials["optional"] is True
    credentials_mount = mount(c, "credentials")
    assert credentials_mount["readOnly"] is True
    assert config.credentials_dir == credentials_mount["mountPath"]


@needs_kubectl
def test_webhook_args_parse_and_configure_the_webhook(objects: list[dict[str, Any]]) -> None:
    c = container(webhook_deployment(objects), "webhook")
    assert c["command"] == ["dew-csi"]
    argv = expanded_args(objects, c)
    if "webhook" not in subcommands():
        pytest.skip(
            "`dew-csi webhook` does not exist yet (being written for issue #5); its args "
            f"{shlex.join(argv[1:])} are checked once it does"
        )
    args = parse_cli(argv)
    assert args.command == "webhook"
    webhook_app = importlib.import_module("dew_csi.webhook")
    config = webhook_app.config_from_args(args)
    assert (config.host, config.port) == ("0.0.0.0", 8443)
    assert config.max_spcs == 500  # the guide's limit
    assert config.kubeconfig is None  # in-cluster configuration
    # The ValidatingWebhookConfiguration calls the path the server routes.
    (hook,) = find(objects, "ValidatingWebhookConfiguration", "dew-csi-webhook")["webhooks"]
    path = hook["clientConfig"]["service"]["path"]
    source = Path(webhook_app.__file__).read_text()
    assert re.search(r"add_post\(\s*" + re.escape(json.dumps(path)), source), path
    probe = c["readinessProbe"]["httpGet"]
    assert (probe["scheme"], probe["path"]) == ("HTTPS", "/healthz")
    assert re.search(r"add_get\(\s*" + re.escape(json.dumps(probe["path"])), source)


@needs_kubectl
def test_metrics_ports_are_declared(objects: list[dict[str, Any]]) -> None:
    for workload, name in (
        (driver_ds(objects), "secrets-store"),
        (provider_ds(objects), "dew-provider"),
    ):
        c = container(workload, name)
        port = int(flag(c["args"], "--metrics-addr").rpartition(":")[2])
        assert {"name": "metrics", "containerPort": port} in c["ports"], name


# --------------------------------------------------------------------------- shared paths


@needs_kubectl
def test_driver_and_provider_share_the_provider_directory(objects: list[dict[str, Any]]) -> None:
    driver, provider = driver_ds(objects), provider_ds(objects)
    driver_c, provider_c = container(driver, "secrets-store"), container(provider, "dew-provider")
    provider_dir = flag(driver_c["args"], "--provider-dir")
    socket_dir = flag(provider_c["args"], "--socket-dir")
    on_host = host_path(driver, driver_c, provider_dir)
    assert on_host == host_path(provider, provider_c, socket_dir)
    # The upstream location, so an upstream driver could use our provider (and ours theirs).
    assert Path(str(on_host)) in DEFAULT_PROVIDER_DIRS
    assert str(on_host) == provider_app.DEFAULT_SOCKET_DIR
    for workload in (driver, provider):
        assert volume(workload, "providers-dir")["hostPath"]["type"] == "DirectoryOrCreate"


@needs_kubectl
def test_registrar_driver_and_probe_agree_on_the_csi_socket(objects: list[dict[str, Any]]) -> None:
    ds = driver_ds(objects)
    registrar = container(ds, "node-driver-registrar")
    driver = container(ds, "secrets-store")
    probe = container(ds, "liveness-probe")
    registration = flag(expanded_args(objects, registrar), "--kubelet-registration-path")
    plugin_dir = volume(ds, "plugin-dir")["hostPath"]["path"]
    assert registration == f"{plugin_dir}/csi.sock"
    endpoint = str(socket_path(flag(driver["args"], "--endpoint")))
    assert PurePosixPath(endpoint).parent == PurePosixPath(mount(driver, "plugin-dir")["mountPath"])
    # All three reach the same host file, the one the kubelet is told to dial.
    assert str(host_path(ds, driver, endpoint)) == registration
    assert str(host_path(ds, registrar, flag(registrar["args"], "--csi-address"))) == registration
    assert str(host_path(ds, probe, flag(probe["args"], "--csi-address"))) == registration
    assert mount(registrar, "registration-dir")["mountPath"] == "/registration"


@needs_kubectl
def test_driver_mounts_the_kubelet_pods_dir_bidirectionally(objects: list[dict[str, Any]]) -> None:
    ds = driver_ds(objects)
    driver = container(ds, "secrets-store")
    pods = mount(driver, "mountpoint-dir")
    assert pods["mountPropagation"] == "Bidirectional"
    # The kubelet sends host target paths: the driver must see them at the same path.
    assert pods["mountPath"] == volume(ds, "mountpoint-dir")["hostPath"]["path"]
    assert pods["mountPath"] == f"{CCE_KUBELET_ROOT}/pods"
    assert driver["securityContext"]["privileged"] is True  # Bidirectional requires it


@needs_kubectl
def test_driver_liveness_probe_hits_the_probe_sidecar(objects: list[dict[str, Any]]) -> None:
    ds = driver_ds(objects)
    driver = container(ds, "secrets-store")
    health_port = int(flag(container(ds, "liveness-probe")["args"], "--health-port"))
    probe = driver["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert ports.get(probe["port"], probe["port"]) == health_port == 9808


@needs_kubectl
def test_only_the_driver_is_privileged(objects: list[dict[str, Any]]) -> None:
    for _, c in pod_containers(objects):
        privileged = c.get("securityContext", {}).get("privileged", False)
        assert privileged == (c["name"] == "secrets-store"), c["name"]
    provider = container(provider_ds(objects), "dew-provider")["securityContext"]
    assert provider["capabilities"]["drop"] == ["ALL"]
    assert provider["allowPrivilegeEscalation"] is False
    webhook_pod = webhook_deployment(objects)["spec"]["template"]["spec"]["securityContext"]
    assert webhook_pod["runAsNonRoot"] is True


# --------------------------------------------------------------------------- the kubelet root


@pytest.fixture(scope="module")
def var_lib_kubelet_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """deploy/ rendered (from a copy) with the switch deploy/README.md describes: the
    component for /var/lib/kubelet enabled by uncommenting its lines in kustomization.yaml."""
    copy = tmp_path_factory.mktemp("deploy") / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "kustomization.yaml"
    text = kustomization.read_text()
    commented = f"# components:\n#   - {VAR_LIB_KUBELET_COMPONENT}\n"
    assert commented in text, "kustomization.yaml no longer carries the documented switch"
    enabled = f"components:\n  - {VAR_LIB_KUBELET_COMPONENT}\n"
    kustomization.write_text(text.replace(commented, enabled))
    return render(copy)


def kubelet_paths(objects: list[dict[str, Any]]) -> dict[str, str]:
    """Every path of csi-secrets-store below the kubelet root, as kubelet and containers get it."""
    ds = driver_ds(objects)
    registrar = container(ds, "node-driver-registrar")
    driver = container(ds, "secrets-store")
    return {
        "plugin-dir hostPath": volume(ds, "plugin-dir")["hostPath"]["path"],
        "registration-dir hostPath": volume(ds, "registration-dir")["hostPath"]["path"],
        "mountpoint-dir hostPath": volume(ds, "mountpoint-dir")["hostPath"]["path"],
        "mountpoint-dir mountPath": mount(driver, "mountpoint-dir")["mountPath"],
        "--kubelet-registration-path": flag(
            expanded_args(objects, registrar), "--kubelet-registration-path"
        ),
        "--kubelet-root": flag(expanded_args(objects, driver), "--kubelet-root"),
    }


@needs_kubectl
@pytest.mark.parametrize(
    ("variant", "root"), [("default", CCE_KUBELET_ROOT), ("component", "/var/lib/kubelet")]
)
def test_every_kubelet_path_follows_the_one_kubelet_root_setting(
    objects: list[dict[str, Any]],
    var_lib_kubelet_objects: list[dict[str, Any]],
    variant: str,
    root: str,
) -> None:
    rendered = objects if variant == "default" else var_lib_kubelet_objects
    (config_map,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert config_map["data"]["kubelet_root_dir"] == root
    assert kubelet_paths(rendered) == {
        "plugin-dir hostPath": f"{root}/plugins/csi-secrets-store",
        "registration-dir hostPath": f"{root}/plugins_registry",
        # The same path inside the driver as on the host: the kubelet sends host paths.
        "mountpoint-dir hostPath": f"{root}/pods",
        "mountpoint-dir mountPath": f"{root}/pods",
        "--kubelet-registration-path": f"{root}/plugins/csi-secrets-store/csi.sock",
        "--kubelet-root": root,
    }
    driver = container(driver_ds(rendered), "secrets-store")
    assert mount(driver, "mountpoint-dir")["mountPropagation"] == "Bidirectional"
    config = driver_app.config_from_args(parse_cli(expanded_args(rendered, driver)))
    assert config.kubelet_root == Path(root)
    # The target paths this kubelet sends are the ones the driver accepts.
    target = f"{root}/pods/0a1b/volumes/kubernetes.io~csi/secrets-store-inline/mount"
    assert check_target_path(target, config.kubelet_root) == Path(target)
    # No placeholder is left over, and the other root appears nowhere.
    text = json.dumps(rendered)
    assert "KUBELET_ROOT" not in text.replace("KUBELET_ROOT_DIR", "")
    assert ("/var/lib/kubelet" if root == CCE_KUBELET_ROOT else CCE_KUBELET_ROOT) not in text


def test_the_kubelet_root_is_written_only_in_config_env() -> None:
    manifest = (DEPLOY / "csi-secrets-store.yaml").read_text()
    for root in (CCE_KUBELET_ROOT, "/var/lib/kubelet"):
        assert root not in manifest
    assert f"kubelet_root_dir={CCE_KUBELET_ROOT}\n" in (DEPLOY / "config.env").read_text()
    # The driver's own default is CCE's too, and its socket sits below the kubelet root.
    args = parse_cli(["driver", "--node-id", NODE_NAME])
    config = driver_app.config_from_args(args)
    assert config.kubelet_root == driver_app.DEFAULT_KUBELET_ROOT == Path(CCE_KUBELET_ROOT)
    assert socket_path(config.endpoint) == Path(
        f"{CCE_KUBELET_ROOT}/plugins/csi-secrets-store/csi.sock"
    )


# --------------------------------------------------------------------------- CSIDriver, config


@needs_kubectl
def test_csidriver_matches_the_driver(objects: list[dict[str, Any]]) -> None:
    spec = find(objects, "CSIDriver", dew_csi.DRIVER_NAME)["spec"]
    assert spec == {
        "attachRequired": False,
        "podInfoOnMount": True,
        "volumeLifecycleModes": ["Ephemeral"],
        "requiresRepublish": False,
    }


@needs_kubectl
def test_rotation_poll_interval_is_set_in_one_place(objects: list[dict[str, Any]]) -> None:
    config_maps = [o for o in objects if o["kind"] == "ConfigMap"]
    assert len(config_maps) == 1
    config_map = config_maps[0]
    assert config_map["metadata"]["name"].startswith("dew-csi-config")
    interval = config_map["data"]["rotation_poll_interval"]
    assert interval == "2m"
    assert parse_rotation_interval(interval) == 120.0
    assert (
        flag(container(driver_ds(objects), "secrets-store")["args"], "--rotation-poll-interval")
        == "$(ROTATION_POLL_INTERVAL)"
    )
    # What the driver would refuse at start, were it put in config.env.
    for bad in ("0m", "1441m", "2min", "120", "5s", "-1m"):
        with pytest.raises(ValueError, match="rotation_poll_interval"):
            parse_rotation_interval(bad)
    assert parse_rotation_interval("1m") == 60.0
    assert parse_rotation_interval("1440m") == 86400.0


# --------------------------------------------------------------------------- RBAC

_METHOD_VERBS: dict[str, tuple[str, ...]] = {
    "get": ("get",),
    "find": ("get",),
    "list_objects": ("list",),
    "watch": ("watch",),
    "create": ("create",),
    "replace": ("update",),
    "patch": ("patch",),
    "apply": ("create", "patch"),
    "delete": ("delete",),
}
Permission = tuple[str, str, str]  # (apiGroup, resource, verb)


def required_permissions(paths: list[Path]) -> set[Permission]:
    """What the code asks of the API server: every `Kube` call whose first argument is one of
    dew_csi.kube's Resource constants, every `WatchCache` (list + watch) and `record_event`."""
    resources = {n: v for n, v in vars(kube).items() if isinstance(v, kube.Resource)}
    needed: set[Permission] = set()
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        imported: dict[str, kube.Resource] = {}
        module_names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "dew_csi.kube":
                for alias in node.names:
                    if alias.name in resources:
                        imported[alias.asname or alias.name] = resources[alias.name]
            elif isinstance(node, ast.ImportFrom) and node.module == "dew_csi":
                module_names |= {a.asname or a.name for a in node.names if a.name == "kube"}

        def resolve(
            expr: ast.expr,
            imported: dict[str, kube.Resource] = imported,
            module_names: set[str] = module_names,
        ) -> kube.Resource | None:
            if isinstance(expr, ast.Name):
                return imported.get(expr.id)
            if (
                isinstance(expr, ast.Attribute)
                and isinstance(expr.value, ast.Name)
                and expr.value.id in module_names
            ):
                return resources.get(expr.attr)
            return None

        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arguments = [*node.args, *(k.value for k in node.keywords if k.arg == "resource")]
            if name == "record_event":
                needed.add(("", "events", "create"))
                # A repeated Event is patched (count, lastTimestamp): kube.EventRecorder.
                needed.add(("", "events", "patch"))
            elif name == "WatchCache":
                for resource in filter(None, map(resolve, arguments[1:])):
                    needed |= {(resource.group, resource.plural, v) for v in ("list", "watch")}
            elif isinstance(func, ast.Attribute) and arguments:
                resource = resolve(arguments[0])
                if resource is None:
                    continue
                if name == "replace_status":
                    needed.add((resource.group, f"{resource.plural}/status", "patch"))
                for verb in _METHOD_VERBS.get(name, ()):
                    needed.add((resource.group, resource.plural, verb))
    return needed


def granted_permissions(objects: list[dict[str, Any]], service_account: str) -> set[Permission]:
    """What the ClusterRoles bound to kube-system/<service_account> allow."""
    roles = set()
    for binding in (o for o in objects if o["kind"] == "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            if subject == {
                "kind": "ServiceAccount",
                "name": service_account,
                "namespace": NAMESPACE,
            }:
                assert binding["roleRef"]["kind"] == "ClusterRole"
                roles.add(binding["roleRef"]["name"])
    assert roles, f"nothing is bound to ServiceAccount {service_account}"
    granted: set[Permission] = set()
    for role in roles:
        for rule in find(objects, "ClusterRole", role)["rules"]:
            assert "resourceNames" not in rule
            assert "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), f"wildcard in {role}"
                        granted.add((group, resource, verb))
    return granted


def service_account_of(objects: list[dict[str, Any]], workload: dict[str, Any]) -> str:
    name = workload["spec"]["template"]["spec"]["serviceAccountName"]
    find(objects, "ServiceAccount", name)  # it exists, in kube-system
    return str(name)


def python_files(*parts: str) -> list[Path]:
    where = SRC.joinpath(*parts)
    if where.is_dir():
        return sorted(where.glob("*.py"))
    return [where] if where.exists() else []


@needs_kubectl
def test_driver_rbac_is_exactly_what_the_driver_code_uses(objects: list[dict[str, Any]]) -> None:
    needed = required_permissions(python_files("driver"))
    # The scanner found the calls we know of (so an empty scan cannot pass by accident).
    spc_group = kube.SPC_GROUP
    assert {
        (spc_group, "secretproviderclasspodstatuses", "create"),
        (spc_group, "secretproviderclasses", "watch"),
        ("", "secrets", "update"),
        ("", "events", "create"),
        ("", "events", "patch"),
    } <= needed
    granted = granted_permissions(objects, service_account_of(objects, driver_ds(objects)))
    assert needed - granted == set(), "the driver needs these and is not granted them"
    assert granted - needed == set(), "granted but unused by the driver (least privilege)"


@needs_kubectl
def test_provider_rbac_is_exactly_what_the_provider_code_uses(
    objects: list[dict[str, Any]],
) -> None:
    needed = required_permissions(python_files("provider"))
    assert ("", "serviceaccounts", "watch") in needed
    granted = granted_permissions(objects, service_account_of(objects, provider_ds(objects)))
    assert needed == granted


@needs_kubectl
def test_webhook_rbac_only_reads_secretproviderclasses(objects: list[dict[str, Any]]) -> None:
    """It counts SecretProviderClass objects from a watch cache: list and watch, nothing else."""
    granted = granted_permissions(objects, service_account_of(objects, webhook_deployment(objects)))
    assert granted == {(kube.SPC_GROUP, "secretproviderclasses", v) for v in ("list", "watch")}
    code = python_files("webhook.py") + python_files("webhook")
    if code:  # once the webhook's code exists, its calls must match too
        assert required_permissions(code) == granted


AGGREGATE_LABEL = "rbac.authorization.k8s.io/aggregate-to-{}"
READ_VERBS = frozenset({"get", "list", "watch"})
SPC_EDIT_VERBS = READ_VERBS | {"create", "update", "patch", "delete", "deletecollection"}


def aggregated_to(objects: list[dict[str, Any]], built_in: str) -> list[dict[str, Any]]:
    """The ClusterRoles deploy/ aggregates into the built-in admin, edit or view role."""
    label = AGGREGATE_LABEL.format(built_in)
    return [
        o
        for o in objects
        if o["kind"] == "ClusterRole" and o["metadata"].get("labels", {}).get(label) == "true"
    ]


def role_grants(role: dict[str, Any]) -> set[Permission]:
    granted: set[Permission] = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {role['metadata']}"
                    granted.add((group, resource, verb))
    return granted


@needs_kubectl
def test_users_get_secretproviderclass_rights_through_the_built_in_roles(
    objects: list[dict[str, Any]],
) -> None:
    """As upstream ships them: admin and edit may create, change and delete SecretProviderClasses
    in their namespaces; view (which admin and edit include) may read SPCs and their pod
    statuses. Without these, a namespace editor cannot create an SPC."""
    spc, spcps = "secretproviderclasses", "secretproviderclasspodstatuses"
    admin, edit, view = (aggregated_to(objects, r) for r in ("admin", "edit", "view"))
    assert len(edit) == 1
    assert admin == edit  # one role for both, as upstream's secretproviderclasses-admin-role
    assert role_grants(edit[0]) == {(kube.SPC_GROUP, spc, v) for v in SPC_EDIT_VERBS}
    assert len(view) == 1
    assert role_grants(view[0]) == {
        (kube.SPC_GROUP, r, v) for r in (spc, spcps) for v in READ_VERBS
    }
    # They are for aggregation only: nothing binds them directly.
    names = {r["metadata"]["name"] for r in (*edit, *view)}
    for binding in (o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["roleRef"]["name"] not in names


@needs_kubectl
def test_no_user_role_writes_pod_statuses_or_touches_secrets(objects: list[dict[str, Any]]) -> None:
    """SecretProviderClassPodStatus is written by the driver alone; Secrets stay with the
    built-in roles' own rules."""
    user_roles = {
        role["metadata"]["name"]: role
        for built_in in ("admin", "edit", "view")
        for role in aggregated_to(objects, built_in)
    }
    assert user_roles
    for name, role in user_roles.items():
        for _group, resource, verb in role_grants(role):
            assert resource != "secrets", f"{name} grants {verb} on Secrets"
            if resource.startswith("secretproviderclasspodstatuses"):
                assert verb in READ_VERBS, f"{name} grants {verb} on {resource}"


# --------------------------------------------------------------------------- resources


def cpu(quantity: str) -> Fraction:
    return Fraction(int(quantity[:-1]), 1000) if quantity.endswith("m") else Fraction(quantity)


def memory(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


@needs_kubectl
@pytest.mark.parametrize("daemonset", ["csi-secrets-store", "dew-provider"])
def test_pod_resources_are_the_guides(objects: list[dict[str, Any]], daemonset: str) -> None:
    """Table 1: 0.25 vCPU and 0.5 GiB per pod, split over its containers; requests = limits."""
    containers = find(objects, "DaemonSet", daemonset)["spec"]["template"]["spec"]["containers"]
    for which in ("requests", "limits"):
        assert sum(cpu(c["resources"][which]["cpu"]) for c in containers) == GUIDE_POD_CPU
        assert sum(memory(c["resources"][which]["memory"]) for c in containers) == GUIDE_POD_MEMORY
    for c in containers:
        assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]
    expected_containers = {
        "csi-secrets-store": ["node-driver-registrar", "secrets-store", "liveness-probe"],
        "dew-provider": ["dew-provider"],
    }
    assert [c["name"] for c in containers] == expected_containers[daemonset]


# --------------------------------------------------------------------------- webhook wiring


@needs_kubectl
def test_webhook_configuration_reaches_the_webhook_pod(objects: list[dict[str, Any]]) -> None:
    deployment = webhook_deployment(objects)
    c = container(deployment, "webhook")
    service = find(objects, "Service", "dew-csi-webhook")
    (hook,) = find(objects, "ValidatingWebhookConfiguration", "dew-csi-webhook")["webhooks"]
    reference = hook["clientConfig"]["service"]
    assert (reference["name"], reference["namespace"]) == ("dew-csi-webhook", NAMESPACE)
    (service_port,) = service["spec"]["ports"]
    assert reference["port"] == service_port["port"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen_port = int(flag(c["args"], "--listen").rpartition(":")[2])
    assert ports[service_port["targetPort"]] == listen_port
    tls = mount(c, "tls")
    assert volume(deployment, "tls")["secret"]["secretName"] == "dew-csi-webhook-tls"
    for name in ("--tls-cert", "--tls-key"):
        assert PurePosixPath(flag(c["args"], name)).parent == PurePosixPath(tls["mountPath"])
    # What and how it validates (failurePolicy: the comment in the manifest says why Ignore).
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    (rule,) = hook["rules"]
    assert rule["apiGroups"] == [kube.SPC_GROUP]
    assert rule["resources"] == ["secretproviderclasses"]
    assert sorted(rule["operations"]) == ["CREATE", "UPDATE"]
    served = {
        v["name"]
        for v in find(
            objects, "CustomResourceDefinition", f"secretproviderclasses.{kube.SPC_GROUP}"
        )["spec"]["versions"]
        if v["served"]
    }
    assert set(rule["apiVersions"]) == served


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            result.append((instruction.upper(), " ".join(rest.split())))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def test_dockerfile_builds_on_python_311_slim() -> None:
    bases = [args.split()[0] for name, args in dockerfile_instructions() if name == "FROM"]
    assert bases
    assert all(base == "python:3.11-slim" for base in bases), bases


def test_dockerfile_installs_mount_for_the_driver() -> None:
    runs = [args for name, args in final_stage() if name == "RUN"]
    apt = [r for r in runs if "apt-get install" in r]
    assert len(apt) == 1
    words = apt[0].split()
    assert "--no-install-recommends" in words
    assert {"mount", "util-linux"} <= set(words)
    assert "rm -rf /var/lib/apt/lists/*" in apt[0]


def test_dockerfile_installs_the_project_and_runs_dew_csi_as_root() -> None:
    stage = final_stage()
    assert any(name == "RUN" and "pip install" in args and ".whl" in args for name, args in stage)
    entrypoints = [args for name, args in stage if name == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["dew-csi"]]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dew-csi" in pyproject["project"]["scripts"]
    # The driver must be root (privileged tmpfs mounts): no USER switch in the image.
    assert [args for name, args in stage if name == "USER"] in ([], ["root"], ["0"])


@needs_kubectl
def test_webhook_uid_exists_in_the_image(objects: list[dict[str, Any]]) -> None:
    uid = webhook_deployment(objects)["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert any(
        name == "RUN" and "useradd" in args and f"--uid {uid}" in args
        for name, args in final_stage()
    )


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # an allow-list: .git, .venv, tests, local state stay out
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for name, args in dockerfile_instructions():
        if name == "COPY" and not args.startswith("--from"):
            copied |= {source.rstrip("/").removeprefix("./") for source in args.split()[:-1]}
    assert copied == allowed
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in allowed  # hatchling reads it to build the wheel


# --------------------------------------------------------------------------- the docs and the
# optional components (README.md, deploy/README.md, deploy/components/)

README = REPO / "README.md"
DEPLOY_README = DEPLOY / "README.md"
CERT_MANAGER_COMPONENT = "components/cert-manager"
PULL_SECRET_COMPONENT = "components/cce-swr-pull-secret"


def overlay(tmp_path: Path, text: str) -> Path:
    """A kustomization outside deploy/ (kustomize refuses one inside its base); `DEPLOY` in
    `text` stands for deploy/'s relative path from there."""
    directory = tmp_path / "overlay"
    directory.mkdir()
    relative = Path(os.path.relpath(DEPLOY, directory)).as_posix()
    (directory / "kustomization.yaml").write_text(text.replace("DEPLOY", relative))
    return directory


def deploy_copy_with(tmp_path: Path, extra: str) -> Path:
    """A copy of deploy/ with `extra` appended to its kustomization.yaml, as a user edits it."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "\n" + extra)
    return copy


def fenced_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), re.MULTILINE | re.DOTALL)


def test_the_readme_example_message_names_the_deployed_webhook() -> None:
    from dew_csi.sandbox import cluster

    manifest = yaml.safe_load(
        (DEPLOY / "webhook" / "validatingwebhookconfiguration.yaml").read_text()
    )
    (hook,) = manifest["webhooks"]
    text = README.read_text()
    shown = re.findall(r'admission webhook "([^"]+)" denied the request', text)
    assert shown == [hook["name"]]
    # The sandbox registers the webhook under the same name, so its message reads the same.
    assert hook["name"] == cluster.WEBHOOK_NAME


@needs_kubectl
def test_the_logs_commands_name_real_containers_and_workloads(
    objects: list[dict[str, Any]],
) -> None:
    commands = [
        line
        for path in (README, DEPLOY_README)
        for line in re.findall(r"kubectl logs [^`\n#]*", path.read_text())
    ]
    assert commands, "no kubectl logs command found"
    containers_of = {
        name: {
            c["name"] for c in find(objects, kind, name)["spec"]["template"]["spec"]["containers"]
        }
        for kind, name in (
            ("DaemonSet", "csi-secrets-store"),
            ("DaemonSet", "dew-provider"),
            ("Deployment", "dew-csi-webhook"),
        )
    }
    for command in commands:
        words = command.split()
        positional = [
            w
            for i, w in enumerate(words[2:], start=2)
            if not w.startswith("-") and words[i - 1] not in ("-n", "-c", "--namespace")
        ]
        assert len(positional) == 1, command
        (pod,) = positional
        if pod.startswith("<"):  # <csi-secrets-store-pod>
            workload = pod.strip("<>").removesuffix("-pod")
        elif "/" in pod:  # deployment/dew-csi-webhook
            kind, _, workload = pod.partition("/")
            assert kind == "deployment", command
        else:  # csi-secrets-store-xxxxx
            workload = pod.removesuffix("-xxxxx")
        assert workload in containers_of, command
        if "-c" in words:
            assert words[words.index("-c") + 1] in containers_of[workload], command
        else:
            assert len(containers_of[workload]) == 1, f"{command}: which container?"
        if "-n" in words:
            assert words[words.index("-n") + 1] == NAMESPACE, command


@needs_kubectl
def test_the_documented_images_entry_points_every_component_at_swr(tmp_path: Path) -> None:
    (entry,) = [b for b in fenced_blocks(DEPLOY_README, "yaml") if b.startswith("images:")]
    image = "swr.cn-north-4.myhuaweicloud.com/my-org/dew-csi"
    filled = entry.replace("swr.<region>.myhuaweicloud.com/<org>/dew-csi", image)
    filled = filled.replace("<tag>", "9.9.9")
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    kustomization = copy / "kustomization.yaml"
    text = kustomization.read_text()
    documented = yaml.safe_load(text)["images"]
    assert [i["name"] for i in documented] == ["dew-csi"]  # the one entry the README replaces
    start = text.index("images:\n")
    kustomization.write_text(text[:start] + filled)
    rendered = render(copy)
    ours = {c["image"] for _, c in pod_containers(rendered) if "dew-csi" in c["image"]}
    assert ours == {f"{image}:9.9.9"}
    for workload in ("csi-secrets-store", "dew-provider"):
        assert (
            container(
                find(rendered, "DaemonSet", workload),
                workload.replace("csi-secrets-store", "secrets-store"),
            )["image"]
            == f"{image}:9.9.9"
        )
    assert container(webhook_deployment(rendered), "webhook")["image"] == f"{image}:9.9.9"


@needs_kubectl
def test_the_pull_secret_component_reaches_every_dew_csi_pod(tmp_path: Path) -> None:
    block = f"components:\n  - {PULL_SECRET_COMPONENT}\n"
    assert block in fenced_blocks(DEPLOY_README, "yaml"), "deploy/README.md shows how to enable it"
    rendered = render(deploy_copy_with(tmp_path, block))
    workloads = [o for o in rendered if o["kind"] in ("DaemonSet", "Deployment")]
    assert {o["metadata"]["name"] for o in workloads} == {
        "csi-secrets-store",
        "dew-provider",
        "dew-csi-webhook",
    }
    for workload in workloads:
        spec = workload["spec"]["template"]["spec"]
        assert spec["imagePullSecrets"] == [{"name": "default-secret"}], workload["metadata"]
    # Nothing else changed.
    without = render(DEPLOY)
    for workload in workloads:
        before = find(without, workload["kind"], workload["metadata"]["name"])
        after = copy.deepcopy(workload)
        del after["spec"]["template"]["spec"]["imagePullSecrets"]
        assert after == before


@pytest.fixture(scope="module")
def cert_manager_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """deploy/ with the cert-manager component, from a small overlay outside it."""
    directory = overlay(
        tmp_path_factory.mktemp("cert-manager"),
        f"resources:\n  - DEPLOY\ncomponents:\n  - DEPLOY/{CERT_MANAGER_COMPONENT}\n",
    )
    return render(directory)


@needs_kubectl
def test_the_cert_manager_component_agrees_with_the_webhook(
    objects: list[dict[str, Any]], cert_manager_objects: list[dict[str, Any]]
) -> None:
    rendered = cert_manager_objects
    configuration = find(rendered, "ValidatingWebhookConfiguration", "dew-csi-webhook")
    (hook,) = configuration["webhooks"]
    service_ref = hook["clientConfig"]["service"]
    service = find(rendered, "Service", service_ref["name"])
    assert service["metadata"]["namespace"] == service_ref["namespace"]
    # The serving Certificate: for the Service the API server calls, into the webhook's Secret.
    certificate = find(rendered, "Certificate", "dew-csi-webhook")
    namespace = certificate["metadata"]["namespace"]
    assert namespace == service_ref["namespace"] == NAMESPACE
    svc = f"{service_ref['name']}.{service_ref['namespace']}.svc"
    assert certificate["spec"]["dnsNames"] == [svc, f"{svc}.cluster.local"]
    deployment = webhook_deployment(rendered)
    c = container(deployment, "webhook")
    tls = volume(deployment, "tls")["secret"]["secretName"]
    assert certificate["spec"]["secretName"] == tls
    mount_path = PurePosixPath(mount(c, "tls")["mountPath"])
    # cert-manager writes tls.crt and tls.key, the files the webhook is told to read.
    assert flag(c["args"], "--tls-cert") == str(mount_path / "tls.crt")
    assert flag(c["args"], "--tls-key") == str(mount_path / "tls.key")
    assert "server auth" in certificate["spec"]["usages"]
    # cainjector fills caBundle from that Certificate's Secret; nothing else sets it.
    annotations = configuration["metadata"]["annotations"]
    assert annotations["cert-manager.io/inject-ca-from"] == (
        f"{namespace}/{certificate['metadata']['name']}"
    )
    assert "caBundle" not in hook["clientConfig"]
    # The issuer chain resolves inside the namespace: serving cert <- CA Issuer <- CA cert
    # <- self-signed Issuer.
    ca_issuer = find(rendered, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert certificate["spec"]["issuerRef"]["kind"] == "Issuer"
    ca_certificate = [
        o
        for o in rendered
        if o["kind"] == "Certificate"
        and o["spec"]["secretName"] == ca_issuer["spec"]["ca"]["secretName"]
    ]
    (ca,) = ca_certificate
    assert ca["spec"]["isCA"] is True
    root = find(rendered, "Issuer", ca["spec"]["issuerRef"]["name"])
    assert root["spec"] == {"selfSigned": {}}
    added = [o for o in rendered if o["apiVersion"].startswith("cert-manager.io/")]
    assert len(added) == 4
    for obj in added:
        assert obj["metadata"]["namespace"] == NAMESPACE
        labels = obj["metadata"]["labels"]
        # deploy/README.md's uninstall selector (part-of and a component label) finds them.
        assert labels["app.kubernetes.io/part-of"] == "dew-csi"
        assert labels["app.kubernetes.io/component"] == "webhook"
    # Everything else is deploy/ as it is.
    strip = {"cert-manager.io/inject-ca-from"}
    for obj in rendered:
        if obj in added:
            continue
        original = find(objects, obj["kind"], obj["metadata"]["name"])
        if obj["kind"] == "ValidatingWebhookConfiguration":
            obj = copy.deepcopy(obj)
            for key in strip:
                obj["metadata"]["annotations"].pop(key)
            if not obj["metadata"]["annotations"]:
                del obj["metadata"]["annotations"]
        assert obj == original


@needs_kubectl
def test_the_cert_manager_component_enabled_in_deploy_itself(tmp_path: Path) -> None:
    block = f"components:\n  - {CERT_MANAGER_COMPONENT}\n"
    assert block in fenced_blocks(DEPLOY_README, "yaml"), "deploy/README.md shows how to enable it"
    rendered = render(deploy_copy_with(tmp_path, block))
    configuration = find(rendered, "ValidatingWebhookConfiguration", "dew-csi-webhook")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/dew-csi-webhook"
    }
    assert find(rendered, "Certificate", "dew-csi-webhook")["spec"]["secretName"] == (
        "dew-csi-webhook-tls"
    )


@needs_kubectl
def test_the_documented_own_issuer_patch_replaces_only_the_issuer(tmp_path: Path) -> None:
    (patch,) = [b for b in fenced_blocks(DEPLOY_README, "yaml") if "kind: Certificate" in b]
    rendered = render(
        deploy_copy_with(tmp_path, f"components:\n  - {CERT_MANAGER_COMPONENT}\n{patch}")
    )
    certificate = find(rendered, "Certificate", "dew-csi-webhook")
    assert certificate["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "my-issuer"}
    assert certificate["spec"]["secretName"] == "dew-csi-webhook-tls"


@needs_kubectl
def test_the_kubelet_root_component_in_an_overlay_would_split_the_paths(tmp_path: Path) -> None:
    """Why deploy/README.md says to switch the kubelet root in deploy/ itself: in an overlay the
    component changes the ConfigMap (and so --kubelet-root) but not the hostPaths."""
    directory = overlay(
        tmp_path, f"resources:\n  - DEPLOY\ncomponents:\n  - DEPLOY/{VAR_LIB_KUBELET_COMPONENT}\n"
    )
    paths = kubelet_paths(render(directory))
    assert paths["--kubelet-root"] == "/var/lib/kubelet"
    assert paths["mountpoint-dir hostPath"] == f"{CCE_KUBELET_ROOT}/pods"
    text = DEPLOY_README.read_text()
    assert "the component there would change the driver's `--kubelet-root`\nbut not the " in text


def test_the_readme_lists_the_sandbox_components_logs() -> None:
    from dew_csi.sandbox import cluster

    found = re.search(r"`DIR/logs/<component>\.log` \(([^)]*)\)", README.read_text())
    assert found is not None
    assert tuple(re.findall(r"`([a-z]+)`", found.group(1))) == cluster.COMPONENTS
