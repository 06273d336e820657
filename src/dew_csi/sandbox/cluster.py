"""`dew-csi sandbox up|down|cat|env`: a local cluster of real processes in one directory.

`up` starts, each as its own process with its own log (`DIR/logs/<name>.log`):

| name        | command                                   | state / endpoint                      |
|-------------|-------------------------------------------|---------------------------------------|
| apiserver   | `dew-csi sandbox apiserver`               | `DIR/apiserver.json`, `DIR/kubeconfig` |
| csms        | `dew-csi csms-emulator`                   | `DIR/csms.json`, `DIR/csms.env`        |
| provider    | `dew-csi provider`                        | `DIR/providers/cce.sock`               |
| driver      | `dew-csi driver --sandbox`                | `DIR/plugins/csi.sock`                 |
| kubelet     | `dew-csi sandbox kubelet` (root `DIR`)    | `DIR/pods/<uid>/...`                   |
| controllers | `dew-csi sandbox controllers`             |                                        |
| webhook     | `dew-csi webhook` (needs openssl)         | `DIR/webhook/tls.*`, registered     |

It installs the add-on's CRDs, its CSIDriver object and the `default-secret` the guide's
`kubectl get secrets` shows, writes `DIR/sandbox.json` (pids, urls, paths), and returns once
every part answers. The driver and provider also appear as the add-on's pods do on CCE, so the
guide's "Viewing Component Logs" works: `kubectl get pod -n kube-system` lists
`csi-secrets-store-xxxxx` (3/3) and `dew-provider-xxxxx` (1/1), and `kubectl logs` prints those
processes' logs (`containers.py`; `down` removes the pods). State survives `down` and `up`
again (same credentials, same objects).

Mounts. When run as root with `unshare`, the driver (mounter `tmpfs`, as in production) runs in
a private mount namespace of its own (`unshare --mount --propagation private`) and the kubelet
joins it (`nsenter --mount`), so the kubelet sees the mounts it asks for, exactly as on a node,
while the host's mount table never changes and every tmpfs vanishes when the sandbox stops.
`cat` reads through that namespace (`/proc/<driver pid>/root/...`). Without root the driver
uses plain directories (mounter `dir`): the same code path, secrets on disk under `DIR/pods`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import posixpath
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import grpc
import yaml

import dew_csi
from dew_csi import DRIVER_NAME, PROVIDER_NAME, kube
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi._proto.provider.v1alpha1 import service_pb2, service_pb2_grpc
from dew_csi.driver.mounter import read_mountinfo
from dew_csi.driver.rotation import parse_rotation_interval
from dew_csi.resources import ResourceMissing, crd_dir
from dew_csi.sandbox import containers
from dew_csi.sandbox.kubelet import (
    CSI_DRIVER,
    DEFAULT_NODE_NAME,
    env_file,
    read_environment,
    target_path,
)
from dew_csi.statefile import write_atomically

T = TypeVar("T")

STATE_FORMAT: Final = "dew-csi-sandbox/1"
DIRECTORY_ENV: Final = "DEW_CSI_SANDBOX_DIR"
"""Overrides the default sandbox directory (see `default_directory`)."""
COMPONENTS: Final = (
    "apiserver",
    "csms",
    "provider",
    "driver",
    "kubelet",
    "controllers",
    "webhook",
)
READY_LINES: Final = {
    "apiserver": re.compile(r"dew-csi apiserver listening on (\S+)"),
    "csms": re.compile(r"dew-csi csms-emulator listening on (\S+)"),
    "provider": re.compile(r"dew-provider listening on (\S+)"),
    "driver": re.compile(r"dew-csi driver listening on (\S+)"),
    "kubelet": re.compile(r"dew-csi kubelet ready"),
    "controllers": re.compile(r"dew-csi controllers running"),
    "webhook": re.compile(r"dew-csi webhook listening on (\S+)"),
}
WEBHOOK_NAME: Final = "validate.secretproviderclasses.dew-csi.io"
LOG_TAIL_LINES: Final = 30
# The provider shares a `latest` read this long. Production's 5s is far below any real rotation
# interval (1m at least); the sandbox's intervals are seconds, so it shares for less.
SANDBOX_LATEST_TTL: Final = "500ms"
_AK_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_SK_ALPHABET: Final = _AK_ALPHABET + "abcdefghijklmnopqrstuvwxyz"
DAEMON_SET: Final = kube.Resource("apps", "v1", "DaemonSet", "daemonsets")
# Marks the DaemonSets (and pods) `up` makes for its own processes: only those are removed.
ADDON_ANNOTATION: Final = "sandbox.dew-csi.io/component"


class SandboxError(Exception):
    """The sandbox could not be started, stopped or read; the message says why and what next."""


# --------------------------------------------------------------------------- state on disk


@dataclass
class ComponentRecord:
    pid: int
    start_time: int
    """The process's start time (clock ticks since boot), so a reused pid is never signalled."""
    log: str


@dataclass
class SandboxInfo:
    """What `DIR/sandbox.json` holds while the sandbox runs."""

    directory: str
    kubeconfig: str
    csms_env: str
    mounter: str
    node: str
    rotation_poll_interval: str
    api_url: str = ""
    csms_endpoint: str = ""
    project_id: str = ""
    provider_socket: str = ""
    driver_socket: str = ""
    mount_namespace_pid: int | None = None
    """The driver's pid when it runs in a private mount namespace (the kubelet joins it)."""
    components: dict[str, ComponentRecord] = field(default_factory=dict)
    format: str = STATE_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SandboxInfo:
        data = json.loads(text)
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown sandbox state format {data.get('format')!r}")
        records = {name: ComponentRecord(**r) for name, r in data.pop("components", {}).items()}
        return cls(**data, components=records)


def _proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat; None when there is no such process or it is a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = text[text.rfind(")") + 2 :].split()
    if after_name[0] == "Z":
        return None
    return int(after_name[19])


def _is_running(record: ComponentRecord) -> bool:
    return _proc_start_time(record.pid) == record.start_time


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion, also when the caller is inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


# --------------------------------------------------------------------------- mounts


def private_namespace_available() -> bool:
    """Root, `unshare` and `nsenter` present, and a private mount namespace can be made."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def choose_mounter(requested: str | None) -> tuple[str, bool]:
    """(mounter, whether the driver and kubelet get a private mount namespace)."""
    if requested not in (None, "tmpfs", "dir"):
        raise SandboxError(f"--mounter must be tmpfs or dir, not {requested!r}")
    if requested == "dir":
        return "dir", False
    if private_namespace_available():
        return "tmpfs", True
    if requested == "tmpfs":
        raise SandboxError(
            "--mounter tmpfs needs root and `unshare --mount`: the sandbox mounts tmpfs only in a "
            "private mount namespace, never on the host; use --mounter dir"
        )
    return "dir", False


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory` in this process's mount namespace, deepest first."""
    prefix = str(directory.resolve())
    try:
        entries = read_mountinfo()
    except (OSError, ValueError):
        return []
    found = {
        m.mount_point
        for m in entries
        if m.mount_point == prefix or m.mount_point.startswith(prefix + "/")
    }
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


# --------------------------------------------------------------------------- the sandbox


class Sandbox:
    """`with Sandbox(dir).up(mounter="dir") as sandbox: ...`, or `up()` then `down()`."""

    def __init__(self, directory: str | os.PathLike[str], *, python: str | None = None) -> None:
        self.directory = Path(directory).absolute()
        self.python = python or sys.executable
        self.info: SandboxInfo | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        # Where this run's part of each (appended) log starts: old ready lines do not count.
        self._offsets: dict[str, int] = {}

    # -- paths

    @property
    def state_file(self) -> Path:
        return self.directory / "sandbox.json"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def csms_env(self) -> Path:
        return self.directory / "csms.env"

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def provider_socket(self) -> Path:
        return self.directory / "providers" / f"{PROVIDER_NAME}.sock"

    @property
    def driver_socket(self) -> Path:
        return self.directory / "plugins" / "csi.sock"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @property
    def container_registry(self) -> Path:
        """Which processes and log files the add-on's pods stand for (containers.py)."""
        return self.directory / containers.REGISTRY_FILE

    # -- context manager

    def __enter__(self) -> Sandbox:
        if self.info is None:
            self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- up

    def load(self) -> SandboxInfo | None:
        """The recorded state, or None when there is none."""
        try:
            return SandboxInfo.from_json(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as error:
            raise SandboxError(f"{self.state_file} is unreadable ({error}); remove it") from None

    def running(self) -> SandboxInfo:
        """The state of the running sandbox; SandboxError when it is not running."""
        info = self.load()
        if info is None or not any(_is_running(r) for r in info.components.values()):
            raise SandboxError(
                f"no sandbox is running in {self.directory}: start one with "
                f"`dew-csi sandbox up{dir_option(self.directory)}`, or name the directory of a "
                f"running one with --dir or ${DIRECTORY_ENV}"
            )
        return info

    def up(
        self,
        *,
        rotation_poll_interval: str = "2m",
        mounter: str | None = None,
        timeout: float = 30.0,
    ) -> Sandbox:
        """Start every component and return once all answer; SandboxError (after stopping
        what did start) when one does not."""
        try:
            parse_rotation_interval(rotation_poll_interval, sandbox=True)
        except ValueError as error:
            raise SandboxError(str(error)) from None
        chosen, private = choose_mounter(mounter)
        previous = self.load()
        if previous is not None:
            alive = [n for n, r in previous.components.items() if _is_running(r)]
            if alive:
                raise SandboxError(
                    f"a sandbox is already running in {self.directory} ({', '.join(alive)}); "
                    f"stop it with `dew-csi sandbox down{dir_option(self.directory)}`"
                )
        if not self.directory.exists():
            self.directory.mkdir(parents=True, mode=0o700)
        for sub in ("logs", "providers", "plugins", "pods"):
            (self.directory / sub).mkdir(mode=0o700, exist_ok=True)
        self.info = SandboxInfo(
            directory=str(self.directory),
            kubeconfig=str(self.kubeconfig),
            csms_env=str(self.csms_env),
            mounter=chosen,
            node=DEFAULT_NODE_NAME,
            rotation_poll_interval=rotation_poll_interval,
            provider_socket=str(self.provider_socket),
            driver_socket=str(self.driver_socket),
        )
        deadline = time.monotonic() + timeout
        # A failed `up` leaves no file claiming a running sandbox: the kubeconfig and csms.env it
        # wrote (with this run's ports) go back to what they were (absent, or an earlier run's).
        claims = {path: _read_or_none(path) for path in (self.kubeconfig, self.csms_env)}
        try:
            self._start_all(private, deadline)
        except BaseException:
            self.down(quiet=True)
            for path, before in claims.items():
                if before is None:
                    path.unlink(missing_ok=True)
                else:
                    _write_private(path, before)
            raise
        return self

    def _start_all(self, private: bool, deadline: float) -> None:
        info = self.info
        assert info is not None
        credentials = self._credentials()
        cli = [self.python, "-m", "dew_csi.cli"]
        self.container_registry.unlink(missing_ok=True)  # an earlier run's processes

        # 1. The API and CSMS, side by side.
        self._spawn(
            "apiserver",
            [
                *cli,
                "sandbox",
                "apiserver",
                "--listen",
                "127.0.0.1:0",
                "--state",
                str(self.directory / "apiserver.json"),
                "--kubeconfig-out",
                str(self.kubeconfig),
            ],
            # Where the add-on's pods log, for `kubectl logs` (read at each request).
            env={containers.REGISTRY_ENV: str(self.container_registry)},
        )
        self._spawn(
            "csms",
            [
                *cli,
                "csms-emulator",
                "--listen",
                "127.0.0.1:0",
                "--project-id",
                credentials["HUAWEICLOUD_SDK_PROJECT_ID"],
                "--ak",
                credentials["HUAWEICLOUD_SDK_AK"],
                "--sk",
                credentials["HUAWEICLOUD_SDK_SK"],
                "--state",
                str(self.directory / "csms.json"),
            ],
        )
        info.api_url = self._wait_ready("apiserver", deadline).group(1)
        info.csms_endpoint = self._wait_ready("csms", deadline).group(1)
        info.project_id = credentials["HUAWEICLOUD_SDK_PROJECT_ID"]
        self._write_csms_env({"CSMS_ENDPOINT": info.csms_endpoint, **credentials})
        self._save()
        _run_coroutine(self._prepare_api)
        _run_coroutine(self._remove_addon_pods)  # left by an earlier run that was not stopped

        # 2. The add-on: provider and driver.
        self._spawn(
            "provider",
            [
                *cli,
                "provider",
                "--socket-dir",
                str(self.provider_socket.parent),
                "--csms-endpoint",
                info.csms_endpoint,
                "--project-id",
                info.project_id,
                "--kubeconfig",
                str(self.kubeconfig),
                "--metadata-url",
                "none",
                "--latest-ttl",
                SANDBOX_LATEST_TTL,
            ],
            env={
                "HUAWEICLOUD_SDK_AK": credentials["HUAWEICLOUD_SDK_AK"],
                "HUAWEICLOUD_SDK_SK": credentials["HUAWEICLOUD_SDK_SK"],
            },
        )
        driver_command = [
            *cli,
            "driver",
            "--endpoint",
            f"unix://{self.driver_socket}",
            "--node-id",
            info.node,
            # The kubelet simulator's --root: target paths are <dir>/pods/<uid>/volumes/...
            "--kubelet-root",
            str(self.directory),
            "--provider-dir",
            str(self.provider_socket.parent),
            "--rotation-poll-interval",
            info.rotation_poll_interval,
            "--sandbox",
            "--mounter",
            info.mounter,
            "--kubeconfig",
            str(self.kubeconfig),
        ]
        if private:
            driver_command = ["unshare", "--mount", "--propagation", "private", *driver_command]
        driver_pid = self._spawn("driver", driver_command)
        if private:
            info.mount_namespace_pid = driver_pid
        self._wait_ready("provider", deadline)
        self._wait_ready("driver", deadline)
        self._wait_for_sockets(deadline)

        # 3. The node and the controllers.
        kubelet_command = [
            *cli,
            "sandbox",
            "kubelet",
            "--kubeconfig",
            str(self.kubeconfig),
            "--node-name",
            info.node,
            "--csi-endpoint",
            f"unix://{self.driver_socket}",
            "--root",
            str(self.directory),
        ]
        if private:
            kubelet_command = ["nsenter", f"--mount=/proc/{driver_pid}/ns/mnt", *kubelet_command]
        self._spawn("kubelet", kubelet_command)
        self._spawn(
            "controllers", [*cli, "sandbox", "controllers", "--kubeconfig", str(self.kubeconfig)]
        )
        self._wait_ready("kubelet", deadline)
        self._wait_ready("controllers", deadline)
        _run_coroutine(self._check_node)
        self._start_webhook(cli, deadline)
        self._start_addon_pods(deadline)
        self._save()

    def _start_webhook(self, cli: list[str], deadline: float) -> None:
        """The admission webhook, registered with the API emulator as on a real cluster, so a
        bad SecretProviderClass is refused at `kubectl apply`. It needs TLS; the certificate is
        made with openssl, and without openssl the sandbox runs without the webhook."""
        if shutil.which("openssl") is None:
            print("admission webhook not started: openssl is not installed", flush=True)
            return
        tls = self.directory / "webhook"
        cert, key = tls / "tls.crt", tls / "tls.key"
        if not (cert.exists() and key.exists()):
            tls.mkdir(parents=True, exist_ok=True)
            try:
                self_signed_certificate(cert, key, days=365)
            except subprocess.CalledProcessError as error:
                raise self._failure(
                    "webhook", f"openssl could not make its certificate: {error.stderr}"
                ) from None
        self._spawn(
            "webhook",
            [
                *cli,
                "webhook",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                str(cert),
                "--tls-key",
                str(key),
                "--kubeconfig",
                str(self.kubeconfig),
            ],
        )
        url = self._wait_ready("webhook", deadline).group(1)
        ca_bundle = base64.b64encode(cert.read_bytes()).decode()
        _run_coroutine(lambda: self._register_webhook(f"{url}/validate", ca_bundle))

    async def _register_webhook(self, url: str, ca_bundle: str) -> None:
        configuration = {
            "metadata": {"name": "dew-csi-webhook"},
            "webhooks": [
                {
                    "name": WEBHOOK_NAME,
                    "clientConfig": {"url": url, "caBundle": ca_bundle},
                    "rules": [
                        {
                            "apiGroups": ["secrets-store.csi.x-k8s.io"],
                            "apiVersions": ["*"],
                            "resources": ["secretproviderclasses"],
                            "operations": ["CREATE", "UPDATE"],
                            "scope": "Namespaced",
                        }
                    ],
                    # As deploy/webhook: the provider enforces the same rules at every mount.
                    "failurePolicy": "Ignore",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 5,
                }
            ],
        }
        async with kube.Kube.from_kubeconfig(self.kubeconfig) as client:
            await _create_or_replace(client, kube.VALIDATING_WEBHOOK_CONFIGURATION, configuration)

    def _credentials(self) -> dict[str, str]:
        """The CSMS credentials: those of an earlier run (its state and env file stay valid),
        else fresh random ones."""
        if self.csms_env.exists():
            from dew_csi.csms.cli import parse_env_file

            known = parse_env_file(self.csms_env)
            wanted = ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_PROJECT_ID")
            if all(known.get(k) for k in wanted):
                return {k: known[k] for k in wanted}
        return {
            "HUAWEICLOUD_SDK_AK": "".join(secrets.choice(_AK_ALPHABET) for _ in range(20)),
            "HUAWEICLOUD_SDK_SK": "".join(secrets.choice(_SK_ALPHABET) for _ in range(40)),
            "HUAWEICLOUD_SDK_PROJECT_ID": secrets.token_hex(16),
        }

    def _write_csms_env(self, values: dict[str, str]) -> None:
        lines = [
            "# CSMS emulator of the dew-csi sandbox: `. csms.env` or `dew-csi csms --env-file`"
        ]
        lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
        _write_private(self.csms_env, "\n".join(lines) + "\n")

    def _save(self) -> None:
        assert self.info is not None
        _write_private(self.state_file, self.info.to_json())

    def _child_environment(self, extra: dict[str, str] | None) -> dict[str, str]:
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("HUAWEICLOUD_SDK_") and k != "KUBECONFIG"
        }
        # The children import this very dew_csi, wherever it was imported from.
        package_parent = str(Path(dew_csi.__file__).resolve().parents[1])
        paths = [package_parent, *filter(None, environment.get("PYTHONPATH", "").split(":"))]
        environment["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
        environment["PYTHONUNBUFFERED"] = "1"
        environment.update(extra or {})
        return environment

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        assert self.info is not None
        log_path = self.log_file(name)
        with log_path.open("ab") as log_handle:
            offset = log_handle.tell()
            log_handle.write(f"=== dew-csi sandbox: starting {name} ===\n".encode())
            log_handle.flush()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                env=self._child_environment(env),
                start_new_session=True,  # outlives `up`, and Ctrl-C in its terminal
            )
        self._processes[name] = process
        self._offsets[name] = offset
        start_time = None
        for _ in range(100):
            start_time = _proc_start_time(process.pid)
            if start_time is not None or process.poll() is not None:
                break
            time.sleep(0.01)
        self.info.components[name] = ComponentRecord(process.pid, start_time or 0, str(log_path))
        self._save()
        return process.pid

    def _failure(self, name: str, why: str) -> SandboxError:
        tail = _log_tail(self.log_file(name), self._offsets.get(name, 0))
        return SandboxError(f"{name} {why}; last lines of {self.log_file(name)}:\n{tail}")

    def _wait_ready(self, name: str, deadline: float) -> re.Match[str]:
        """Wait for the component's ready line in its log."""
        pattern = READY_LINES[name]
        process = self._processes[name]
        path = self.log_file(name)
        while True:
            with path.open("rb") as handle:
                handle.seek(self._offsets.get(name, 0))
                match = pattern.search(handle.read().decode("utf-8", "replace"))
            if match is not None:
                return match
            if process.poll() is not None:
                raise self._failure(name, f"exited with status {process.returncode} while starting")
            if time.monotonic() > deadline:
                raise self._failure(name, "did not become ready in time")
            time.sleep(0.05)

    def _wait_for_sockets(self, deadline: float) -> None:
        """The provider answers Version and the driver GetPluginInfo on their sockets."""
        checks: list[tuple[str, Callable[[], None]]] = [
            ("provider", self._probe_provider),
            ("driver", self._probe_driver),
        ]
        for name, probe in checks:
            while True:
                try:
                    probe()
                    break
                except grpc.RpcError as error:
                    if self._processes[name].poll() is not None:
                        raise self._failure(name, "exited while starting") from None
                    if time.monotonic() > deadline:
                        raise self._failure(
                            name, f"does not answer on its socket: {error}"
                        ) from None
                    time.sleep(0.05)

    def _probe_provider(self) -> None:
        with grpc.insecure_channel(f"unix://{self.provider_socket}") as channel:
            stub = service_pb2_grpc.CSIDriverProviderStub(channel)
            stub.Version(service_pb2.VersionRequest(version="v1alpha1"), timeout=2)

    def _probe_driver(self) -> None:
        with grpc.insecure_channel(f"unix://{self.driver_socket}") as channel:
            info = csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(
                csi_pb2.GetPluginInfoRequest(), timeout=2
            )
        if info.name != DRIVER_NAME:
            raise SandboxError(f"the driver calls itself {info.name!r}, not {DRIVER_NAME}")

    async def _prepare_api(self) -> None:
        """The cluster objects the add-on and the guide expect (idempotent)."""
        try:
            crds = crd_dir()
        except ResourceMissing as error:
            raise SandboxError(str(error)) from None
        async with kube.Kube.from_kubeconfig(self.kubeconfig) as client:
            for path in sorted(crds.glob("*.yaml")):
                for document in yaml.safe_load_all(path.read_text()):
                    if document:
                        await _create_or_replace(client, kube.CUSTOM_RESOURCE_DEFINITION, document)
            await _create_missing(
                client,
                CSI_DRIVER,
                {
                    "metadata": {"name": DRIVER_NAME},
                    "spec": {
                        "attachRequired": False,
                        "podInfoOnMount": True,
                        "volumeLifecycleModes": ["Ephemeral"],
                    },
                },
            )
            docker_config = base64.b64encode(b'{"auths":{}}').decode()
            await _create_missing(
                client,
                kube.SECRET,
                {
                    "metadata": {"name": "default-secret", "namespace": "default"},
                    "type": "kubernetes.io/dockerconfigjson",
                    "data": {".dockerconfigjson": docker_config},
                },
            )

    # -- the add-on's pods

    def _start_addon_pods(self, deadline: float) -> None:
        """The DaemonSets csi-secrets-store and dew-provider in kube-system and a pod each for
        the driver and provider processes, listed in the container registry first (so the
        kubelet never takes them for application pods); returns once the kubelet reports them
        Running."""
        info = self.info
        assert info is not None
        socket = str(self.driver_socket)
        offsets = {
            name: containers.write_klog(self.log_file(name), lines)
            for name, lines in containers.sidecar_logs(socket, DRIVER_NAME).items()
        }
        records = {name: info.components[name] for name in ("driver", "provider")}
        for name in records:
            offsets[name] = self._output_offset(name)
        argv = {name: containers.command_line(r.pid) for name, r in records.items()}
        pods = containers.addon_pods(argv["driver"], argv["provider"], socket)
        names = {p.daemon_set: f"{p.daemon_set}-{containers.name_suffix()}" for p in pods}
        entries = []
        for pod in pods:
            record = records[pod.component]
            logs = {}
            for container in pod.container_names:
                own = container == pod.process_container
                log_name = pod.component if own else container
                logs[container] = containers.ContainerLog(
                    str(self.log_file(log_name)), offsets[log_name], own
                )
            entries.append(
                containers.SystemPod(
                    containers.SYSTEM_NAMESPACE,
                    names[pod.daemon_set],
                    pod.component,
                    record.pid,
                    record.start_time,
                    containers.rfc3339(containers.started_at(record.start_time)),
                    logs,
                )
            )
        registry = containers.Registry(tuple(entries))
        write_atomically(self.container_registry, registry.to_json().encode())
        _run_coroutine(lambda: self._create_addon_pods(pods, names, deadline))

    def _output_offset(self, name: str) -> int:
        """Where this run's output of a component starts: after the line `_spawn` wrote."""
        offset = self._offsets.get(name, 0)
        with self.log_file(name).open("rb") as handle:
            handle.seek(offset)
            return offset + len(handle.readline())

    async def _create_addon_pods(
        self, pods: list[containers.AddonPod], names: dict[str, str], deadline: float
    ) -> None:
        assert self.info is not None
        namespace = containers.SYSTEM_NAMESPACE
        async with kube.Kube.from_kubeconfig(self.kubeconfig) as client:
            for pod in pods:
                account = pod.template["spec"]["serviceAccountName"]
                await _create_missing(
                    client,
                    kube.SERVICE_ACCOUNT,
                    {"metadata": {"name": account, "namespace": namespace}},
                )
                daemon_set = containers.daemon_set_manifest(pod)
                daemon_set["metadata"]["annotations"] = {ADDON_ANNOTATION: pod.component}
                try:
                    owner = await client.create(DAEMON_SET, daemon_set)
                except kube.AlreadyExists:
                    # Not ours (deploy/ applied to the sandbox?): no controller runs its pods
                    # here, so the sandbox's pod is its; `down` leaves the DaemonSet itself.
                    owner = await client.get(DAEMON_SET, pod.daemon_set, namespace)
                manifest = containers.pod_manifest(
                    pod, names[pod.daemon_set], self.info.node, owner
                )
                manifest["metadata"]["annotations"] = {ADDON_ANNOTATION: pod.component}
                await client.create(kube.POD, manifest)
            for pod in pods:
                name = names[pod.daemon_set]
                while not _running_and_ready(await client.get(kube.POD, name, namespace)):
                    if time.monotonic() > deadline:
                        raise self._failure(
                            "kubelet", f"did not report the add-on's pod {namespace}/{name} Running"
                        )
                    await asyncio.sleep(0.05)
                await client.replace_status(
                    DAEMON_SET,
                    {
                        "metadata": {"name": pod.daemon_set, "namespace": namespace},
                        "status": containers.daemon_set_status(ready=1),
                    },
                )

    async def _remove_addon_pods(self) -> None:
        """Delete the pods and DaemonSets `up` made for its processes, the pods at once (grace
        period 0: the processes they stood for are stopped by `down`, not by a kubelet)."""
        namespace = containers.SYSTEM_NAMESPACE
        async with kube.Kube.from_kubeconfig(self.kubeconfig, timeout=5.0) as client:
            sets, _ = await client.list_objects(DAEMON_SET, namespace)
            ours = [d for d in sets if ADDON_ANNOTATION in (d["metadata"].get("annotations") or {})]
            owners = {d["metadata"]["uid"] for d in ours}
            pods, _ = await client.list_objects(kube.POD, namespace)
            for pod in pods:
                references = pod["metadata"].get("ownerReferences") or []
                annotations = pod["metadata"].get("annotations") or {}
                if ADDON_ANNOTATION in annotations or any(
                    r.get("uid") in owners for r in references
                ):
                    await client.delete(
                        kube.POD, pod["metadata"]["name"], namespace, grace_period=0
                    )
            for daemon_set in ours:
                await client.delete(DAEMON_SET, daemon_set["metadata"]["name"], namespace)

    async def _check_node(self) -> None:
        assert self.info is not None
        async with kube.Kube.from_kubeconfig(self.kubeconfig) as client:
            node = await client.get(kube.NODE, self.info.node)
        ready = [
            c
            for c in (node.get("status") or {}).get("conditions") or []
            if c.get("type") == "Ready" and c.get("status") == "True"
        ]
        if not ready:
            raise self._failure("kubelet", f"registered node {self.info.node} is not Ready")

    # -- down

    def down(self, *, timeout: float = 10.0, quiet: bool = False) -> list[str]:
        """Stop every component (SIGTERM, then SIGKILL after `timeout`), unmount anything left
        under the directory. Idempotent. Returns what it did, one line each."""
        done: list[str] = []
        info = self.info if self.info is not None else self.load()
        records = dict(info.components) if info is not None else {}
        alive = {name: r for name, r in records.items() if _is_running(r)}
        if "apiserver" in alive and self.container_registry.exists():
            # Best effort: whatever keeps the API from answering, `down` goes on.
            with contextlib.suppress(Exception):
                _run_coroutine(self._remove_addon_pods)
        for name in reversed(COMPONENTS):
            if name in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(alive[name].pid, signal.SIGTERM)
        killed = self._wait_gone(alive, time.monotonic() + timeout)
        for name in killed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(alive[name].pid, signal.SIGKILL)
        self._wait_gone({n: alive[n] for n in killed}, time.monotonic() + 5.0)
        for name in alive:
            done.append(
                f"stopped {name} (pid {alive[name].pid})"
                + (" with SIGKILL" if name in killed else "")
            )
        for process in self._processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)
        self._processes.clear()
        for mount_point in mounts_under(self.directory):
            result = subprocess.run(
                ["umount", mount_point], capture_output=True, text=True, check=False
            )
            if result.returncode == 0:
                done.append(f"unmounted {mount_point}")
            elif not quiet:
                done.append(f"could not unmount {mount_point}: {result.stderr.strip()}")
        for socket in (self.provider_socket, self.driver_socket):
            with contextlib.suppress(FileNotFoundError):
                if socket.is_socket():
                    socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self.container_registry.unlink(missing_ok=True)
        self.info = None
        return done

    def _wait_gone(self, records: dict[str, ComponentRecord], deadline: float) -> list[str]:
        """Wait until these processes are gone; the names of those still running at the end."""
        while True:
            for name, process in self._processes.items():
                if name in records:
                    process.poll()  # reap our own children so they do not linger as zombies
            still = [name for name, r in records.items() if _is_running(r)]
            if not still or time.monotonic() > deadline:
                return still
            time.sleep(0.05)

    # -- looking into pods

    def _kube(self) -> kube.Kube:
        return kube.Kube.from_kubeconfig(self.kubeconfig)

    def _pod(self, name: str, namespace: str) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            async with self._kube() as client:
                pod = await client.find(kube.POD, name, namespace)
            if pod is None:
                raise SandboxError(f'pod "{name}" not found in namespace "{namespace}"')
            return pod

        return _run_coroutine(get)

    @staticmethod
    def _container(pod: dict[str, Any], name: str | None) -> dict[str, Any]:
        spec = pod.get("spec") or {}
        containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
        if name is None:
            return dict(containers[0])
        for container in containers:
            if container.get("name") == name:
                return dict(container)
        names = ", ".join(str(c.get("name")) for c in containers)
        raise SandboxError(
            f'container "{name}" not found in pod "{pod["metadata"]["name"]}" (it has: {names})'
        )

    def container_path(
        self, pod_name: str, path: str, *, namespace: str = "default", container: str | None = None
    ) -> Path:
        """Where, as seen from this process, the file the pod's container sees at `path` is."""
        info = self.running()
        pod = self._pod(pod_name, namespace)
        spec = self._container(pod, container)
        if not path.startswith("/"):
            raise SandboxError(f"{path}: give an absolute path inside the container")
        wanted = posixpath.normpath(path)
        mounts = sorted(
            spec.get("volumeMounts") or [],
            key=lambda m: len(str(m.get("mountPath", ""))),
            reverse=True,
        )
        for mount in mounts:
            mount_path = posixpath.normpath(str(mount.get("mountPath", "")))
            inside = posixpath.relpath(wanted, mount_path)
            if inside == ".." or inside.startswith("../"):
                continue
            volume = next(
                (
                    v
                    for v in (pod.get("spec") or {}).get("volumes") or []
                    if v.get("name") == mount.get("name")
                ),
                None,
            )
            if volume is None or not volume.get("csi"):
                raise SandboxError(
                    f"{mount_path} is volume {mount.get('name')!r}, not a CSI volume: the sandbox "
                    f"only materialises CSI volumes"
                )
            base = target_path(self.directory, pod["metadata"]["uid"], str(mount["name"]))
            if mount.get("subPath"):
                base = base / str(mount["subPath"])
            host = base if inside == "." else base / inside
            if info.mount_namespace_pid is not None:
                # The driver's mount namespace, where the tmpfs is: through its /proc root.
                return Path(f"/proc/{info.mount_namespace_pid}/root{host}")
            return host
        known = ", ".join(str(m.get("mountPath")) for m in mounts) or "none"
        raise SandboxError(
            f"{path} is not in a volume of container {spec.get('name')!r} (its mounts: {known}); "
            f"the sandbox runs no container image, so only CSI volumes can be read"
        )

    def cat(
        self, pod_name: str, path: str, *, namespace: str = "default", container: str | None = None
    ) -> bytes:
        """What the pod's container sees at `path`: a file's bytes, or a directory's visible
        names one per line (as `ls`)."""
        where = self.container_path(pod_name, path, namespace=namespace, container=container)
        try:
            if where.is_dir():
                names = sorted(e for e in os.listdir(where) if not e.startswith("."))
                return "".join(f"{n}\n" for n in names).encode()
            return where.read_bytes()
        except FileNotFoundError:
            raise SandboxError(f"{path}: No such file or directory") from None
        except IsADirectoryError:
            raise SandboxError(f"{path}: Is a directory") from None
        except PermissionError:
            raise SandboxError(f"{path}: Permission denied") from None

    def environment(
        self, pod_name: str, *, namespace: str = "default", container: str | None = None
    ) -> list[tuple[str, str]]:
        """The container's environment as the kubelet resolved it when it started."""
        self.running()
        pod = self._pod(pod_name, namespace)
        spec = self._container(pod, container)
        path = env_file(self.directory, pod["metadata"]["uid"], str(spec["name"]))
        try:
            return read_environment(self.directory, pod["metadata"]["uid"], str(spec["name"]))
        except FileNotFoundError:
            waiting = _waiting_reason(pod, str(spec["name"]))
            raise SandboxError(
                f'container "{spec["name"]}" of pod "{pod_name}" has not started'
                + (f" ({waiting})" if waiting else "")
                + f"; nothing in {path}"
            ) from None


def _running_and_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return status.get("phase") == "Running" and ready


def _waiting_reason(pod: dict[str, Any], container: str) -> str:
    status = pod.get("status") or {}
    for entry in (status.get("containerStatuses") or []) + (
        status.get("initContainerStatuses") or []
    ):
        if entry.get("name") == container:
            waiting = (entry.get("state") or {}).get("waiting") or {}
            if waiting:
                return ": ".join(filter(None, (waiting.get("reason"), waiting.get("message"))))
    return str(status.get("phase") or "")


async def _create_missing(client: kube.Kube, resource: kube.Resource, obj: dict[str, Any]) -> None:
    with contextlib.suppress(kube.AlreadyExists):
        await client.create(resource, obj)


async def _create_or_replace(
    client: kube.Kube, resource: kube.Resource, obj: dict[str, Any]
) -> None:
    existing = await client.find(resource, obj["metadata"]["name"])
    if existing is None:
        await client.create(resource, obj)
        return
    updated = dict(obj)
    updated["metadata"] = {
        **obj["metadata"],
        "resourceVersion": existing["metadata"]["resourceVersion"],
    }
    await client.replace(resource, updated)


# --------------------------------------------------------------------------- commands


def default_directory() -> str:
    """The sandbox directory when `--dir` is not given, the same for every `sandbox` command:
    $DEW_CSI_SANDBOX_DIR, else $XDG_STATE_HOME/dew-csi/sandbox, else
    ~/.local/state/dew-csi/sandbox (the XDG base directory rules: state that outlives a run)."""
    override = os.environ.get(DIRECTORY_ENV)
    if override:
        return str(Path(override).expanduser().absolute())
    state_home = os.environ.get("XDG_STATE_HOME", "")
    # XDG: a relative value is invalid and is ignored.
    base = Path(state_home) if os.path.isabs(state_home) else Path.home() / ".local" / "state"
    return str(base / "dew-csi" / "sandbox")


def dir_option(directory: Path) -> str:
    """` --dir DIR` for a command a user is told to run, or nothing for the default directory."""
    if directory == Path(default_directory()):
        return ""
    return f" --dir {shlex.quote(str(directory))}"


def _report(lines: Iterable[str], stream: IO[str] = sys.stdout) -> None:
    for line in lines:
        print(line, file=stream)


def self_signed_certificate(cert: Path, key: Path, *, days: int = 1) -> None:
    """A self-signed EC certificate for 127.0.0.1 (the webhook's TLS in the sandbox, tests and
    benchmarks), made by the real openssl; the key is 0600. CalledProcessError (with stderr)
    when openssl fails."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            str(days),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    key.chmod(0o600)


def check_directory(path: str | os.PathLike[str], option: str = "--dir") -> Path:
    """A sandbox directory as given: ValueError when something that is not a directory is
    there (a configuration mistake, told in one line rather than a traceback)."""
    directory = Path(path).expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{option} {directory} is not a directory: name a directory (or none)")
    return directory


def up_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox up`."""
    try:
        directory = check_directory(args.dir or default_directory())
        parse_rotation_interval(args.rotation_poll_interval, sandbox=True)
    except ValueError as error:
        print(f"dew-csi sandbox up: {error}", file=sys.stderr)
        return 2
    sandbox = Sandbox(directory)
    started = time.monotonic()
    try:
        sandbox.up(
            rotation_poll_interval=args.rotation_poll_interval,
            mounter=args.mounter,
            timeout=args.timeout,
        )
    except SandboxError as error:
        print(f"dew-csi sandbox up: {error}", file=sys.stderr)
        return 1
    info = sandbox.info
    assert info is not None
    where = sandbox.directory
    if info.mount_namespace_pid is not None:
        mounts = f"tmpfs mounts in a private mount namespace (pid {info.mount_namespace_pid})"
    else:
        mounts = "plain directories (mounter dir)"
    _report(
        [
            f"dew-csi sandbox is up in {where} ({time.monotonic() - started:.1f}s)",
            f"  Kubernetes API  {info.api_url}   kubeconfig {sandbox.kubeconfig}",
            f"  CSMS emulator   {info.csms_endpoint}   credentials {sandbox.csms_env}",
            f"  provider        {sandbox.provider_socket}",
            f"  driver          {sandbox.driver_socket}   {mounts}, rotation every "
            f"{info.rotation_poll_interval}",
            f"  node            {info.node}   pods under {where / 'pods'}",
            f"  logs            {sandbox.logs}/",
            "Seed CSMS:  dew-csi csms --env-file "
            f'{sandbox.csms_env} put secret_1 \'{{"key1":"db-user-01"}}\'',
            f"Look in:    dew-csi sandbox cat{dir_option(where)} POD /mnt/secrets-store/",
            f"Logs:       dew-csi sandbox logs{dir_option(where)} COMPONENT",
            f"Stop:       dew-csi sandbox down{dir_option(where)}",
            f"export KUBECONFIG={sandbox.kubeconfig}",
        ]
    )
    return 0


def down_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox down`."""
    sandbox = Sandbox(args.dir or default_directory())
    try:
        done = sandbox.down(timeout=args.timeout)
    except SandboxError as error:
        print(f"dew-csi sandbox down: {error}", file=sys.stderr)
        return 1
    _report(done or [f"no sandbox was running in {sandbox.directory}"])
    if args.purge and sandbox.directory.exists():
        looks_like_sandbox = any(
            (sandbox.directory / name).exists()
            for name in ("apiserver.json", "kubeconfig", "csms.env", "logs")
        )
        if not looks_like_sandbox:
            print(
                f"dew-csi sandbox down: {sandbox.directory} does not look like a sandbox; "
                "not removing it",
                file=sys.stderr,
            )
            return 1
        shutil.rmtree(sandbox.directory)
        print(f"removed {sandbox.directory}")
    return 0


def cat_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox cat POD PATH`."""
    try:
        data = Sandbox(args.dir or default_directory()).cat(
            args.pod, args.path, namespace=args.namespace, container=args.container
        )
    except (SandboxError, kube.KubeError) as error:
        print(f"dew-csi sandbox cat: {error}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def env_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox env POD`."""
    try:
        pairs = Sandbox(args.dir or default_directory()).environment(
            args.pod, namespace=args.namespace, container=args.container
        )
    except (SandboxError, kube.KubeError) as error:
        print(f"dew-csi sandbox env: {error}", file=sys.stderr)
        return 1
    _report(f"{name}={value}" for name, value in pairs)
    return 0


def logs_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox logs [COMPONENT]`: a component's log file, or the list of them."""
    sandbox = Sandbox(args.dir or default_directory())
    if args.component is None:
        found = [name for name in COMPONENTS if sandbox.log_file(name).is_file()]
        if not found:
            print(f"dew-csi sandbox logs: no logs in {sandbox.logs}", file=sys.stderr)
            return 1
        for name in found:
            print(f"{name}  {sandbox.log_file(name)}")
        return 0
    if args.component not in COMPONENTS:
        print(
            f"dew-csi sandbox logs: unknown component {args.component!r}; the components are "
            f"{', '.join(COMPONENTS)}",
            file=sys.stderr,
        )
        return 2
    try:
        with sandbox.log_file(args.component).open("rb") as log:
            shutil.copyfileobj(log, sys.stdout.buffer)
    except FileNotFoundError:
        print(
            f"dew-csi sandbox logs: no {args.component} log in {sandbox.logs}: "
            f"`dew-csi sandbox up{dir_option(sandbox.directory)}` writes one per component",
            file=sys.stderr,
        )
        return 1
    sys.stdout.buffer.flush()
    return 0
