"""Kubernetes API emulator: watch-event delivery latency and request throughput.

Runs the emulator as its own process (`dew-csi sandbox apiserver`), once in memory and once with
`--state`, and prints, per configuration:
  - the floor: a trivial `GET /version` round trip on the same keep-alive connection;
  - write throughput (creates/s, sequential and with 16 concurrent clients) and ratio to the floor;
  - watch delivery latency: from sending a write to the watcher receiving its event (p50/p99),
    and its ratio to the floor.

Usage: .venv/bin/python benchmarks/apiserver.py [--writes 500] [--events 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from harness import percentile

SECRETS = "/api/v1/namespaces/default/secrets"


def start_emulator(state: Path | None) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "dew_csi.cli", "sandbox", "apiserver", "--listen", "127.0.0.1:0"]
    if state is not None:
        argv += ["--state", str(state)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return process, match.group(1)


async def timed(count: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - start)
    return samples


def secret(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {}}


async def measure(url: str, writes: int, events: int, label: str) -> None:
    slug = "mem" if "memory" in label else "state"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await http.get("/version")
        floor = await timed(writes, lambda i: http.get("/version"))
        floor_p50 = statistics.median(floor)

        sequential = await timed(
            writes, lambda i: http.post(SECRETS, json=secret(f"{slug}-seq-{i}"))
        )
        seq_rate = writes / sum(sequential)

        async def worker(w: int, per_worker: int) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as own:
                for i in range(per_worker):
                    await own.post(SECRETS, json=secret(f"{slug}-par-{w}-{i}"))

        workers = 16
        per_worker = max(1, writes // workers)
        start = time.perf_counter()
        await asyncio.gather(*(worker(w, per_worker) for w in range(workers)))
        par_rate = workers * per_worker / (time.perf_counter() - start)

        latencies = await watch_latency(url, http, events, slug)

    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    print(f"\n[{label}]")
    print(f"  floor GET /version           p50 {floor_p50 * 1e3:7.3f} ms")
    print(
        f"  create, sequential           {seq_rate:8.0f} req/s  "
        f"(p50 {statistics.median(sequential) * 1e3:.3f} ms, "
        f"{statistics.median(sequential) / floor_p50:.1f}x floor)"
    )
    print(f"  create, {workers} clients          {par_rate:8.0f} req/s")
    print(
        f"  watch delivery (write->event) p50 {p50 * 1e3:7.3f} ms  p99 {p99 * 1e3:7.3f} ms  "
        f"({p50 / floor_p50:.1f}x floor)"
    )


async def watch_latency(url: str, http: httpx.AsyncClient, events: int, label: str) -> list[float]:
    """Write one object at a time and time until the watcher sees its ADDED event."""
    listing = (await http.get(SECRETS, params={"limit": "1"})).json()
    version = listing["metadata"]["resourceVersion"]
    received: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def watcher() -> None:
        async with (
            httpx.AsyncClient(base_url=url, timeout=None) as own,
            own.stream(
                "GET", SECRETS, params={"watch": "true", "resourceVersion": version}
            ) as stream,
        ):
            async for line in stream.aiter_lines():
                if line:
                    name = json.loads(line)["object"]["metadata"]["name"]
                    received.put_nowait((name, time.perf_counter()))

    task = asyncio.create_task(watcher())
    await asyncio.sleep(0.2)
    latencies = []
    for i in range(events):
        name = f"{label}-watch-{i}"
        sent = time.perf_counter()
        await http.post(SECRETS, json=secret(name))
        while True:
            got, at = await asyncio.wait_for(received.get(), 10)
            if got == name:
                latencies.append(at - sent)
                break
    task.cancel()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for label, state in (("in memory", None), ("with --state", Path(tmp) / "state.json")):
            process, url = start_emulator(state)
            try:
                asyncio.run(measure(url, args.writes, args.events, label))
            finally:
                process.terminate()
                process.wait(timeout=10)


if __name__ == "__main__":
    main()
