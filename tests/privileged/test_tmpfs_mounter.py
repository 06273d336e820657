"""Real tmpfs mounts, run inside a private mount namespace so the host never sees them.

Each test re-runs this file as a script under `unshare --mount --propagation private`; the script
(the `__main__` block at the bottom) refuses to mount anything unless its mount namespace differs
from the test's, then plays one scenario and prints `<scenario>: ok`. The namespace, and every
mount in it, goes away when the script exits, whatever happened. The test checks the exit status
and output, and that the host's mount table is the same before and after.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dew_csi.driver.atomic_writer import (
    AtomicWriter,
    FileProjection,
    WriteError,
    read_current,
)
from dew_csi.driver.mounter import (
    MountFailed,
    TargetRefused,
    TmpfsMounter,
    cleanup_mount_point,
    ensure_mount_point,
    find_mounts,
    is_mount_point,
    read_mountinfo,
)

pytestmark = pytest.mark.privileged

SKIP_EXIT_STATUS = 77
REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# The outer tests (run by pytest on the host)


def _why_namespace_tests_cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root and unshare: not running as root"
    for tool in ("unshare", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"needs root and unshare: `{tool}` is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"needs root and unshare: `unshare --mount` failed: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def namespace_tests_available() -> None:
    reason = _why_namespace_tests_cannot_run()
    if reason:
        pytest.skip(reason)


def host_mounts() -> set[tuple[int, str, str]]:
    return {(entry.mount_id, entry.mount_point, entry.fs_type) for entry in read_mountinfo()}


def own_mount_namespace() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


def run_in_private_namespace(scenario: str, workdir: Path) -> str:
    """Run one scenario in a fresh mount namespace; its stdout, or skip/fail the test."""
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            __file__,
            scenario,
            str(workdir),
            str(own_mount_namespace()),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO_ROOT,
        check=False,
    )
    # Other work on the machine (a real cluster, image builds) may mount and unmount meanwhile:
    # what must hold is that nothing of this scenario's is mounted outside its namespace.
    leaked = {m for m in host_mounts() if m[1].startswith(str(workdir))}
    assert not leaked, f"host mount table gained: {leaked}"
    if result.returncode == SKIP_EXIT_STATUS:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert f"{scenario}: ok" in result.stdout, result.stdout
    return result.stdout


@pytest.mark.usefixtures("namespace_tests_available")
def test_tmpfs_publish_write_unpublish(tmp_path: Path) -> None:
    output = run_in_private_namespace("lifecycle", tmp_path)
    assert "mounted tmpfs" in output
    # The directories are on the host's filesystem: unpublish removed the target for real.
    volume = tmp_path / "pods/uid/volumes/kubernetes.io~csi/secrets store"
    assert volume.is_dir()
    assert not (volume / "mount").exists()


@pytest.mark.usefixtures("namespace_tests_available")
def test_tmpfs_size_limit_keeps_the_previous_generation(tmp_path: Path) -> None:
    run_in_private_namespace("size-limit", tmp_path)


@pytest.mark.usefixtures("namespace_tests_available")
def test_corrupt_mount_is_unmounted(tmp_path: Path) -> None:
    output = run_in_private_namespace("corrupt", tmp_path)
    assert "ismount blind" in output  # the case mountinfo exists for really happened


@pytest.mark.usefixtures("namespace_tests_available")
def test_stacked_mounts_are_all_unmounted(tmp_path: Path) -> None:
    run_in_private_namespace("stacked", tmp_path)


@pytest.mark.usefixtures("namespace_tests_available")
def test_mount_failure_reports_mount_stderr(tmp_path: Path) -> None:
    run_in_private_namespace("mount-failure", tmp_path)


@pytest.mark.usefixtures("namespace_tests_available")
def test_only_the_drivers_own_tmpfs_is_emptied_or_written(tmp_path: Path) -> None:
    output = run_in_private_namespace("not-ours", tmp_path)
    for case in ("populated directory", "symlink to a tmpfs", "bind of a shared tmpfs"):
        assert f"{case}: refused, intact" in output
    # On the host's disk, after the namespace is gone: the node's files, byte for byte.
    assert (tmp_path / "node" / "data.bin").read_bytes() == bytes(range(256))
    assert (tmp_path / "node" / "conf" / "app.conf").read_bytes() == b"listen 80\n"


def test_skip_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _why_namespace_tests_cannot_run() == "needs root and unshare: not running as root"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "unshare" else tool)
    assert _why_namespace_tests_cannot_run() == (
        "needs root and unshare: `unshare` is not installed"
    )


def test_inner_script_refuses_to_run_in_the_host_namespace(tmp_path: Path) -> None:
    # The guard that protects the host: the same namespace as the caller means no unshare.
    result = subprocess.run(
        [sys.executable, __file__, "lifecycle", str(tmp_path), str(own_mount_namespace())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not in a private mount namespace" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The inner scenarios (run as a script inside the private namespace)


def run(step: Coroutine[Any, Any, T]) -> T:
    """The mounter API is async; each scenario step runs on its own short event loop."""
    return asyncio.run(step)


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def payload(tag: str, size: int = 16) -> list[FileProjection]:
    return [
        FileProjection("password", 0o600, f"{tag}-password".encode().ljust(size, b".")),
        FileProjection("db/user", 0o644, f"{tag}-user".encode()),
        FileProjection("readonly", 0o400, f"{tag}-ro".encode()),
    ]


def as_dict(files: list[FileProjection]) -> dict[str, FileProjection]:
    return {item.path: item for item in files}


def scenario_lifecycle(workdir: Path) -> None:
    # A space in the path: the real mountinfo escapes it and we must still match exactly.
    target = workdir / "pods/uid/volumes/kubernetes.io~csi/secrets store/mount"
    target.parent.mkdir(parents=True)  # kubelet creates the volume directory
    mounter = TmpfsMounter()

    expect(run(ensure_mount_point(target, mounter)) is False, "fresh target reported mounted")
    expect(mode_of(target) == 0o750, f"mount point mode {mode_of(target):o}")
    run(mounter.mount(target))

    mounts = find_mounts(target)
    expect(len(mounts) == 1, f"expected one mount at {target}, got {mounts}")
    [mount] = mounts
    expect(mount.fs_type == "tmpfs", f"not tmpfs: {mount}")
    expect({"nosuid", "nodev"} <= set(mount.mount_options), f"options: {mount.mount_options}")
    expect("mode=755" in mount.super_options, f"super options: {mount.super_options}")
    expect(mode_of(target) == 0o755, f"tmpfs root mode {mode_of(target):o}")
    expect(os.stat(target).st_dev != os.stat(target.parent).st_dev, "same device as parent")
    expect(mounter.is_mounted(target) and os.path.ismount(target), "not seen as mounted")
    print(f"mounted tmpfs at {target} (mount id {mount.mount_id})")

    run(mounter.mount(target))  # idempotent: no second tmpfs on top
    expect(len(find_mounts(target)) == 1, "mount stacked a second tmpfs")
    expect(run(ensure_mount_point(target, mounter)) is True, "healthy mount not reported")

    writer = AtomicWriter(target)
    expect(writer.write(payload("v1")) is True, "first write reported no change")
    expect(read_current(target) == as_dict(payload("v1")), "v1 not readable")
    for item in payload("v1"):
        visible = target / item.path
        expect(visible.read_bytes() == item.contents, f"{item.path} contents")
        expect(os.stat(visible).st_dev == os.stat(target).st_dev, f"{item.path} not on tmpfs")
        expect(stat.S_IMODE(os.stat(visible).st_mode) == item.mode, f"{item.path} mode")
    expect(writer.write(payload("v1")) is False, "unchanged payload rewritten")
    expect(writer.write(payload("v2")[:2]) is True, "update reported no change")
    expect(read_current(target) == as_dict(payload("v2")[:2]), "v2 not readable")
    expect(not os.path.lexists(target / "readonly"), "removed file still visible")

    run(cleanup_mount_point(target, mounter))
    expect(not find_mounts(target), "still mounted after cleanup")
    expect(not os.path.lexists(target), "target still exists after cleanup")
    run(cleanup_mount_point(target, mounter))  # idempotent


def scenario_size_limit(workdir: Path) -> None:
    target = workdir / "mount"
    mounter = TmpfsMounter(size="160k")
    run(ensure_mount_point(target, mounter))
    run(mounter.mount(target))
    [mount] = find_mounts(target)
    expect("size=160k" in mount.super_options, f"super options: {mount.super_options}")

    writer = AtomicWriter(target)
    first = payload("v1", size=80 * 1024)
    writer.write(first)
    # Old and new generation together need 160 KiB: the real ENOSPC of a full tmpfs.
    try:
        writer.write(payload("v2", size=80 * 1024))
    except WriteError as exc:
        expect("No space left on device" in str(exc), f"unexpected error: {exc}")
        expect(str(target) in str(exc), f"target not named: {exc}")
    else:
        raise AssertionError("an 80 KiB update fitted in a 160 KiB tmpfs holding 80 KiB")
    expect(read_current(target) == as_dict(first), "previous generation damaged")
    expect((target / "password").read_bytes() == first[0].contents, "visible file damaged")
    generations = [name for name in os.listdir(target) if name.startswith("..2")]
    expect(len(generations) == 1, f"failed generation left behind: {generations}")

    smaller = payload("v3", size=40 * 1024)
    expect(writer.write(smaller) is True, "a fitting update was refused")
    expect(read_current(target) == as_dict(smaller), "v3 not readable")
    run(cleanup_mount_point(target, mounter))
    expect(not os.path.lexists(target), "target still exists after cleanup")


def mount_dead_fuse(target: Path) -> None:
    """Mount a FUSE filesystem and drop its connection: every access fails with ENOTCONN."""
    device = os.open("/dev/fuse", os.O_RDWR)
    try:
        subprocess.run(
            [
                "mount",
                # Never the /sbin/mount.fuse helper (fuse3 installs one): it would try to run
                # the source name as a FUSE program.
                "--internal-only",
                "-t",
                "fuse",
                "-o",
                f"fd={device},rootmode=40000,user_id=0,group_id=0",
                "dew-csi-dead",
                str(target),
            ],
            pass_fds=(device,),
            check=True,
            capture_output=True,
        )
    finally:
        os.close(device)  # no daemon answers any more: the connection is aborted


def scenario_corrupt(workdir: Path) -> None:
    filesystems = Path("/proc/filesystems").read_text().split()
    if not Path("/dev/fuse").exists() or "fuse" not in filesystems:
        print("SKIP: a corrupt mount needs /dev/fuse and the fuse filesystem")
        sys.exit(SKIP_EXIT_STATUS)
    target = workdir / "mount"
    target.mkdir()
    mount_dead_fuse(target)
    try:
        os.listdir(target)
    except OSError as exc:
        print(f"listing the dead mount fails: {os.strerror(exc.errno or 0)}")
    else:
        raise AssertionError("the dead FUSE mount is readable")
    expect(is_mount_point(target), "mountinfo does not show the dead mount")
    if not os.path.ismount(target):
        print("ismount blind: os.path.ismount misses the dead mount, mountinfo sees it")

    mounter = TmpfsMounter()
    expect(run(ensure_mount_point(target, mounter)) is False, "corrupt mount reported healthy")
    expect(not find_mounts(target), "corrupt mount not unmounted")
    run(mounter.mount(target))
    AtomicWriter(target).write(payload("after"))
    expect(read_current(target) == as_dict(payload("after")), "remount not usable")
    run(cleanup_mount_point(target, mounter))
    expect(not os.path.lexists(target), "target still exists after cleanup")

    # Unpublish of a corrupt mount: unmounted and removed without listing it.
    target.mkdir()
    mount_dead_fuse(target)
    run(cleanup_mount_point(target, mounter))
    expect(not find_mounts(target), "corrupt mount left after cleanup")
    expect(not os.path.lexists(target), "corrupt target still exists after cleanup")


def scenario_stacked(workdir: Path) -> None:
    target = workdir / "mount"
    target.mkdir()
    for _ in range(3):  # as a crash and retries could leave them
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    AtomicWriter(target).write(payload("top"))
    expect(len(find_mounts(target)) == 3, f"expected 3 stacked mounts: {find_mounts(target)}")
    run(cleanup_mount_point(target, TmpfsMounter()))
    expect(not find_mounts(target), "a stacked mount survived cleanup")
    expect(not os.path.lexists(target), "target still exists after cleanup")


def scenario_mount_failure(workdir: Path) -> None:
    missing = workdir / "no such dir"
    try:
        run(TmpfsMounter().mount(missing))
    except MountFailed as exc:
        message = str(exc)
        print(f"mount failed as expected: {message}")
        expect("exited with status" in message, message)
        expect(exc.returncode not in (None, 0), f"returncode {exc.returncode}")
        expect("no output" not in message, "mount's stderr missing from the error")
        expect(str(missing) in message, "target not named")
    else:
        raise AssertionError("mounting on a missing directory succeeded")


NODE_FILES = {"data.bin": bytes(range(256)), "conf/app.conf": b"listen 80\n"}


def write_node_files(directory: Path) -> None:
    for name, contents in NODE_FILES.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(contents)


def node_files_intact(directory: Path) -> bool:
    return all((directory / name).read_bytes() == data for name, data in NODE_FILES.items())


def expect_refused(step: Coroutine[Any, Any, object], what: str) -> None:
    try:
        run(step)
    except TargetRefused as refused:
        expect(refused.code == "FAILED_PRECONDITION", f"{what}: code {refused.code}")
    else:
        raise AssertionError(f"{what}: not refused")


def scenario_not_ours(workdir: Path) -> None:
    mounter = TmpfsMounter()
    volume = workdir / "pods/uid/volumes/kubernetes.io~csi"

    # 1. A plain directory holding the node's files (on the host's disk: the outer test reads
    #    them back after this namespace is gone).
    node = workdir / "node"
    write_node_files(node)
    populated = volume / "populated/mount"
    populated.parent.mkdir(parents=True)
    populated.symlink_to(node)
    expect_refused(cleanup_mount_point(populated, mounter), "symlink to a disk directory")
    populated.unlink()
    write_node_files(populated)
    expect(not mounter.owns(populated), "a plain directory is owned")
    expect_refused(ensure_mount_point(populated, mounter), "publish over a populated directory")
    expect_refused(cleanup_mount_point(populated, mounter), "unpublish of a populated directory")
    expect(node_files_intact(populated) and not find_mounts(populated), "populated dir changed")
    print("populated directory: refused, intact")

    # 2. A symlink at the target to a real tmpfs holding files.
    shared = workdir / "shm"
    shared.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(shared)], check=True)
    write_node_files(shared)
    linked = volume / "linked/mount"
    linked.parent.mkdir(parents=True)
    linked.symlink_to(shared)
    expect(not mounter.owns(linked), "a symlink to a tmpfs is owned")
    expect_refused(ensure_mount_point(linked, mounter), "publish to a symlink")
    expect_refused(cleanup_mount_point(linked, mounter), "unpublish of a symlink")
    expect(node_files_intact(shared) and find_mounts(shared), "the symlink's tmpfs changed")
    print("symlink to a tmpfs: refused, intact")

    # 3. A bind mount of that shared tmpfs (as /dev/shm could be) at a target: tmpfs, but not
    #    the driver's; unpublish unmounts the bind and empties nothing.
    for name, source in (("whole", shared), ("part", shared / "conf")):
        bound = volume / f"bound-{name}/mount"
        bound.mkdir(parents=True)
        subprocess.run(["mount", "--bind", str(source), str(bound)], check=True)
        expect(not mounter.owns(bound), f"a bind of a shared tmpfs ({name}) is owned")
        run(cleanup_mount_point(bound, mounter))
        expect(not find_mounts(bound) and not bound.exists(), f"bind ({name}) not unpublished")
    expect(node_files_intact(shared), "the shared tmpfs lost files")
    print("bind of a shared tmpfs: refused, intact")

    # 4. The driver's own tmpfs is owned while mounted, and not once it is gone.
    own = volume / "own/mount"
    own.parent.mkdir(parents=True)
    run(ensure_mount_point(own, mounter))
    run(mounter.mount(own))
    expect(mounter.owns(own), "the driver's own tmpfs is not owned")
    subprocess.run(["umount", str(own)], check=True)
    expect(not mounter.owns(own), "an unmounted target is still owned")
    run(cleanup_mount_point(own, mounter))
    expect(not own.exists(), "the empty mount point was not removed")


SCENARIOS: dict[str, Callable[[Path], None]] = {
    "lifecycle": scenario_lifecycle,
    "size-limit": scenario_size_limit,
    "corrupt": scenario_corrupt,
    "stacked": scenario_stacked,
    "mount-failure": scenario_mount_failure,
    "not-ours": scenario_not_ours,
}


def main(argv: list[str]) -> int:
    scenario, workdir, caller_namespace = argv
    if own_mount_namespace() == int(caller_namespace):
        print("refusing to mount: not in a private mount namespace", file=sys.stderr)
        return 2
    SCENARIOS[scenario](Path(workdir))
    print(f"{scenario}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
