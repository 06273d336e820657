"""What every long-running dew-csi component does the same way: serve Prometheus metrics and
run until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import CollectorRegistry, start_http_server


def serve_metrics(address: str, registry: CollectorRegistry) -> None:
    """Serve `registry` on HOST:PORT (`:8095` listens on every address) in a daemon thread."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)


async def until_terminated() -> None:
    """Return once SIGTERM (kubelet stopping the pod) or SIGINT arrives."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
