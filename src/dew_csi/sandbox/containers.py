"""The sandbox node's containers that are real processes: the add-on's pods in `kube-system`.

On CCE the add-on runs as two DaemonSets in `kube-system`, and the guide's "Viewing Component
Logs" reads them with `kubectl get pod -n kube-system` and `kubectl logs`. In the sandbox the
driver and the provider are processes `dew-csi sandbox up` starts itself (`cluster.py`), each
writing its output to `DIR/logs/<component>.log` (appended across runs; every run starts with a
`=== dew-csi sandbox: starting ... ===` line). `up` then makes them look as they run on CCE:

* the DaemonSets `csi-secrets-store` and `dew-provider` and one pod each on the sandbox node,
  named as the DaemonSet controller names them (`csi-secrets-store-76tj2`) and owned by their
  DaemonSet: `csi-secrets-store` with the containers `node-driver-registrar`, `secrets-store`
  and `liveness-probe` (READY 3/3), `dew-provider` with `dew-provider` (1/1);
* this module's **registry**, `DIR/containers.json` (mode 0600), written *before* those pods are
  created: for each pod (namespace and name) the process (pid and start time, so a reused pid
  never counts) and, for each container, the log file and the byte offset where this run's
  output starts.

Who reads the registry:

* the kubelet simulator (`<root>/containers.json`, its `--root` being the sandbox directory)
  "runs" a registered pod by reporting its process: Running since the process's start time while
  it lives; once it is gone, that container `terminated` with reason `ContainerStatusUnknown`
  and exit code 137, which is what kubelet itself reports for a container whose exit status it
  could not learn (the simulator is not the process's parent). It does not restart it
  (restartCount stays 0), publishes no volume and resolves no environment for these pods.
* the API emulator serves the `log` subresource of a registered pod's container from the
  registered file, from its offset on. It reads the registry named by the environment variable
  `DEW_CSI_SANDBOX_CONTAINERS`, which only the process that starts the emulator can set
  (`sandbox up` does): no API object can name a file for the emulator to read.

`node-driver-registrar` and `liveness-probe` are not processes in the sandbox (its kubelet is
handed the driver's socket directly, and nothing probes the driver after start-up). Their state
follows the pod and their logs are a few lines `sandbox up` writes saying exactly that, and what
it did instead (`DIR/logs/node-driver-registrar.log`, `DIR/logs/liveness-probe.log`).

Log lines and their times. A container runtime stamps each line when it receives it, and
`kubectl logs --timestamps` prints that time; `--since` filters on it. The sandbox's processes
write straight to their files, so a line's time is the one it carries: the klog header
(`I1207 21:38:08.383816`, UTC, as `dew_csi.logs` writes it; the year is the one that does not put
the line in the future) or a JSON line's `ts`. A line without one (a `print`, a traceback line)
has the time of the line before it, or the process's start time. klog stamps a line when it is
formatted, microseconds before a runtime would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from dew_csi.logs import KlogFormatter, fields

REGISTRY_FILE: Final = "containers.json"
REGISTRY_ENV: Final = "DEW_CSI_SANDBOX_CONTAINERS"
REGISTRY_FORMAT: Final = "dew-csi-sandbox-containers/1"
SYSTEM_NAMESPACE: Final = "kube-system"
# The alphabet Kubernetes draws generated name suffixes from (no vowels, no look-alikes).
NAME_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
# What kubelet reports for a container whose exit status it cannot learn.
UNKNOWN_EXIT_CODE: Final = 137
UNKNOWN_EXIT_REASON: Final = "ContainerStatusUnknown"

_KLOG_TIME: Final = re.compile(rb"[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) ")
_JSON_TIME: Final = re.compile(rb'\{"ts": ?"([^"]{10,40})"')


# --------------------------------------------------------------------------- processes


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot); None when there is no such
    process or it is a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = text[text.rfind(")") + 2 :].split()
    if not after_name or after_name[0] == "Z":
        return None
    return int(after_name[19])


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def started_at(start_ticks: int) -> datetime:
    """The wall-clock time a process with this start time (clock ticks since boot) started."""
    seconds = _boot_time() + start_ticks / os.sysconf("SC_CLK_TCK")
    return datetime.fromtimestamp(int(seconds), UTC)


def command_line(pid: int) -> list[str]:
    """The process's argv (empty when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def name_suffix() -> str:
    """Five random characters, as the API server appends to a `generateName`."""
    return "".join(secrets.choice(NAME_ALPHABET) for _ in range(5))


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class ContainerLog:
    """Where one container's output is: `path` from byte `offset` on."""

    path: str
    offset: int = 0
    process: bool = False
    """True for the container the pod's process is; the others follow the pod."""


@dataclass(frozen=True)
class SystemPod:
    namespace: str
    name: str
    component: str
    """The sandbox component (`driver`, `provider`) this pod stands for."""
    pid: int
    start_ticks: int
    started_at: str
    """RFC 3339, the process's start."""
    containers: dict[str, ContainerLog] = field(default_factory=dict)

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.start_ticks


@dataclass(frozen=True)
class Registry:
    pods: tuple[SystemPod, ...] = ()

    def find(self, namespace: str, name: str) -> SystemPod | None:
        for pod in self.pods:
            if pod.namespace == namespace and pod.name == name:
                return pod
        return None

    def to_json(self) -> str:
        document = {"format": REGISTRY_FORMAT, "pods": [asdict(p) for p in self.pods]}
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Registry:
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != REGISTRY_FORMAT:
            raise ValueError(f"not a {REGISTRY_FORMAT} document")
        pods = []
        for entry in document.get("pods") or []:
            datetime.fromisoformat(str(entry["started_at"]))  # a ValueError if it is not a time
            containers = {
                str(name): ContainerLog(str(c["path"]), int(c["offset"]), bool(c["process"]))
                for name, c in (entry.get("containers") or {}).items()
            }
            pods.append(
                SystemPod(
                    str(entry["namespace"]),
                    str(entry["name"]),
                    str(entry["component"]),
                    int(entry["pid"]),
                    int(entry["start_ticks"]),
                    str(entry["started_at"]),
                    containers,
                )
            )
        return cls(tuple(pods))


def load_registry(path: Path | None) -> Registry:
    """The registry in `path`; empty when there is none (or it cannot be read)."""
    if path is None:
        return Registry()
    try:
        return Registry.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return Registry()


class RegistryFile:
    """A registry file read again only when it changed (the kubelet looks at it every second)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._registry = Registry()

    def current(self) -> Registry:
        if self.path is None:
            return self._registry
        try:
            stat = self.path.stat()
        except OSError:
            self._seen, self._registry = None, Registry()
            return self._registry
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            self._seen, self._registry = seen, load_registry(self.path)
        return self._registry


# --------------------------------------------------------------------------- reading logs


def line_time(line: bytes, now: datetime) -> datetime | None:
    """The time a log line carries (klog header or JSON `ts`), None when it carries none."""
    match = _KLOG_TIME.match(line)
    if match is not None:
        month, day, hour, minute, second, micro = (int(g) for g in match.groups())
        for year in (now.year, now.year - 1):
            try:
                when = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
            except ValueError:
                return None
            if when <= now + timedelta(days=1):
                return when
        return None
    match = _JSON_TIME.match(line)
    if match is not None:
        try:
            when = datetime.fromisoformat(match.group(1).decode())
        except ValueError:
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return None


@dataclass(frozen=True)
class LogLine:
    time: datetime
    text: bytes
    """The line as written, with its newline (a last, unfinished line has none)."""


class ContainerLogReader:
    """One container's log file from its offset on, read in pieces as it grows."""

    def __init__(self, path: Path, offset: int, start: datetime) -> None:
        self.path = path
        self.position = offset
        self.last_time = start

    def read(self, *, final: bool) -> list[LogLine]:
        """The lines written since the last read: complete ones only, unless `final` (the
        writer is gone, so an unfinished last line is all there will be)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.position)
                data = handle.read()
        except OSError:
            return []
        if not final:
            data = data[: data.rfind(b"\n") + 1]
        self.position += len(data)
        now = datetime.now(UTC)
        lines = []
        for text in data.splitlines(keepends=True):
            when = line_time(text, now)
            if when is not None:
                self.last_time = when
            lines.append(LogLine(self.last_time, text))
        return lines


@dataclass(frozen=True)
class LogOptions:
    """The PodLogOptions that shape the output (kubelet applies `tail_lines` first)."""

    tail_lines: int | None = None
    since: datetime | None = None
    timestamps: bool = False
    limit_bytes: int | None = None


def timestamp_prefix(when: datetime) -> bytes:
    """kubelet's `--timestamps` prefix: RFC 3339 with nine fraction digits, then a space."""
    utc = when.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}000Z ".encode()


class LogWriter:
    """Turns log lines into response bytes as kubelet does: lines older than `since` are
    skipped, `timestamps` prefixes each, and the output stops at `limit_bytes` (mid-line)."""

    def __init__(self, options: LogOptions) -> None:
        self.options = options
        self.remaining = options.limit_bytes

    @property
    def done(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def first(self, lines: list[LogLine]) -> bytes:
        """The first batch: only its last `tail_lines` lines count."""
        tail = self.options.tail_lines
        if tail is not None:
            lines = lines[len(lines) - tail :] if tail else []
        return self.render(lines)

    def render(self, lines: Iterable[LogLine]) -> bytes:
        out = bytearray()
        since = self.options.since
        for line in lines:
            if self.done:
                break
            if since is not None and line.time < since:
                continue
            text = line.text
            if self.options.timestamps:
                text = timestamp_prefix(line.time) + text
            if self.remaining is not None:
                text = text[: self.remaining]
                self.remaining -= len(text)
            out += text
        return bytes(out)


# --------------------------------------------------------------------------- the add-on's pods


@dataclass(frozen=True)
class AddonPod:
    """One of the add-on's DaemonSets as the sandbox runs it: its pod template and which
    container is the sandbox component's process."""

    daemon_set: str
    component: str
    process_container: str
    template: dict[str, Any]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.template["metadata"]["labels"])

    @property
    def container_names(self) -> list[str]:
        return [str(c["name"]) for c in self.template["spec"]["containers"]]


def _resources(cpu: str, memory: str) -> dict[str, Any]:
    # requests = limits, as deploy/: the pods are Guaranteed, as on CCE.
    amounts = {"cpu": cpu, "memory": memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _process_container(name: str, argv: list[str]) -> dict[str, Any]:
    """The container that is a sandbox process: its command is that process's real argv."""
    return {"name": name, "image": "dew-csi", "command": argv[:1], "args": argv[1:]}


def addon_pods(
    driver_argv: list[str], provider_argv: list[str], driver_socket: str
) -> list[AddonPod]:
    """csi-secrets-store (3 containers) and dew-provider (1), shaped as deploy/ has them."""
    registrar = {
        "name": "node-driver-registrar",
        "image": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.16.0",
        "args": [
            "--v=2",
            f"--csi-address={driver_socket}",
            f"--kubelet-registration-path={driver_socket}",
        ],
        "resources": _resources("25m", "48Mi"),
    }
    probe = {
        "name": "liveness-probe",
        "image": "registry.k8s.io/sig-storage/livenessprobe:v2.18.0",
        "args": [f"--csi-address={driver_socket}", "--health-port=9808", "--probe-timeout=3s"],
        "resources": _resources("25m", "48Mi"),
    }
    driver = {
        **_process_container("secrets-store", driver_argv),
        "securityContext": {"privileged": True},
        "resources": _resources("200m", "416Mi"),
    }
    provider = {
        **_process_container("dew-provider", provider_argv),
        "resources": _resources("250m", "512Mi"),
    }

    def template(name: str, component: str, account: str, containers: list[Any]) -> Any:
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component}
        return {
            "metadata": {"labels": labels},
            "spec": {
                "serviceAccountName": account,
                "priorityClassName": "system-node-critical",
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"operator": "Exists"}],
                "terminationGracePeriodSeconds": 30,
                "containers": containers,
            },
        }

    return [
        AddonPod(
            "csi-secrets-store",
            "driver",
            "secrets-store",
            template(
                "csi-secrets-store",
                "csi-driver",
                "csi-secrets-store",
                [registrar, driver, probe],
            ),
        ),
        AddonPod(
            "dew-provider",
            "provider",
            "dew-provider",
            template("dew-provider", "provider", "dew-provider", [provider]),
        ),
    ]


def daemon_set_manifest(pod: AddonPod) -> dict[str, Any]:
    return {
        "metadata": {
            "name": pod.daemon_set,
            "namespace": SYSTEM_NAMESPACE,
            "labels": pod.labels,
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": pod.daemon_set}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": pod.template,
        },
    }


def pod_manifest(pod: AddonPod, name: str, node: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """The pod the DaemonSet controller would create for `node`, already bound to it."""
    template = json.loads(json.dumps(pod.template))
    spec = template["spec"]
    spec["nodeName"] = node
    # What the DaemonSet controller adds to pin its pod to one node.
    spec["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                ]
            }
        }
    }
    owner_meta = owner["metadata"]
    return {
        "metadata": {
            "name": name,
            "namespace": SYSTEM_NAMESPACE,
            "labels": {**pod.labels, "pod-template-generation": "1"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "name": owner_meta["name"],
                    "uid": owner_meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def daemon_set_status(ready: int, generation: int = 1) -> dict[str, Any]:
    """The status of a one-node DaemonSet whose pod is scheduled and up to date."""
    return {
        "currentNumberScheduled": 1,
        "desiredNumberScheduled": 1,
        "numberMisscheduled": 0,
        "numberReady": ready,
        "numberAvailable": ready,
        **({"numberUnavailable": 1 - ready} if ready < 1 else {}),
        "updatedNumberScheduled": 1,
        "observedGeneration": generation,
    }


def write_klog(path: Path, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
    """Append klog lines (message and structured fields) to `path`; the offset they start at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = path.stat().st_size if path.exists() else 0
    logger = logging.Logger("dew_csi.sandbox.containers")  # not the global one: no propagation
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(KlogFormatter())
    logger.addHandler(handler)
    try:
        for message, values in entries:
            logger.info(message, extra=fields(**values))
    finally:
        handler.close()
    return offset


def sidecar_logs(
    driver_socket: str, driver_name: str
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """What the sandbox says in place of the sidecars' own logs."""
    address = f"unix://{driver_socket}"
    return {
        "node-driver-registrar": [
            (
                "No node-driver-registrar runs in the dew-csi sandbox: nothing registers the "
                "plugin, the kubelet simulator is given the driver's socket (--csi-endpoint)",
                {"csiAddress": address},
            ),
            (
                "CSI driver name",
                {"csiDriverName": driver_name, "checkedBy": "sandbox up (GetPluginInfo)"},
            ),
        ],
        "liveness-probe": [
            (
                "No livenessprobe runs in the dew-csi sandbox: nothing probes the driver after "
                "start-up",
                {"csiAddress": address},
            ),
            (
                "The sandbox checked the driver once at start-up",
                {"method": "GetPluginInfo", "driver": driver_name},
            ),
        ],
    }
