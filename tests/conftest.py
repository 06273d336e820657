"""Fixtures shared by every test tier: the Kubernetes API emulator, in a thread or as a real
`dew-csi sandbox apiserver` process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dew_csi.sandbox.apiserver import ApiServerThread

# The repository's copies, the one source of truth: the wheel ships them as package data
# (dew_csi.resources; tests/unit/test_resources.py and tests/e2e/test_wheel.py check both).
REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "deploy" / "crds"
EXAMPLES = REPO / "examples"
_SANDBOX_DIR = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """No test touches the user's own default sandbox directory (~/.local/state/dew-csi/
    sandbox): a `sandbox` command run without --dir uses this session's own directory."""
    directory = Path(tempfile.mkdtemp(prefix="dew-csi-tests-")) / "sandbox"
    os.environ["DEW_CSI_SANDBOX_DIR"] = str(directory)
    config.stash[_SANDBOX_DIR] = directory


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_SANDBOX_DIR, None)
    if directory is not None:
        shutil.rmtree(directory.parent, ignore_errors=True)


def crd_documents() -> list[dict[str, Any]]:
    """The project's CustomResourceDefinitions, parsed (anchors resolved)."""
    return [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]


@pytest.fixture
def apiserver() -> Iterator[ApiServerThread]:
    """A fresh API emulator on 127.0.0.1, on its own event loop in a thread."""
    with ApiServerThread() as server:
        yield server


@dataclass
class ApiServerProcess:
    """A `dew-csi sandbox apiserver` child process."""

    process: subprocess.Popen[str]
    url: str
    port: int
    kubeconfig: Path | None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit code (0 when it shut down cleanly)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


LISTENING = re.compile(r"^dew-csi apiserver listening on (http://127\.0\.0\.1:(\d+))$")


def start_apiserver_process(*args: str, kubeconfig: Path | None = None) -> ApiServerProcess:
    """Run the emulator as a real process; returns once it printed its listening line."""
    command = [sys.executable, "-m", "dew_csi.cli", "sandbox", "apiserver", *args]
    if kubeconfig is not None:
        command += ["--kubeconfig-out", str(kubeconfig)]
    if not any(a.startswith("--listen") for a in args):
        command += ["--listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline().rstrip("\n")
    match = LISTENING.match(line)
    if match is None:
        process.kill()
        process.wait()
        raise AssertionError(f"unexpected first line from the emulator: {line!r}")
    return ApiServerProcess(process, match.group(1), int(match.group(2)), kubeconfig)


@pytest.fixture
def spawn_apiserver() -> Iterator[Callable[..., ApiServerProcess]]:
    """Factory for emulator processes; every one still running at the end is stopped."""
    started: list[ApiServerProcess] = []

    def spawn(*args: str, kubeconfig: Path | None = None) -> ApiServerProcess:
        child = start_apiserver_process(*args, kubeconfig=kubeconfig)
        started.append(child)
        return child

    yield spawn
    for child in started:
        if child.process.poll() is None:
            child.stop()
