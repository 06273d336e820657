"""The driver's flows on real tmpfs: tests/integration/test_driver.py and test_driver_targets.py,
run again as root inside a private mount namespace with the `tmpfs` mounter, so every publish
really mounts a tmpfs and every unpublish really unmounts it, while the host's mount table never
changes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dew_csi.driver.mounter import read_mountinfo

pytestmark = pytest.mark.privileged

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER_FLOWS = REPO_ROOT / "tests" / "integration" / "test_driver.py"
TARGET_ATTACKS = REPO_ROOT / "tests" / "integration" / "test_driver_targets.py"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root and unshare: not running as root"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs root and unshare: util-linux unshare/mount not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"needs root and unshare: unshare failed here ({probe.stderr.strip()})"
    return None


def _host_mounts_under(base: Path) -> list[str]:
    """The host's mounts below `base`: what a driver escaping its private namespace would add.
    (Other work on the machine may mount elsewhere meanwhile.)"""
    return [
        entry.mount_point
        for entry in read_mountinfo()
        if entry.mount_point.startswith(f"{base}/") or entry.mount_point == str(base)
    ]


def _run_on_real_tmpfs(module: Path) -> str:
    """Run a driver test module as root in a private mount namespace with the tmpfs mounter;
    its output. No mount of its may be left in the host's mount table."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    # Short: unix socket paths under it must stay within the kernel's 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="dew-tmpfs-"))
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(base / "t"),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "DEW_CSI_TEST_MOUNTER": "tmpfs"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    leaked = _host_mounts_under(base)  # before removing base: never empty a leaked mount
    if not leaked:
        shutil.rmtree(base, ignore_errors=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert " skipped" not in output, output[-2000:]
    assert not leaked, leaked  # nothing leaked out of the private namespace
    return output


def _passed(output: str) -> int:
    summary = re.search(r"(\d+) passed", output)
    assert summary, output[-2000:]
    return int(summary.group(1))


def test_driver_flows_on_real_tmpfs() -> None:
    assert _passed(_run_on_real_tmpfs(DRIVER_FLOWS)) >= 15


def test_target_attacks_on_real_tmpfs() -> None:
    """Symlinked targets, a populated directory, a path outside the kubelet root, a lost or
    foreign mount, a busy umount: on real tmpfs, with real `mount --bind` and `umount`."""
    assert _passed(_run_on_real_tmpfs(TARGET_ATTACKS)) >= 14
