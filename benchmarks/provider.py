"""dew-provider: Mount latency against a floor, CSMS calls under a burst, and memory.

Every part runs as its own process (`dew-csi sandbox apiserver`, `dew-csi csms-emulator`,
`dew-csi provider`), talking over loopback HTTP and a unix socket, and prints in one run:
  - the floor: a trivial gRPC call (Version) over the same socket;
  - warm Mount (pinned version, served from the provider's memory) p50/p99 and ratio to the floor;
  - cold Mount (each a new pinned version, read from CSMS) against the raw CSMS GET latency
    measured with our client from this process;
  - CSMS calls made for 100 concurrent Mounts of one `latest` secret (against 100 uncached);
  - the provider's resident memory after the run.

Usage: .venv/bin/python benchmarks/provider.py [--samples 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from harness import percentile, rss_mib, start_emulators, start_provider

from dew_csi._proto.provider.v1alpha1 import service_pb2, service_pb2_grpc
from dew_csi.csms import Credentials, CsmsClient, CsmsClientConfig

PROJECT, AK, SK = "bench-project", "BENCHAK", "BENCHSK"


def request(objects: str) -> service_pb2.MountRequest:
    attributes = {
        "objects": objects,
        "secretProviderClass": "bench",
        "csi.storage.k8s.io/pod.name": "bench-pod",
        "csi.storage.k8s.io/pod.namespace": "default",
        "csi.storage.k8s.io/pod.uid": "0000",
        "csi.storage.k8s.io/serviceAccount.name": "bench-sa",
        "csi.storage.k8s.io/ephemeral": "true",
    }
    return service_pb2.MountRequest(
        attributes=json.dumps(attributes), secrets="null", permission="420", target_path="/t"
    )


def pinned(name: str, version: str = "v1") -> str:
    return f"- {{objectName: {name}, objectType: csms, objectVersion: {version}}}"


async def timed(count: int, call) -> list[float]:  # type: ignore[no-untyped-def]
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - start)
    return samples


async def measure(socket: Path, csms_url: str, api_url: str, samples: int) -> dict[str, float]:
    secrets = [f"s{i}" for i in range(samples)] + ["hot"]
    async with httpx.AsyncClient(base_url=api_url) as api:
        await api.post(
            "/api/v1/namespaces/default/serviceaccounts",
            json={
                "metadata": {
                    "name": "bench-sa",
                    "annotations": {"cce.io/dew-resource": json.dumps(secrets)},
                }
            },
        )
    async with httpx.AsyncClient(base_url=csms_url) as admin:
        for name in secrets:
            await admin.put(f"/_emulator/secrets/{name}", json={"versions": ["value-" + name]})
    await asyncio.sleep(0.5)  # the provider's ServiceAccount cache catches up

    results: dict[str, float] = {}
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        stub = service_pb2_grpc.CSIDriverProviderStub(channel)
        await stub.Version(service_pb2.VersionRequest(version="v1alpha1"))
        floor = await timed(samples, lambda i: stub.Version(service_pb2.VersionRequest()))
        await stub.Mount(request(pinned("hot")))
        warm = await timed(samples, lambda i: stub.Mount(request(pinned("hot"))))
        cold = await timed(samples, lambda i: stub.Mount(request(pinned(f"s{i}"))))

        async with CsmsClient(
            Credentials(ak=AK, sk=SK, project_id=PROJECT), CsmsClientConfig(endpoint=csms_url)
        ) as raw:
            csms_get = await timed(samples, lambda i: raw.get_secret_version(f"s{i}", "v1"))

        async with httpx.AsyncClient(base_url=csms_url) as admin:
            await admin.delete("/_emulator/requests")
            burst_start = time.perf_counter()
            latest = "- {objectName: hot, objectType: csms, objectVersion: latest}"
            await asyncio.gather(*(stub.Mount(request(latest)) for _ in range(100)))
            results["burst_s"] = time.perf_counter() - burst_start
            counts = (await admin.get("/_emulator/requests")).json()
            results["burst_csms_calls"] = float(counts.get("total", -1))

    results.update(
        floor_p50=statistics.median(floor),
        warm_p50=statistics.median(warm),
        warm_p99=percentile(warm, 0.99),
        cold_p50=statistics.median(cold),
        cold_p99=percentile(cold, 0.99),
        csms_p50=statistics.median(csms_get),
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        api, api_url, csms, csms_url = start_emulators(tmp, PROJECT, AK, SK)
        provider, socket = start_provider(tmp, csms_url, PROJECT, AK, SK)
        try:
            r = asyncio.run(measure(Path(socket), csms_url, api_url, args.samples))
            memory = rss_mib(provider.pid)
        finally:
            for process in (provider, csms, api):
                process.terminate()
                process.wait(timeout=10)

    ms = 1e3
    print(f"floor: gRPC Version over the socket   p50 {r['floor_p50'] * ms:7.3f} ms")
    print(
        f"warm Mount (pinned, from memory)     p50 {r['warm_p50'] * ms:7.3f} ms  "
        f"p99 {r['warm_p99'] * ms:7.3f} ms  ({r['warm_p50'] / r['floor_p50']:.1f}x floor)"
    )
    print(
        f"cold Mount (pinned, read from CSMS)  p50 {r['cold_p50'] * ms:7.3f} ms  "
        f"p99 {r['cold_p99'] * ms:7.3f} ms"
    )
    print(
        f"raw CSMS GET (our client)            p50 {r['csms_p50'] * ms:7.3f} ms  "
        f"(cold Mount overhead {(r['cold_p50'] - r['csms_p50']) * ms:.3f} ms, "
        f"{r['cold_p50'] / r['csms_p50']:.2f}x)"
    )
    print(
        f"100 concurrent latest Mounts         {r['burst_csms_calls']:.0f} CSMS call(s) "
        f"(uncached: 100) in {r['burst_s'] * ms:.1f} ms"
    )
    print(f"provider RSS after the run           {memory:.1f} MiB")


if __name__ == "__main__":
    main()
