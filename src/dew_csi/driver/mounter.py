"""Mounting the per-volume filesystem the driver writes secrets into, and reading mount state.

Two mounters share the `Mounter` protocol:

- `TmpfsMounter` (production, needs root): `mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs
  <target>` and `umount <target>`, run as argv lists with util-linux, as upstream's mount-utils
  does. Secrets therefore live in memory only and vanish with the mount.
- `DirMounter` (no root, for the sandbox and tests): "mounting" creates the directory and a
  marker file `..dew-csi-mounted` inside it. Names starting with `..` are reserved for the atomic
  writer and refused in payloads, so the marker cannot collide with a secret file; the upstream
  unpublish step "remove every child of the target" removes it, which is exactly an unmount.

Mount state comes from `/proc/self/mountinfo`, compared exactly after decoding the kernel's octal
escapes; `os.path.ismount` is the fallback when mountinfo cannot be read. mountinfo also sees a
corrupt mount (a dead FUSE daemon, a stale NFS handle) that `os.path.ismount` reports as not
mounted because it cannot stat it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shlex
import signal
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from dew_csi.driver.atomic_writer import WriteError, remove_all
from dew_csi.logs import fields

log = logging.getLogger(__name__)

MOUNTINFO_PATH: Final = "/proc/self/mountinfo"
# Upstream's ensureMountPoint creates a missing target with this mode (kubelet >= 1.20 does not).
MOUNT_POINT_MODE: Final = 0o750
# The tmpfs root. Without `mode=` a tmpfs root is 1777: any user on the node could plant files
# in a pod's secret volume. 0755 matches the generation directories the atomic writer makes;
# file modes still decide who reads what.
TMPFS_ROOT_MODE: Final = 0o755
# Errors that mean "mounted, but the filesystem behind it is gone" (upstream IsCorruptedMnt).
CORRUPT_MOUNT_ERRNOS: Final = frozenset({errno.ENOTCONN, errno.ESTALE, errno.EIO})
DIR_MOUNT_MARKER: Final = "..dew-csi-mounted"

_OCTAL_ESCAPE: Final = re.compile(rb"\\([0-7]{3})")
# tmpfs size: bytes, k/m/g suffixed, or a percentage of RAM. Strict, so it cannot smuggle in
# further comma-separated mount options.
_TMPFS_SIZE: Final = re.compile(r"[1-9][0-9]*[kKmMgG%]?")
_COMMAND_TIMEOUT_SECONDS: Final = 30.0
_MAX_STACKED_MOUNTS: Final = 8


class MountFailed(Exception):
    """A mount or unmount failed; the message carries the command and its stderr."""

    def __init__(
        self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode


class Mounter(Protocol):
    """What the node servicer needs from a mounter. `mount` and `unmount` are idempotent."""

    async def mount(self, target: Path) -> None: ...

    async def unmount(self, target: Path) -> None: ...

    def is_mounted(self, target: Path) -> bool: ...


# ---------------------------------------------------------------------------------------------
# /proc/self/mountinfo


@dataclass(frozen=True)
class MountInfo:
    """One line of mountinfo (proc(5)); paths decoded, options split on commas."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    optional_fields: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]


def decode_mountinfo_field(field: bytes) -> str:
    r"""Undo the kernel's escaping of space, tab, newline and backslash (`\040` -> " ")."""
    decoded = _OCTAL_ESCAPE.sub(lambda match: bytes([int(match[1], 8)]), field)
    return os.fsdecode(decoded)


def parse_mountinfo(text: str | bytes) -> list[MountInfo]:
    """Parse mountinfo text; `ValueError` names the first malformed line."""
    data = text if isinstance(text, bytes) else os.fsencode(text)
    entries: list[MountInfo] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        # Single spaces separate fields; the kernel escapes spaces inside them, and the source
        # may be an empty string, so split(" ") rather than split().
        columns = line.split(b" ")
        try:
            separator = columns.index(b"-", 6)
            if len(columns) != separator + 4:
                raise ValueError("expected fs type, source and options after '-'")
            entries.append(
                MountInfo(
                    mount_id=int(columns[0]),
                    parent_id=int(columns[1]),
                    device=columns[2].decode(),
                    root=decode_mountinfo_field(columns[3]),
                    mount_point=decode_mountinfo_field(columns[4]),
                    mount_options=tuple(decode_mountinfo_field(columns[5]).split(",")),
                    optional_fields=tuple(
                        decode_mountinfo_field(column) for column in columns[6:separator]
                    ),
                    fs_type=decode_mountinfo_field(columns[separator + 1]),
                    source=decode_mountinfo_field(columns[separator + 2]),
                    super_options=tuple(decode_mountinfo_field(columns[separator + 3]).split(",")),
                )
            )
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed mountinfo line {number}: {exc}") from None
    return entries


def read_mountinfo(path: str = MOUNTINFO_PATH) -> list[MountInfo]:
    with open(path, "rb") as source:
        return parse_mountinfo(source.read())


def _normalise_mount_point(path: str | os.PathLike[str]) -> str:
    # The kernel reports mount points with symlinks resolved; realpath does not raise on a
    # corrupt mount (it only lstat()s, and ignores the error when not strict).
    return os.path.realpath(os.fspath(path))


def find_mounts(
    path: str | os.PathLike[str], *, mountinfo_path: str = MOUNTINFO_PATH
) -> list[MountInfo]:
    """The mounts whose mount point is exactly `path` (several when stacked), oldest first."""
    wanted = _normalise_mount_point(path)
    return [entry for entry in read_mountinfo(mountinfo_path) if entry.mount_point == wanted]


def is_mount_point(path: str | os.PathLike[str], *, mountinfo_path: str = MOUNTINFO_PATH) -> bool:
    """True when something is mounted exactly at `path`, per mountinfo (ismount as fallback)."""
    try:
        return bool(find_mounts(path, mountinfo_path=mountinfo_path))
    except (OSError, ValueError) as exc:
        log.warning(
            "Cannot read mountinfo, falling back to os.path.ismount",
            extra=fields(mountinfo=mountinfo_path, error=str(exc)),
        )
        return os.path.ismount(path)


# ---------------------------------------------------------------------------------------------
# Mounters


async def _run(argv: Sequence[str], *, timeout: float) -> None:
    """Run a command without a shell; `MountFailed` carries its exit status and stderr."""
    command = shlex.join(argv)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so a timeout also kills helpers it started (they would
            # otherwise hold the pipes open and keep us waiting).
            start_new_session=True,
        )
    except OSError as exc:
        raise MountFailed(f"cannot run `{command}`: {exc}", argv=argv) from exc
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException as exc:  # timed out or cancelled: do not leave the command running
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        if isinstance(exc, TimeoutError):
            raise MountFailed(
                f"`{command}` did not finish within {timeout:g}s", argv=argv
            ) from None
        raise
    if process.returncode != 0:
        output = (stderr or stdout).decode(errors="replace").strip() or "no output"
        raise MountFailed(
            f"`{command}` exited with status {process.returncode}: {output}",
            argv=argv,
            returncode=process.returncode,
        )


class TmpfsMounter:
    """Mounts a fresh tmpfs per volume (needs root, or CAP_SYS_ADMIN in the mount namespace).

    Options: upstream passes none. We pass `nosuid,nodev` (no secret is a device or a setuid
    program, and the writer refuses such modes anyway) and `mode=0755` (see TMPFS_ROOT_MODE).
    `size` (for example "8m") is off by default, as upstream: the data is bounded by the
    provider's gRPC message limit, and a limit must leave room for two generations at once,
    the old and the new, while a write swaps them.
    """

    def __init__(
        self,
        *,
        size: str | None = None,
        mount_command: str = "mount",
        umount_command: str = "umount",
        timeout: float = _COMMAND_TIMEOUT_SECONDS,
        mountinfo_path: str = MOUNTINFO_PATH,
    ) -> None:
        if size is not None and not _TMPFS_SIZE.fullmatch(size):
            raise ValueError(
                f"tmpfs size {size!r} is not a positive number with an optional k, m, g or % suffix"
            )
        self._size = size
        self._mount_command = mount_command
        self._umount_command = umount_command
        self._timeout = timeout
        self._mountinfo_path = mountinfo_path

    @property
    def options(self) -> str:
        options = ["nosuid", "nodev", f"mode={TMPFS_ROOT_MODE:04o}"]
        if self._size is not None:
            options.append(f"size={self._size}")
        return ",".join(options)

    def mount_argv(self, target: Path) -> list[str]:
        return [self._mount_command, "-t", "tmpfs", "-o", self.options, "tmpfs", os.fspath(target)]

    def umount_argv(self, target: Path) -> list[str]:
        return [self._umount_command, os.fspath(target)]

    async def mount(self, target: Path) -> None:
        if self.is_mounted(target):
            return  # never stack a second tmpfs over one holding files
        await _run(self.mount_argv(target), timeout=self._timeout)
        log.info("Mounted tmpfs", extra=fields(target=os.fspath(target), options=self.options))

    async def unmount(self, target: Path) -> None:
        if not self.is_mounted(target):
            return
        await _run(self.umount_argv(target), timeout=self._timeout)
        log.info("Unmounted", extra=fields(target=os.fspath(target)))

    def is_mounted(self, target: Path) -> bool:
        return is_mount_point(target, mountinfo_path=self._mountinfo_path)


class DirMounter:
    """A mounter for running without root: a plain directory plus a marker file.

    `mount` creates the directory (0750), empties it (a new tmpfs starts empty) and creates the
    marker `..dew-csi-mounted`; `is_mounted` is true while the directory holds that marker, so it
    cannot claim a directory that was removed and re-created; `unmount` removes the contents
    (they vanish with a tmpfs too) and then the marker. Secrets are on disk, not in memory:
    for development and tests only.
    """

    async def mount(self, target: Path) -> None:
        if self.is_mounted(target):
            return
        await asyncio.to_thread(self._mount, os.fspath(target))

    async def unmount(self, target: Path) -> None:
        await asyncio.to_thread(self._unmount, os.fspath(target))

    def is_mounted(self, target: Path) -> bool:
        try:
            return stat.S_ISREG(os.lstat(os.path.join(target, DIR_MOUNT_MARKER)).st_mode)
        except OSError:
            return False

    @staticmethod
    def _mount(target: str) -> None:
        try:
            if not os.path.isdir(target):
                os.makedirs(target, mode=MOUNT_POINT_MODE, exist_ok=True)
                os.chmod(target, MOUNT_POINT_MODE)
            remove_all(target)
            fd = os.open(
                os.path.join(target, DIR_MOUNT_MARKER),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            os.close(fd)
        except (OSError, WriteError) as exc:
            raise MountFailed(f"cannot mount directory {target}: {exc}") from exc

    @staticmethod
    def _unmount(target: str) -> None:
        try:
            # Contents first and the marker last, so a failure leaves it "mounted".
            remove_all(target, keep={DIR_MOUNT_MARKER})
            os.unlink(os.path.join(target, DIR_MOUNT_MARKER))
        except FileNotFoundError:
            pass
        except (OSError, WriteError) as exc:
            raise MountFailed(f"cannot unmount directory {target}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Publish / unpublish helpers (upstream ensureMountPoint and CleanupMountPoint)


def _is_corrupt(exc: OSError) -> bool:
    return exc.errno in CORRUPT_MOUNT_ERRNOS


async def ensure_mount_point(target: Path, mounter: Mounter) -> bool:
    """Prepare `target` for publishing; True when a healthy mount is already there.

    A missing target is created (0750, whatever the umask). A mount whose filesystem is gone
    (listing fails with ENOTCONN, ESTALE or EIO) is unmounted and reported as not mounted, so
    the caller mounts afresh.
    """
    try:
        os.lstat(target)
    except FileNotFoundError:
        os.makedirs(target, mode=MOUNT_POINT_MODE, exist_ok=True)
        os.chmod(target, MOUNT_POINT_MODE)
        return False
    except OSError as exc:
        if not _is_corrupt(exc):
            raise
        await _unmount_corrupt(target, mounter, exc)
        return False
    if not mounter.is_mounted(target):
        return False
    try:
        await asyncio.to_thread(os.listdir, target)
    except OSError as exc:
        if not _is_corrupt(exc):
            raise
        await _unmount_corrupt(target, mounter, exc)
        return False
    return True


async def _unmount_corrupt(target: Path, mounter: Mounter, cause: OSError) -> None:
    log.warning(
        "Unmounting corrupt mount point",
        extra=fields(target=os.fspath(target), error=os.strerror(cause.errno or 0)),
    )
    await mounter.unmount(target)


async def cleanup_mount_point(target: Path, mounter: Mounter) -> None:
    """Unpublish `target`: remove its contents, unmount it (stacked mounts too), remove it.

    A target that does not exist is fine (unpublish is idempotent). Failing to remove contents
    is logged, not fatal, as upstream: the unmount drops a tmpfs's contents anyway, and the
    final rmdir reports whatever is left.
    """
    try:
        os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        if not _is_corrupt(exc):
            raise
        log.warning(
            "Mount point is corrupt, unmounting without removing its contents",
            extra=fields(target=os.fspath(target), error=os.strerror(exc.errno or 0)),
        )
    else:
        try:
            await asyncio.to_thread(remove_all, target)
        except WriteError as exc:
            log.warning(
                "Cannot remove every file of the volume",
                extra=fields(target=os.fspath(target), error=str(exc)),
            )
    for _ in range(_MAX_STACKED_MOUNTS):
        if not mounter.is_mounted(target):
            break
        await mounter.unmount(target)
    else:
        if mounter.is_mounted(target):
            raise MountFailed(f"{target} is still mounted after {_MAX_STACKED_MOUNTS} unmounts")
    try:
        os.rmdir(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise MountFailed(f"cannot remove mount point {target}: {exc}") from exc


if TYPE_CHECKING:  # both mounters satisfy the protocol (checked by mypy, free at run time)
    _TMPFS_MOUNTER: Mounter = TmpfsMounter()
    _DIR_MOUNTER: Mounter = DirMounter()
