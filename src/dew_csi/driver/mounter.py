"""Mounting the per-volume filesystem the driver writes secrets into, and reading mount state.

Two mounters share the `Mounter` protocol:

- `TmpfsMounter` (production, needs root): `mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs
  <target>` and `umount <target>`, run as argv lists with util-linux, as upstream's mount-utils
  does. Secrets therefore live in memory only and vanish with the mount.
- `DirMounter` (no root, for the sandbox and tests): "mounting" creates the directory and a
  marker file `..dew-csi-mounted` inside it. Names starting with `..` are reserved for the atomic
  writer and refused in payloads, so the marker cannot collide with a secret file.

Only what the driver mounted is ever emptied or removed (DESIGN 2.3). A target must be
`<kubelet-root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount` with no symlink below the
kubelet root (`check_target_path`); secrets are written only where `Mounter.owns` says the driver's
own mount is (a tmpfs at exactly that path, or the DirMounter's marked directory); unpublish
unmounts and then removes the mount point only if it is an empty directory. A plain directory
holding files, a symlink or a file at the target is refused (`TargetRefused`) and left as it is:
upstream's unpublish empties whatever is at the target, which deletes real files when the target
is not a mount or is a symlink to somewhere else.

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
# CCE's kubelet root (the guide's SPCPS targetPath and csi.sock address show it); upstream
# Kubernetes uses /var/lib/kubelet. deploy/config.env kubelet_root_dir sets it on a cluster.
DEFAULT_KUBELET_ROOT: Final = Path("/mnt/paas/kubernetes/kubelet")
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


class TargetRefused(Exception):
    """The driver will not publish to or unpublish this target; nothing was changed.

    `code` is the gRPC status name: INVALID_ARGUMENT for a path kubelet would never send
    (relative, outside the kubelet root, `..`), FAILED_PRECONDITION for what is on the disk
    (a symlink, a file, a directory holding files that the driver did not mount), which someone
    must fix before a retry can succeed.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MountFailed(Exception):
    """A mount or unmount failed; the message carries the command and its stderr."""

    def __init__(
        self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode


class Mounter(Protocol):
    """What the node servicer needs from a mounter. `mount` and `unmount` are idempotent.

    `is_mounted`: anything is mounted at the target (ours or not). `owns`: the driver's own
    mount is there, the only place secrets may be written; synchronous, so it can run in the
    writer's thread right before the write.
    """

    async def mount(self, target: Path) -> None: ...

    async def unmount(self, target: Path) -> None: ...

    def is_mounted(self, target: Path) -> bool: ...

    def owns(self, target: Path) -> bool: ...


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
# Target paths

# The layout below the kubelet root of an inline CSI volume's target (kubelet's getTargetPath).
TARGET_LAYOUT: Final = "pods/<pod uid>/volumes/kubernetes.io~csi/<volume name>/mount"


def _refuse_layout(target: str, root: str, why: str) -> TargetRefused:
    return TargetRefused(
        "INVALID_ARGUMENT",
        f"target path {target!r} {why}: the driver publishes only to "
        f"{root.rstrip('/')}/{TARGET_LAYOUT} (its --kubelet-root is {root})",
    )


def check_target_path(target: str, kubelet_root: str | os.PathLike[str]) -> Path:
    """`target` as a Path when it is a volume mount path kubelet would send; else TargetRefused.

    Rules: absolute, no NUL, no `.`/`..`/empty components, exactly `<kubelet_root>/pods/<uid>/
    volumes/kubernetes.io~csi/<name>/mount`, and no component below the kubelet root is a
    symlink (those that exist are lstat'ed; none is followed). The kubelet root itself may be
    reached through symlinks: it is configuration, not something a pod can influence.
    """
    root = os.fspath(kubelet_root)
    if "\0" in target:
        raise _refuse_layout(target, root, "contains a NUL character")
    if not target.startswith("/"):
        raise _refuse_layout(target, root, "is not absolute")
    if any(part in (".", "..") for part in target.split("/")):
        raise _refuse_layout(target, root, "has a '.' or '..' component")
    prefix = root.rstrip("/") + "/"
    if not target.startswith(prefix):
        raise _refuse_layout(target, root, "is outside the kubelet root")
    parts = target[len(prefix) :].split("/")
    if (
        len(parts) != 6
        or parts[0] != "pods"
        or parts[2] != "volumes"
        or parts[3] != "kubernetes.io~csi"
        or parts[5] != "mount"
        or not parts[1]
        or not parts[4]
    ):
        raise _refuse_layout(target, root, "does not have the layout of a CSI volume's target")
    path = prefix.rstrip("/")
    for depth, part in enumerate(parts, start=1):
        path = f"{path}/{part}"
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            break  # nothing below a missing directory exists either
        except OSError as exc:
            if depth == len(parts) and _is_corrupt(exc):
                break  # a corrupt mount at the target itself: publish and unpublish handle it
            raise TargetRefused("INTERNAL", f"cannot inspect {path}: {exc.strerror}") from exc
        if stat.S_ISLNK(mode):
            raise TargetRefused(
                "FAILED_PRECONDITION",
                f"{path} is a symbolic link: the driver follows no symlink below the kubelet root "
                f"{root}, so it neither mounts on nor removes {target}; kubelet never creates "
                "one there, so remove it",
            )
    return Path(target)


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

    def owns(self, target: Path) -> bool:
        """True when the filesystem seen at `target` is a tmpfs of its own mounted exactly there.

        The visible mount is the one whose device is the target's (stacked mounts share a mount
        point). It must be a whole tmpfs (root `/`) seen nowhere else: a bind mount of a shared
        tmpfs such as /dev/shm or /run (or of a directory in one) shows its device at its
        original mount point too, and emptying it would delete the node's files. `target` must
        be a directory, not a symlink. Anything else, or an unreadable mountinfo, is False: then
        no secret is written (rather than one that might land on the node's disk) and nothing
        is emptied.
        """
        try:
            status = os.lstat(target)
            mounts = read_mountinfo(self._mountinfo_path)
        except (OSError, ValueError):
            return False
        if not stat.S_ISDIR(status.st_mode):
            return False
        point = _normalise_mount_point(target)
        device = f"{os.major(status.st_dev)}:{os.minor(status.st_dev)}"
        same_device = [m for m in mounts if m.device == device]
        return bool(same_device) and all(
            m.mount_point == point and m.fs_type == "tmpfs" and m.root == "/" for m in same_device
        )


class DirMounter:
    """A mounter for running without root: a plain directory plus a marker file.

    `mount` creates the directory (0750) and the marker `..dew-csi-mounted` in it; it refuses a
    symlink and a directory that already holds anything (it never empties one). `is_mounted` and
    `owns` are true while the directory holds that marker, so it cannot claim a directory that was
    removed and re-created; `unmount` of a marked directory removes the contents (they vanish
    with a tmpfs too) and then the marker, and leaves an unmarked one alone. Secrets are on disk,
    not in memory: for development and tests only.
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

    def owns(self, target: Path) -> bool:
        try:
            is_directory = stat.S_ISDIR(os.lstat(target).st_mode)
        except OSError:
            return False
        return is_directory and self.is_mounted(target)

    @staticmethod
    def _mount(target: str) -> None:
        try:
            if os.path.islink(target):
                raise MountFailed(f"cannot mount directory {target}: it is a symbolic link")
            if not os.path.isdir(target):
                os.makedirs(target, mode=MOUNT_POINT_MODE, exist_ok=True)
                os.chmod(target, MOUNT_POINT_MODE)
            if os.listdir(target):
                # A tmpfs mounted here would hide these files; a directory cannot, and emptying
                # it would delete files the driver never wrote.
                raise MountFailed(
                    f"cannot mount directory {target}: it is not empty and was not mounted by "
                    "dew-csi"
                )
            fd = os.open(
                os.path.join(target, DIR_MOUNT_MARKER),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            os.close(fd)
        except (OSError, WriteError) as exc:
            raise MountFailed(f"cannot mount directory {target}: {exc}") from exc

    def _unmount(self, target: str) -> None:
        if not self.owns(Path(target)):
            return  # not our marked directory: nothing of ours to remove
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

    A missing target is created (0750, whatever the umask) in its volume directory, which kubelet
    creates before it calls NodePublishVolume: a missing volume directory means the driver does
    not see the kubelet's pods directory (wrong --kubelet-root, or the directory is not mounted
    into the driver's container), and mounting there would fill a directory no pod sees. A mount
    whose filesystem is gone (listing fails with ENOTCONN, ESTALE or EIO) is unmounted and
    reported as not mounted, so the caller mounts afresh. A symlink, a file, or a directory
    holding files that nothing is mounted on is refused (`TargetRefused`), never emptied.
    """
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        try:
            parent_mode = os.lstat(target.parent).st_mode
        except OSError:
            parent_mode = 0
        if not stat.S_ISDIR(parent_mode):
            raise TargetRefused(
                "FAILED_PRECONDITION",
                f"the volume directory {target.parent} does not exist for the driver: kubelet "
                "creates it before NodePublishVolume, so the driver's --kubelet-root, or the "
                "kubelet pods directory mounted into its container, is not the kubelet's",
            ) from None
        try:
            os.mkdir(target, MOUNT_POINT_MODE)  # never follows a symlink planted meanwhile
        except FileExistsError:
            raise TargetRefused(
                "FAILED_PRECONDITION", f"{target} appeared while the driver was creating it"
            ) from None
        os.chmod(target, MOUNT_POINT_MODE)
        return False
    except OSError as exc:
        if not _is_corrupt(exc):
            raise
        await _unmount_corrupt(target, mounter, exc)
        return False
    if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
        raise _not_ours(target, mode, "publish to")
    if not mounter.is_mounted(target):
        if await asyncio.to_thread(os.listdir, target):
            raise _not_ours(target, mode, "mount over")
        return False
    try:
        await asyncio.to_thread(os.listdir, target)
    except OSError as exc:
        if not _is_corrupt(exc):
            raise
        await _unmount_corrupt(target, mounter, exc)
        return False
    return True


def _not_ours(target: Path, mode: int, action: str) -> TargetRefused:
    if stat.S_ISLNK(mode):
        what = "is a symbolic link"
    elif not stat.S_ISDIR(mode):
        what = "is not a directory"
    else:
        what = "is a directory holding files that dew-csi did not mount"
    return TargetRefused(
        "FAILED_PRECONDITION",
        f"{target} {what}; the driver does not {action} it and leaves it as it is "
        "(it only ever removes a mount of its own or an empty directory)",
    )


async def _unmount_corrupt(target: Path, mounter: Mounter, cause: OSError) -> None:
    log.warning(
        "Unmounting corrupt mount point",
        extra=fields(target=os.fspath(target), error=os.strerror(cause.errno or 0)),
    )
    await mounter.unmount(target)


async def cleanup_mount_point(target: Path, mounter: Mounter) -> None:
    """Unpublish `target`: unmount it (stacked mounts too) and remove the empty mount point.

    Only the driver's own mount is emptied (`mounter.owns`: its files are removed first, so no
    secret outlives a failing unmount, as upstream does); another filesystem mounted there is
    unmounted, which deletes nothing. The mount point is then removed with rmdir, which removes
    only an empty directory: a directory still holding files, a symlink or a file is refused
    with `TargetRefused` and left untouched. A target that does not exist is fine (unpublish is
    idempotent); a corrupt mount is unmounted without being listed.
    """
    try:
        mode = os.lstat(target).st_mode
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
        if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
            raise _not_ours(target, mode, "unpublish")
        if mounter.owns(target):
            try:
                # The DirMounter's marker goes with its unmount, last.
                await asyncio.to_thread(remove_all, target, keep={DIR_MOUNT_MARKER})
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
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _not_ours(target, stat.S_IFDIR, "unpublish") from None
        raise MountFailed(f"cannot remove mount point {target}: {exc}") from exc


if TYPE_CHECKING:  # both mounters satisfy the protocol (checked by mypy, free at run time)
    _TMPFS_MOUNTER: Mounter = TmpfsMounter()
    _DIR_MOUNTER: Mounter = DirMounter()
