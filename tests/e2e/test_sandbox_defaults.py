"""The README's sandbox walkthrough, run exactly as written (one default directory for every
`sandbox` command), and a failed `sandbox up` that leaves nothing claiming a running sandbox."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dew_csi.resources import ResourceMissing
from dew_csi.sandbox import cluster
from dew_csi.sandbox.cluster import Sandbox, SandboxError
from tests.conftest import REPO
from tests.e2e.test_sandbox import is_running, processes_mentioning

pytestmark = [pytest.mark.e2e]

WAIT_FOR_POD = """\
for _ in $(seq 150); do
  pod=$(kubectl get pod -l app=nginx \\
        -o jsonpath='{.items[?(@.status.phase=="Running")].metadata.name}')
  [ -n "$pod" ] && break
  sleep 0.2
done
"""


def readme_sandbox_commands() -> list[str]:
    """The shell block of the README's "The local sandbox" section, one command per entry."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The local sandbox") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return block.group(1).replace("\\\n", " ").splitlines()


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A new user's home; short, because the sandbox's unix sockets lie below it and a socket
    path has at most 107 bytes (pytest's tmp_path is too deep for that)."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir="/tmp"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.kubectl
def test_the_readme_walkthrough_works_as_written(kubectl_binary: str, short_home: Path) -> None:
    commands = readme_sandbox_commands()
    # Only what a reader fills in: the pod's name, once the pod runs.
    first_pod = next(i for i, line in enumerate(commands) if "<pod>" in line)
    script = [
        "set -euo pipefail",
        *commands[:first_pod],
        WAIT_FOR_POD,
        *(line.replace("<pod>", "$pod") for line in commands[first_pod:]),
    ]
    home = short_home
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("XDG_STATE_HOME", "DEW_CSI_SANDBOX_DIR", "KUBECONFIG", "PYTHONPATH")
        and not k.startswith("HUAWEICLOUD_SDK_")
    }
    environment["HOME"] = str(home)  # a new user: nothing in ~/.local/state yet
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment.get('PATH', '')}"
    directory = home / ".local" / "state" / "dew-csi" / "sandbox"

    try:
        result = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        out = result.stdout
        assert f"dew-csi sandbox is up in {directory} " in out
        assert "\nsecret_test\n" in out  # `sandbox cat <pod> /mnt/secrets-store/`
        assert "secretProviderClassName: spc-test" in out  # `kubectl get spcps ...`
        assert "=== dew-csi sandbox: starting driver ===" in out  # `sandbox logs driver`
        assert "stopped driver (pid " in out  # `sandbox down` found the same sandbox
        assert result.stderr.count("no sandbox") == 0
    finally:
        Sandbox(directory).down()
    assert processes_mentioning(str(directory)) == []
    assert not (directory / "sandbox.json").exists()


def test_a_failed_up_leaves_no_file_claiming_a_running_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_crds() -> Path:
        raise ResourceMissing("cannot find dew-csi's CRDs: (test)")

    # A fresh directory: up fails after the API and CSMS started and wrote their files.
    fresh = tmp_path / "fresh"
    with monkeypatch.context() as patch:
        patch.setattr(cluster, "crd_dir", no_crds)
        with pytest.raises(SandboxError, match=r"^cannot find dew-csi's CRDs: \(test\)$"):
            Sandbox(fresh).up(mounter="dir")
    assert processes_mentioning(str(fresh)) == []
    for claim in ("kubeconfig", "csms.env", "sandbox.json"):
        assert not (fresh / claim).exists(), claim
    assert (fresh / "logs" / "apiserver.log").exists()  # what the error message points at

    # A directory with an earlier sandbox's state: its kubeconfig and credentials stay as they
    # were after its `down` (the next `up` reuses the credentials for the stored secrets).
    earlier = tmp_path / "earlier"
    sandbox = Sandbox(earlier).up(mounter="dir")
    pids = [r.pid for r in (sandbox.info.components.values() if sandbox.info else [])]
    sandbox.down()
    assert pids
    assert not any(is_running(pid) for pid in pids)
    before = {name: (earlier / name).read_text() for name in ("kubeconfig", "csms.env")}
    with monkeypatch.context() as patch:
        patch.setattr(cluster, "crd_dir", no_crds)
        with pytest.raises(SandboxError):
            Sandbox(earlier).up(mounter="dir")
    assert processes_mentioning(str(earlier)) == []
    assert {name: (earlier / name).read_text() for name in before} == before
    assert (earlier / "kubeconfig").stat().st_mode & 0o077 == 0
    assert not (earlier / "sandbox.json").exists()
