"""gRPC endpoints on unix sockets: parse the forms CSI tooling uses, clear stale sockets, serve."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import grpc


def socket_path(endpoint: str) -> Path:
    """The absolute socket path of `unix:///abs`, `unix:/abs`, `unix:rel`, `unix://tmp/x` or a path.

    `unix://tmp/csi.sock` is read as `/tmp/csi.sock`, as the upstream driver reads its default.
    """
    if endpoint.startswith("unix://"):
        rest = endpoint[len("unix://") :]
        path = Path("/" + rest.lstrip("/"))
    elif endpoint.startswith("unix:"):
        path = Path(endpoint[len("unix:") :])
    elif "://" in endpoint:
        raise ValueError(f"endpoint {endpoint!r} must be a unix socket (unix:///path/to.sock)")
    else:
        path = Path(endpoint)
    if not path.name:
        raise ValueError(f"endpoint {endpoint!r} names no socket file")
    return path.absolute()


def remove_stale_socket(path: Path) -> None:
    """Remove a socket left by an earlier run; refuse to remove anything that is not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


async def serve_on_socket(server: grpc.aio.Server, path: Path) -> None:
    """Bind `server` to the unix socket `path` (creating its directory) and start it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    # Only the node's root (kubelet, the driver) should reach these sockets.
    with contextlib.suppress(OSError):
        os.chmod(path, 0o660)


def status_details(message: str) -> str:
    """A status message gRPC can always send: user input may hold lone surrogates (valid in
    JSON escapes, not in UTF-8), which would otherwise turn a clear error into UNKNOWN."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")
