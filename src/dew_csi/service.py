"""What every long-running dew-csi component does the same way: serve Prometheus metrics, run
until SIGTERM or SIGINT, and say in one line what keeps it from starting."""

from __future__ import annotations

import asyncio
import signal

from prometheus_client import CollectorRegistry, start_http_server


class StartupError(Exception):
    """The component cannot start as configured (its socket, its metrics address): the message
    names the setting; exit 2."""


def os_reason(error: Exception) -> str:
    """An OSError as a user reads it: "Address already in use (path)", no errno number."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    return str(error)


def start_metrics(address: str, registry: CollectorRegistry) -> None:
    """`serve_metrics`, with a failure to listen as a StartupError naming --metrics-addr."""
    try:
        serve_metrics(address, registry)
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on --metrics-addr {address}: {os_reason(error)}"
        ) from None


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
