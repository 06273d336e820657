"""Mounters without root: mountinfo parsing, the dir mounter, tmpfs commands, publish helpers,
target path checks, and what unpublish may remove (only the driver's own mount)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from dew_csi.driver import mounter as mounter_module
from dew_csi.driver.atomic_writer import (
    AtomicWriter,
    FileProjection,
    PayloadError,
    WriteError,
    run_off_loop,
)
from dew_csi.driver.mounter import (
    DIR_MOUNT_MARKER,
    DirMounter,
    MountFailed,
    MountInfo,
    TargetRefused,
    TmpfsMounter,
    check_target_path,
    cleanup_mount_point,
    decode_mountinfo_field,
    ensure_mount_point,
    find_mounts,
    is_mount_point,
    parse_mountinfo,
    read_mountinfo,
)

SAMPLE_MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    "63 22 0:39 / /var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/my\\040vol/mount "
    "rw,nosuid,nodev,relatime shared:5 master:2 - tmpfs tmpfs rw,size=8192k,mode=755\n"
    "64 22 0:40 / /mnt/tab\\011and\\012newline\\134back rw - tmpfs  rw\n"
    "65 22 8:17 /exported\\040dir /srv/bind rw,noatime - ext4 /dev/sdb1 rw\n"
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---------------------------------------------------------------------------------------------
# mountinfo


def test_parse_mountinfo_fields() -> None:
    root, volume, escaped, bind = parse_mountinfo(SAMPLE_MOUNTINFO)

    assert root == MountInfo(
        mount_id=22,
        parent_id=1,
        device="8:1",
        root="/",
        mount_point="/",
        mount_options=("rw", "relatime"),
        optional_fields=("shared:1",),
        fs_type="ext4",
        source="/dev/sda1",
        super_options=("rw", "errors=remount-ro"),
    )
    assert volume.mount_point == "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/my vol/mount"
    assert volume.optional_fields == ("shared:5", "master:2")
    assert volume.mount_options == ("rw", "nosuid", "nodev", "relatime")
    assert volume.super_options == ("rw", "size=8192k", "mode=755")
    assert escaped.mount_point == "/mnt/tab\tand\nnewline\\back"
    assert escaped.optional_fields == ()
    assert escaped.source == ""  # an empty source survives (split on single spaces)
    assert bind.root == "/exported dir"
    assert bind.mount_point == "/srv/bind"


def test_parse_mountinfo_accepts_bytes_and_undecodable_names() -> None:
    [entry] = parse_mountinfo(b"70 22 0:50 / /mnt/\xff\\040x rw - tmpfs tmpfs rw\n")
    assert entry.mount_point == os.fsdecode(b"/mnt/\xff x")


def test_decode_mountinfo_field_only_decodes_three_digit_octal_escapes() -> None:
    assert decode_mountinfo_field(rb"a\040b\134c") == "a b\\c"
    assert decode_mountinfo_field(rb"a\04b") == r"a\04b"
    assert decode_mountinfo_field(rb"\134040") == "\\040"  # decoded once, not twice


@pytest.mark.parametrize(
    "line",
    [
        "22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw",  # no separator
        "22 1 8:1 / / rw - ext4 /dev/sda1",  # too few fields after the separator
        "x 1 8:1 / / rw - ext4 /dev/sda1 rw",  # mount id not a number
        "22 1 8:1 /",  # truncated
    ],
)
def test_parse_mountinfo_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(ValueError, match="malformed mountinfo line 2"):
        parse_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + line + "\n")


def test_real_mountinfo_parses_and_root_is_a_mount_point(tmp_path: Path) -> None:
    entries = read_mountinfo()
    assert any(entry.mount_point == "/" for entry in entries)
    assert is_mount_point("/")
    assert not is_mount_point(tmp_path)


@pytest.fixture
def fake_mountinfo(tmp_path: Path) -> tuple[Path, Path]:
    """A mountinfo file claiming tmpfs is mounted (twice) at `<tmp>/my vol` and nowhere else."""
    volume = Path(os.path.realpath(tmp_path)) / "my vol"
    volume.mkdir()
    escaped = str(volume).replace("\\", "\\134").replace(" ", "\\040")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        SAMPLE_MOUNTINFO
        + f"80 22 0:60 / {escaped} rw - tmpfs tmpfs rw,mode=755\n"
        + f"81 80 0:61 / {escaped} rw - tmpfs tmpfs rw,mode=755\n"
    )
    return volume, mountinfo


def test_is_mount_point_compares_decoded_paths_exactly(fake_mountinfo: tuple[Path, Path]) -> None:
    volume, mountinfo = fake_mountinfo
    assert is_mount_point(volume, mountinfo_path=str(mountinfo))
    assert is_mount_point(str(volume) + "/", mountinfo_path=str(mountinfo))
    assert not is_mount_point(volume.parent / "my", mountinfo_path=str(mountinfo))
    assert not is_mount_point(volume / "sub", mountinfo_path=str(mountinfo))
    assert not is_mount_point(volume.parent, mountinfo_path=str(mountinfo))
    assert [entry.mount_id for entry in find_mounts(volume, mountinfo_path=str(mountinfo))] == [
        80,
        81,
    ]


def test_is_mount_point_resolves_symlinks_like_the_kernel(
    fake_mountinfo: tuple[Path, Path],
) -> None:
    volume, mountinfo = fake_mountinfo
    alias = volume.parent / "alias"
    alias.symlink_to(volume)
    assert is_mount_point(alias, mountinfo_path=str(mountinfo))


def test_is_mount_point_falls_back_to_ismount(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "no-mountinfo")
    assert is_mount_point("/", mountinfo_path=missing)
    assert not is_mount_point(tmp_path, mountinfo_path=missing)
    assert "falling back to os.path.ismount" in caplog.text

    garbage = tmp_path / "garbage"
    garbage.write_text("not mountinfo\n")
    assert is_mount_point("/", mountinfo_path=str(garbage))


# ---------------------------------------------------------------------------------------------
# TmpfsMounter, without root: the command lines and error handling


def test_tmpfs_mount_options_are_the_recorded_decision() -> None:
    # Upstream passes no options (root 1777, no size limit). We pass nosuid,nodev and mode=0755
    # so no other user of the node can write into a pod's secret volume; size stays opt-in.
    target = Path("/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/v/mount")
    assert TmpfsMounter().mount_argv(target) == [
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "nosuid,nodev,mode=0755",
        "tmpfs",
        str(target),
    ]
    assert TmpfsMounter().umount_argv(target) == ["umount", str(target)]
    assert TmpfsMounter(size="8m").options == "nosuid,nodev,mode=0755,size=8m"
    assert TmpfsMounter(size="50%").options.endswith(",size=50%")


@pytest.mark.parametrize("size", ["", "0", "-1", "8m,exec", "8 m", "8t", "m", "08m"])
def test_tmpfs_size_is_validated(size: str) -> None:
    with pytest.raises(ValueError, match="tmpfs size"):
        TmpfsMounter(size=size)


def fake_command(tmp_path: Path, name: str, body: str) -> Path:
    """An executable that records its argv, one argument per line, then runs `body`."""
    script = tmp_path / name
    script.write_text(
        f'#!/bin/sh\nfor arg in "$@"; do printf \'%s\\n\' "$arg"; done > {tmp_path}/{name}.argv\n'
        + body
        + "\n"
    )
    script.chmod(0o755)
    return script


async def test_tmpfs_mount_failure_carries_the_command_and_stderr(tmp_path: Path) -> None:
    command = fake_command(tmp_path, "mount", "echo 'mount: only root can do that' >&2; exit 32")
    target = tmp_path / "odd name; rm -rf x"
    target.mkdir()

    with pytest.raises(MountFailed) as caught:
        await TmpfsMounter(mount_command=str(command)).mount(target)

    assert "only root can do that" in str(caught.value)
    assert "exited with status 32" in str(caught.value)
    assert caught.value.returncode == 32
    # One argv element per argument, passed literally (no shell).
    assert (tmp_path / "mount.argv").read_text().splitlines() == [
        "-t",
        "tmpfs",
        "-o",
        "nosuid,nodev,mode=0755",
        "tmpfs",
        str(target),
    ]
    assert caught.value.argv[-1] == str(target)


async def test_tmpfs_missing_binary_and_timeout_are_mount_failures(tmp_path: Path) -> None:
    with pytest.raises(MountFailed, match="cannot run"):
        await TmpfsMounter(mount_command=str(tmp_path / "no-such-mount")).mount(tmp_path)
    # A helper the command started is killed too (the whole process group goes).
    slow = fake_command(
        tmp_path, "slow", f"sleep 30 >/dev/null 2>&1 & echo $! > {tmp_path}/helper.pid; wait"
    )
    with pytest.raises(MountFailed, match=r"did not finish within 0\.2s"):
        await TmpfsMounter(mount_command=str(slow), timeout=0.2).mount(tmp_path)
    assert _gone_within(int((tmp_path / "helper.pid").read_text()), seconds=5)


def _gone_within(pid: int, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _is_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_tmpfs_mount_and_unmount_are_idempotent(
    tmp_path: Path, fake_mountinfo: tuple[Path, Path]
) -> None:
    volume, mountinfo = fake_mountinfo
    mount = fake_command(tmp_path, "mount", "exit 0")
    umount = fake_command(tmp_path, "umount", "exit 0")
    mounter = TmpfsMounter(
        mount_command=str(mount), umount_command=str(umount), mountinfo_path=str(mountinfo)
    )
    unmounted = tmp_path / "not-mounted"
    unmounted.mkdir()

    await mounter.mount(volume)  # already mounted: no second tmpfs stacked on top
    await mounter.unmount(unmounted)  # not mounted: nothing to do
    assert not (tmp_path / "mount.argv").exists()
    assert not (tmp_path / "umount.argv").exists()

    await mounter.unmount(volume)
    assert (tmp_path / "umount.argv").read_text().splitlines() == [str(volume)]
    assert mounter.is_mounted(volume)
    assert not mounter.is_mounted(unmounted)


# ---------------------------------------------------------------------------------------------
# DirMounter


async def test_dir_mounter_lifecycle(tmp_path: Path) -> None:
    target = tmp_path / "pods" / "uid" / "mount"
    mounter = DirMounter()
    assert not mounter.is_mounted(target)

    previous = os.umask(0o077)
    try:
        await mounter.mount(target)
    finally:
        os.umask(previous)
    assert mounter.is_mounted(target)
    assert stat.S_ISREG(os.lstat(target / DIR_MOUNT_MARKER).st_mode)
    assert os.listdir(target) == [DIR_MOUNT_MARKER]

    AtomicWriter(target).write([FileProjection("password", 0o600, b"pw")])
    await mounter.mount(target)  # already mounted: contents stay
    assert (target / "password").read_bytes() == b"pw"

    await mounter.unmount(target)
    assert not mounter.is_mounted(target)
    assert target.is_dir()
    assert os.listdir(target) == []  # contents go with the "filesystem", as with tmpfs
    await mounter.unmount(target)  # idempotent
    await mounter.unmount(tmp_path / "never-existed")


async def test_dir_mounter_creates_the_target_with_mode_0750(tmp_path: Path) -> None:
    target = tmp_path / "new"
    previous = os.umask(0o077)
    try:
        await DirMounter().mount(target)
    finally:
        os.umask(previous)
    assert mode_of(target) == 0o750


async def test_dir_mounter_never_empties_a_directory_it_did_not_mount(tmp_path: Path) -> None:
    # It used to empty it "like a fresh tmpfs": a tmpfs hides files, this deleted them.
    target = tmp_path / "mount"
    target.mkdir()
    (target / "leftover").write_bytes(b"from an earlier life\x00\xff")
    mounter = DirMounter()
    with pytest.raises(MountFailed, match="not empty and was not mounted by dew-csi"):
        await mounter.mount(target)
    assert (target / "leftover").read_bytes() == b"from an earlier life\x00\xff"
    assert not mounter.is_mounted(target)
    await mounter.unmount(target)  # not marked: not ours, nothing removed
    assert os.listdir(target) == ["leftover"]


async def test_dir_mounter_refuses_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "mount").symlink_to(elsewhere)
    with pytest.raises(MountFailed, match="symbolic link"):
        await DirMounter().mount(tmp_path / "mount")
    assert os.listdir(elsewhere) == []


async def test_dir_mounter_is_truthful_about_a_recreated_directory(tmp_path: Path) -> None:
    target = tmp_path / "mount"
    mounter = DirMounter()
    await mounter.mount(target)
    shutil.rmtree(target)
    target.mkdir()
    assert not mounter.is_mounted(target)
    (target / DIR_MOUNT_MARKER).mkdir()  # not a regular file: not our marker
    assert not mounter.is_mounted(target)


def test_dir_mounter_marker_cannot_collide_with_a_secret_file(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match=re.escape("must not start with '..'")):
        AtomicWriter(tmp_path).write([FileProjection(DIR_MOUNT_MARKER, 0o644, b"")])


async def test_dir_mounter_failure_is_a_mount_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(MountFailed, match="cannot mount directory"):
        await DirMounter().mount(blocker / "mount")


# ---------------------------------------------------------------------------------------------
# ensure_mount_point and cleanup_mount_point


class FakeMounter:
    """A mounter with stacked "mounts" whose unmount drops the contents, as tmpfs does.

    `foreign`: the mounts are someone else's (say a bind mount of a host directory): `owns` is
    false, and unmounting them deletes nothing."""

    def __init__(self, layers: int = 0, *, stuck: bool = False, foreign: bool = False) -> None:
        self.layers = layers
        self.stuck = stuck
        self.foreign = foreign
        self.unmounts = 0

    async def mount(self, target: Path) -> None:
        self.layers += 1

    async def unmount(self, target: Path) -> None:
        self.unmounts += 1
        if not self.stuck and self.layers:
            self.layers -= 1
            if self.foreign:
                return
            for entry in os.listdir(target):
                path = target / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def is_mounted(self, target: Path) -> bool:
        return self.layers > 0

    def owns(self, target: Path) -> bool:
        return self.layers > 0 and not self.foreign


async def test_ensure_mount_point_creates_a_missing_target(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "mount"
    target.parent.mkdir(parents=True)  # kubelet creates the volume directory
    previous = os.umask(0o077)
    try:
        assert await ensure_mount_point(target, DirMounter()) is False
    finally:
        os.umask(previous)
    assert target.is_dir()
    assert mode_of(target) == 0o750


async def test_ensure_mount_point_reports_existing_mounts(tmp_path: Path) -> None:
    target = tmp_path / "mount"
    mounter = DirMounter()
    target.mkdir()
    assert await ensure_mount_point(target, mounter) is False
    await mounter.mount(target)
    assert await ensure_mount_point(target, mounter) is True


@pytest.mark.parametrize("error", [errno.ENOTCONN, errno.ESTALE, errno.EIO])
@pytest.mark.parametrize("failing_call", ["listdir", "lstat"])
async def test_ensure_mount_point_unmounts_a_corrupt_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, failing_call: str
) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    mounter = FakeMounter(layers=1)
    real = getattr(os, failing_call)

    def corrupt(path: object, *args: object, **kwargs: object) -> object:
        if str(path) == str(target) and mounter.layers:
            raise OSError(error, os.strerror(error), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, failing_call, corrupt)
    assert await ensure_mount_point(target, mounter) is False
    assert mounter.unmounts == 1
    assert not mounter.is_mounted(target)


async def test_ensure_mount_point_raises_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    mounter = FakeMounter(layers=1)

    def denied(path: object) -> list[str]:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(PermissionError):
        await ensure_mount_point(target, mounter)
    assert mounter.unmounts == 0


async def test_cleanup_mount_point_with_the_dir_mounter(tmp_path: Path) -> None:
    target = tmp_path / "pods" / "uid" / "mount"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    mounter = DirMounter()
    await mounter.mount(target)
    AtomicWriter(target).write(
        [FileProjection("a", 0o644, b"1"), FileProjection("n/b", 0o600, b"2")]
    )
    os.symlink(outside, target / "escape")

    await cleanup_mount_point(target, mounter)

    assert not target.exists()
    assert target.parent.is_dir()
    assert (outside / "precious").read_text() == "keep"
    await cleanup_mount_point(target, mounter)  # idempotent
    await cleanup_mount_point(tmp_path / "never-existed", mounter)


async def test_cleanup_mount_point_unmounts_stacked_mounts(tmp_path: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    mounter = FakeMounter(layers=3)
    await cleanup_mount_point(target, mounter)
    assert mounter.unmounts == 3
    assert not target.exists()


async def test_cleanup_mount_point_fails_when_the_mount_stays(tmp_path: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    mounter = FakeMounter(layers=1, stuck=True)
    with pytest.raises(MountFailed, match="still mounted after 8 unmounts"):
        await cleanup_mount_point(target, mounter)
    assert target.is_dir()  # never rmdir a directory something is mounted on


async def test_cleanup_mount_point_logs_removal_errors_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    (target / "stubborn").write_text("x")
    mounter = FakeMounter(layers=1)

    def failing_remove_all(path: object, keep: object = ()) -> None:
        raise WriteError(f"cannot remove 1 of 1 entries in {path}: busy")

    monkeypatch.setattr(mounter_module, "remove_all", failing_remove_all)
    with caplog.at_level(logging.WARNING):
        await cleanup_mount_point(target, mounter)
    assert "Cannot remove every file of the volume" in caplog.text
    assert mounter.unmounts == 1  # the unmount dropped the contents
    assert not target.exists()


async def test_cleanup_mount_point_reports_a_directory_it_cannot_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "mount"
    target.mkdir()

    def busy(path: object) -> None:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))

    monkeypatch.setattr(os, "rmdir", busy)
    with pytest.raises(MountFailed, match="cannot remove mount point"):
        await cleanup_mount_point(target, FakeMounter(layers=0))
    monkeypatch.undo()
    assert target.is_dir()


# ---------------------------------------------------------------------------------------------
# Target paths: only <kubelet-root>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount


def kubelet_target(root: Path, uid: str = "uid-1", name: str = "secrets-store-inline") -> Path:
    return root / "pods" / uid / "volumes" / "kubernetes.io~csi" / name / "mount"


def test_check_target_path_accepts_what_kubelet_sends(tmp_path: Path) -> None:
    target = kubelet_target(tmp_path, name="my vol")
    assert check_target_path(str(target), tmp_path) == target  # nothing exists yet: fine
    target.mkdir(parents=True)
    assert check_target_path(str(target), tmp_path) == target
    assert check_target_path(str(target), str(tmp_path) + "/") == target


@pytest.mark.parametrize(
    ("relative", "why"),
    [
        ("pods/uid/volumes/kubernetes.io~csi/v/mount/", "layout"),  # trailing slash
        ("pods/uid/volumes/kubernetes.io~csi/v", "layout"),
        ("pods/uid/volumes/kubernetes.io~csi/v/mount/x", "layout"),
        ("pods//volumes/kubernetes.io~csi/v/mount", "layout"),  # empty uid
        ("pods/uid/volumes/kubernetes.io~csi//mount", "layout"),  # empty name
        ("pods/uid/volumes/kubernetes.io~empty-dir/v/mount", "layout"),
        ("plugins/uid/volumes/kubernetes.io~csi/v/mount", "layout"),
        ("pods/../volumes/kubernetes.io~csi/v/mount", "'..'"),
        ("pods/uid/volumes/kubernetes.io~csi/../../../../etc/mount", "'..'"),
        ("pods/./volumes/kubernetes.io~csi/v/mount", "'.'"),
        ("pods/u\0id/volumes/kubernetes.io~csi/v/mount", "NUL"),
    ],
)
def test_check_target_path_refuses_paths_kubelet_never_sends(
    tmp_path: Path, relative: str, why: str
) -> None:
    with pytest.raises(TargetRefused, match=re.escape(why)) as caught:
        check_target_path(f"{tmp_path}/{relative}", tmp_path)
    assert caught.value.code == "INVALID_ARGUMENT"


def test_check_target_path_refuses_relative_paths_and_other_roots(tmp_path: Path) -> None:
    relative = "pods/uid/volumes/kubernetes.io~csi/v/mount"
    with pytest.raises(TargetRefused, match="is not absolute"):
        check_target_path(relative, tmp_path)
    other = tmp_path / "other-root"
    with pytest.raises(TargetRefused, match="outside the kubelet root") as caught:
        check_target_path(str(kubelet_target(other)), tmp_path / "root")
    assert caught.value.code == "INVALID_ARGUMENT"
    assert f"--kubelet-root is {tmp_path / 'root'}" in caught.value.message
    # A sibling whose name merely starts with the root's is outside it too.
    with pytest.raises(TargetRefused, match="outside the kubelet root"):
        check_target_path(str(kubelet_target(Path(f"{tmp_path}/root2"))), tmp_path / "root")


@pytest.mark.parametrize("depth", ["pods", "uid", "volumes", "plugin", "name", "mount"])
def test_check_target_path_refuses_a_symlink_below_the_root(tmp_path: Path, depth: str) -> None:
    root = tmp_path / "kubelet"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    components = ["pods", "uid", "volumes", "kubernetes.io~csi", "name", "mount"]
    index = ["pods", "uid", "volumes", "plugin", "name", "mount"].index(depth)
    parent = root.joinpath(*components[:index])
    parent.mkdir(parents=True)
    (parent / components[index]).symlink_to(elsewhere)
    with pytest.raises(TargetRefused, match="is a symbolic link") as caught:
        check_target_path(str(root.joinpath(*components)), root)
    assert caught.value.code == "FAILED_PRECONDITION"


def test_check_target_path_allows_a_symlinked_kubelet_root(tmp_path: Path) -> None:
    real = tmp_path / "data" / "kubelet"
    kubelet_target(real).mkdir(parents=True)
    (tmp_path / "kubelet").symlink_to(real)
    target = kubelet_target(tmp_path / "kubelet")
    assert check_target_path(str(target), tmp_path / "kubelet") == target


# ---------------------------------------------------------------------------------------------
# Publish never mounts over, and unpublish never removes, what the driver did not mount


def populate(directory: Path) -> dict[str, bytes]:
    """Real files in a plain directory, as a node would have them; their bytes, by name."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"app.conf": b"listen 80\n", "data.bin": bytes(range(256)), "sub/nested": b"\x00x"}
    for name, contents in files.items():
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_bytes(contents)
    return files


def contents_of(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in directory.rglob("*")
        if path.is_file()
    }


@pytest.mark.parametrize("mounter", [DirMounter(), FakeMounter()], ids=["dir", "tmpfs-like"])
async def test_publish_refuses_to_mount_over_a_populated_directory(
    tmp_path: Path, mounter: DirMounter | FakeMounter
) -> None:
    target = kubelet_target(tmp_path)
    files = populate(target)
    with pytest.raises(TargetRefused, match="holding files that dew-csi did not mount") as caught:
        await ensure_mount_point(target, mounter)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert contents_of(target) == files


async def test_publish_refuses_a_symlinked_target(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    files = populate(elsewhere)
    target = kubelet_target(tmp_path)
    target.parent.mkdir(parents=True)
    target.symlink_to(elsewhere)
    with pytest.raises(TargetRefused, match="is a symbolic link"):
        await ensure_mount_point(target, DirMounter())
    assert contents_of(elsewhere) == files
    assert target.is_symlink()


async def test_publish_refuses_a_missing_volume_directory(tmp_path: Path) -> None:
    # kubelet creates it: missing, the driver does not see the kubelet's pods directory.
    target = kubelet_target(tmp_path)
    with pytest.raises(TargetRefused, match="--kubelet-root") as caught:
        await ensure_mount_point(target, DirMounter())
    assert caught.value.code == "FAILED_PRECONDITION"
    assert not (tmp_path / "pods").exists()


@pytest.mark.parametrize("mounter", [DirMounter(), FakeMounter()], ids=["dir", "tmpfs-like"])
async def test_unpublish_leaves_a_populated_plain_directory_untouched(
    tmp_path: Path, mounter: DirMounter | FakeMounter
) -> None:
    target = kubelet_target(tmp_path)
    files = populate(target)
    with pytest.raises(TargetRefused, match="holding files that dew-csi did not mount") as caught:
        await cleanup_mount_point(target, mounter)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert contents_of(target) == files


@pytest.mark.parametrize("mounter", [DirMounter(), FakeMounter()], ids=["dir", "tmpfs-like"])
async def test_unpublish_never_follows_a_symlinked_target(
    tmp_path: Path, mounter: DirMounter | FakeMounter
) -> None:
    elsewhere = tmp_path / "etc"
    files = populate(elsewhere)
    target = kubelet_target(tmp_path)
    target.parent.mkdir(parents=True)
    target.symlink_to(elsewhere)
    with pytest.raises(TargetRefused, match="is a symbolic link") as caught:
        await cleanup_mount_point(target, mounter)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert contents_of(elsewhere) == files
    assert target.is_symlink()


async def test_unpublish_refuses_a_file_at_the_target(tmp_path: Path) -> None:
    target = kubelet_target(tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a directory")
    with pytest.raises(TargetRefused, match="is not a directory"):
        await cleanup_mount_point(target, DirMounter())
    assert target.read_bytes() == b"not a directory"


async def test_unpublish_removes_an_empty_directory(tmp_path: Path) -> None:
    target = kubelet_target(tmp_path)
    target.mkdir(parents=True)
    await cleanup_mount_point(target, DirMounter())
    assert not target.exists()
    assert target.parent.is_dir()  # kubelet's directory stays


async def test_unpublish_unmounts_a_foreign_mount_without_emptying_it(tmp_path: Path) -> None:
    target = kubelet_target(tmp_path)
    files = populate(target)
    mounter = FakeMounter(layers=1, foreign=True)  # say a bind mount of a host directory
    with pytest.raises(TargetRefused, match="holding files"):
        await cleanup_mount_point(target, mounter)
    assert mounter.unmounts == 1  # unmounting deletes nothing
    assert contents_of(target) == files


async def test_unpublish_empties_and_unmounts_the_drivers_own_mount(tmp_path: Path) -> None:
    target = kubelet_target(tmp_path)
    target.parent.mkdir(parents=True)
    mounter = DirMounter()
    await mounter.mount(target)
    AtomicWriter(target).write([FileProjection("password", 0o600, b"pw")])
    await cleanup_mount_point(target, mounter)
    assert not target.exists()


# ---------------------------------------------------------------------------------------------
# owns: the only place secrets are written


def test_dir_mounter_owns_only_its_marked_directory(tmp_path: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    mounter = DirMounter()
    assert not mounter.owns(target)
    (target / DIR_MOUNT_MARKER).write_bytes(b"")
    assert mounter.owns(target)
    alias = tmp_path / "alias"
    alias.symlink_to(target)
    assert not mounter.owns(alias)
    assert not mounter.owns(tmp_path / "missing")


def mountinfo_for(
    tmp_path: Path,
    target: Path,
    fs_type: str,
    *,
    device: str | None = None,
    root: str = "/",
    also_at: str | None = None,
) -> str:
    """A mountinfo file with a mount at `target` whose device is the target's own (optionally
    of a subdirectory `root` of its filesystem, and also mounted at `also_at`)."""
    status = os.stat(target)
    device = device or f"{os.major(status.st_dev)}:{os.minor(status.st_dev)}"
    point = os.path.realpath(target).replace(" ", "\\040")
    lines = [f"90 22 {device} {root} {point} rw - {fs_type} x rw"]
    if also_at is not None:
        lines.insert(0, f"89 22 {device} / {also_at} rw - {fs_type} x rw")
    mountinfo = tmp_path / f"mountinfo-{fs_type}-{len(lines)}-{root.strip('/')}"
    mountinfo.write_text(SAMPLE_MOUNTINFO + "\n".join(lines) + "\n")
    return str(mountinfo)


def test_tmpfs_mounter_owns_only_a_tmpfs_mounted_exactly_there(tmp_path: Path) -> None:
    target = tmp_path / "my mount"
    target.mkdir()
    assert TmpfsMounter(mountinfo_path=mountinfo_for(tmp_path, target, "tmpfs")).owns(target)
    # Another filesystem (the node's disk, a bind mount) is not ours.
    assert not TmpfsMounter(mountinfo_path=mountinfo_for(tmp_path, target, "ext4")).owns(target)
    # A tmpfs stacked under another mount is not the one a write would reach.
    hidden = mountinfo_for(tmp_path, target, "tmpfs", device="0:999999")
    assert not TmpfsMounter(mountinfo_path=hidden).owns(target)
    # A bind mount of a shared tmpfs (/dev/shm), or of a directory in one, is not ours.
    shared = mountinfo_for(tmp_path, target, "tmpfs", also_at="/dev/shm")
    assert not TmpfsMounter(mountinfo_path=shared).owns(target)
    subdirectory = mountinfo_for(tmp_path, target, "tmpfs", root="/node-files")
    assert not TmpfsMounter(mountinfo_path=subdirectory).owns(target)
    # Nothing mounted there at all (the real mountinfo): a plain directory on disk.
    assert not TmpfsMounter().owns(target)
    # A symlink to a tmpfs mount point is not a tmpfs mounted at the target.
    alias = tmp_path / "alias"
    alias.symlink_to(target)
    mountinfo = mountinfo_for(tmp_path, target, "tmpfs")
    assert not TmpfsMounter(mountinfo_path=mountinfo).owns(alias)
    assert not TmpfsMounter(mountinfo_path=str(tmp_path / "unreadable")).owns(target)


# ---------------------------------------------------------------------------------------------
# run_off_loop: writes and fsyncs in a worker thread


async def test_run_off_loop_runs_the_work_in_another_thread() -> None:
    loop_thread = threading.get_ident()
    assert await run_off_loop(threading.get_ident) != loop_thread


async def test_a_cancelled_caller_waits_for_the_write_to_finish() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow_write() -> str:
        started.set()
        release.wait(5)
        finished.append("written")
        return "written"

    task = asyncio.ensure_future(run_off_loop(slow_write))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for the write, though cancelled
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["written"]
