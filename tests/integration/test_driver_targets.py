# ruff: noqa: F811  (the stack fixtures of test_driver.py are imported, then named as arguments)
"""What the driver may touch on the node, over its real gRPC socket: target paths outside the
kubelet root, symlinked targets, a plain directory full of files; secrets written only into the
driver's own mount; every failure a status code with a message (INTERNAL, never UNKNOWN); the
provider response limit (--max-call-recv-msg-size); Controller RPCs answered without a traceback;
atomic writes off the event loop.

Each attack is carried out for real (a symlink planted, a directory populated) and the files
are checked byte for byte afterwards. Same stack as test_driver.py; with
DEW_CSI_TEST_MOUNTER=tmpfs (tests/privileged runs this module that way, as root in a private
mount namespace) the driver mounts real tmpfs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dew_csi import kube
from dew_csi._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from dew_csi.cli import build_parser
from dew_csi.driver import app as driver_app
from dew_csi.driver.atomic_writer import AtomicWriter
from dew_csi.driver.mounter import DirMounter, MountFailed, TmpfsMounter, is_mount_point
from dew_csi.driver.volumes import PublishError
from tests.integration.test_driver import (
    MOUNTER,
    PINNED_ALIAS,
    SECRET_1_V1,
    PodVolume,
    Stack,
    api,  # noqa: F401  (fixtures)
    create_pod,
    csms,  # noqa: F401
    spc_test,
    stack,  # noqa: F401
    visible,
)

# What a node's own files look like: text, every byte value, a nested file, an empty one.
NODE_FILES = {
    "nginx.conf": b"worker_processes 1;\n",
    "blob.bin": bytes(range(256)) * 4,
    "conf.d/default.conf": b"server { listen 80; }\n",
    "empty": b"",
}


def populate(directory: Path) -> None:
    for name, contents in NODE_FILES.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(contents)


def files_in(directory: Path) -> dict[str, bytes]:
    """Every regular file below `directory` (no symlink followed), by relative path."""
    found: dict[str, bytes] = {}
    for base, dirs, names in os.walk(directory):
        for name in names:
            path = Path(base) / name
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(directory))] = path.read_bytes()
        dirs[:] = [d for d in dirs if not (Path(base) / d).is_symlink()]
    return found


def unpublish_request(target: Path | str) -> csi_pb2.NodeUnpublishVolumeRequest:
    return csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-v", target_path=str(target))


def with_target(pod: PodVolume, target: Path | str) -> csi_pb2.NodePublishVolumeRequest:
    request = csi_pb2.NodePublishVolumeRequest()
    request.CopyFrom(pod.request)
    request.target_path = str(target)
    return request


async def refused(call: object, code: grpc.StatusCode) -> str:
    """Await a CSI call that must fail with `code`; its message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    assert details  # a message a user can act on
    return details


@pytest.fixture
def node_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory of the node's own files, outside the kubelet root (the stack's tmp_path)."""
    directory = tmp_path.parent / f"{tmp_path.name}-node-etc"
    directory.mkdir()
    populate(directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- item 3: attacks


async def test_a_symlinked_target_is_refused_and_its_destination_untouched(
    stack: Stack, node_dir: Path
) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    pod.target.symlink_to(node_dir)  # the target is a symlink to the node's files

    details = await refused(
        stack.node.NodePublishVolume(pod.request), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "symbolic link" in details
    assert not is_mount_point(node_dir)  # nothing mounted over the destination
    details = await refused(
        stack.node.NodeUnpublishVolume(unpublish_request(pod.target)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "symbolic link" in details
    assert files_in(node_dir) == NODE_FILES
    assert os.readlink(pod.target) == str(node_dir)


async def test_a_symlink_above_the_target_is_refused(stack: Stack, node_dir: Path) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    volume_dir = pod.target.parent
    volume_dir.rmdir()
    volume_dir.symlink_to(node_dir)  # .../kubernetes.io~csi/<name> -> the node's files
    (node_dir / "mount").mkdir()
    (node_dir / "mount" / "keep").write_bytes(b"kept")

    details = await refused(
        stack.node.NodePublishVolume(pod.request), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert f"{volume_dir} is a symbolic link" in details
    await refused(
        stack.node.NodeUnpublishVolume(unpublish_request(pod.target)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert files_in(node_dir) == {**NODE_FILES, "mount/keep": b"kept"}
    assert not is_mount_point(node_dir / "mount")


async def test_a_populated_plain_directory_is_never_emptied(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    populate(pod.target)  # a real directory full of files, nothing mounted on it

    details = await refused(
        stack.node.NodeUnpublishVolume(unpublish_request(pod.target)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "holding files that dew-csi did not mount" in details
    assert files_in(pod.target) == NODE_FILES
    # Kubelet retries: still refused, still intact.
    await refused(
        stack.node.NodeUnpublishVolume(unpublish_request(pod.target)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    details = await refused(
        stack.node.NodePublishVolume(pod.request), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "holding files that dew-csi did not mount" in details
    assert files_in(pod.target) == NODE_FILES
    assert not is_mount_point(pod.target)


async def test_a_target_outside_the_kubelet_root_is_refused(stack: Stack, node_dir: Path) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    # The same layout, under another root: populated, as a host directory would be.
    outside = node_dir / "pods" / pod.uid / "volumes" / "kubernetes.io~csi" / "v" / "mount"
    populate(outside)
    expected = files_in(node_dir)
    escaping = f"{pod.target.parent}/../../../../../{node_dir.name}"
    for target in (str(outside), escaping, str(node_dir), "relative/mount"):
        details = await refused(
            stack.node.NodePublishVolume(with_target(pod, target)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert f"--kubelet-root is {stack.root}" in details
        await refused(
            stack.node.NodeUnpublishVolume(unpublish_request(target)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    assert files_in(node_dir) == expected
    assert not is_mount_point(outside)


async def test_a_normal_volume_still_publishes_and_unpublishes(stack: Stack) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    assert visible(pod.target) == {"secret_test": SECRET_1_V1.encode()}
    await stack.node.NodeUnpublishVolume(unpublish_request(pod.target))
    assert not pod.target.exists()
    assert pod.target.parent.is_dir()  # kubelet's directory is kubelet's to remove
    # An empty directory at the target (kubelet's leftovers) is removed too.
    pod.target.mkdir()
    await stack.node.NodeUnpublishVolume(unpublish_request(pod.target))
    assert not pod.target.exists()


# --------------------------------------------------------------------------- item 5: own mount


def lose_the_mount(target: Path) -> None:
    """What an admin's umount (or a lost marker) leaves: a plain directory on the node's disk."""
    if MOUNTER == "tmpfs":
        subprocess.run(["umount", str(target)], check=True)
    else:
        (target / "..dew-csi-mounted").unlink()


def bind_mount(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def process_inside(directory: Path) -> subprocess.Popen[bytes]:
    """A process whose working directory is in `directory`, which keeps its mount busy."""
    return subprocess.Popen(["sleep", "30"], cwd=directory)


async def test_a_remount_never_writes_secrets_outside_the_drivers_mount(stack: Stack) -> None:
    stack.driver.reconciler.interval = 3600  # this test remounts by hand
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    lose_the_mount(pod.target)
    before = files_in(pod.target)

    with pytest.raises(PublishError) as caught:
        await stack.driver.volumes.remount(pod.target, trigger="test")
    assert caught.value.code == "FAILED_PRECONDITION"
    assert "not a tmpfs mounted by the driver" in caught.value.message
    assert files_in(pod.target) == before  # nothing written to the disk
    if MOUNTER == "tmpfs":
        assert before == {}  # the secrets left with the tmpfs and did not come back on disk


async def test_publish_over_a_foreign_mount_writes_nothing(stack: Stack) -> None:
    """A mount the driver did not make at the target (here: DirMounter's marker planted in a
    plain directory, or for tmpfs a bind mount of an ordinary directory) gets no secrets."""
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    pod.target.mkdir()
    if MOUNTER == "tmpfs":
        disk = pod.target.parent / "disk"
        disk.mkdir()
        bind_mount(disk, pod.target)
        assert not TmpfsMounter().owns(pod.target)
    else:
        pod.target.joinpath("..dew-csi-mounted").mkdir()  # not a regular file: not ours
        assert not DirMounter().owns(pod.target)
    await refused(stack.node.NodePublishVolume(pod.request), grpc.StatusCode.FAILED_PRECONDITION)
    assert not (pod.target / "secret_test").exists()
    assert not (pod.target / "..data").exists()


# --------------------------------------------------------------------------- MountFailed codes


async def test_a_failing_unmount_is_internal_with_the_commands_message(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    await stack.node.NodePublishVolume(pod.request)
    if MOUNTER == "tmpfs":
        # A process with its working directory in the volume: umount really fails (busy).
        holder = process_inside(pod.target)
        expected = "busy"
    else:
        holder = None
        expected = "exited with status 32: target is busy"

        async def busy(self: DirMounter, target: Path) -> None:
            raise MountFailed(f"`umount {target}` exited with status 32: target is busy")

        monkeypatch.setattr(DirMounter, "unmount", busy)
    try:
        details = await refused(
            stack.node.NodeUnpublishVolume(unpublish_request(pod.target)),
            grpc.StatusCode.INTERNAL,
        )
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert expected in details
    assert str(pod.target) in details
    monkeypatch.undo()
    await stack.node.NodeUnpublishVolume(unpublish_request(pod.target))  # kubelet's retry
    assert not pod.target.exists()


async def test_a_failing_mount_is_internal_with_the_commands_message(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)

    async def failing(self: object, target: Path) -> None:
        raise MountFailed(f"`mount -t tmpfs tmpfs {target}` exited with status 32: no luck")

    monkeypatch.setattr(DirMounter, "mount", failing)
    monkeypatch.setattr(TmpfsMounter, "mount", failing)
    details = await refused(stack.node.NodePublishVolume(pod.request), grpc.StatusCode.INTERNAL)
    assert "mounting failed" in details
    assert "no luck" in details


# --------------------------------------------------------------------------- item 11: limits


async def restart_with(stack: Stack, **changes: object) -> csi_pb2_grpc.NodeStub:
    config = dataclasses.replace(stack.driver.config, **changes)  # type: ignore[arg-type]
    await stack.driver.stop()
    stack.driver = driver_app.Driver(config)
    await stack.driver.start()
    await stack.driver.wait_ready()
    await stack.channel.close()
    stack.channel = grpc.aio.insecure_channel(f"unix://{stack.driver.socket}")
    return csi_pb2_grpc.NodeStub(stack.channel)


async def test_a_provider_response_over_the_limit_is_resource_exhausted(stack: Stack) -> None:
    stack.csms.emulator.set_secret_versions("secret_1", ["x" * 4096])
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    node = await restart_with(stack, max_call_recv_msg_size=2048)

    details = await refused(node.NodePublishVolume(pod.request), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "larger than 2048 bytes" in details
    assert "--max-call-recv-msg-size" in details
    assert not pod.target.exists() or not os.listdir(pod.target)

    node = await restart_with(stack, max_call_recv_msg_size=64 * 1024)
    await node.NodePublishVolume(pod.request)
    assert visible(pod.target) == {"secret_test": b"x" * 4096}


def test_the_driver_flags_configure_the_limit_and_the_kubelet_root(tmp_path: Path) -> None:
    argv = ["driver", "--node-id", "n", "--kubelet-root", f"{tmp_path}/", "--sandbox"]
    config = driver_app.config_from_args(
        build_parser().parse_args([*argv, "--max-call-recv-msg-size", "1024"])
    )
    assert config.max_call_recv_msg_size == 1024
    assert config.kubelet_root == tmp_path
    assert config.endpoint == f"unix://{tmp_path}/plugins/csi-secrets-store/csi.sock"
    for bad in ("0", "-1"):
        with pytest.raises(ValueError, match="--max-call-recv-msg-size"):
            driver_app.config_from_args(
                build_parser().parse_args([*argv, "--max-call-recv-msg-size", bad])
            )
    for bad_root in ("relative/kubelet", ""):
        with pytest.raises(ValueError, match="--kubelet-root must be an absolute path"):
            driver_app.config_from_args(
                build_parser().parse_args(["driver", "--node-id", "n", "--kubelet-root", bad_root])
            )


def test_the_driver_refuses_to_start_without_its_kubelet_root(tmp_path: Path) -> None:
    missing = tmp_path / "mnt" / "paas" / "kubernetes" / "kubelet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dew_csi.cli",
            "driver",
            "--node-id",
            "node-1",
            "--kubelet-root",
            str(missing),
            "--endpoint",
            f"unix://{tmp_path}/csi.sock",
            "--kubeconfig",
            str(tmp_path / "kubeconfig"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"kubelet root {missing} does not exist" in lines[0]
    assert "--kubelet-root" in lines[0]
    assert not (tmp_path / "csi.sock").exists()


async def test_unimplemented_rpcs_answer_without_a_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    controller_calls = [
        stack.controller.CreateVolume(csi_pb2.CreateVolumeRequest()),
        stack.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest()),
        stack.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest()),
        stack.controller.ListVolumes(csi_pb2.ListVolumesRequest()),
        stack.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest()),
        stack.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest()),
        stack.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest()),
    ]
    for call in controller_calls:
        details = await refused(call, grpc.StatusCode.UNIMPLEMENTED)
        assert "is not implemented by secrets-store.csi.k8s.io" in details
    capabilities = await stack.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest()
    )
    assert len(capabilities.capabilities) == 1
    assert "Traceback" not in caplog.text
    assert "NotImplementedError" not in caplog.text
    assert not [record for record in caplog.records if record.exc_info]


async def test_atomic_writes_run_off_the_event_loop(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a write (and its fsyncs) is in progress, the driver keeps answering."""
    await stack.kube.create(kube.SECRET_PROVIDER_CLASS, spc_test(PINNED_ALIAS))
    pod = await create_pod(stack)
    started, release = threading.Event(), threading.Event()
    writers: list[tuple[int, bool]] = []
    original = AtomicWriter.write

    def slow_write(self: AtomicWriter, payload: object) -> bool:
        started.set()
        # On the event loop this would block the loop, so the Probe below could not run and
        # release it: then the wait times out and records False.
        writers.append((threading.get_ident(), release.wait(3)))
        return original(self, payload)  # type: ignore[arg-type]

    monkeypatch.setattr(AtomicWriter, "write", slow_write)
    loop_thread = threading.get_ident()
    publish = asyncio.ensure_future(stack.node.NodePublishVolume(pod.request))
    await asyncio.to_thread(started.wait, 5)
    probe = await asyncio.wait_for(stack.identity.Probe(csi_pb2.ProbeRequest()), 5)
    assert probe.ready.value
    release.set()
    await publish
    [(writer_thread, released)] = writers
    assert released, "the write blocked the event loop: Probe could not answer meanwhile"
    assert writer_thread != loop_thread
    assert visible(pod.target) == {"secret_test": SECRET_1_V1.encode()}
