"""Rotation on one busy node: CSMS calls per pass, pass time, SPC-change latency and memory.

The Kubernetes API emulator, the CSMS emulator and dew-provider (`--latest-ttl 5s`, the default)
run as their own processes. The driver runs in this process, so that rotation passes can be started
with `RotationReconciler.reconcile_once()`; its own schedule is 1h, so no pass starts by itself.
Every volume is published with a kubelet-shaped NodePublishVolume over the driver's CSI socket, for
a pod created in the API first; one ServiceAccount's `cce.io/dew-resource` lists every secret.

Layout (defaults): 110 pods, 5 to a SecretProviderClass (22 SPCs). Each SPC mounts 10 objects:
5 `latest` (SPC j: latest secrets 5j..5j+4 modulo 100, so all 100 latest secrets are used) and
5 pinned `v1` objects. Each pass starts once the provider's latest TTL has run out, as a scheduled
pass (1m or more apart) does.

Printed:
  - the first publish of every volume (wall time, CSMS calls);
  - per rotation pass (odd: nothing changed; even: 10 latest secrets got a new version): CSMS
    calls against pods x objects (what a per-pod fetch makes) and against pods x latest objects
    (per-pod reads of latest only), the pass wall time (PassReport.seconds), volumes rotated
    against those that should, the concurrency ratio against the serial baseline, and the CPU
    time each process spent during the pass (which shows where a pass's time goes);
  - the serial baseline: one remount's p50 x volumes (what a serial pass would cost), and the
    measured serial pass;
  - SPC change -> changed file visible in every pod using that SPC, p50/p99, timed from just
    before the PATCH: 20 SPCs one at a time (pinned v1 -> v2), then 20 at once (v2 -> v3);
  - RSS: this process (the driver AND the benchmark's own clients; also before the driver
    started), and the provider process, from /proc/<pid>/status.

Usage: .venv/bin/python benchmarks/rotation.py [--pods 110] [--passes 3] [--pods-per-spc 5]
       [--spc-changes 20] [--latest-ttl 5s]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import yaml
from harness import percentile, rss_mib

from dew_csi import kube
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.driver.app import Driver, DriverConfig
from dew_csi.driver.rotation import PassReport
from dew_csi.durations import parse_duration

T = TypeVar("T")

PROJECT, AK, SK = "bench-project", "BENCHAK", "BENCHSK"
NODE = "bench-node"
SERVICE_ACCOUNT = "bench-sa"
NAMESPACE = "default"
LATEST_SECRETS = 100
PINNED_SECRETS = 100
PINNED_VERSIONS = 3  # v1 mounted; v2 and v3 for the SPC changes
LATEST_PER_SPC = 5
PINNED_PER_SPC = 5
OBJECTS_PER_POD = LATEST_PER_SPC + PINNED_PER_SPC
BUMPED_PER_PASS = 10
POLL_INTERVAL = 0.002
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child: be sent SIGTERM when the benchmark goes, even when it is SIGKILLed."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Processes:
    logs: Path
    running: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], pattern: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[str], str]:
        log = (self.logs / f"{name}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "dew_csi.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        self.running.append((name, process))
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(pattern, line)
        if not match:
            raise RuntimeError(f"{name} did not start: {line!r}\n{self.tail(name)}")
        return process, match.group(1)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(f"  {name}| {line}" for line in text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, process in reversed(self.running):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self.running):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


# --------------------------------------------------------------------------- helpers


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latest_name(i: int) -> str:
    return f"l{i % LATEST_SECRETS:03d}"


def pinned_name(i: int) -> str:
    return f"p{i % PINNED_SECRETS:03d}"


def value(name: str, version: int) -> str:
    return f"{name}-v{version}"


@dataclass
class Spc:
    name: str
    latest: list[str]
    pinned: list[str]
    pinned_versions: dict[str, int]
    pods: list[Pod] = field(default_factory=list)

    def objects_yaml(self) -> str:
        entries = [
            {"objectName": n, "objectType": "csms", "objectVersion": "latest"} for n in self.latest
        ] + [
            {"objectName": n, "objectType": "csms", "objectVersion": f"v{self.pinned_versions[n]}"}
            for n in self.pinned
        ]
        return yaml.safe_dump(entries, sort_keys=False)

    def body(self) -> dict[str, Any]:
        return {
            "metadata": {"name": self.name, "namespace": NAMESPACE},
            "spec": {"provider": "cce", "parameters": {"objects": self.objects_yaml()}},
        }


@dataclass
class Pod:
    name: str
    spc: Spc
    uid: str = ""
    target: Path = Path()
    request: csi_pb2.NodePublishVolumeRequest = field(
        default_factory=csi_pb2.NodePublishVolumeRequest
    )


def layout(pods: int, per_spc: int) -> tuple[list[Spc], list[Pod]]:
    spcs = []
    for j in range((pods + per_spc - 1) // per_spc):
        pinned = [pinned_name(j * PINNED_PER_SPC + m) for m in range(PINNED_PER_SPC)]
        spcs.append(
            Spc(
                name=f"spc-{j:03d}",
                latest=[latest_name(j * LATEST_PER_SPC + m) for m in range(LATEST_PER_SPC)],
                pinned=pinned,
                pinned_versions=dict.fromkeys(pinned, 1),
            )
        )
    all_pods = []
    for i in range(pods):
        pod = Pod(name=f"pod-{i:03d}", spc=spcs[i // per_spc])
        pod.spc.pods.append(pod)
        all_pods.append(pod)
    return spcs, all_pods


async def bounded(limit: int, calls: list[Callable[[], Awaitable[T]]]) -> list[T]:
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


# --------------------------------------------------------------------------- the cluster side


async def install(client: kube.Kube, spcs: list[Spc], pods: list[Pod], root: Path) -> None:
    for path in sorted((REPO / "deploy" / "crds").glob("*.yaml")):
        await client.create(kube.CUSTOM_RESOURCE_DEFINITION, yaml.safe_load(path.read_text()))
    names = [latest_name(i) for i in range(LATEST_SECRETS)]
    names += [pinned_name(i) for i in range(PINNED_SECRETS)]
    await client.create(
        kube.SERVICE_ACCOUNT,
        {
            "metadata": {
                "name": SERVICE_ACCOUNT,
                "namespace": NAMESPACE,
                "annotations": {"cce.io/dew-resource": json.dumps(names)},
            }
        },
    )
    for spc in spcs:
        await client.create(kube.SECRET_PROVIDER_CLASS, spc.body())

    async def create_pod(pod: Pod) -> None:
        created = await client.create(
            kube.POD,
            {
                "metadata": {"name": pod.name, "namespace": NAMESPACE},
                "spec": {
                    "nodeName": NODE,
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "containers": [{"name": "app", "image": "nginx:alpine"}],
                    "volumes": [
                        {
                            "name": "secrets-store-inline",
                            "csi": {
                                "driver": "secrets-store.csi.k8s.io",
                                "readOnly": True,
                                "volumeAttributes": {"secretProviderClass": pod.spc.name},
                            },
                        }
                    ],
                },
            },
        )
        pod.uid = created["metadata"]["uid"]
        volume_dir = root / "pods" / pod.uid / "volumes" / "kubernetes.io~csi"
        pod.target = volume_dir / "secrets-store-inline" / "mount"
        pod.target.parent.mkdir(parents=True)
        pod.request = csi_pb2.NodePublishVolumeRequest(
            volume_id=f"csi-{pod.uid}",
            target_path=str(pod.target),
            volume_capability=csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(),
                access_mode=csi_pb2.VolumeCapability.AccessMode(
                    mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                ),
            ),
            readonly=True,
            volume_context={
                "secretProviderClass": pod.spc.name,
                "csi.storage.k8s.io/pod.name": pod.name,
                "csi.storage.k8s.io/pod.namespace": NAMESPACE,
                "csi.storage.k8s.io/pod.uid": pod.uid,
                "csi.storage.k8s.io/serviceAccount.name": SERVICE_ACCOUNT,
                "csi.storage.k8s.io/ephemeral": "true",
            },
        )

    await bounded(16, [functools.partial(create_pod, p) for p in pods])


class Csms:
    """The CSMS emulator's admin API: counters and new versions."""

    def __init__(self, url: str) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=30, trust_env=False)
        self.versions: dict[str, int] = {}

    async def reset(self) -> None:
        (await self._http.delete("/_emulator/requests")).raise_for_status()

    async def counts(self) -> tuple[int, dict[str, int]]:
        answer = (await self._http.get("/_emulator/requests")).json()
        return int(answer["total"]), dict(answer["by_operation"])

    async def bump(self, name: str) -> None:
        count = self.versions.get(name, 1) + 1
        response = await self._http.put(
            f"/_emulator/secrets/{name}",
            json={"versions": [value(name, v) for v in range(1, count + 1)]},
        )
        response.raise_for_status()
        self.versions[name] = count

    async def aclose(self) -> None:
        await self._http.aclose()


def seed_file(path: Path) -> None:
    secrets: dict[str, list[str]] = {}
    for i in range(LATEST_SECRETS):
        secrets[latest_name(i)] = [value(latest_name(i), 1)]
    for i in range(PINNED_SECRETS):
        name = pinned_name(i)
        secrets[name] = [value(name, v) for v in range(1, PINNED_VERSIONS + 1)]
    path.write_text(yaml.safe_dump(secrets))


# --------------------------------------------------------------------------- measurements


@dataclass
class PassFigures:
    label: str
    report: PassReport
    expected_rotated: int
    csms_total: int
    csms_ops: dict[str, int]
    cpu: dict[str, float]


async def wait_visible(
    targets: dict[str, list[tuple[Path, bytes]]], started: float, timeout: float = 30.0
) -> dict[str, float]:
    """Poll until every (file, contents) of each key is visible; seconds from `started` per key."""
    pending = {key: list(files) for key, files in targets.items()}
    done: dict[str, float] = {}
    deadline = started + timeout
    while pending:
        now = time.perf_counter()
        for key in list(pending):
            remaining = []
            for path, expected in pending[key]:
                try:
                    if path.read_bytes() != expected:
                        remaining.append((path, expected))
                except OSError:
                    remaining.append((path, expected))
            if remaining:
                pending[key] = remaining
            else:
                del pending[key]
                done[key] = now - started
        if not pending:
            break
        if now > deadline:
            raise RuntimeError(f"files not updated after {timeout}s: {sorted(pending)[:5]} ...")
        await asyncio.sleep(POLL_INTERVAL)
    return done


async def change_spcs(
    client: kube.Kube, spcs: list[Spc], *, at_once: bool
) -> tuple[list[float], float]:
    """Move each SPC's first pinned object one version on; time until every pod shows it."""
    targets: dict[str, list[tuple[Path, bytes]]] = {}
    patches: dict[str, dict[str, Any]] = {}
    for spc in spcs:
        name = spc.pinned[0]
        spc.pinned_versions[name] += 1
        contents = value(name, spc.pinned_versions[name]).encode()
        targets[spc.name] = [(pod.target / name, contents) for pod in spc.pods]
        patches[spc.name] = {"spec": {"parameters": {"objects": spc.objects_yaml()}}}

    async def patch(name: str) -> None:
        await client.patch(kube.SECRET_PROVIDER_CLASS, name, patches[name], NAMESPACE)

    if at_once:
        started = time.perf_counter()
        await asyncio.gather(*(patch(spc.name) for spc in spcs))
        seconds = await wait_visible(targets, started)
        return list(seconds.values()), time.perf_counter() - started
    samples: list[float] = []
    first = time.perf_counter()
    for spc in spcs:
        started = time.perf_counter()
        await patch(spc.name)
        samples += (await wait_visible({spc.name: targets[spc.name]}, started)).values()
    return samples, time.perf_counter() - first


async def measure(args: argparse.Namespace, root: Path, api_url: str, csms_url: str) -> None:
    latest_ttl = parse_duration(args.latest_ttl)
    spcs, pods = layout(args.pods, args.pods_per_spc)
    latest_used = sorted({name for spc in spcs for name in spc.latest})

    def emit(line: str = "") -> None:
        print(line, flush=True)

    client = kube.Kube.from_url(api_url)
    csms = Csms(csms_url)
    rss_before_driver = rss_mib("self")
    driver = Driver(
        DriverConfig(
            endpoint=f"unix://{root}/plugins/csi.sock",
            node_id=NODE,
            kubelet_root=root,
            provider_dirs=(root / "providers",),
            rotation_interval=3600.0,  # passes are started here, not by the schedule
            mounter="dir",
            kubeconfig=str(root / "kubeconfig"),
            provider_timeout=30.0,
        )
    )
    channel: grpc.aio.Channel | None = None
    try:
        await install(client, spcs, pods, root)
        await driver.start()
        await driver.wait_ready()
        channel = grpc.aio.insecure_channel(f"unix://{driver.socket}")
        node = csi_pb2_grpc.NodeStub(channel)
        emit(
            f"layout: {len(pods)} pods x {OBJECTS_PER_POD} objects ({LATEST_PER_SPC} latest + "
            f"{PINNED_PER_SPC} pinned v1), {len(spcs)} SPCs ({args.pods_per_spc} pods each), "
            f"{len(latest_used)} distinct latest secrets; provider --latest-ttl {args.latest_ttl}"
        )

        # ---- first publish, as kubelet does it for pods starting together
        await csms.reset()
        started = time.perf_counter()
        await bounded(16, [functools.partial(node.NodePublishVolume, p.request) for p in pods])
        publish_s = time.perf_counter() - started
        calls, _ = await csms.counts()
        emit(
            f"publish {len(pods)} volumes (16 at a time)     {publish_s:7.3f} s, "
            f"{calls} CSMS calls (per-pod fetch: {len(pods) * OBJECTS_PER_POD})"
        )
        assert len(driver.volumes.mounted()) == len(pods)

        # ---- rotation passes
        per_pod_all = len(pods) * OBJECTS_PER_POD
        per_pod_latest = len(pods) * LATEST_PER_SPC
        figures: list[PassFigures] = []
        for number in range(1, args.passes + 1):
            changed: list[str] = []
            if number % 2 == 0:
                offset = (number // 2 - 1) * BUMPED_PER_PASS
                changed = [
                    latest_used[(offset + k) % len(latest_used)]
                    for k in range(min(BUMPED_PER_PASS, len(latest_used)))
                ]
                for name in changed:
                    await csms.bump(name)
            await asyncio.sleep(latest_ttl + 0.3)  # the provider's latest reads have expired
            await csms.reset()
            cpu_before = {name: cpu_seconds(pid) for name, pid in args.pids.items()}
            report = await driver.reconciler.reconcile_once()
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in args.pids.items()}
            total, ops = await csms.counts()
            affected = [p for p in pods if set(p.spc.latest) & set(changed)]
            for pod in affected:
                name = next(n for n in pod.spc.latest if n in changed)
                got = (pod.target / name).read_bytes()
                if got != value(name, csms.versions[name]).encode():
                    raise RuntimeError(f"{pod.name}/{name} not rotated: {got!r}")
            label = (
                f"pass {number}: {len(changed)} latest secrets changed"
                if changed
                else f"pass {number}: nothing changed"
            )
            figures.append(PassFigures(label, report, len(affected), total, ops, cpu))

        # ---- serial baseline: every volume remounted one after another
        await asyncio.sleep(latest_ttl + 0.3)
        await csms.reset()
        remounts = []
        serial_started = time.perf_counter()
        for volume in driver.volumes.mounted():
            started = time.perf_counter()
            await driver.volumes.remount(volume.target_path, trigger="benchmark")
            remounts.append(time.perf_counter() - started)
        serial_s = time.perf_counter() - serial_started
        serial_calls, _ = await csms.counts()
        remount_p50 = statistics.median(remounts)
        baseline = remount_p50 * len(remounts)

        for f in figures:
            r = f.report
            show = f.csms_ops.get("show_secret_version", 0)
            ops_note = "" if show == f.csms_total else f" ({show} show_secret_version)"
            emit(f"\n[{f.label}]")
            emit(
                f"  CSMS calls                  {f.csms_total:5d}{ops_note}  "
                f"= {f.csms_total / per_pod_all:.3f} of {per_pod_all} (pods x objects), "
                f"{f.csms_total / per_pod_latest:.3f} of {per_pod_latest} (pods x latest); "
                f"expected ~{len(latest_used)}"
            )
            emit(
                f"  pass wall time              {r.seconds * 1e3:8.1f} ms for {r.volumes} volumes "
                f"(p50 x volumes / pass = {baseline / r.seconds:.2f}x; "
                f"measured serial pass / pass = {serial_s / r.seconds:.2f}x)"
            )
            emit(
                "  CPU during the pass         "
                + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in f.cpu.items())
            )
            emit(
                f"  volumes rotated             {r.rotated:5d}  (expected {f.expected_rotated})"
                + (f", FAILED {r.failed}" if r.failed else "")
            )
        emit("\n[serial baseline]")
        emit(
            f"  one remount                 p50 {remount_p50 * 1e3:7.3f} ms  "
            f"p99 {percentile(remounts, 0.99) * 1e3:7.3f} ms"
        )
        emit(
            f"  p50 x {len(remounts)} volumes            {baseline * 1e3:8.1f} ms  "
            f"(measured serial pass {serial_s * 1e3:.1f} ms, {serial_calls} CSMS calls)"
        )

        # ---- SPC change -> file visible in every pod using the SPC
        count = min(args.spc_changes, len(spcs))
        chosen = [spcs[(i * len(spcs)) // count] for i in range(count)]
        one_by_one, _ = await change_spcs(client, chosen, at_once=False)
        together, together_s = await change_spcs(client, chosen, at_once=True)
        per_spc = len(pods) / len(spcs)
        emit(f"\n[SPC change -> file in every pod using it ({per_spc:.0f} pods per SPC)]")
        emit(
            f"  {count} SPCs one at a time       p50 {statistics.median(one_by_one) * 1e3:7.1f} ms"
            f"  p99 {percentile(one_by_one, 0.99) * 1e3:7.1f} ms  (target: 1 s)"
        )
        emit(
            f"  {count} SPCs at once             p50 {statistics.median(together) * 1e3:7.1f} ms"
            f"  p99 {percentile(together, 0.99) * 1e3:7.1f} ms  "
            f"(all {count} visible after {together_s * 1e3:.1f} ms)"
        )
        emit("\n[memory]")
        emit(
            f"  this process (driver + benchmark clients)  {rss_mib('self'):6.1f} MiB  "
            f"(before the driver started: {rss_before_driver:.1f} MiB)"
        )
        emit(f"  provider process                           {rss_mib(args.provider_pid):6.1f} MiB")
    finally:
        if channel is not None:
            await channel.close(None)
        await driver.stop()
        await csms.aclose()
        await client.close()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


async def cancel_on_sigterm(work: Awaitable[None]) -> None:
    """Inside the event loop, SIGTERM cancels the work, so that its clean-up runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await work
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--pods-per-spc", type=int, default=5)
    parser.add_argument("--spc-changes", type=int, default=20)
    parser.add_argument("--latest-ttl", default="5s", help="the provider's --latest-ttl")
    args = parser.parse_args()
    if args.pods < 1 or args.passes < 1 or args.pods_per_spc < 1 or args.spc_changes < 1:
        parser.error("--pods, --passes, --pods-per-spc and --spc-changes must be positive")
    # SIGTERM unwinds like Ctrl-C, so the processes started here are stopped on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dew-rot-") as tmp:
        root = Path(tmp)
        processes = Processes(root)
        seed_file(root / "secrets.yaml")
        failed = True
        try:
            api, api_url = processes.spawn(
                "apiserver",
                [
                    "sandbox",
                    "apiserver",
                    "--listen",
                    "127.0.0.1:0",
                    "--kubeconfig-out",
                    str(root / "kubeconfig"),
                ],
                r"(http://\S+)",
            )
            csms, csms_url = processes.spawn(
                "csms",
                [
                    "csms-emulator",
                    "--listen",
                    "127.0.0.1:0",
                    "--project-id",
                    PROJECT,
                    "--ak",
                    AK,
                    "--sk",
                    SK,
                    "--secrets",
                    str(root / "secrets.yaml"),
                ],
                r"(http://\S+)",
            )
            env = {
                "HUAWEICLOUD_SDK_AK": AK,
                "HUAWEICLOUD_SDK_SK": SK,
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            }
            provider, _ = processes.spawn(
                "provider",
                [
                    "provider",
                    "--socket-dir",
                    str(root / "providers"),
                    "--csms-endpoint",
                    csms_url,
                    "--project-id",
                    PROJECT,
                    "--kubeconfig",
                    str(root / "kubeconfig"),
                    "--metadata-url",
                    "none",
                    "--latest-ttl",
                    args.latest_ttl,
                ],
                r"listening on (\S+)",
                env=env,
            )
            args.provider_pid = provider.pid
            args.pids = {
                "provider": provider.pid,
                "this process (driver)": "self",
                "CSMS emulator": csms.pid,
                "API emulator": api.pid,
            }
            asyncio.run(cancel_on_sigterm(measure(args, root, api_url, csms_url)))
            failed = False
        finally:
            if failed:
                for name, _ in processes.running:
                    print(processes.tail(name), file=sys.stderr)
            processes.stop_all()
    print(f"\n(total run time {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
