"""`dew-csi demo`: the add-on guide's walkthrough, end to end, on a fresh local sandbox.

The demo starts a sandbox (`Sandbox(dir).up()`: API emulator, CSMS emulator, dew-provider, the
driver, the kubelet simulator and the controllers, each a real process), seeds CSMS through the
`dew-csi csms` command, and then follows the guide: both mounting methods, scheduled rotation and
real-time detection of SecretProviderClass changes. Each step prints the guide's command and its
output, and is checked against what the guide shows (regular expressions over the output, then
direct checks of files and objects). The first difference stops the demo with a message naming the
step, the tail of the relevant component logs, and exit status 1.

kubectl is the real binary when installed (run in the examples directory, so the commands read as
in the guide); with `--no-kubectl`, or when it is absent, the files are applied through the API
(kube.py) and `kubectl get` tables are rendered from the objects, which the demo says at the start.

The sandbox is stopped and its temporary directory removed at the end, also on failure and on
Ctrl-C, unless `--keep` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final, Protocol, TypeVar

import yaml

import dew_csi
from dew_csi import kube
from dew_csi.driver.rotation import parse_rotation_interval
from dew_csi.durations import parse_duration
from dew_csi.resources import ResourceMissing, examples_dir
from dew_csi.sandbox.apitables import format_age
from dew_csi.sandbox.cluster import Sandbox, SandboxError, check_directory

T = TypeVar("T")

EXAMPLE_FILES: Final = (
    "serviceaccount.yaml",
    "secretproviderclass.yaml",
    "deployment.yaml",
    "secretproviderclass-k8s-secrets.yaml",
    "deployment-k8s-secrets.yaml",
    "secretproviderclass-rotation.yaml",
    "secretproviderclass-realtime.yaml",
)

# The demo's fake secrets. secret_1 is JSON because method 2's jmesPath reads key1 and key2; its
# rotated version keeps both keys so method 2's pod (also on `latest`) keeps mounting.
SECRET_1_V1: Final = '{"key1":"db-user-01","key2":"db-user-02"}'
SECRET_1_V2: Final = '{"key1":"db-user-01-rotated","key2":"db-user-02-rotated"}'
SECRET_2_V1: Final = "demo-value-of-secret-2"

# The provider shares a `latest` read for its --latest-ttl, so a rotation may see a new version up
# to one TTL after the interval; the slack covers a pass's own duration on a busy machine.
ROTATION_SLACK_SECONDS: Final = 2.0
LOG_TAIL_LINES: Final = 20
DRIVER_LOG_GRACE_SECONDS: Final = 5.0
SPC_GROUP_SUFFIX: Final = r"(\.secrets-store\.csi\.x-k8s\.io)?"


class DemoFailed(Exception):
    """The demo could not go on; the message says which step and what differed."""


class Mismatch(Exception):
    """A step's result differs from what the guide shows."""


# --------------------------------------------------------------------------- clusters


class Cluster(Protocol):
    """Runs the guide's `kubectl ...` commands: the real kubectl, or the API in its place."""

    description: str

    def run(self, args: Sequence[str]) -> str:
        """The command's output (stdout then stderr); Mismatch when it fails."""
        ...


class KubectlCluster:
    """The real kubectl, run in the examples directory with a private HOME and cache."""

    def __init__(self, binary: str, kubeconfig: Path, examples: Path, workdir: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.examples = examples
        self.workdir = workdir
        self.description = (
            f"{binary}, run in {examples} as "
            f"`kubectl --kubeconfig {kubeconfig} --cache-dir {workdir / 'cache'} ...`"
        )

    def run(self, args: Sequence[str]) -> str:
        command = [
            self.binary,
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.workdir / "cache"),
            *args,
        ]
        environment = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        environment["HOME"] = str(self.workdir)  # never the user's ~/.kube
        result = subprocess.run(
            command,
            cwd=self.examples,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise Mismatch(f"kubectl exited with status {result.returncode}:\n{output.rstrip()}")
        return output


Column = tuple[str, Callable[[kube.KubeObject], str]]


def _age(obj: kube.KubeObject) -> str:
    created = str(obj.get("metadata", {}).get("creationTimestamp") or "")
    if not created:
        return "<unknown>"
    return format_age(datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00")))


def _name(obj: kube.KubeObject) -> str:
    return str(obj["metadata"]["name"])


def _ready_counts(pod: kube.KubeObject) -> tuple[int, int]:
    """(ready containers, containers): kubectl's READY column."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or [])
    return sum(1 for s in statuses if s.get("ready")), total


def _pod_ready(pod: kube.KubeObject) -> str:
    ready, total = _ready_counts(pod)
    return f"{ready}/{total}"


def _running_and_ready(pod: kube.KubeObject) -> bool:
    ready, total = _ready_counts(pod)
    return _pod_status(pod) == "Running" and ready == total > 0


def _pod_status(pod: kube.KubeObject) -> str:
    status = pod.get("status") or {}
    for entry in status.get("containerStatuses") or []:
        reason = ((entry.get("state") or {}).get("waiting") or {}).get("reason")
        if reason:
            return str(reason)
    return str(status.get("phase") or "Pending")


def _pod_restarts(pod: kube.KubeObject) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return str(sum(int(s.get("restartCount") or 0) for s in statuses))


# The `kubectl get` tables the guide shows, for the kubectl-less mode.
API_TABLES: Final[dict[str, tuple[kube.Resource, list[Column]]]] = {
    "sa": (
        kube.SERVICE_ACCOUNT,
        [
            ("NAME", _name),
            ("SECRETS", lambda o: str(len(o.get("secrets") or []))),
            ("AGE", _age),
        ],
    ),
    "spc": (kube.SECRET_PROVIDER_CLASS, [("NAME", _name), ("AGE", _age)]),
    "spcps": (kube.SECRET_PROVIDER_CLASS_POD_STATUS, [("NAME", _name), ("AGE", _age)]),
    "pod": (
        kube.POD,
        [
            ("NAME", _name),
            ("READY", _pod_ready),
            ("STATUS", _pod_status),
            ("RESTARTS", _pod_restarts),
            ("AGE", _age),
        ],
    ),
    "secrets": (
        kube.SECRET,
        [
            ("NAME", _name),
            ("TYPE", lambda o: str(o.get("type") or "Opaque")),
            ("DATA", lambda o: str(len(o.get("data") or {}))),
            ("AGE", _age),
        ],
    ),
}
APPLIED_KINDS: Final = {
    (r.api_version, r.kind): r
    for r in (kube.SERVICE_ACCOUNT, kube.SECRET_PROVIDER_CLASS, kube.DEPLOYMENT)
}


def render_table(columns: list[Column], objects: list[kube.KubeObject]) -> str:
    """Columns padded as kubectl's tabwriter pads them (three spaces between)."""
    rows = [[title for title, _ in columns]]
    rows += [[cell(obj) for _, cell in columns] for obj in sorted(objects, key=_name)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "".join(line.rstrip() + "\n" for line in lines)


def call_api(kubeconfig: Path, request: Callable[[kube.Kube], Awaitable[T]]) -> T:
    async def run() -> T:
        async with kube.Kube.from_kubeconfig(kubeconfig) as client:
            return await request(client)

    return asyncio.run(run())


class ApiCluster:
    """kubectl's `apply -f FILE` and `get KIND [NAME] [-o yaml]` through kube.py."""

    def __init__(self, kubeconfig: Path, examples: Path, why: str) -> None:
        self.kubeconfig = kubeconfig
        self.examples = examples
        self.description = (
            f"NOT USED ({why}): the guide's files are applied through the Kubernetes API "
            "(kube.py) and the `kubectl get` tables are rendered from the API's objects"
        )

    def run(self, command_args: Sequence[str]) -> str:
        args = list(command_args)
        if len(args) == 3 and args[:2] == ["apply", "-f"]:
            documents = list(yaml.safe_load_all((self.examples / args[2]).read_text()))
            return call_api(self.kubeconfig, lambda c: self._apply(c, documents))
        if len(args) in (2, 3, 5) and args[0] == "get" and args[1] in API_TABLES:
            resource, columns = API_TABLES[args[1]]
            if len(args) == 5 and args[3:] == ["-o", "yaml"]:
                obj = call_api(self.kubeconfig, lambda c: c.get(resource, args[2], "default"))
                return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False)
            if len(args) == 2:
                objects, _ = call_api(
                    self.kubeconfig, lambda c: c.list_objects(resource, "default")
                )
                return render_table(columns, objects)
        raise Mismatch(f"the kubectl-less mode cannot run `kubectl {shlex.join(args)}`")

    @staticmethod
    async def _apply(client: kube.Kube, documents: list[kube.KubeObject | None]) -> str:
        lines = []
        for document in documents:
            if not document:
                continue
            resource = APPLIED_KINDS[(document["apiVersion"], document["kind"])]
            name = document["metadata"]["name"]
            existing = await client.find(resource, name, "default")
            if existing is None:
                await client.create(resource, document)
                verb = "created"
            else:
                document["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                await client.replace(resource, document)
                verb = "configured"
            group = f".{resource.group}" if resource.group else ""
            lines.append(f"{resource.kind.lower()}{group}/{name} {verb}\n")
        return "".join(lines)


# --------------------------------------------------------------------------- the walkthrough


@dataclass
class Walkthrough:
    """What the steps share: the sandbox, the way to run kubectl, and what earlier steps found."""

    sandbox: Sandbox
    cluster: Cluster
    rotation_interval: float
    latest_ttl: float
    timeout: float
    names: dict[str, str] = field(default_factory=dict)
    """Generated names (pods, SPCPS), for commands and expectations: `{pod1}`."""
    pods: dict[str, kube.KubeObject] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    """Measured moments and durations (time.monotonic seconds) for checks and the summary."""

    def api(self, request: Callable[[kube.Kube], Awaitable[T]]) -> T:
        return call_api(self.sandbox.kubeconfig, request)

    def kubectl(self, command: str) -> str:
        words = shlex.split(command)
        if words[:1] != ["kubectl"]:
            raise ValueError(f"not a kubectl command: {command}")
        return self.cluster.run(words[1:])

    def csms_put(self, name: str, value: str) -> str:
        """`dew-csi csms --env-file DIR/csms.env put NAME -`, the value on stdin (not in argv)."""
        # The env file alone says where CSMS is and who calls it.
        environment = {k: v for k, v in os.environ.items() if not k.startswith("HUAWEICLOUD_SDK_")}
        package_parent = str(Path(dew_csi.__file__).resolve().parents[1])
        paths = [package_parent, *filter(None, environment.get("PYTHONPATH", "").split(":"))]
        environment["PYTHONPATH"] = ":".join(dict.fromkeys(paths))
        command = [sys.executable, "-m", "dew_csi.cli", "csms", "--env-file"]
        command += [str(self.sandbox.csms_env), "put", name, "-"]
        result = subprocess.run(
            command,
            input=value,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise Mismatch(f"dew-csi csms put exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def volume_path(self, pod_key: str, path: str) -> Path:
        """Where this process reads what the pod's container sees at `path`."""
        return self.sandbox.container_path(self.names[pod_key], path)

    def log_offset(self, component: str) -> int:
        try:
            return self.sandbox.log_file(component).stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, component: str, offset: int) -> str:
        with self.sandbox.log_file(component).open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")


Action = Callable[[Walkthrough, str], str]
Check = Callable[[Walkthrough, str], str | None]


@dataclass(frozen=True)
class Step:
    title: str
    command: str
    """As the guide shows it; `{pod1}`-style names are filled in from earlier steps."""
    action: Action = Walkthrough.kubectl
    """Runs the step and returns the output to show (default: run the kubectl command)."""
    expect: tuple[str, ...] = ()
    """Regular expressions (multi-line) that must all match the output; `{pod1}` is filled in."""
    check: Check | None = None
    """Direct checks of files and objects; raises Mismatch, or returns a remark to print."""
    note: str = ""
    shown: Callable[[str], str] | None = None
    """How to print the output, when the guide shows only part of it."""
    logs: tuple[str, ...] = ("apiserver",)
    """Components whose logs help when this step fails."""


@dataclass(frozen=True)
class Section:
    title: str
    steps: tuple[Step, ...]
    intro: str = ""


def wait_until(
    poll: Callable[[], tuple[T | None, str]],
    *,
    timeout: float,
    interval: float,
    what: str,
    progress: bool = True,
) -> tuple[T, float]:
    """Call `poll` until it returns a value; print its status about once a second meanwhile.
    Returns the value and the seconds it took; Mismatch with the last status on timeout."""
    started = time.monotonic()
    next_report = started
    while True:
        value, status = poll()
        now = time.monotonic()
        if value is not None:
            if progress and now - started >= 0.5:
                print(f"  {now - started:5.1f}s  {status}", flush=True)
            return value, now - started
        if now > started + timeout:
            raise Mismatch(f"{what} not reached in {timeout:g}s; last seen: {status}")
        if progress and now >= next_report:
            print(f"  {now - started:5.1f}s  {status}", flush=True)
            next_report += 1.0
        time.sleep(interval)


# --------------------------------------------------------------------------- step actions


def put_secret(name: str, value: str) -> Action:
    def action(walk: Walkthrough, _command: str) -> str:
        # The rotation check looks for the driver's remount in what it logs from here on.
        walk.marks["driver log offset"] = walk.log_offset("driver")
        output = walk.csms_put(name, value)
        walk.marks[f"{name} put"] = time.monotonic()
        return output

    return action


def wait_for_pod(label: str, key: str) -> Action:
    """Wait (showing the pod's status each second) until the labelled pod runs, then `get pod`."""

    def action(walk: Walkthrough, command: str) -> str:
        name, value = label.split("=")

        def poll() -> tuple[kube.KubeObject | None, str]:
            pods, _ = walk.api(lambda c: c.list_objects(kube.POD, "default", labels={name: value}))
            if not pods:
                return None, f"no pod with label {label} yet"
            pod = pods[0]
            status = f"{_name(pod)}  {_pod_status(pod)}  ready {_pod_ready(pod)}"
            waiting = _waiting_message(pod)
            if waiting:
                status += f"  ({waiting})"
            return (pod if _running_and_ready(pod) else None), status

        try:
            pod, seconds = wait_until(
                poll, timeout=walk.timeout, interval=0.2, what=f"pod {label} Running and ready"
            )
        except Mismatch as timeout:
            warning = latest_warning(walk, name, value)
            raise Mismatch(f"{timeout}" + (f"; {warning}" if warning else "")) from None
        walk.pods[key] = pod
        walk.names[key] = _name(pod)
        walk.marks[f"{key} running"] = seconds
        return walk.kubectl(command)

    return action


def latest_warning(walk: Walkthrough, label_key: str, label_value: str) -> str:
    """The newest Warning event of the labelled pods (kubelet's FailedMount says why)."""
    pods, _ = walk.api(
        lambda c: c.list_objects(kube.POD, "default", labels={label_key: label_value})
    )
    names = {_name(pod) for pod in pods}
    events, _ = walk.api(lambda c: c.list_objects(kube.EVENT, "default"))
    warnings = [
        e
        for e in events
        if e.get("type") == "Warning" and (e.get("involvedObject") or {}).get("name") in names
    ]
    if not warnings:
        return ""
    # Timestamps have whole seconds, and the driver's FailedToMountSecrets repeats with kubelet's
    # FailedMount: on a tie, kubelet's (what `kubectl describe pod` shows a user) is the newest.
    newest = max(
        warnings,
        key=lambda e: (
            str(e.get("lastTimestamp") or e.get("eventTime") or ""),
            e.get("reason") == "FailedMount",
        ),
    )
    pod_name = newest["involvedObject"]["name"]
    return f"last Warning event of pod {pod_name}: {newest.get('reason')}: {newest.get('message')}"


def _waiting_message(pod: kube.KubeObject) -> str:
    for entry in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting.get("message"):
            return str(waiting["message"])
    return ""


def visible_names(directory: Path) -> list[str]:
    """What `ls` shows: the atomic writer's `..data` and timestamped directories are hidden."""
    return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def list_mount(pod_key: str, path: str, wait_for: tuple[str, ...] | None = None) -> Action:
    """What `ls PATH` shows in the pod's container; first wait for exactly `wait_for`, if given."""

    def action(walk: Walkthrough, _command: str) -> str:
        if wait_for is not None:
            wanted = sorted(wait_for)
            directory = walk.volume_path(pod_key, path)

            def poll() -> tuple[bool | None, str]:
                names = visible_names(directory)
                return (True if names == wanted else None), f"{path} holds {' '.join(names)}"

            wait_until(
                poll,
                timeout=walk.timeout,
                interval=0.05,
                what=f"{path} holding {', '.join(wanted)}",
            )
        return walk.sandbox.cat(walk.names[pod_key], path).decode()

    return action


def read_file(pod_key: str, path: str) -> Action:
    def action(walk: Walkthrough, _command: str) -> str:
        return walk.sandbox.cat(walk.names[pod_key], path).decode() + "\n"

    return action


def container_environment(pod_key: str) -> Action:
    def action(walk: Walkthrough, _command: str) -> str:
        pairs = walk.sandbox.environment(walk.names[pod_key])
        return "".join(f"{name}={value}\n" for name, value in pairs)

    return action


def wait_for_rotation(pod_key: str, path: str) -> Action:
    """Poll the mounted file until it holds secret_1's new version; show progress each second."""

    def action(walk: Walkthrough, _command: str) -> str:
        where = walk.volume_path(pod_key, path)
        put_at = walk.marks["secret_1 put"]

        def poll() -> tuple[bool | None, str]:
            content = where.read_text()
            if content == SECRET_1_V2:
                return True, f"{path} holds the new version"
            if content == SECRET_1_V1:
                return None, f"{path} still holds the previous version"
            return None, f"{path} holds something else ({len(content)} bytes)"

        budget = walk.rotation_interval + walk.latest_ttl + ROTATION_SLACK_SECONDS
        wait_until(poll, timeout=budget, interval=0.05, what="the new secret_1 version in the pod")
        walk.marks["rotation seconds"] = time.monotonic() - put_at
        return where.read_text() + "\n"

    return action


def apply_and_wait_for_file(pod_key: str, path: str, file_name: str) -> Action:
    """Apply the changed SPC, then poll the mount (every 10 ms) until `file_name` appears."""

    def action(walk: Walkthrough, command: str) -> str:
        directory = walk.volume_path(pod_key, path)  # resolved first: the poll only lists
        walk.marks["driver log offset"] = walk.log_offset("driver")
        started = time.monotonic()
        output = walk.kubectl(command)
        applied = time.monotonic()
        wait_until(
            lambda: (True, "") if file_name in visible_names(directory) else (None, ""),
            timeout=walk.timeout,
            interval=0.01,
            what=f"{file_name} in {path}",
            progress=False,
        )
        seen = time.monotonic()
        walk.marks["spc change from apply start"] = seen - started
        walk.marks["spc change from apply end"] = seen - applied
        return output

    return action


# --------------------------------------------------------------------------- step checks


def check_spcps_target(walk: Walkthrough, output: str) -> str | None:
    """The SPCPS's targetPath is the volume of the pod found by its label."""
    status = (yaml.safe_load(output) or {}).get("status") or {}
    uid = walk.pods["pod1"]["metadata"]["uid"]
    target = str(status.get("targetPath", ""))
    if f"/pods/{uid}/volumes/kubernetes.io~csi/secrets-store-inline/mount" not in target:
        raise Mismatch(f"targetPath {target!r} is not the volume of pod uid {uid}")
    return None


def check_synced_secret(walk: Walkthrough, _output: str) -> str | None:
    """my-secret-01 holds key1 and key2 of secret_1 (compared, never printed)."""
    secret = walk.api(lambda c: c.get(kube.SECRET, "my-secret-01", "default"))
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    source = json.loads(SECRET_1_V1)
    wanted = {"db_username_01": source["key1"], "db_username_02": source["key2"]}
    if sorted(data) != sorted(wanted):
        raise Mismatch(f"my-secret-01 has keys {sorted(data)}, not {sorted(wanted)}")
    wrong = [key for key in wanted if data[key] != wanted[key]]
    if wrong:
        raise Mismatch(f"my-secret-01 keys {wrong} do not hold secret_1's values")
    labels = secret["metadata"].get("labels") or {}
    if labels.get(kube.MANAGED_SECRET_LABEL) != "true":
        raise Mismatch(f"my-secret-01 lacks the label {kube.MANAGED_SECRET_LABEL}=true")
    return None


def _driver_line(walk: Walkthrough, offset: int, pattern: str) -> str | None:
    """The first driver log line since `offset` matching `pattern`, waiting a little for it: the
    driver logs a remount after it has written the files the demo saw."""
    deadline = time.monotonic() + DRIVER_LOG_GRACE_SECONDS
    while True:
        for line in walk.log_since("driver", offset).splitlines():
            if re.search(pattern, line):
                return line.strip()
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def check_rotation(walk: Walkthrough, _output: str) -> str | None:
    """It was the scheduled rotation (the driver says so), within the interval (+ cache TTL)."""
    seconds = walk.marks["rotation seconds"]
    pod = re.escape(walk.names["pod1"])
    line = _driver_line(
        walk,
        int(walk.marks["driver log offset"]),
        rf'"remounted" pod="default/{pod}" spc="spc-test" trigger="rotation"',
    )
    if line is None:
        raise Mismatch(
            "the driver's log has no rotation remount of the pod after the CSMS update: the new "
            "version did not come from the scheduled rotation"
        )
    print(f"  driver log: {line}")
    return (
        f"the new secret_1 version reached the pod {seconds:.1f}s after the CSMS update "
        f"(rotation_poll_interval {walk.rotation_interval:g}s; the provider shares a `latest` "
        f"read for {walk.latest_ttl:g}s, so up to {walk.rotation_interval + walk.latest_ttl:g}s)"
    )


def check_spc_change(walk: Walkthrough, _output: str) -> str | None:
    """The SPC watch (not a rotation pass) mounted secret_2, well within the interval."""
    pod = re.escape(walk.names["pod1"])
    line = _driver_line(
        walk,
        int(walk.marks["driver log offset"]),
        rf'"SecretProviderClass changed; remounting" spc="default/spc-test" pod="{pod}"',
    )
    if line is None:
        raise Mismatch("the driver's log does not show the SecretProviderClass change detected")
    print(f"  driver log: {line}")
    after_start = walk.marks["spc change from apply start"]
    after_end = walk.marks["spc change from apply end"]
    # Timed from the end of `kubectl apply`, when the write is surely done: kubectl's own
    # discovery time says nothing about the add-on.
    if after_end >= walk.rotation_interval:
        raise Mismatch(
            f"secret_2 took {after_end:.2f}s to appear, not less than the rotation interval "
            f"({walk.rotation_interval:g}s): the change was not applied in real time"
        )
    return (
        f"secret_2 appeared in the pod {after_end:.2f}s after `kubectl apply` returned "
        f"({after_start:.2f}s after it started); rotation_poll_interval {walk.rotation_interval:g}s"
    )


def status_part(output: str) -> str:
    """The guide shows `......` then the status block of `kubectl get spcps NAME -o yaml`."""
    at = output.find("\nstatus:")
    return output if at < 0 else "......" + output[at:]


# --------------------------------------------------------------------------- the guide's steps


def _spc_line(name: str, verb: str) -> str:
    return rf"^secretproviderclass{SPC_GROUP_SUFFIX}/{name} {verb}$"


IN_CONTAINER: Final = (
    "inside the container; the sandbox runs no image, so the demo reads the container's view "
    "from the pod's volume, as `dew-csi sandbox cat {pod1} PATH` does"
)
SECRET_NOT_SHOWN: Final = "the value comes on stdin and is not shown"
POD_TABLE_HEADER: Final = r"^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE$"


def preparation(csms_env: Path) -> Section:
    put = f"dew-csi csms --env-file {csms_env} put"
    return Section(
        "Before you start: the secrets in CSMS (the guide's Figure 1)",
        (
            Step(
                "Create secret_1 in CSMS (a JSON value with key1 and key2)",
                f"{put} secret_1 -",
                put_secret("secret_1", SECRET_1_V1),
                expect=(r"\Av1\n\Z",),
                note=SECRET_NOT_SHOWN,
                logs=("csms",),
            ),
            Step(
                "Create secret_2 in CSMS",
                f"{put} secret_2 -",
                put_secret("secret_2", SECRET_2_V1),
                expect=(r"\Av1\n\Z",),
                note=SECRET_NOT_SHOWN,
                logs=("csms",),
            ),
        ),
    )


def method_1() -> Section:
    return Section(
        "Method 1: mounting a secret through a volume",
        (
            Step(
                "1.2 Create the ServiceAccount object",
                "kubectl apply -f serviceaccount.yaml",
                expect=(r"^serviceaccount/nginx-spc-sa created$",),
            ),
            Step(
                "1.3 Check whether the ServiceAccount object has been created",
                "kubectl get sa",
                expect=(
                    r"^NAME\s+SECRETS\s+AGE$",
                    r"^default\s+\d+\s+\S+$",
                    r"^nginx-spc-sa\s+\d+\s+\S+$",
                ),
            ),
            Step(
                "2.2 Create the SecretProviderClass object",
                "kubectl apply -f secretproviderclass.yaml",
                expect=(_spc_line("spc-test", "created"),),
            ),
            Step(
                "2.3 Check whether the SecretProviderClass object has been created",
                "kubectl get spc",
                expect=(r"^NAME\s+AGE$", r"^spc-test\s+\S+$"),
            ),
            Step(
                "3.2 Create a service pod",
                "kubectl apply -f deployment.yaml",
                expect=(r"^deployment(\.apps)?/nginx-spc created$",),
            ),
            Step(
                "3.3 Check whether the pod has been created",
                "kubectl get pod",
                wait_for_pod("app=nginx", "pod1"),
                expect=(POD_TABLE_HEADER, r"^{pod1}\s+1/1\s+Running\s+0\s+\S+$"),
                note="first waits until the pod labelled app=nginx runs",
                logs=("kubelet", "driver", "provider"),
            ),
            Step(
                "3.4.2 Search for the specified secret",
                "ls /mnt/secrets-store/",
                list_mount("pod1", "/mnt/secrets-store/"),
                expect=(r"\Asecret_test\n\Z",),
                note=IN_CONTAINER,
                logs=("driver", "provider"),
            ),
            Step(
                "3.4.3 Obtain spcPodStatus",
                "kubectl get spcps",
                expect=(r"^NAME\s.*AGE$", r"^{pod1}-default-spc-test\s"),
                logs=("driver",),
            ),
            Step(
                "3.4.3 Check whether the secret has been mounted to the pod",
                "kubectl get spcps {pod1}-default-spc-test -o yaml",
                expect=(
                    r"^status:$",
                    r"^\s+mounted: true$",
                    r"^\s+- id: secret_test\n\s+version: v1$",
                    r"^\s+podName: {pod1}$",
                    r"^\s+secretProviderClassName: spc-test$",
                    r"^\s+targetPath: /\S+/volumes/kubernetes\.io~csi/secrets-store-inline/mount$",
                ),
                check=check_spcps_target,
                shown=status_part,
                logs=("driver",),
            ),
        ),
    )


def method_2() -> Section:
    return Section(
        "Method 2: mounting a secret created from a secret in DEW",
        (
            Step(
                "2.2 Create the SecretProviderClass object",
                "kubectl apply -f secretproviderclass-k8s-secrets.yaml",
                expect=(_spc_line("nginx-deployment-spc-k8s-secrets", "created"),),
            ),
            Step(
                "2.3 Check whether the SecretProviderClass object has been created",
                "kubectl get spc",
                expect=(r"^NAME\s+AGE$", r"^nginx-deployment-spc-k8s-secrets\s+\S+$"),
            ),
            Step(
                "3.2 Create a service pod",
                "kubectl apply -f deployment-k8s-secrets.yaml",
                expect=(r"^deployment(\.apps)?/nginx-deployment-k8s-secrets created$",),
            ),
            Step(
                "3.3 Check whether the pod has been created",
                "kubectl get pod",
                wait_for_pod("app=nginx-k8s-secrets", "pod2"),
                expect=(POD_TABLE_HEADER, r"^{pod2}\s+1/1\s+Running\s+0\s+\S+$"),
                note="first waits until the pod labelled app=nginx-k8s-secrets runs",
                logs=("kubelet", "driver", "provider"),
            ),
            Step(
                "4 Verify the result",
                "kubectl get secrets",
                expect=(
                    r"^NAME\s+TYPE\s+DATA\s+AGE$",
                    r"^default-secret\s+kubernetes\.io/dockerconfigjson\s+1\s+\S+$",
                    r"^my-secret-01\s+Opaque\s+2\s+\S+$",
                ),
                check=check_synced_secret,
                logs=("driver",),
            ),
            Step(
                "The container's environment, from my-secret-01",
                "dew-csi sandbox env {pod2}",
                container_environment("pod2"),
                expect=(r"^DB_USERNAME_01=db-user-01$", r"^DB_USERNAME_02=db-user-02$"),
                note="what `env` shows in the container, as the kubelet resolved it",
                logs=("kubelet",),
            ),
        ),
        intro="Step 1, the ServiceAccount nginx-spc-sa, is the same object as in method 1.",
    )


def scheduled_rotation(csms_env: Path) -> Section:
    return Section(
        "Scheduled rotation",
        (
            Step(
                "Change secret_1's version in spc-test to latest",
                "kubectl apply -f secretproviderclass-rotation.yaml",
                expect=(_spc_line("spc-test", "configured"),),
            ),
            Step(
                "The pod's mount follows the SPC (it has no objectAlias now: the file is secret_1)",
                "ls /mnt/secrets-store/",
                list_mount("pod1", "/mnt/secrets-store/", wait_for=("secret_1",)),
                expect=(r"\Asecret_1\n\Z",),
                note=IN_CONTAINER,
                logs=("driver", "provider"),
            ),
            Step(
                "The value the pod has now",
                "cat /mnt/secrets-store/secret_1",
                read_file("pod1", "/mnt/secrets-store/secret_1"),
                expect=(rf"\A{re.escape(SECRET_1_V1)}\n\Z",),
                note=IN_CONTAINER,
                logs=("driver", "provider"),
            ),
            Step(
                "Update secret_1 in CSMS: a new version",
                f"dew-csi csms --env-file {csms_env} put secret_1 -",
                put_secret("secret_1", SECRET_1_V2),
                expect=(r"\Av2\n\Z",),
                note="the value comes on stdin; the next step shows it in the pod",
                logs=("csms",),
            ),
            Step(
                "Wait for the scheduled rotation to bring it into the pod",
                "cat /mnt/secrets-store/secret_1",
                wait_for_rotation("pod1", "/mnt/secrets-store/secret_1"),
                expect=(rf"\A{re.escape(SECRET_1_V2)}\n\Z",),
                check=check_rotation,
                note="polled until the new version is mounted",
                logs=("driver", "provider"),
            ),
        ),
        intro="With objectVersion latest, the add-on reads CSMS again every "
        "rotation_poll_interval and updates the pod.",
    )


def spc_change_detection() -> Section:
    return Section(
        "Real-time detection of SecretProviderClass changes",
        (
            Step(
                "Add secret_2 to spc-test",
                "kubectl apply -f secretproviderclass-realtime.yaml",
                apply_and_wait_for_file("pod1", "/mnt/secrets-store/", "secret_2"),
                expect=(_spc_line("spc-test", "configured"),),
                check=check_spc_change,
                note="then the demo watches the pod's mount for secret_2",
                logs=("driver", "provider"),
            ),
            Step(
                "secret_2 is mounted in the pod",
                "ls /mnt/secrets-store/",
                list_mount("pod1", "/mnt/secrets-store/"),
                expect=(r"\Asecret_1\nsecret_2\n\Z",),
                note=IN_CONTAINER,
                logs=("driver",),
            ),
            Step(
                "The pod's spcPodStatus lists both secrets and their versions",
                "kubectl get spcps {pod1}-default-spc-test -o yaml",
                expect=(
                    r"^\s+mounted: true$",
                    r"^\s+- id: secret_1\n\s+version: v2$",
                    r"^\s+- id: secret_2\n\s+version: v1$",
                ),
                shown=status_part,
                logs=("driver",),
            ),
        ),
        intro="A changed SecretProviderClass reaches the pods that use it at once, not at the "
        "next rotation.",
    )


def guide_sections(csms_env: Path) -> list[Section]:
    """The guide's walkthrough, in its order."""
    return [
        preparation(csms_env),
        method_1(),
        method_2(),
        scheduled_rotation(csms_env),
        spc_change_detection(),
    ]


# --------------------------------------------------------------------------- running


class StepFailed(Exception):
    """A step did not give what the guide shows; names the step, its command and why."""

    def __init__(self, step: Step, command: str, reason: str) -> None:
        super().__init__(f"step {step.title!r} (`{command}`): {reason}")
        self.step = step


def fill_names(text: str, names: dict[str, str]) -> str:
    """`{pod1}` -> the name found earlier; other braces (JSON, regex counts) stay as they are."""
    return re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), text)


def run_step(walk: Walkthrough, step: Step) -> None:
    command = fill_names(step.command, walk.names)
    print(f"--- {step.title}")
    print(f"$ {command}")
    if step.note:
        print(f"  ({fill_names(step.note, walk.names)})")
    sys.stdout.flush()
    started = time.monotonic()
    try:
        output = step.action(walk, command)
        print((step.shown or str)(output).rstrip("\n"), flush=True)
        escaped = {k: re.escape(v) for k, v in walk.names.items()}
        expected = [fill_names(p, escaped) for p in step.expect]
        missing = [p for p in expected if not re.search(p, output, re.MULTILINE)]
        if missing:
            raise Mismatch(
                "the output differs from the guide: nothing matches "
                + ", ".join(f"/{p}/" for p in missing)
                + "; the output was:\n"
                + indented(output)
            )
        remark = step.check(walk, output) if step.check is not None else None
    except Mismatch as mismatch:
        raise StepFailed(step, command, str(mismatch)) from None
    except Exception as error:  # any failure must name its step
        raise StepFailed(step, command, f"{type(error).__name__}: {error}") from error
    elapsed = time.monotonic() - started
    print(f"    ok ({elapsed:.2f}s)" + (f": {remark}" if remark else "") + "\n", flush=True)


def indented(text: str, lines: int = 15) -> str:
    kept = text.rstrip("\n").splitlines()
    more = [f"... ({len(kept) - lines} more lines)"] if len(kept) > lines else []
    return "\n".join(f"    {line}" for line in kept[:lines] + more) or "    (nothing)"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def print_log_tails(sandbox: Sandbox, failure: StepFailed) -> None:
    for component in failure.step.logs:
        print(
            f"\n--- last lines of {sandbox.log_file(component)}:\n"
            f"{log_tail(sandbox.log_file(component))}",
            file=sys.stderr,
        )


@dataclass(frozen=True)
class Options:
    directory: Path | None
    keep: bool
    use_kubectl: bool
    rotation_poll_interval: str
    examples: Path
    timeout: float


def provider_latest_ttl() -> float:
    """The `latest` TTL the sandbox's provider runs with."""
    from dew_csi.sandbox.cluster import SANDBOX_LATEST_TTL

    return parse_duration(SANDBOX_LATEST_TTL)


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does, so the cleanup runs either way."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Cleanup is not cut short by a second Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_demo(options: Options) -> None:
    """The whole walkthrough on a fresh sandbox, cleaned up afterwards unless `options.keep`;
    DemoFailed naming the step when something differs from the guide."""
    rotation_interval = parse_rotation_interval(options.rotation_poll_interval, sandbox=True)
    missing = [name for name in EXAMPLE_FILES if not (options.examples / name).is_file()]
    if missing:
        raise DemoFailed(f"{options.examples} has no {', '.join(missing)}: not the guide's files")
    temporary = options.directory is None
    directory = options.directory or Path(tempfile.mkdtemp(prefix="dew-csi-demo-"))
    kubectl_home = Path(tempfile.mkdtemp(prefix="dew-csi-demo-kubectl-"))
    sandbox = Sandbox(directory)
    cluster = choose_cluster(options, sandbox, kubectl_home)
    started = time.monotonic()
    print("dew-csi demo: the CCE Secrets Manager for DEW guide, step by step, on a local sandbox")
    print(f"  sandbox    {directory}" + ("" if options.keep else " (removed at the end)"))
    print(f"  kubectl    {cluster.description}")
    print(f"  examples   {options.examples}")
    print(f"  rotation_poll_interval {options.rotation_poll_interval}\n", flush=True)
    walk: Walkthrough | None = None
    try:
        with interrupts_as_keyboard_interrupt():
            start_sandbox(sandbox, options.rotation_poll_interval)
            walk = Walkthrough(
                sandbox,
                cluster,
                rotation_interval=rotation_interval,
                latest_ttl=provider_latest_ttl(),
                timeout=options.timeout,
            )
            for section in guide_sections(sandbox.csms_env):
                print(f"===== {section.title} =====")
                print(f"{section.intro}\n" if section.intro else "")
                for step in section.steps:
                    run_step(walk, step)
            print_summary(walk, time.monotonic() - started)
    except StepFailed as failure:
        print_log_tails(sandbox, failure)
        raise DemoFailed(str(failure)) from None
    finally:
        with uninterrupted():
            shutil.rmtree(kubectl_home, ignore_errors=True)
            if options.keep:
                print_keep_instructions(sandbox, walk)
            else:
                sandbox.down()
                if temporary:
                    shutil.rmtree(directory, ignore_errors=True)
                else:
                    print(f"The sandbox is stopped; its logs are in {sandbox.logs}", flush=True)


def choose_cluster(options: Options, sandbox: Sandbox, kubectl_home: Path) -> Cluster:
    kubectl = shutil.which("kubectl") if options.use_kubectl else None
    if kubectl is not None:
        return KubectlCluster(kubectl, sandbox.kubeconfig, options.examples, kubectl_home)
    why = "--no-kubectl given" if not options.use_kubectl else "kubectl is not installed"
    return ApiCluster(sandbox.kubeconfig, options.examples, why)


def start_sandbox(sandbox: Sandbox, rotation_poll_interval: str) -> None:
    print("--- Start the sandbox: API, CSMS emulator, dew-provider, driver, kubelet, controllers")
    started = time.monotonic()
    try:
        sandbox.up(rotation_poll_interval=rotation_poll_interval)
    except SandboxError as error:
        raise DemoFailed(f"step 'Start the sandbox': {error}") from None
    info = sandbox.running()
    mounts = "tmpfs in a private mount namespace" if info.mount_namespace_pid else "directories"
    print(
        f"    ok ({time.monotonic() - started:.2f}s): Kubernetes API {info.api_url}, "
        f"CSMS {info.csms_endpoint}, volumes: {mounts}\n",
        flush=True,
    )


def print_summary(walk: Walkthrough, total: float) -> None:
    marks = walk.marks
    print("===== Summary: every step matched the guide =====")
    print(
        f"  method 1  {walk.names['pod1']} Running in {marks['pod1 running']:.1f}s, "
        "secret_1 v1 mounted as secret_test, spcPodStatus mounted: true"
    )
    print(
        f"  method 2  {walk.names['pod2']} Running in {marks['pod2 running']:.1f}s, "
        "my-secret-01 synced, DB_USERNAME_01/02 in its environment"
    )
    print(
        f"  scheduled rotation   new secret_1 version in the pod {marks['rotation seconds']:.1f}s "
        f"after the CSMS update (rotation_poll_interval {walk.rotation_interval:g}s, plus up to "
        f"{walk.latest_ttl:g}s of the provider's `latest` cache)"
    )
    print(
        f"  SPC change detection secret_2 in the pod {marks['spc change from apply end']:.2f}s "
        f"after `kubectl apply` returned "
        f"({marks['spc change from apply start']:.2f}s after it started)"
    )
    print(f"  total {total:.1f}s", flush=True)


def print_keep_instructions(sandbox: Sandbox, walk: Walkthrough | None) -> None:
    where = sandbox.directory
    pod = walk.names.get("pod1", "POD") if walk is not None else "POD"
    print(f"\nThe sandbox keeps running in {where}:")
    print(f"  export KUBECONFIG={sandbox.kubeconfig}")
    print(f"  dew-csi sandbox cat --dir {where} {pod} /mnt/secrets-store/")
    print(f"  dew-csi csms --env-file {sandbox.csms_env} list")
    print(f"  dew-csi sandbox down --dir {where}   (add --purge to remove the directory too)")


def default_examples() -> Path:
    """The guide's files shipped with dew-csi (installed package data, or the checkout's
    examples/); ValueError saying so when this installation has neither."""
    try:
        return examples_dir()
    except ResourceMissing as error:
        raise ValueError(f"{error}; or name the guide's files with --examples DIR") from None


def options_from_args(args: argparse.Namespace) -> Options:
    directory = check_directory(args.dir) if args.dir else None
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise ValueError(f"--dir {directory} is not empty: the demo needs a fresh sandbox")
    try:
        parse_rotation_interval(args.rotation_poll_interval, sandbox=True)
    except ValueError as error:
        raise ValueError(f"{error}; the demo also takes durations such as 3s") from None
    if args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    return Options(
        directory=directory,
        keep=args.keep,
        use_kubectl=not args.no_kubectl,
        rotation_poll_interval=args.rotation_poll_interval,
        examples=Path(args.examples).absolute() if args.examples else default_examples(),
        timeout=args.timeout,
    )


def run_from_args(args: argparse.Namespace) -> int:
    # Each step's output should appear as it happens, also through a pipe (`make demo | tee`).
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"dew-csi demo: {error}", file=sys.stderr)
        return 2
    try:
        run_demo(options)
    except DemoFailed as failure:
        print(f"\ndew-csi demo: FAILED: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        after = "the sandbox keeps running" if options.keep else "the sandbox was cleaned up"
        print(f"\ndew-csi demo: interrupted; {after}", file=sys.stderr)
        return 130
    return 0
