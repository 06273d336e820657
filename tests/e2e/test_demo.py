"""`dew-csi demo` for real: the guide's walkthrough on a fresh sandbox, with the real kubectl and
without it; a changed example or a refused ServiceAccount stops it at the step that differs; and
every run, also a failed or interrupted one, leaves no process, mount or temporary directory."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dew_csi.sandbox.cluster import Sandbox
from tests.conftest import EXAMPLES

pytestmark = [pytest.mark.e2e]

# The demo's fake values (dew_csi.demo): shown only where the guide shows values.
SECRET_1_V1 = '{"key1":"db-user-01","key2":"db-user-02"}'
SECRET_1_V2 = '{"key1":"db-user-01-rotated","key2":"db-user-02-rotated"}'
SECRET_2_V1 = "demo-value-of-secret-2"

# Lines the guide shows (kubectl's full resource names where the guide abbreviates them).
GUIDE_LINES = [
    "serviceaccount/nginx-spc-sa created",
    "secretproviderclass.secrets-store.csi.x-k8s.io/spc-test created",
    "deployment.apps/nginx-spc created",
    "secret_test",
    "  mounted: true",
    "  - id: secret_test",
    "  secretProviderClassName: spc-test",
    "secretproviderclass.secrets-store.csi.x-k8s.io/nginx-deployment-spc-k8s-secrets created",
    "deployment.apps/nginx-deployment-k8s-secrets created",
    "DB_USERNAME_01=db-user-01",
    "DB_USERNAME_02=db-user-02",
    "secretproviderclass.secrets-store.csi.x-k8s.io/spc-test configured",
    "===== Summary: every step matched the guide =====",
]
GUIDE_PATTERNS = [
    r"^nginx-spc-sa\s+\d+\s+\S+$",
    r"^nginx-spc-[a-z0-9]+-[a-z0-9]+\s+1/1\s+Running\s+0\s+\S+$",
    r"^nginx-spc-[a-z0-9]+-[a-z0-9]+-default-spc-test\s",
    r"^\s+podName: nginx-spc-[a-z0-9]+-[a-z0-9]+$",
    r"^\s+targetPath: /\S+/volumes/kubernetes\.io~csi/secrets-store-inline/mount$",
    r"^my-secret-01\s+Opaque\s+2\s+\S+$",
    r"^default-secret\s+kubernetes\.io/dockerconfigjson\s+1\s+\S+$",
    r"^secret_1\nsecret_2$",
]
ROTATION = re.compile(
    r"the new secret_1 version reached the pod (\d+\.\d)s after the CSMS update "
    r"\(rotation_poll_interval 3s; the provider shares a `latest` read for (\d+(?:\.\d+)?)s"
)
SPC_CHANGE = re.compile(
    r"secret_2 appeared in the pod (\d+\.\d+)s after `kubectl apply` returned "
    r"\((\d+\.\d+)s after it started\); rotation_poll_interval 3s"
)


def demo(
    *args: str, env: dict[str, str] | None = None, timeout: float = 100
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dew_csi.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def header_path(stdout: str, label: str) -> Path:
    match = re.search(rf"^  {label}\s+(/\S+)", stdout, re.MULTILINE)
    assert match, f"no {label} line in the demo's header:\n{stdout[:600]}"
    return Path(match.group(1))


def is_running(pid: int) -> bool:
    """Alive and not a zombie (this VM's pid 1 may not reap orphans: zombies hold nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command and is_running(int(entry.name)):
            found.append(f"{entry.name}: {command}")
    return found


def mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as handle:
        points = [line.split(" ")[4] for line in handle]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def assert_nothing_left(directory: Path) -> None:
    assert processes_mentioning(str(directory)) == []
    assert mounts_under(directory) == []
    assert not (directory / "sandbox.json").exists()


def assert_walkthrough_shown(stdout: str) -> None:
    lines = stdout.splitlines()
    missing = [line for line in GUIDE_LINES if line not in lines]
    assert missing == [], f"missing lines {missing} in:\n{stdout}"
    unmatched = [p for p in GUIDE_PATTERNS if not re.search(p, stdout, re.MULTILINE)]
    assert unmatched == [], f"nothing matches {unmatched} in:\n{stdout}"
    # Both methods, rotation and SPC change, in the guide's order.
    order = [
        "===== Method 1",
        "===== Method 2",
        "===== Scheduled rotation",
        "===== Real-time detection",
        "===== Summary",
    ]
    positions = [stdout.index(heading) for heading in order]
    assert positions == sorted(positions)

    rotation = ROTATION.search(stdout)
    assert rotation, f"no rotation timing in:\n{stdout}"
    seconds, latest_ttl = float(rotation.group(1)), float(rotation.group(2))
    assert 0 < seconds <= 3 + latest_ttl + 2
    change = SPC_CHANGE.search(stdout)
    assert change, f"no SPC change timing in:\n{stdout}"
    after_apply, after_start = float(change.group(1)), float(change.group(2))
    assert after_apply < 3  # well within the interval: not the scheduled rotation
    assert after_apply <= after_start
    assert 'trigger="rotation"' in stdout
    assert '"SecretProviderClass changed; remounting" spc="default/spc-test"' in stdout

    # Values appear only where the guide shows them: the environment, and the rotation step.
    assert SECRET_2_V1 not in stdout
    rotation_section = stdout.index("===== Scheduled rotation")
    assert SECRET_1_V1 not in stdout[:rotation_section]
    assert stdout.count(SECRET_1_V1) == 1
    assert stdout.count(SECRET_1_V2) == 1


@pytest.mark.kubectl
def test_demo_with_kubectl_follows_the_guide_and_cleans_up(kubectl_binary: str) -> None:
    started = time.monotonic()
    result = demo()
    took = time.monotonic() - started

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    stdout = result.stdout
    assert_walkthrough_shown(stdout)
    assert f"  kubectl    {kubectl_binary}, run in {EXAMPLES}" in stdout
    assert "$ kubectl apply -f serviceaccount.yaml\n" in stdout
    assert "$ kubectl get spcps nginx-spc-" in stdout
    assert result.stderr == ""
    assert took < 90, f"the demo took {took:.0f}s"

    directory = header_path(stdout, "sandbox")
    cache = re.search(r"--cache-dir (/\S+)/cache", stdout)
    assert cache
    assert not directory.exists()
    assert not Path(cache.group(1)).exists()
    assert_nothing_left(directory)


def test_demo_without_kubectl_and_keep(tmp_path: Path) -> None:
    # A kubectl that records being called: the demo must never run it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "kubectl-was-called"
    fake = bin_dir / "kubectl"
    fake.write_text(f"#!/bin/sh\ntouch {called}\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    directory = tmp_path / "sandbox"

    result = demo("--no-kubectl", "--keep", "--dir", str(directory), env=env)
    try:
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        stdout = result.stdout
        assert "  kubectl    NOT USED (--no-kubectl given): the guide's files are applied" in stdout
        assert_walkthrough_shown(stdout)
        assert not called.exists()

        # --keep: still running, and the demo said how to use and stop it.
        assert f"export KUBECONFIG={directory}/kubeconfig" in stdout
        assert f"dew-csi sandbox down --dir {directory}" in stdout
        pod = re.search(r"^  dew-csi sandbox cat --dir \S+ (nginx-spc-\S+) ", stdout, re.MULTILINE)
        assert pod
        assert (
            Sandbox(directory).cat(pod.group(1), "/mnt/secrets-store/") == b"secret_1\nsecret_2\n"
        )
    finally:
        Sandbox(directory).down()
    assert_nothing_left(directory)


def bad_examples(tmp_path: Path, file: str, old: str, new: str) -> Path:
    examples = tmp_path / "examples"
    shutil.copytree(EXAMPLES, examples)
    text = (examples / file).read_text()
    assert old in text
    (examples / file).write_text(text.replace(old, new))
    return examples


def test_a_result_unlike_the_guide_fails_the_step_that_shows_it(tmp_path: Path) -> None:
    # The SPC mounts secret_1 under another alias: `ls` no longer shows secret_test.
    examples = bad_examples(tmp_path, "secretproviderclass.yaml", '"secret_test"', '"secret_other"')
    directory = tmp_path / "sandbox"

    result = demo("--no-kubectl", "--examples", str(examples), "--dir", str(directory))

    assert result.returncode == 1, result.stdout
    lines = result.stderr.rstrip().splitlines()
    failure = lines[-2:]
    assert failure[0].startswith(
        "dew-csi demo: FAILED: step '3.4.2 Search for the specified secret' "
        "(`ls /mnt/secrets-store/`): the output differs from the guide: nothing matches "
        r"/\Asecret_test\n\Z/; the output was:"
    ), result.stderr
    assert failure[1:] == ["    secret_other"]
    assert "--- last lines of " in result.stderr  # the driver's and provider's logs
    assert "Summary" not in result.stdout
    assert_nothing_left(directory)
    assert (directory / "logs" / "driver.log").exists()  # kept with --dir, for diagnosis


def test_a_pod_that_never_runs_fails_with_the_reason(tmp_path: Path) -> None:
    # secret_1 is no longer allowed for the ServiceAccount: the volume cannot be mounted.
    examples = bad_examples(
        tmp_path, "serviceaccount.yaml", '[\\"secret_1\\",\\"secret_2\\"]', '[\\"secret_2\\"]'
    )
    directory = tmp_path / "sandbox"

    result = demo(
        "--no-kubectl", "--examples", str(examples), "--dir", str(directory), "--timeout", "3"
    )

    assert result.returncode == 1, result.stdout
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(
        "dew-csi demo: FAILED: step '3.3 Check whether the pod has been created' "
        "(`kubectl get pod`): pod app=nginx Running and ready not reached in 3s; last seen: "
        "nginx-spc-"
    ), result.stderr
    assert "ContainerCreating" in last
    assert "FailedMount" in last
    assert 'secret "secret_1" is not allowed for ServiceAccount "default/nginx-spc-sa"' in last
    assert f"--- last lines of {directory}/logs/kubelet.log:" in result.stderr
    # The pod's status about once a second while the demo waits.
    progress = re.findall(
        r"^\s+\d+\.\ds  nginx-spc-\S+  ContainerCreating  ready 0/1$", result.stdout, re.MULTILINE
    )
    assert len(progress) >= 2, result.stdout
    assert_nothing_left(directory)


def test_ctrl_c_stops_the_demo_and_cleans_up(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    process = subprocess.Popen(
        [sys.executable, "-m", "dew_csi.cli", "demo", "--no-kubectl", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith("===== Method 1"):
                break
        assert seen, "the demo printed nothing"
        assert seen[-1].startswith("===== Method 1"), "".join(seen)
        assert processes_mentioning(str(directory))  # the sandbox runs
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stdout + stderr
    assert "dew-csi demo: interrupted; the sandbox was cleaned up" in stderr
    assert_nothing_left(directory)
