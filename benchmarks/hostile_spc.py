"""Hostile SecretProviderClasses against dew-provider and the webhook: refusal time, the effect on
an unrelated Mount, and memory.

The Kubernetes API emulator, the CSMS emulator, dew-provider and the webhook run as their own
processes, talking over loopback HTTP(S) and a unix socket; the attackers run in another process,
so that this one only measures. Printed, in one run:
  - parsing `parameters.objects` in this process: a 500-object class (the count bound) with
    libyaml and with pure-Python PyYAML, and the issue's 1 MiB / 15000-object class parsed the
    way the provider used to (pure Python, everything built), the cost of every kubelet retry;
  - the baseline: an unrelated Mount (guide SPC, pinned version, served from memory), p50/p99,
    with nothing else going on;
  - the refusal time of each hostile class (1 MiB / 15000 objects; an alias bomb; the heaviest
    class the bounds let through to a full parse, made invalid at its end): its first Mount and
    a retry, and their ratio to the baseline p50;
  - the unrelated Mount, p50/p99 and ratio to the baseline, while 7 attackers (the issue's 7 pods)
    mount hostile classes without pause: "retry" repeats the three classes above (kubelet
    retrying), "distinct" sends a new heaviest-allowed class every time (no cache can help);
  - the provider's RSS at start, after 80 distinct 1 MiB classes and after 80 distinct classes
    of the heaviest size allowed (issue: 122 -> 513 MiB, over the 0.5 GiB limit);
  - the webhook: a valid review p50 (baseline), and each hostile class's review time and ratio
    (its timeoutSeconds is 5, failing open).

Usage: .venv/bin/python benchmarks/hostile_spc.py [--samples 200] [--attackers 7]
       [--distinct-classes 80]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml
from harness import percentile, rss_mib, spawn, start_emulators, start_provider

from dew_csi import spc
from dew_csi._proto.provider.v1alpha1 import service_pb2, service_pb2_grpc
from dew_csi.sandbox.cluster import self_signed_certificate

PROJECT, AK, SK = "bench-project", "BENCHAK", "BENCHSK"
GUIDE_OBJECTS = (
    '- {objectName: secret_1, objectAlias: secret_test, objectType: csms, objectVersion: "v1"}'
)
GROUP = "secrets-store.csi.x-k8s.io"
MS = 1e3


# --------------------------------------------------------------------------- hostile classes


def huge_objects(tag: str = "") -> str:
    """The issue's class: 15000 objects, about 1 MiB, invalid (the last version is malformed)."""
    valid = "".join(
        f"- objectName: secret{tag}_{i:05d}\n  objectType: csms\n  objectVersion: latest\n"
        for i in range(14_999)
    )
    return valid + "- objectName: last\n  objectType: csms\n  objectVersion: one\n"


def alias_bomb(levels: int = 12) -> str:
    lines = ["- &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"- &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def heaviest_allowed(tag: str = "") -> str:
    """As much as the bounds let through to a full parse: 500 objects of about 500 bytes, with
    jmesPath entries, invalid only at the very end (a duplicate objectName)."""
    entries = []
    for i in range(spc.MAX_OBJECTS):
        name = f"s{tag}-{i:03d}-" + "x" * 30
        entries.append(
            f"- objectName: {name}\n  objectType: csms\n  objectVersion: latest\n"
            f"  objectAlias: alias-{name}\n"
            f'  filePermission: "0400"\n  jmesPath:\n'
            + "".join(f"    - {{path: key{j}, objectAlias: f{tag}-{i}-{j}}}\n" for j in range(5))
        )
    text = "".join(entries)
    while len(text) < spc.MAX_OBJECTS_BYTES - 2000:
        text += "# padding up to the size bound\n"
    return text.replace(f"s{tag}-499-", f"s{tag}-000-", 1)


# --------------------------------------------------------------------------- processes


def mount_request(objects: str, spc_name: str = "bench") -> service_pb2.MountRequest:
    attributes = {
        "objects": objects,
        "secretProviderClass": spc_name,
        "csi.storage.k8s.io/pod.name": "bench-pod",
        "csi.storage.k8s.io/pod.namespace": "default",
        "csi.storage.k8s.io/pod.uid": "0000",
        "csi.storage.k8s.io/serviceAccount.name": "bench-sa",
        "csi.storage.k8s.io/ephemeral": "true",
    }
    return service_pb2.MountRequest(
        attributes=json.dumps(attributes), secrets="null", permission="420", target_path="/t"
    )


async def timed(call: Callable[[Any], Awaitable[object]], argument: Any) -> float:
    """Seconds `call(argument)` took; a gRPC error (a refusal) counts as an answer."""
    start = time.perf_counter()
    try:
        await call(argument)
    except grpc.aio.AioRpcError:
        pass
    return time.perf_counter() - start


# --------------------------------------------------------------------------- the attackers


async def attack(socket: str, mode: str, attackers: int) -> None:
    """Mount hostile classes without pause until killed (runs in its own process)."""
    retry = [huge_objects(), alias_bomb(), heaviest_allowed()]
    options = [
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]
    async with grpc.aio.insecure_channel(f"unix://{socket}", options=options) as channel:
        stub = service_pb2_grpc.CSIDriverProviderStub(channel)

        async def one(index: int) -> None:
            count = 0
            while True:
                if mode == "retry":
                    objects = retry[(index + count) % len(retry)]
                else:
                    objects = heaviest_allowed(uuid.uuid4().hex[:8])
                count += 1
                try:
                    await stub.Mount(mount_request(objects, f"hostile-{index}"), timeout=60)
                except grpc.aio.AioRpcError:
                    pass

        await asyncio.gather(*(one(i) for i in range(attackers)))


def start_attack(socket: str, mode: str, attackers: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--attack",
            socket,
            "--mode",
            mode,
            "--attackers",
            str(attackers),
        ],
    )
    return process


# --------------------------------------------------------------------------- measurements


def parse_figures() -> dict[str, float]:
    figures: dict[str, float] = {}
    heavy = heaviest_allowed().replace("s-000-", "s-499-", 1)  # the valid version of it
    for name, loader in (("libyaml", yaml.CSafeLoader), ("python", yaml.SafeLoader)):
        start = time.perf_counter()
        for _ in range(3):
            yaml.load(heavy, Loader=loader)
        figures[f"load_{name}"] = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    spc.parse_objects("bench", heavy)
    figures["parse_heavy"] = time.perf_counter() - start
    start = time.perf_counter()
    yaml.load(huge_objects(), Loader=yaml.SafeLoader)
    figures["old_huge"] = time.perf_counter() - start
    for name, text in (("huge", huge_objects()), ("bomb", alias_bomb())):
        start = time.perf_counter()
        try:
            spc.parse_objects("bench", text)
        except spc.SpcValidationError:
            pass
        figures[f"refuse_{name}"] = time.perf_counter() - start
    return figures


async def unrelated_mounts(
    stub: service_pb2_grpc.CSIDriverProviderStub, samples: int
) -> list[float]:
    request = mount_request(GUIDE_OBJECTS)
    return [await timed(stub.Mount, request) for _ in range(samples)]


async def measure_provider(
    socket: str, provider_pid: int, samples: int, attackers: int, distinct: int
) -> dict[str, Any]:
    r: dict[str, Any] = {}
    options = [
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]
    r["rss_start"] = rss_mib(provider_pid)
    async with grpc.aio.insecure_channel(f"unix://{socket}", options=options) as channel:
        stub = service_pb2_grpc.CSIDriverProviderStub(channel)
        await stub.Mount(mount_request(GUIDE_OBJECTS))  # warm: read from CSMS once
        r["baseline"] = await unrelated_mounts(stub, samples)

        for name, text in (
            ("huge", huge_objects()),
            ("bomb", alias_bomb()),
            ("heavy", heaviest_allowed()),
        ):
            request = mount_request(text, f"refuse-{name}")
            r[f"refuse_{name}_first"] = await timed(stub.Mount, request)
            r[f"refuse_{name}_retry"] = statistics.median(
                [await timed(stub.Mount, request) for _ in range(5)]
            )

        for mode in ("retry", "distinct"):
            attack_process = start_attack(socket, mode, attackers)
            try:
                await asyncio.sleep(2.0)  # the attack is in full swing
                r[f"attack_{mode}"] = await unrelated_mounts(stub, samples)
            finally:
                attack_process.kill()
                attack_process.wait()
            await asyncio.sleep(0.5)

        r["rss_after_attacks"] = rss_mib(provider_pid)
        for i in range(distinct):
            await timed(stub.Mount, mount_request(huge_objects(f"{i}"), f"big-{i}"))
        r["rss_after_huge"] = rss_mib(provider_pid)
        for i in range(distinct):
            await timed(stub.Mount, mount_request(heaviest_allowed(f"r{i}"), f"heavy-{i}"))
        r["rss_after_heavy"] = rss_mib(provider_pid)
    return r


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "webhook.crt", directory / "webhook.key"
    self_signed_certificate(cert, key)
    return cert, key


def review(objects: str, name: str) -> dict[str, Any]:
    obj = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"provider": "cce", "parameters": {"objects": objects}},
    }
    kind = {"group": GROUP, "version": "v1", "kind": "SecretProviderClass"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "name": name,
            "namespace": "default",
            "operation": "CREATE",
            "object": obj,
        },
    }


async def measure_webhook(url: str, cert: Path, samples: int) -> dict[str, Any]:
    r: dict[str, Any] = {}
    context = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(verify=context, timeout=30) as http:

        async def send(document: dict[str, Any]) -> float:
            start = time.perf_counter()
            answer = await http.post(f"{url}/validate", json=document)
            elapsed = time.perf_counter() - start
            assert answer.status_code == 200, answer.text
            return elapsed

        await send(review(GUIDE_OBJECTS, "warm"))
        r["baseline"] = [await send(review(GUIDE_OBJECTS, f"ok-{i}")) for i in range(samples)]
        for name, text in (
            ("huge", huge_objects()),
            ("bomb", alias_bomb()),
            ("heavy", heaviest_allowed()),
        ):
            r[name] = statistics.median([await send(review(text, f"bad-{name}")) for _ in range(5)])
    return r


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--attackers", type=int, default=7)
    parser.add_argument("--distinct-classes", type=int, default=80)
    parser.add_argument("--attack", help=argparse.SUPPRESS)  # internal: the attacker process
    parser.add_argument("--mode", default="retry", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        asyncio.run(attack(args.attack, args.mode, args.attackers))
        return

    parsing = parse_figures()
    with tempfile.TemporaryDirectory() as tmp:
        api, api_url, csms, csms_url = start_emulators(tmp, PROJECT, AK, SK)
        processes = [api, csms]
        try:
            httpx.post(
                f"{api_url}/api/v1/namespaces/default/serviceaccounts",
                json={
                    "metadata": {
                        "name": "bench-sa",
                        "annotations": {"cce.io/dew-resource": '["secret_1"]'},
                    }
                },
            ).raise_for_status()
            httpx.put(
                f"{csms_url}/_emulator/secrets/secret_1", json={"versions": ["value-1"]}
            ).raise_for_status()
            provider, socket = start_provider(tmp, csms_url, PROJECT, AK, SK)
            processes.append(provider)
            time.sleep(0.5)  # the provider's ServiceAccount cache catches up
            p = asyncio.run(
                measure_provider(
                    socket, provider.pid, args.samples, args.attackers, args.distinct_classes
                )
            )
            w: dict[str, Any] | None = None
            if shutil.which("openssl"):
                cert, key = make_certificate(Path(tmp))
                webhook, url = spawn(
                    [
                        "webhook",
                        "--listen",
                        "127.0.0.1:0",
                        "--tls-cert",
                        str(cert),
                        "--tls-key",
                        str(key),
                        "--max-spcs",
                        "0",
                    ],
                    r"listening on (\S+)",
                )
                processes.append(webhook)
                w = asyncio.run(measure_webhook(url, cert, args.samples))
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=10)

    print(f"libyaml available: {spc.yaml_uses_libyaml()}")
    print(
        f"parse, in this process: heaviest allowed class ({spc.MAX_OBJECTS} objects, "
        f"{len(heaviest_allowed()) // 1024} KiB): "
        f"load with libyaml {parsing['load_libyaml'] * MS:.1f} ms, "
        f"pure Python {parsing['load_python'] * MS:.1f} ms "
        f"({parsing['load_python'] / parsing['load_libyaml']:.1f}x); parse_objects "
        f"{parsing['parse_heavy'] * MS:.1f} ms"
    )
    print(
        f"  the issue's 1 MiB class, pure-Python load (the old per-retry cost): "
        f"{parsing['old_huge'] * MS:.0f} ms; now refused in {parsing['refuse_huge'] * MS:.3f} ms "
        f"(alias bomb: {parsing['refuse_bomb'] * MS:.3f} ms)"
    )
    base = p["baseline"]
    b50, b99 = statistics.median(base), percentile(base, 0.99)
    print(
        f"baseline: unrelated Mount, no attack        p50 {b50 * MS:7.2f} ms  "
        f"p99 {b99 * MS:7.2f} ms"
    )
    for name, label in (
        ("huge", "1 MiB / 15000 objects"),
        ("bomb", "alias bomb"),
        ("heavy", "heaviest allowed, invalid"),
    ):
        first, retry = p[f"refuse_{name}_first"], p[f"refuse_{name}_retry"]
        print(
            f"refused: {label:27s} first {first * MS:8.2f} ms ({first / b50:6.1f}x)  "
            f"retry {retry * MS:7.2f} ms ({retry / b50:5.1f}x)"
        )
    for mode, label in (
        ("retry", f"{args.attackers} attackers retrying"),
        ("distinct", f"{args.attackers} attackers, new class each"),
    ):
        samples = p[f"attack_{mode}"]
        a50, a99 = statistics.median(samples), percentile(samples, 0.99)
        print(
            f"unrelated Mount, {label:30s} p50 {a50 * MS:7.2f} ms ({a50 / b50:5.1f}x)  "
            f"p99 {a99 * MS:7.2f} ms ({a99 / b99:5.1f}x)  max {max(samples) * MS:7.1f} ms"
        )
    print(
        f"provider RSS: start {p['rss_start']:.0f} MiB, after the attacks "
        f"{p['rss_after_attacks']:.0f} MiB, after {args.distinct_classes} distinct 1 MiB classes "
        f"{p['rss_after_huge']:.0f} MiB, after {args.distinct_classes} distinct heaviest-allowed "
        f"classes {p['rss_after_heavy']:.0f} MiB "
        f"({p['rss_after_heavy'] / p['rss_start']:.2f}x start; limit 512 MiB)"
    )
    if w is None:
        print("webhook: not measured (no openssl to make its certificate)")
        return
    wb = statistics.median(w["baseline"])
    print(f"webhook: valid review p50 {wb * MS:.2f} ms (baseline); timeoutSeconds is 5")
    for name, label in (
        ("huge", "1 MiB / 15000 objects"),
        ("bomb", "alias bomb"),
        ("heavy", "heaviest allowed, invalid"),
    ):
        print(f"  denied: {label:27s} {w[name] * MS:8.2f} ms ({w[name] / wb:5.1f}x)")


if __name__ == "__main__":
    main()
