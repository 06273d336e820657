"""`dew-csi sandbox up` for real: every component a process, the guide's files applied with the real
kubectl, CSMS seeded with `dew-csi csms`, the pod's files read with `dew-csi sandbox cat`, its
environment with `dew-csi sandbox env`, and `sandbox down` leaving no process and no mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dew_csi.sandbox.cluster import Sandbox, SandboxError
from tests.conftest import EXAMPLES
from tests.e2e.conftest import Kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.kubectl]

SECRET_1 = '{"key1":"db-user-01","key2":"db-user-02"}'
SECRET_2 = "secret-two"


def dew_csi(
    *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dew_csi.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("HUAWEICLOUD_SDK_")},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"dew-csi {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def mount_points(path: Path, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    prefix = str(path.resolve())
    with open(mountinfo) as handle:
        points = [line.split(" ")[4] for line in handle]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def is_running(pid: int) -> bool:
    """Alive and not a zombie (this VM's pid 1 does not reap orphans, so dead children of an
    exited `up` may linger as zombies: they hold nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in command and is_running(int(entry.name)):
                found.append(int(entry.name))
    return found


def wait_for(check: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s")
        time.sleep(0.1)


def running_pod(kubectl: Kubectl, label: str) -> dict[str, Any] | None:
    pods = json.loads(kubectl.run("get", "pod", "-l", label, "-o", "json").stdout)["items"]
    ready = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    return ready[0] if ready else None


# The default is tmpfs in a private mount namespace when running as root, else directories.
@pytest.mark.parametrize("mounter", [None, "dir"], ids=["default-mounter", "dir-mounter"])
def test_guide_in_the_sandbox_then_down_leaves_nothing(
    kubectl_binary: str, tmp_path: Path, mounter: str | None
) -> None:
    directory = tmp_path / "sandbox"
    options = ["--mounter", mounter] if mounter else []
    up = dew_csi(
        "sandbox", "up", "--dir", str(directory), "--rotation-poll-interval", "5s", *options
    )
    try:
        assert up.stdout.rstrip().splitlines()[-1] == f"export KUBECONFIG={directory}/kubeconfig"
        state = json.loads((directory / "sandbox.json").read_text())
        pids = [c["pid"] for c in state["components"].values()]
        assert sorted(state["components"]) == sorted(
            ["apiserver", "csms", "provider", "driver", "kubelet", "controllers", "webhook"]
        )
        assert all(is_running(pid) for pid in pids)
        for secret_file in ("csms.env", "kubeconfig"):
            assert (directory / secret_file).stat().st_mode & 0o077 == 0
        again = dew_csi("sandbox", "up", "--dir", str(directory), check=False)
        assert again.returncode == 1
        assert "already running" in again.stderr

        env_file = str(directory / "csms.env")
        assert dew_csi("csms", "--env-file", env_file, "put", "secret_1", SECRET_1).stdout == "v1\n"
        assert dew_csi("csms", "put", "secret_2", SECRET_2, "--env-file", env_file).stdout == "v1\n"
        assert dew_csi("csms", "--env-file", env_file, "list").stdout == "secret_1\nsecret_2\n"
        check_csms_command(env_file)

        kubectl = Kubectl(kubectl_binary, directory / "kubeconfig", tmp_path / "kubectl")
        (tmp_path / "kubectl").mkdir()
        applied = kubectl.run(
            "apply",
            "-f",
            str(EXAMPLES / "serviceaccount.yaml"),
            "-f",
            str(EXAMPLES / "secretproviderclass.yaml"),
            "-f",
            str(EXAMPLES / "deployment.yaml"),
        ).stdout
        assert "deployment.apps/nginx-spc created" in applied

        pod = wait_for(lambda: running_pod(kubectl, "app=nginx"), what="nginx-spc pod Running")
        name = pod["metadata"]["name"]
        assert name.startswith("nginx-spc-")
        deployments = kubectl.run("get", "deploy", "nginx-spc").stdout
        wait_for(
            lambda: " 1/1 " in kubectl.run("get", "deploy", "nginx-spc").stdout,
            what=f"deployment 1/1 (last: {deployments})",
        )
        listing = dew_csi("sandbox", "cat", "--dir", str(directory), name, "/mnt/secrets-store/")
        assert listing.stdout == "secret_test\n"
        content = dew_csi(
            "sandbox", "cat", "--dir", str(directory), name, "/mnt/secrets-store/secret_test"
        )
        assert content.stdout == SECRET_1
        spcps = kubectl.run("get", "spcps").stdout
        assert f"{name}-default-spc-test" in spcps

        namespace_pid = state["mount_namespace_pid"]
        if mounter == "dir":
            assert namespace_pid is None
            assert state["mounter"] == "dir"
        if namespace_pid is not None:
            # The tmpfs lives in the driver's private namespace, never in the host's table.
            assert mount_points(directory) == []
            assert mount_points(directory, f"/proc/{namespace_pid}/mountinfo")

        # Method 2: secretObjects synced into a Secret, used by env.secretKeyRef.
        kubectl.run(
            "apply",
            "-f",
            str(EXAMPLES / "secretproviderclass-k8s-secrets.yaml"),
            "-f",
            str(EXAMPLES / "deployment-k8s-secrets.yaml"),
        )
        second = wait_for(
            lambda: running_pod(kubectl, "app=nginx-k8s-secrets"), what="second pod Running"
        )
        environment = dew_csi("sandbox", "env", "--dir", str(directory), second["metadata"]["name"])
        assert environment.stdout == "DB_USERNAME_01=db-user-01\nDB_USERNAME_02=db-user-02\n"
    finally:
        down = dew_csi("sandbox", "down", "--dir", str(directory), check=False)

    assert down.returncode == 0, down.stderr
    assert [line.split()[1] for line in down.stdout.splitlines()] == [
        "apiserver",
        "csms",
        "provider",
        "driver",
        "kubelet",
        "controllers",
        "webhook",
    ]
    assert [pid for pid in pids if is_running(pid)] == []
    assert processes_mentioning(str(directory)) == []
    assert mount_points(directory) == []
    assert not (directory / "sandbox.json").exists()
    twice = dew_csi("sandbox", "down", "--dir", str(directory))
    assert twice.stdout == f"no sandbox was running in {directory}\n"


def check_csms_command(env_file: str) -> None:
    """`dew-csi csms` against the sandbox's emulator: versions, exact values, clear errors."""
    assert dew_csi("csms", "--env-file", env_file, "put", "secret_2", "two-v2").stdout == "v2\n"
    versions = dew_csi("csms", "--env-file", env_file, "list", "--versions", "secret_2").stdout
    assert versions == "v1\tSYSPREVIOUS\nv2\tSYSCURRENT\n"
    assert dew_csi("csms", "--env-file", env_file, "get", "secret_2").stdout == "two-v2"
    first = dew_csi("csms", "--env-file", env_file, "get", "secret_2", "--version", "v1")
    assert first.stdout == SECRET_2
    missing = dew_csi("csms", "--env-file", env_file, "get", "nope", check=False)
    assert missing.returncode == 1
    assert "nope" in missing.stderr
    # Wrong secret key: refused, and the message never shows the key.
    wrong_key = "WRONG-SECRET-KEY-0123456789"
    bad_file = Path(env_file).with_name("bad.env")
    bad_file.write_text(
        "".join(
            f"HUAWEICLOUD_SDK_SK={wrong_key}\n" if line.startswith("HUAWEICLOUD_SDK_SK=") else line
            for line in Path(env_file).read_text().splitlines(keepends=True)
        )
    )
    refused = dew_csi("csms", "--env-file", str(bad_file), "get", "secret_2", check=False)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert wrong_key not in refused.stderr
    assert refused.stderr.startswith("dew-csi csms get: ")
    nowhere = dew_csi("csms", "list", check=False)
    assert nowhere.returncode == 2
    assert "--env-file" in nowhere.stderr


def test_the_python_api_is_a_context_manager(tmp_path: Path) -> None:
    directory = tmp_path / "api"
    with Sandbox(directory).up(mounter="dir", rotation_poll_interval="5s") as sandbox:
        assert sandbox.info is not None
        pids = [c.pid for c in sandbox.info.components.values()]
        assert all(is_running(pid) for pid in pids)
        assert sandbox.running().api_url.startswith("http://127.0.0.1:")
        with pytest.raises(SandboxError, match='pod "ghost" not found'):
            sandbox.cat("ghost", "/mnt/secrets-store/")
    assert [pid for pid in pids if is_running(pid)] == []
    with pytest.raises(SandboxError, match="no sandbox is running"):
        Sandbox(directory).running()


def test_a_component_that_fails_to_start_stops_the_rest(tmp_path: Path) -> None:
    directory = tmp_path / "broken"
    (directory / "plugins").mkdir(parents=True)
    (directory / "plugins" / "csi.sock").write_text("not a socket")  # the driver refuses this

    result = dew_csi("sandbox", "up", "--dir", str(directory), "--timeout", "20", check=False)

    assert result.returncode == 1
    assert "driver exited with status" in result.stderr
    assert "is not a socket" in result.stderr  # the driver's own log line, shown
    assert processes_mentioning(str(directory)) == []
    assert not (directory / "sandbox.json").exists()
